"""Text data: documents -> tokens -> examples of length L -> grain batches.

`load_text_data` is the trainer's entry point. By `data.source`:
  pydoc | files   documents in memory, a sentencepiece tokenizer trained into the workdir,
                  wrapped blocks (small corpora, the CPU demo);
  owt | text      a dataset prepared by `python -m pgm_jax.data.prepare` in `data.path`
                  (ArrayRecord shards, its own tokenizer);
  lm1b            TFDS lm1b in `data.path`, bert-base-uncased WordPiece, padded (spec §4.3).
The returned `TextData` makes the train iterator and the exact evaluation batches.

Modules, in the order the data flows:
  documents -> corpus        in-memory documents and their split; local corpus files
  tokenizers/                text <-> ids: the protocol, saving / reloading; sentencepiece,
                             gpt2, wordpiece
  blocks -> examples         wrapped blocks; random-access rows of a dataset
  pipeline                   grain: shuffled train stream and exact evaluation batches
  prepare (CLI)              -> prepare_text / lm1b / imagenet_vq write datasets in the
                             prepared_store format that training reads back
  images                     image datasets (digits, prepared ImageNet VQ codes)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import ml_collections
import numpy as np
from absl import logging

from pgm_jax.data import lm1b
from pgm_jax.data.blocks import wrap_into_blocks
from pgm_jax.data.documents import load_documents, split_documents
from pgm_jax.data.errors import DataError
from pgm_jax.data.examples import BlockExamples, DocExamples, Examples
from pgm_jax.data.pipeline import (
    Arrangement,
    Batch,
    Packing,
    Wrapping,
    eval_batches,
    num_eval_batches,
    train_iterator,
)
from pgm_jax.data.prepared_store import TOKENIZER_DIR, open_prepared, read_manifest
from pgm_jax.data.tokenizers import TextTokenizer, load_saved
from pgm_jax.data.tokenizers.sentencepiece import SentencePieceTokenizer, load_or_train_tokenizer

__all__ = [
    "DataError",
    "SentencePieceTokenizer",
    "TextData",
    "TextTokenizer",
    "eval_batches",
    "load_documents",
    "load_or_train_tokenizer",
    "load_text_data",
    "load_tokenizer",
    "num_eval_batches",
    "split_documents",
    "train_iterator",
    "wrap_into_blocks",
]

PREPARED_SOURCES = ("owt", "text")
PREPARE_HINTS = {
    "owt": "python -m pgm_jax.data.prepare owt --input=OPENWEBTEXT_DIR --output={path}",
    "text": "python -m pgm_jax.data.prepare text --input=CORPUS_DIR --output={path}",
}


@dataclasses.dataclass(frozen=True)
class TextData:
    """A dataset ready for the trainer: its tokenizer, train and validation examples.

    `train` rows are fixed-length unless `arrange` packs or wraps them; `val` rows are always
    fixed-length ({"tokens", "valid"}), so evaluation visits each exactly once.
    """

    tokenizer: TextTokenizer
    train: Examples
    val: Examples
    arrange: Arrangement | None = None

    def train_iterator(self, global_batch_size: int, seed: int, process_index: int = 0,
                       process_count: int = 1, worker_count: int = 0) -> Iterator[Batch]:
        """This process's endless, shuffled train batches (see `pipeline.train_iterator`)."""
        return train_iterator(self.train, global_batch_size, seed, process_index, process_count,
                              worker_count, self.arrange)

    def eval_batches(self, batch_size: int, process_index: int = 0, process_count: int = 1):
        """Every validation example once, last batch padded (see `pipeline.eval_batches`)."""
        return eval_batches(self.val, batch_size, process_index, process_count)

    def num_eval_batches(self, batch_size: int) -> int:
        return num_eval_batches(len(self.val), batch_size)


def load_text_data(data_cfg: ml_collections.ConfigDict, length: int, workdir: str) -> TextData:
    """Opens `data_cfg.source` with examples of `length` tokens (BOS and EOS included).

    Args:
      data_cfg: ConfigDict with `source` ('pydoc' | 'files' | 'owt' | 'text' | 'lm1b'); for
        pydoc / files: `files`, `vocab_size`, `val_fraction`; for owt / text / lm1b: `path`,
        `pack` (pack padded sequences); for lm1b: `tokenizer_path`, `wrap`.
      length: L, the model's sequence length.
      workdir: run directory (pydoc / files keep their tokenizer there).
    """
    source = data_cfg.source
    if source in ("pydoc", "files"):
        return _in_memory(data_cfg, length, workdir)
    if source in PREPARED_SOURCES:
        return _prepared(data_cfg, length)
    if source == "lm1b":
        return _lm1b(data_cfg, length)
    raise DataError(f"data.source={source!r} is unknown: use pydoc, files, owt, text or lm1b")


def load_tokenizer(data_cfg: ml_collections.ConfigDict, workdir: str) -> TextTokenizer:
    """The tokenizer a run of `data_cfg` trains with, without opening its data (for sampling)."""
    source = data_cfg.source
    if source in PREPARED_SOURCES:
        path = data_cfg.get("path", "")
        manifest = read_manifest(path, PREPARE_HINTS[source].format(path=path or "DIR"))
        return load_saved(os.path.join(path, TOKENIZER_DIR), manifest["tokenizer"])
    if source == "lm1b":
        return lm1b.wordpiece_tokenizer(data_cfg.get("path", ""),
                                        data_cfg.get("tokenizer_path", ""))
    path = os.path.join(workdir, "tokenizer.model")
    if not os.path.isfile(path):
        raise DataError(f"{path} not found: the run has not trained its tokenizer yet")
    return SentencePieceTokenizer.from_file(path)


def _in_memory(data_cfg: ml_collections.ConfigDict, length: int, workdir: str) -> TextData:
    """Documents split, tokenized (sentencepiece trained into WORKDIR/tokenizer.model on the
    train documents, reused by later runs) and wrapped into blocks, all in memory."""
    _no_pack(data_cfg, "data.source=pydoc / files wrap their documents")
    docs = load_documents(data_cfg.source, data_cfg.get("files", ""))
    train_docs, val_docs = split_documents(docs, data_cfg.val_fraction)
    tokenizer = load_or_train_tokenizer(
        train_docs, data_cfg.vocab_size, os.path.join(workdir, "tokenizer.model"))
    train_blocks, train_tokens = _wrap_split("train", train_docs, tokenizer, length)
    val_blocks, val_tokens = _wrap_split("validation", val_docs, tokenizer, length)
    logging.info(
        "data %s: %d docs (%d train, %d val), %d tokens (%d train, %d val), vocab %d, "
        "blocks of %d: %d train, %d val", data_cfg.source, len(docs), len(train_docs),
        len(val_docs), train_tokens + val_tokens, train_tokens, val_tokens, tokenizer.vocab_size,
        length, len(train_blocks), len(val_blocks))
    return TextData(tokenizer, BlockExamples(train_blocks), BlockExamples(val_blocks))


def _wrap_split(
    name: str, docs: list[str], tokenizer: TextTokenizer, length: int
) -> tuple[np.ndarray, int]:
    """Tokenizes and wraps one split: (int32[n_blocks >= 1, length], number of tokens)."""
    tokens = [tokenizer.encode(doc) for doc in docs]
    blocks = wrap_into_blocks(tokens, length, tokenizer.bos_id, tokenizer.eos_id)
    n_tokens = sum(map(len, tokens))
    if len(blocks) == 0:
        raise DataError(
            f"the {name} split ({len(docs)} docs, {n_tokens} tokens) is shorter than one block "
            f"of model.length={length} tokens: lower model.length or add text")
    return blocks, n_tokens


def _prepared(data_cfg: ml_collections.ConfigDict, length: int) -> TextData:
    """A dataset written by `pgm_jax.data.prepare` (wrapped blocks or padded documents)."""
    path = data_cfg.get("path", "")
    hint = PREPARE_HINTS[data_cfg.source].format(path=path or "DIR")
    if not path:
        raise DataError(f"data.source={data_cfg.source} reads a prepared dataset: set "
                        f"data.path=DIR, made by `{hint}`")
    data = open_prepared(path, hint)
    if data.length != length:
        raise DataError(
            f"data.path={path!r} holds examples of {data.length} tokens but "
            f"model.length={length}: set model.length={data.length} or prepare again with "
            f"--length={length}")
    tok = data.tokenizer
    train, val = data.splits["train"], data.splits["validation"]
    logging.info("data %s from %s: %s layout, %d train / %d validation examples of %d tokens, "
                 "%s tokenizer, vocab %d", data_cfg.source, path, data.layout,
                 len(train), len(val), length, tok.kind, tok.vocab_size)
    if data.layout == "wrap":
        _no_pack(data_cfg, f"data.path={path!r} holds wrapped blocks")
        return TextData(tok, BlockExamples(train), BlockExamples(val))
    return _padded(tok, train, val, length, data_cfg.get("pack", False))


def _lm1b(data_cfg: ml_collections.ConfigDict, length: int) -> TextData:
    path = data_cfg.get("path", "")
    tok, splits = lm1b.open_lm1b(path, data_cfg.get("tokenizer_path", ""))
    train, val = splits["train"], splits["test"]
    logging.info("data lm1b from %s: %d train / %d test sentences, %s, L=%d", path,
                 len(train), len(val), "wrapped" if data_cfg.get("wrap", False) else (
                     "packed" if data_cfg.get("pack", False) else "padded"), length)
    if data_cfg.get("wrap", False):
        _no_pack(data_cfg, "data.wrap=True wraps the sentences")
        # The test split is small (~300k sentences): wrap it once, in memory and in order.
        val_blocks = wrap_into_blocks([val[i] for i in range(len(val))], length, tok.bos_id,
                                      tok.eos_id)
        train_docs = DocExamples(train, length, tok.bos_id, tok.eos_id, tok.pad_id, "wrap")
        return TextData(tok, train_docs, BlockExamples(val_blocks),
                        Wrapping(length, tok.bos_id, tok.eos_id))
    return _padded(tok, train, val, length, data_cfg.get("pack", False))


def _padded(tok: TextTokenizer, train, val, length: int, pack: bool) -> TextData:
    """Documents as [BOS] doc [EOS] [PAD]... rows; with `pack` the train ones are packed."""
    ids = (tok.bos_id, tok.eos_id, tok.pad_id)
    val_examples = DocExamples(val, length, *ids, form="pad")
    if pack:
        return TextData(tok, DocExamples(train, length, *ids, form="pack"), val_examples,
                        Packing(length, tok.pad_id))
    return TextData(tok, DocExamples(train, length, *ids, form="pad"), val_examples)


def _no_pack(data_cfg: ml_collections.ConfigDict, reason: str) -> None:
    if data_cfg.get("pack", False):
        raise DataError(f"data.pack=True packs padded documents, but {reason}: "
                        "set data.pack=False")
