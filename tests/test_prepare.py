"""Tests of offline prepare_text (`pgm_jax.data.prepare`) and of training data read from it."""

import json
import os
import random
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import text as text_config
from pgm_jax.data import DataError, load_text_data, load_tokenizer, prepare_text
from pgm_jax.data.benchmark import run_benchmark
from pgm_jax.data.corpus import find_files, read_documents
from pgm_jax.data.prepared_store import open_prepared
from pgm_jax.data.tokenizers.gpt2 import GPT2Tokenizer

LENGTH = 64
GROUP = 40  # documents wrapped together (1,000 in real runs; small here to cross groups)


def _write_corpus(root, n_docs: int, seed: int = 0) -> list[str]:
    """Documents of random words, some longer than a block, as .jsonl + .txt + .parquet files;
    returns them in corpus order (sorted file names)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghij klmnopqrstuvwxyz,.") for _ in range(rng.randint(1, 8)))
             for _ in range(300)]
    docs = [" ".join(rng.choice(words) for _ in range(rng.choice([1, 5, 20, 150])))
            for _ in range(n_docs)]
    docs[3] = "   "  # a blank document: counted, not tokenized
    os.makedirs(root, exist_ok=True)
    a, b = n_docs // 2, n_docs // 2 + 3
    with open(os.path.join(root, "a.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": d, "id": i}) + "\n\n" for i, d in enumerate(docs[:a]))
    for i, doc in enumerate(docs[a:b]):
        with open(os.path.join(root, f"b{i}.txt"), "w") as f:
            f.write(doc)
    pq.write_table(pa.table({"text": docs[b:]}), os.path.join(root, "c.parquet"),
                   row_group_size=7)
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return str(root), _write_corpus(root, 230)


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer.from_path()


def _options(input_dir, output, **overrides) -> prepare_text.Options:
    fields = dict(command="owt", input=input_dir, output=str(output), tokenizer="gpt2",
                  length=LENGTH, val_docs=50, workers=1)
    return prepare_text.Options(**{**fields, **overrides})


@pytest.fixture(scope="module")
def owt(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("owt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepare_text, "WRAP_GROUP", GROUP)
        manifest = prepare_text.prepare(_options(corpus[0], output))
    return str(output), manifest


def _records(path: str, split: str) -> list[np.ndarray]:
    records = open_prepared(path, "prepare").splits[split]
    return [records[i] for i in range(len(records))]


def test_corpus_reader_formats(corpus):
    root, docs = corpus
    files = find_files(root)
    assert [os.path.basename(f) for f in files] == ["a.jsonl", "b0.txt", "b1.txt", "b2.txt",
                                                     "c.parquet"]
    assert [d for f in files for d in read_documents(f)] == docs
    assert read_documents(files[-1], 5, 16) == docs[123:134]  # across parquet row groups


def test_wrapped_blocks_retokenize_the_corpus(owt, corpus, gpt2):
    """Blocks minus BOS/EOS, concatenated per group of documents, split at EOS, are the
    tokenized documents in order; the manifest counts agree."""
    path, manifest = owt
    docs = corpus[1]
    assert manifest["tokenizer"]["kind"] == "gpt2" and manifest["dtype"] == "uint16"
    n_val = 50
    for split, split_docs in (("train", docs[:-n_val]), ("validation", docs[-n_val:])):
        blocks = _records(path, split)
        info = manifest["splits"][split]
        assert info["documents"] == len(split_docs) and info["examples"] == len(blocks)
        assert info["empty_documents"] == sum(not d.strip() for d in split_docs)
        tokens = [gpt2.encode(d) for d in split_docs if d.strip()]
        assert info["tokens"] == sum(map(len, tokens))
        assert all(len(b) == LENGTH and b[0] == b[-1] == gpt2.eos_id for b in blocks)
        stream = np.concatenate([b[1:-1] for b in blocks])
        examples, start = 0, 0
        for g in range(0, len(split_docs), GROUP):
            group = [d for d in split_docs[g:g + GROUP] if d.strip()]
            flat = [i for d in group for i in [*gpt2.encode(d), gpt2.eos_id]]
            kept = len(flat) // (LENGTH - 2) * (LENGTH - 2)
            part = stream[start:start + kept]
            np.testing.assert_array_equal(part, flat[:kept])
            # re-tokenising: each document whose EOS made it into a block decodes to its text
            pieces = np.split(part, np.flatnonzero(part == gpt2.eos_id) + 1)[:-1]
            assert [gpt2.decode(piece) for piece in pieces] == group[:len(pieces)]
            examples, start = examples + kept // (LENGTH - 2), start + kept
        assert examples == len(blocks) and start == len(stream)


def test_resume_rewrites_only_missing_shards(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_text, "WRAP_GROUP", GROUP)
    output = tmp_path / "resume"
    opts = _options(corpus[0], output, workers=4)  # plan: several shards; run in-process below
    first = prepare_text.prepare(prepare_text.Options(**{**opts.__dict__, "workers": 1}))
    shards = sorted(f for f in os.listdir(output) if f.endswith(".array_record"))
    assert len(shards) > 2
    mtimes = {f: os.stat(output / f).st_mtime_ns for f in shards}
    victim = shards[1]
    os.remove(output / victim)
    os.remove(output / (victim + ".json"))
    os.remove(output / "manifest.json")
    assert prepare_text.prepare(prepare_text.Options(**{**opts.__dict__, "workers": 1})) == first
    for f in shards:
        assert (os.stat(output / f).st_mtime_ns == mtimes[f]) == (f != victim)
    with pytest.raises(DataError, match="other options"):
        prepare_text.prepare(_options(corpus[0], output, length=LENGTH * 2))


def test_prepare_errors(corpus, tmp_path):
    with pytest.raises(DataError, match="leaves no training data"):
        prepare_text.prepare(_options(corpus[0], tmp_path / "a", val_docs=10**6))
    with pytest.raises(DataError, match="is not a directory"):
        prepare_text.prepare(_options(str(tmp_path / "missing"), tmp_path / "b"))
    assert not (tmp_path / "b").exists()  # bad input leaves the filesystem unchanged
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        prepare_text.prepare(_options(str(tmp_path / "empty"), tmp_path / "c"))
    with pytest.raises(DataError, match="--layout"):
        prepare_text.prepare(_options(corpus[0], tmp_path / "d", layout="stack"))


def _cfg(path: str, **overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"source": "owt", "path": path, "pack": False, **overrides})


def test_load_prepared_owt(owt, tmp_path):
    path, manifest = owt
    data = load_text_data(_cfg(path), LENGTH, str(tmp_path))
    assert data.tokenizer.vocab_size == 50258 and data.arrange is None
    assert load_tokenizer(_cfg(path), str(tmp_path)).encode("a b") == data.tokenizer.encode("a b")
    assert len(data.train) == manifest["splits"]["train"]["examples"]
    batch = next(data.train_iterator(8, seed=0))
    assert batch["tokens"].shape == batch["valid"].shape == (8, LENGTH)
    assert batch["tokens"].dtype == np.int32 and (batch["valid"] == 1).all()
    with pytest.raises(DataError, match=r"model.length=32.*--length=32"):
        load_text_data(_cfg(path), 32, str(tmp_path))
    with pytest.raises(DataError, match="data.pack"):
        load_text_data(_cfg(path, pack=True), LENGTH, str(tmp_path))
    shutil.copytree(path, tmp_path / "copy")
    os.remove(tmp_path / "copy" / manifest["splits"]["train"]["files"][0])
    with pytest.raises(DataError, match="is missing"):
        load_text_data(_cfg(str(tmp_path / "copy")), LENGTH, str(tmp_path))


def test_four_processes_split_prepared_data(owt, tmp_path):
    data = load_text_data(_cfg(owt[0]), LENGTH, str(tmp_path))
    n, batch = len(data.train), 8
    iters = [data.train_iterator(batch, seed=1, process_index=p, process_count=4)
             for p in range(4)]
    seen = []
    for _ in range(n // batch):  # one epoch
        local = [next(it)["tokens"] for it in iters]
        rows = [tuple(r) for b in local for r in b]
        assert len(set(rows)) == len(rows)  # the processes' rows are disjoint
        seen.extend(rows)
    # together they cover the epoch: every block exactly once, bar the dropped remainder
    blocks = {tuple(data.train[i]["tokens"]) for i in range(n)}
    assert set(seen) <= blocks and len(seen) == n // batch * batch == len(set(seen))


@pytest.fixture(scope="module")
def padded(corpus, tmp_path_factory):
    """The corpus with a sentencepiece model trained on it, one padded document per record."""
    output = tmp_path_factory.mktemp("padded")
    opts = _options(corpus[0], output, command="text", tokenizer="sentencepiece",
                    vocab_size=300, layout="pad", val_docs=0, val_fraction=0.2, length=32)
    return str(output), prepare_text.prepare(opts)


def test_padded_layout_and_packing(padded, tmp_path):
    path, manifest = padded
    assert manifest["tokenizer"]["kind"] == "sentencepiece" and manifest["layout"] == "pad"
    assert os.path.exists(os.path.join(path, "tokenizer", "tokenizer.model"))
    cfg = _cfg(path, source="text")
    data = load_text_data(cfg, 32, str(tmp_path))
    tok = data.tokenizer
    val = data.val[0]
    n = int(val["valid"].sum())
    assert val["tokens"][0] == tok.bos_id and val["tokens"][n - 1] == tok.eos_id
    assert (val["tokens"][n:] == tok.pad_id).all() and (val["valid"][:n] == 1).all()
    packed = load_text_data(_cfg(path, source="text", pack=True), 32, str(tmp_path))
    batch = next(packed.train_iterator(4, seed=0))
    assert set(batch) == {"tokens", "valid", "segment_ids"}
    for tokens, valid, seg in zip(batch["tokens"], batch["valid"], batch["segment_ids"],
                                  strict=True):
        np.testing.assert_array_equal(valid, seg > 0)
        assert (tokens[seg == 0] == tok.pad_id).all()
        ids = seg[seg > 0]
        assert ids[0] == 1 and (np.diff(ids) >= 0).all() and (np.diff(ids) <= 1).all()
        for s in np.unique(ids):
            segment = tokens[seg == s]
            assert segment[0] == tok.bos_id and segment[-1] == tok.eos_id


def test_data_only_benchmark(owt, tmp_path):
    config = text_config.get_config("cpu")
    config.data.path, config.model.length = owt[0], LENGTH
    config.data.worker_count, config.data.benchmark_batches = 0, 5
    result = run_benchmark(config, str(tmp_path))
    assert result["batches"] == 5 and result["local_batch"] == config.train.batch_size
    assert result["examples_per_s"] > 0 and result["tokens_per_s"] == pytest.approx(
        result["examples_per_s"] * LENGTH, rel=1e-3)


@pytest.mark.slow  # a subprocess spawning two tokenizer workers
def test_command_line_with_worker_processes(owt, corpus, tmp_path):
    """The CLI, tokenizing in 2 spawned workers: the same documents and tokens as in-process
    (WRAP_GROUP is 1,000 in the workers, so only the block count may differ)."""
    command = [sys.executable, "-m", "pgm_jax.data.prepare", "owt", f"--input={corpus[0]}",
               f"--output={tmp_path}", f"--length={LENGTH}", "--val_docs=50", "--workers=2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done:")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for split in ("train", "validation"):
        assert len(_records(str(tmp_path), split)) == manifest["splits"][split]["examples"] > 0
        for key in ("documents", "tokens", "empty_documents"):
            assert manifest["splits"][split][key] == owt[1]["splits"][split][key]


def test_wordpiece_padded_records(corpus, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij",
                                 *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]) + "\n")
    opts = _options(corpus[0], tmp_path / "out", command="text", tokenizer="wordpiece",
                    tokenizer_path=str(vocab), layout="pad", length=24, val_docs=0)
    manifest = prepare_text.prepare(opts)
    assert manifest["tokenizer"]["kind"] == "wordpiece" and manifest["dtype"] == "uint16"
    assert manifest["splits"]["validation"]["documents"] == 12  # ceil(0.05 * 230)
    records = _records(str(tmp_path / "out"), "train")
    assert len(records) == 230 - 12 - 1  # one per non-blank document
    assert max(map(len, records)) == 24 - 2  # truncated to L - 2, BOS / EOS added when read
