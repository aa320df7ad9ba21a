"""Offline preparation: a local text corpus -> tokenized ArrayRecord shards + manifest.

The library side of `python -m pgm_jax.data.prepare` (see there for the command line).
`owt`: OpenWebText (Hugging Face parquet / arrow files, JSONL, or one .txt per document),
GPT-2 BPE, 1024-token wrapped blocks, the last 100,000 documents as validation (spec §4.3).
`text`: any folder of .txt / .jsonl / .parquet / .arrow files, any tokenizer (sentencepiece is
trained on the corpus and saved with the data), wrap or pad, the last documents held out.

Wrapping concatenates documents (each followed by EOS) in groups of 1,000, the reference's
`datasets.map` batch, and drops each group's remainder; so the data never depends on the shard
or worker count. Shards are tokenized by worker processes and written atomically; a run that
stops is resumed by the same command, which skips finished shards.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
from absl import logging
from tqdm import tqdm

from pgm_jax.data import corpus, prepared_store
from pgm_jax.data.blocks import wrap_into_blocks
from pgm_jax.data.errors import DataError
from pgm_jax.data.tokenizers import (
    KINDS,
    TextTokenizer,
    from_files,
    load_saved,
    save_tokenizer,
)
from pgm_jax.data.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece

WRAP_GROUP = 1000  # documents wrapped together (the reference's datasets.map batch size)
MAX_SHARD_GROUPS = 50  # at most 50,000 documents (~100 MB of OWT tokens) per shard
SENTENCEPIECE_SAMPLE_CHARS = 50_000_000  # text the sentencepiece model is trained on
PLAN = "plan.json"


@dataclasses.dataclass(frozen=True)
class Options:
    """What to prepare; the flags of `python -m pgm_jax.data.prepare` document each field."""

    command: str  # owt | text
    input: str
    output: str
    tokenizer: str = "sentencepiece"
    tokenizer_path: str = ""
    vocab_size: int = 32_000
    lowercase: bool = True
    length: int = 1024
    layout: str = "wrap"
    val_docs: int = 0
    val_fraction: float = 0.05
    text_field: str = "text"
    workers: int = 1

    def check(self) -> None:
        if self.tokenizer not in KINDS:
            raise DataError(f"--tokenizer={self.tokenizer!r}: use one of {', '.join(KINDS)}")
        if self.layout not in prepared_store.LAYOUTS:
            raise DataError(f"--layout={self.layout!r}: use 'wrap' or 'pad'")
        if self.length < 3:
            raise DataError(f"--length={self.length}: need room for BOS, a token and EOS (>= 3)")
        if self.val_docs < 0 or not 0.0 < self.val_fraction < 1.0:
            raise DataError("--val_docs must be >= 0 and --val_fraction in (0, 1)")
        if self.workers < 1:
            raise DataError(f"--workers={self.workers}: must be >= 1")
        if not os.path.exists(self.input):
            raise DataError(f"--input={self.input}: does not exist (is not a directory or file)")

    def fingerprint(self) -> dict:
        """The options that decide the output (a resumed run must match them)."""
        fields = dataclasses.asdict(self)
        for key in ("output", "workers"):
            fields.pop(key)
        fields["input"] = os.path.abspath(self.input)
        return fields


def prepare(opts: Options) -> dict:
    """Prepares `opts.input` into `opts.output`; returns the manifest. Resumes a stopped run."""
    opts.check()
    start_time = time.perf_counter()
    os.makedirs(opts.output, exist_ok=True)
    plan = _load_or_make_plan(opts)
    tokenizer = load_saved(os.path.join(opts.output, prepared_store.TOKENIZER_DIR),
                           plan["tokenizer"])
    pending = [s for s in plan["shards"] if not os.path.exists(_stats_path(opts.output, s))]
    total_docs = sum(s["stop"] - s["start"] for s in pending)
    logging.info("%d of %d shards to write (%d documents) with %d workers", len(pending),
                 len(plan["shards"]), total_docs, min(opts.workers, max(len(pending), 1)))
    tokens = 0
    with tqdm(total=total_docs, unit="doc", disable=not pending, file=sys.stderr,
              desc="tokenizing") as bar:
        for stats in _run_shards(pending, tokenizer, plan, opts):
            tokens += stats["tokens"]
            bar.update(stats["documents"])
            bar.set_postfix(tokens_per_s=f"{tokens / max(bar.format_dict['elapsed'], 1e-9):,.0f}")
    manifest = _manifest(plan, opts)
    prepared_store.write_json(os.path.join(opts.output, prepared_store.MANIFEST), manifest)
    seconds = time.perf_counter() - start_time
    logging.info("prepared %s in %.1f s: %s", opts.output, seconds, ", ".join(
        f"{split} {v['documents']} docs / {v['tokens']} tokens / {v['examples']} examples"
        for split, v in manifest["splits"].items()))
    return manifest


# --- the plan: documents -> splits -> shards, fixed on the first run


def _load_or_make_plan(opts: Options) -> dict:
    path = os.path.join(opts.output, PLAN)
    if os.path.exists(path):
        plan = _read_json(path)
        if plan["options"] != opts.fingerprint():
            raise DataError(
                f"--output={opts.output!r} holds a preparation with other options or input: "
                "use another --output, or delete it to start over")
        return plan
    files = corpus.find_files(opts.input)
    scanned = [corpus.scan(f, opts.text_field) for f in files]
    counts = np.array([f.documents for f in scanned], np.int64)
    total = int(counts.sum())
    n_val = opts.val_docs or math.ceil(opts.val_fraction * total)
    if not 0 < n_val < total:
        raise DataError(
            f"--input={opts.input!r} has {total} documents; a validation split of {n_val} "
            "leaves no training data: lower --val_docs / --val_fraction or add documents")
    ranges = {"train": (0, total - n_val), "validation": (total - n_val, total)}
    shards = [shard for split, (lo, hi) in ranges.items()
              for shard in _split_shards(split, lo, hi, scanned, counts, opts.workers)]
    plan = {"options": opts.fingerprint(), "files": files, "documents": total,
            "ranges": ranges, "shards": shards}
    tokenizer = _build_tokenizer(opts, plan)
    plan["tokenizer"] = save_tokenizer(
        tokenizer, os.path.join(opts.output, prepared_store.TOKENIZER_DIR))
    prepared_store.write_json(path, plan)
    return plan


def _split_shards(split: str, lo: int, hi: int, files: list[corpus.CorpusFile],
                  counts: np.ndarray, workers: int) -> list[dict]:
    """Shards of documents [lo, hi): whole wrap groups, about 4 per worker, at most
    MAX_SHARD_GROUPS groups each. Each shard lists its (file, start, stop, byte offset) pieces."""
    groups = math.ceil((hi - lo) / WRAP_GROUP)
    per_shard = min(MAX_SHARD_GROUPS, max(1, math.ceil(groups / (4 * workers)))) * WRAP_GROUP
    bounds = [*range(lo, hi, per_shard), hi]
    file_starts = np.concatenate([[0], np.cumsum(counts)])
    shards = []
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        pieces = []
        first = int(np.searchsorted(file_starts, start, side="right")) - 1
        for f in range(first, len(files)):
            a, b = max(start, file_starts[f]), min(stop, file_starts[f + 1])
            if a >= stop:
                break
            if a < b:
                local = int(a - file_starts[f])
                offset = int(files[f].offsets[local]) if files[f].offsets is not None else 0
                pieces.append([f, local, int(b - file_starts[f]), offset])
        shards.append({"split": split, "index": index, "count": len(bounds) - 1,
                       "start": start, "stop": stop, "pieces": pieces})
    return shards


def _build_tokenizer(opts: Options, plan: dict) -> TextTokenizer:
    """From the named files, or a sentencepiece model trained on a sample of the train split."""
    if opts.tokenizer != "sentencepiece" or opts.tokenizer_path:
        return from_files(opts.tokenizer, opts.tokenizer_path, opts.lowercase)
    logging.info("training a %d-piece sentencepiece model on up to %d characters of the "
                 "train split", opts.vocab_size, SENTENCEPIECE_SAMPLE_CHARS)
    docs = list(_sample_train_docs(plan, opts))
    return SentencePieceTokenizer(train_sentencepiece(docs, opts.vocab_size))


def _sample_train_docs(plan: dict, opts: Options) -> Iterator[str]:
    """Leading documents of evenly spread train shards, SENTENCEPIECE_SAMPLE_CHARS in all."""
    shards = [s for s in plan["shards"] if s["split"] == "train"]
    budget = SENTENCEPIECE_SAMPLE_CHARS // len(shards)
    for shard in shards:
        used = 0
        for doc in _shard_documents(shard, plan, opts):
            if used >= budget:
                break
            used += len(doc)
            yield doc


# --- the work: one shard -> tokens -> records


def _shard_documents(shard: dict, plan: dict, opts: Options) -> Iterator[str]:
    for f, start, stop, offset in shard["pieces"]:
        yield from corpus.read_documents(plan["files"][f], start, stop, opts.text_field, offset)


def _write_shard(shard: dict, tokenizer: TextTokenizer, plan: dict, opts: Options) -> dict:
    """Tokenizes one shard, writes its records and then its stats file (the 'done' mark)."""
    tokens = [np.asarray(tokenizer.encode(doc), np.int32) if doc.strip() else None
              for doc in _shard_documents(shard, plan, opts)]
    docs = [t for t in tokens if t is not None]
    if opts.layout == "wrap":
        # Groups restart at every multiple of WRAP_GROUP documents from the split's start.
        rows = [block for g in range(0, len(tokens), WRAP_GROUP)
                for block in wrap_into_blocks([t for t in tokens[g:g + WRAP_GROUP]
                                               if t is not None],
                                              opts.length, tokenizer.bos_id, tokenizer.eos_id)]
    else:
        rows = [t[:opts.length - 2] for t in docs]
    name = prepared_store.shard_name(shard["split"], shard["index"], shard["count"])
    dtype = prepared_store.token_dtype(tokenizer.vocab_size)
    examples = prepared_store.write_records(os.path.join(opts.output, name), rows, dtype)
    stats = {"file": name, "documents": len(tokens), "empty_documents": len(tokens) - len(docs),
             "tokens": int(sum(len(t) for t in docs)), "examples": examples}
    prepared_store.write_json(_stats_path(opts.output, shard), stats)
    return stats


def _stats_path(output: str, shard: dict) -> str:
    name = prepared_store.shard_name(shard["split"], shard["index"], shard["count"])
    return os.path.join(output, name + ".json")


_worker_context: tuple = ()  # (tokenizer, plan, opts) inside a worker process


def _init_worker(plan: dict, opts: Options) -> None:
    global _worker_context
    tokenizer = load_saved(os.path.join(opts.output, prepared_store.TOKENIZER_DIR),
                           plan["tokenizer"])
    _worker_context = (tokenizer, plan, opts)


def _write_shard_in_worker(shard: dict) -> dict:
    return _write_shard(shard, *_worker_context)


def _run_shards(shards: list[dict], tokenizer: TextTokenizer, plan: dict, opts: Options
                ) -> Iterator[dict]:
    """Writes `shards`, yielding each one's stats as it finishes (in any order)."""
    workers = min(opts.workers, len(shards))
    if workers <= 1:
        for shard in shards:
            yield _write_shard(shard, tokenizer, plan, opts)
        return
    # Spawned (not forked) workers: the parent may hold threads (absl, tqdm) and big arrays.
    with multiprocessing.get_context("spawn").Pool(
            workers, initializer=_init_worker, initargs=(plan, opts)) as pool:
        yield from pool.imap_unordered(_write_shard_in_worker, shards)


def _manifest(plan: dict, opts: Options) -> dict:
    splits: dict[str, dict] = {}
    for shard in plan["shards"]:
        stats = _read_json(_stats_path(opts.output, shard))
        split = splits.setdefault(shard["split"], {"files": [], "documents": 0,
                                                   "empty_documents": 0, "tokens": 0,
                                                   "examples": 0})
        split["files"].append(stats["file"])
        for key in ("documents", "empty_documents", "tokens", "examples"):
            split[key] += stats[key]
    for split, values in splits.items():
        if values["examples"] == 0:
            raise DataError(
                f"the {split} split ({values['documents']} documents, {values['tokens']} "
                f"tokens) is shorter than one block of --length={opts.length}: lower --length "
                "or add text")
    return {"format": prepared_store.FORMAT, "command": opts.command, "layout": opts.layout,
            "length": opts.length,
            "dtype": prepared_store.token_dtype(plan["tokenizer"]["vocab_size"]),
            "tokenizer": plan["tokenizer"], "text_field": opts.text_field,
            "input": {"path": os.path.abspath(opts.input), "files": len(plan["files"]),
                      "documents": plan["documents"]},
            "splits": splits}


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
