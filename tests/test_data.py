"""Tests of pgm_jax.data: sources, split, tokenizer, wrap layout and grain pipelines."""

import json
import math
import os
import shutil

import ml_collections
import numpy as np
import pytest

from pgm_jax.data import (
    DataError,
    SentencePieceTokenizer,
    eval_batches,
    load_documents,
    load_or_train_tokenizer,
    load_text_data,
    num_eval_batches,
    split_documents,
    train_iterator,
    wrap_into_blocks,
)

VOCAB = 512


@pytest.fixture(scope="module")
def pydoc_docs() -> list[str]:
    return load_documents("pydoc")


@pytest.fixture(scope="module")
def tokenizer_path(pydoc_docs, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
    train_docs, _ = split_documents(pydoc_docs, 0.05)
    load_or_train_tokenizer(train_docs, VOCAB, path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_file(tokenizer_path)


def _data_cfg(**overrides) -> ml_collections.ConfigDict:
    cfg = dict(source="pydoc", files="", vocab_size=VOCAB, val_fraction=0.05, worker_count=0)
    return ml_collections.ConfigDict({**cfg, **overrides})


# Wrap layout.


def test_wrap_layout():
    docs = [[10, 11, 12], [13], [], [14, 15, 16, 17, 18], [19, 20]]
    blocks = wrap_into_blocks(docs, length=6, bos_id=2, eos_id=3)
    stream = [t for doc in docs for t in [*doc, 3]]  # 16 tokens -> 4 chunks of 4, none left
    assert blocks.dtype == np.int32 and blocks.shape == (len(stream) // 4, 6)
    np.testing.assert_array_equal(blocks[:, 0], 2)
    np.testing.assert_array_equal(blocks[:, -1], 3)
    np.testing.assert_array_equal(blocks[:, 1:-1].ravel(), stream[: blocks.shape[0] * 4])


def test_wrap_drops_remainder():
    blocks = wrap_into_blocks([list(range(20, 30))], length=5, bos_id=2, eos_id=3)
    assert blocks.shape == (3, 5)  # 11 stream tokens -> 3 chunks of 3, 2 tokens dropped
    np.testing.assert_array_equal(blocks[:, 1:-1].ravel(), range(20, 29))
    assert wrap_into_blocks([], length=5, bos_id=2, eos_id=3).shape == (0, 5)


# Sources and split.


def test_pydoc_source_is_deterministic(pydoc_docs):
    assert len(pydoc_docs) > 50 and sum(map(len, pydoc_docs)) > 300_000
    assert load_documents("pydoc") == pydoc_docs


def test_validation_split_fixed_and_disjoint(pydoc_docs):
    train, val = split_documents(pydoc_docs, 0.05)
    assert len(val) == math.ceil(0.05 * len(pydoc_docs))
    assert train + val == pydoc_docs  # the last documents, in order
    assert split_documents(pydoc_docs, 0.05) == (train, val)
    assert not set(train) & set(val)
    assert len(split_documents(pydoc_docs, 1e-6)[1]) == 1  # at least one validation doc


def test_files_source(tmp_path):
    (tmp_path / "a.txt").write_text("first document\nsecond line\n")
    (tmp_path / "b.txt").write_text("another document")
    lines = [{"text": "json one"}, {"text": "json two", "id": 7}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    docs = load_documents("files", f"{tmp_path}/*.txt, {tmp_path / 'c.jsonl'}")
    assert docs == ["first document\nsecond line\n", "another document", "json one", "json two"]


@pytest.mark.parametrize("name, content", [
    ("missing.txt", None),
    ("*.nothing", None),
    ("empty.txt", ""),
    ("blank.jsonl", '{"text": "  "}\n'),
    ("bad.jsonl", '{"txt": "no text field"}\n'),
    ("broken.jsonl", "{not json\n"),
])
def test_files_source_errors(tmp_path, name, content):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as e:
        load_documents("files", str(tmp_path / name))
    assert name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="data.files"):
        load_documents("files", "")


@pytest.mark.parametrize("source, command", [
    ("owt", "python -m pgm_jax.data.prepare owt --input="),
    ("text", "python -m pgm_jax.data.prepare text --input="),
    ("lm1b", "python -m pgm_jax.data.prepare lm1b --input="),
])
def test_missing_data_names_the_command_to_run(source, command, tmp_path):
    for path in ("", str(tmp_path)):
        cfg = _data_cfg(source=source, path=path, tokenizer_path="")
        if source == "lm1b":
            (tmp_path / "vocab.txt").write_text("\n".join(
                ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
        with pytest.raises(DataError) as e:
            load_text_data(cfg, 64, str(tmp_path / "run"))
        assert command in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="unknown"):
        load_text_data(_data_cfg(source="nope"), 64, str(tmp_path))


# Tokenizer.


def test_tokenizer_ids(tokenizer):
    assert tokenizer.vocab_size == VOCAB + 1 and tokenizer.mask_id == VOCAB
    assert len({tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id}) == 4


def test_tokenizer_round_trip(tokenizer, pydoc_docs):
    text = "def f(x):\n    return x  # é 日本\t\n"
    for doc in [*pydoc_docs[:10], text]:
        ids = tokenizer.encode(doc)
        assert all(0 <= i < tokenizer.mask_id for i in ids)
        assert tokenizer.decode(ids) == doc


def test_tokenizer_reused_from_file(tokenizer, tokenizer_path):
    mtime = os.stat(tokenizer_path).st_mtime_ns
    reloaded = load_or_train_tokenizer(["other text"], VOCAB, tokenizer_path)
    assert os.stat(tokenizer_path).st_mtime_ns == mtime
    text = "Assert statements are a convenient way to insert debugging assertions"
    assert reloaded.encode(text) == tokenizer.encode(text)
    with pytest.raises(DataError, match="vocab_size"):
        load_or_train_tokenizer(["other text"], VOCAB * 2, tokenizer_path)


def test_decode_drops_special_ids(tokenizer):
    ids = tokenizer.encode("print('hello')")
    noisy = [tokenizer.bos_id, tokenizer.mask_id, *ids, tokenizer.mask_id, tokenizer.eos_id,
             tokenizer.pad_id]
    assert tokenizer.decode(noisy) == tokenizer.decode(np.array(ids)) == "print('hello')"
    assert tokenizer.decode([tokenizer.mask_id] * 3) == ""


# Train iterator.


def _blocks(n: int, length: int = 8) -> np.ndarray:
    """int32[n, length] whose row i is filled with i."""
    return np.repeat(np.arange(n, dtype=np.int32)[:, None], length, axis=1)


def test_train_iterator_shapes_and_epochs():
    it = train_iterator(_blocks(12), global_batch_size=4, seed=0)
    batches = [next(it) for _ in range(6)]  # two epochs of 3 batches
    for batch in batches:
        assert batch["tokens"].shape == batch["valid"].shape == (4, 8)
        assert batch["tokens"].dtype == batch["valid"].dtype == np.int32
        assert (batch["valid"] == 1).all()
    rows = [np.concatenate([b["tokens"][:, 0] for b in batches[e:e + 3]]) for e in (0, 3)]
    assert sorted(rows[0]) == sorted(rows[1]) == list(range(12))  # each epoch sees every block
    assert list(rows[0]) != list(rows[1])  # reshuffled
    other = train_iterator(_blocks(12), global_batch_size=4, seed=1)
    assert any((next(other)["tokens"] != b["tokens"]).any() for b in batches[:3])


def test_train_iterator_processes_partition_global_batch():
    blocks = _blocks(40)  # 5 batches per epoch: a batch never holds a block twice
    single = train_iterator(blocks, global_batch_size=8, seed=3)
    procs = [train_iterator(blocks, 8, seed=3, process_index=p, process_count=4) for p in range(4)]
    for _ in range(10):  # two epochs
        local = [next(it) for it in procs]
        assert all(b["tokens"].shape == (2, 8) for b in local)
        np.testing.assert_array_equal(
            np.concatenate([b["tokens"] for b in local]), next(single)["tokens"])
        rows = [set(b["tokens"][:, 0]) for b in local]
        assert sum(map(len, rows)) == len(set().union(*rows)) == 8  # disjoint
    states = [it.get_state() for it in procs]
    assert all(state == states[0] for state in states)  # any process's state resumes any other


def test_train_iterator_state_round_trip():
    it = train_iterator(_blocks(10), global_batch_size=4, seed=5)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it)["tokens"] for _ in range(4)]
    restored = train_iterator(_blocks(10), global_batch_size=4, seed=5)
    restored.set_state(state)
    for tokens in expected:
        np.testing.assert_array_equal(next(restored)["tokens"], tokens)


def test_train_state_resumes_on_other_worker_and_process_counts():
    it = train_iterator(_blocks(10), global_batch_size=4, seed=5)
    for _ in range(4):
        next(it)
    state = it.get_state()
    expected = [next(it)["tokens"] for _ in range(3)]
    with_worker = train_iterator(_blocks(10), global_batch_size=4, seed=5, worker_count=1)
    with_worker.set_state(state)
    halves = [train_iterator(_blocks(10), 4, seed=5, process_index=p, process_count=2)
              for p in range(2)]
    for half in halves:
        half.set_state(state)
    for tokens in expected:
        np.testing.assert_array_equal(next(with_worker)["tokens"], tokens)
        np.testing.assert_array_equal(np.concatenate([next(h)["tokens"] for h in halves]), tokens)


# Eval batches.


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_block_once(process_count):
    blocks, batch_size = _blocks(10), 4
    n = num_eval_batches(len(blocks), batch_size)
    assert n == 3
    per_process = [list(eval_batches(blocks, batch_size, p, process_count))
                   for p in range(process_count)]
    assert all(len(batches) == n for batches in per_process)
    local = batch_size // process_count
    seen = []
    for i in range(n):
        for batches in per_process:
            batch = batches[i]
            assert batch["tokens"].shape == batch["valid"].shape == (local, 8)
            assert batch["weight"].shape == (local,) and batch["weight"].dtype == np.float32
            np.testing.assert_array_equal(batch["valid"], batch["weight"][:, None] * np.ones(8))
            seen.extend(batch["tokens"][batch["weight"] == 1, 0])
    assert seen == list(range(10))  # every block once, in order; 2 padding rows weigh 0


# End to end.


def test_load_text_data_pydoc(tmp_path, tokenizer_path, tokenizer):
    shutil.copy(tokenizer_path, tmp_path / "tokenizer.model")  # reuse the module's tokenizer
    data = load_text_data(_data_cfg(), length=64, workdir=str(tmp_path))
    assert data.tokenizer.encode("for x in y") == tokenizer.encode("for x in y")
    first = data.train[0]
    assert first["tokens"].dtype == data.val[0]["tokens"].dtype == np.int32
    assert first["tokens"].shape == data.val[0]["tokens"].shape == (64,)
    assert len(data.train) > 1000 and len(data.val) > 0
    assert (first["tokens"][0] == tokenizer.bos_id) and (first["valid"] == 1).all()


def test_load_text_data_tiny_validation_split_raises(tmp_path):
    for i in range(20):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document number {i} " * 40)
    cfg = _data_cfg(source="files", files=str(tmp_path / "*.txt"), vocab_size=300)
    with pytest.raises(DataError, match="validation split.*model.length"):
        load_text_data(cfg, length=1024, workdir=str(tmp_path / "run"))
    data = load_text_data(cfg, length=32, workdir=str(tmp_path / "run"))
    assert os.path.exists(tmp_path / "run" / "tokenizer.model")
    assert data.tokenizer.vocab_size == 301 and len(data.val) > 0


# The data item of checkpoints.


def test_checkpoint_data_item_resumes_the_iterator(tmp_path):
    from pgm_jax import checkpoint

    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    it = train_iterator(_blocks(10), global_batch_size=4, seed=5)
    for _ in range(3):
        next(it)
    weights = {"w": np.ones(2, np.float32)}
    ckpt.save(3, params=weights, ema=weights, data=it.get_state())
    ckpt.wait()
    assert (tmp_path / "3" / "data" / "process_0-of-1.json").is_file()  # grain's file layout
    restored = train_iterator(_blocks(10), global_batch_size=4, seed=5)
    restored.set_state(ckpt.restore(3, {"data": None})["data"])
    for _ in range(4):
        np.testing.assert_array_equal(next(restored)["tokens"], next(it)["tokens"])
    ckpt.close()


def test_data_state_restores_on_another_process_count(tmp_path):
    from etils import epath

    from pgm_jax.checkpoint import DataStateHandler

    for p in range(4):  # saved by 4 processes at the same global position
        (tmp_path / f"process_{p}-of-4.json").write_text(json.dumps({"next_index": 3}))
    assert DataStateHandler().restore(epath.Path(tmp_path)) == {"next_index": 3}
    (tmp_path / "process_2-of-4.json").write_text(json.dumps({"next_index": 5}))  # packed data
    with pytest.raises(ValueError, match="resume with 4 processes"):
        DataStateHandler().restore(epath.Path(tmp_path))
