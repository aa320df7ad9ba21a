"""Input-side throughput: `prepare owt` on a generated corpus, then the data-only pipeline.

  python benchmarks/data_throughput.py --corpus=/tmp/owt_corpus --output=/tmp/owt_prepared \\
      [--megabytes=50] [--workers=N]

The corpus imitates a local OpenWebText copy in Hugging Face's parquet layout: documents of
English words drawn with their frequencies in CPython's bundled documentation, in sentences and
paragraphs, with OWT-like lengths (log-normal, ~4.5 KB mean). It is generated once (reused when
--corpus exists). Prints a table and, last, one JSON line with the numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from pydoc_data import topics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import owt as owt_config
from pgm_jax.data.benchmark import run_benchmark
from pgm_jax.data.prepare_text import Options, prepare

_CORPUS = flags.DEFINE_string("corpus", "/tmp/owt_corpus", "Generated corpus folder.")
_OUTPUT = flags.DEFINE_string("output", "/tmp/owt_prepared", "Prepared dataset folder.")
_MEGABYTES = flags.DEFINE_integer("megabytes", 50, "Corpus size to generate.")
_WORKERS = flags.DEFINE_integer("workers", None, "prepare workers (default: CPU count).")
_BATCHES = flags.DEFINE_integer("batches", 300, "Batches timed by the data-only benchmark.")
_FILES = 10  # parquet files, like the sharded Hugging Face download


def generate_corpus(directory: str, megabytes: int, seed: int = 0) -> int:
    """Writes ~`megabytes` MB of documents as parquet files; returns the document count."""
    words = Counter(re.findall(r"[A-Za-z]+(?:'[a-z]+)?", " ".join(topics.topics.values())))
    vocab = np.array(list(words))
    p = np.array(list(words.values()), np.float64)
    rng = np.random.default_rng(seed)
    docs, size = [], 0
    while size < megabytes * 1_000_000:
        n = max(20, int(rng.lognormal(6.3, 0.8)))
        tokens = rng.choice(vocab, size=n, p=p / p.sum())
        ends = np.flatnonzero(rng.random(n) < 1 / 15)  # sentence ends
        text = []
        for i, start in enumerate([0, *(ends + 1)]):
            stop = ends[i] + 1 if i < len(ends) else n
            if start < stop:
                sentence = " ".join(tokens[start:stop])
                text.append(sentence[0].upper() + sentence[1:] + ".")
        doc = "".join(s + ("\n\n" if rng.random() < 0.2 else " ") for s in text).strip()
        docs.append(doc)
        size += len(doc.encode())
    os.makedirs(directory, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(docs)), _FILES)):
        table = pa.table({"text": [docs[j] for j in part]})
        pq.write_table(table, os.path.join(directory, f"train-{i:05d}-of-{_FILES:05d}.parquet"))
    return len(docs)


def main(argv: list[str]) -> None:
    del argv
    if not os.path.isdir(_CORPUS.value):
        t0 = time.perf_counter()
        n = generate_corpus(_CORPUS.value, _MEGABYTES.value)
        print(f"generated {n} documents in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    corpus_bytes = sum(os.path.getsize(os.path.join(_CORPUS.value, f))
                       for f in os.listdir(_CORPUS.value))
    shutil.rmtree(_OUTPUT.value, ignore_errors=True)
    workers = _WORKERS.value or os.cpu_count() or 1
    # 100k validation documents would be the whole corpus here: hold out 5% instead.
    opts = Options(command="owt", input=_CORPUS.value, output=_OUTPUT.value, tokenizer="gpt2",
                   length=1024, val_docs=0, val_fraction=0.05, workers=workers)
    t0 = time.perf_counter()
    manifest = prepare(opts)
    prepare_s = time.perf_counter() - t0
    splits = manifest["splits"]
    tokens = sum(s["tokens"] for s in splits.values())
    text_mb = sum(len(t.encode()) for f in sorted(os.listdir(_CORPUS.value))
                  for t in pq.read_table(os.path.join(_CORPUS.value, f))["text"].to_pylist()) / 1e6

    config = owt_config.get_config("cpu")
    config.data.path = _OUTPUT.value
    config.data.benchmark_batches = _BATCHES.value
    rows = []
    for worker_count in (0, 2):
        config.data.worker_count = worker_count
        bench = run_benchmark(config, "/tmp")
        rows.append(bench)

    print(f"{'what':<34}{'value':>16}")
    print(f"{'corpus text (MB, UTF-8)':<34}{text_mb:>16.1f}")
    print(f"{'parquet files (MB)':<34}{corpus_bytes / 1e6:>16.1f}")
    print(f"{'documents':<34}{manifest['input']['documents']:>16,}")
    print(f"{'GPT-2 tokens':<34}{tokens:>16,}")
    print(f"{'prepare workers':<34}{workers:>16}")
    print(f"{'prepare wall time (s)':<34}{prepare_s:>16.1f}")
    print(f"{'prepare tokens/s':<34}{tokens / prepare_s:>16,.0f}")
    for r in rows:
        label = f"pipeline examples/s ({r['workers']} workers)"
        print(f"{label:<34}{r['examples_per_s']:>16,.0f}")
    print(json.dumps({
        "corpus_mb": round(text_mb, 1), "documents": manifest["input"]["documents"],
        "tokens": tokens, "prepare_workers": workers, "prepare_seconds": round(prepare_s, 1),
        "prepare_tokens_per_s": round(tokens / prepare_s), "train_blocks": splits["train"][
            "examples"], "pipeline": [{k: r[k] for k in ("workers", "local_batch", "length",
                                                          "examples_per_s", "tokens_per_s")}
                                      for r in rows]}))


if __name__ == "__main__":
    app.run(main)
