"""LM1B through `tfds.data_source`, driven by `tfds.testing.mock_data`: padding, packing,
wrapping, exact evaluation and iterator state."""

import json
import string

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pgm_jax.data import DataError, load_text_data
from pgm_jax.data.lm1b import build_tfds_lm1b, detokenize
from pgm_jax.data.tokenizers.wordpiece import WordPieceTokenizer

LENGTH = 16
N = 40  # mock examples per split


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    """A BERT-style vocab that spells any lower-case words (mock text: letters a-j, spaces)."""
    letters = string.ascii_lowercase
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters),
              "ab", "##cd", ".", ",", "'", "?"]
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(pieces) + "\n")
    return str(path)


def _load(vocab_path: str, tmp_path, length: int = LENGTH, **overrides):
    cfg = ml_collections.ConfigDict({"source": "lm1b", "path": str(tmp_path), "pack": False,
                                     "wrap": False, "tokenizer_path": vocab_path, **overrides})
    return load_text_data(cfg, length, str(tmp_path / "run"))


@pytest.fixture
def mock_lm1b():
    with tfds.testing.mock_data(num_examples=N):
        yield


def test_detokenize_follows_the_reference_rules():
    text = ('He said " it \'s fine , isn \'t it ? " ( see http : / / x.org / a ) for $ 5 .')
    assert detokenize(text) == 'He said "it\'s fine, isn\'t it?" (see http://x.org/a) for $5.'
    assert detokenize("a b ! c d !") == "a b! c d!"


def test_padded_rows_are_cls_sentence_sep_pad(mock_lm1b, vocab_path, tmp_path):
    data = _load(vocab_path, tmp_path)
    tok = data.tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (63, 2, 3, 0)
    source = tfds.data_source("lm1b", split="train", data_dir=str(tmp_path))
    truncated = 0
    for i in range(N):
        text = source[i]["text"]
        ids = tok.encode(detokenize(text.decode() if isinstance(text, bytes) else text))
        n = min(len(ids), LENGTH - 2)
        truncated += len(ids) > n
        row = data.train[i]
        expected = [tok.bos_id, *ids[:n], tok.eos_id] + [tok.pad_id] * (LENGTH - n - 2)
        np.testing.assert_array_equal(row["tokens"], expected)
        np.testing.assert_array_equal(row["valid"], np.arange(LENGTH) < n + 2)
    assert truncated > 0  # some sentences are longer than L - 2 tokens
    batch = next(data.train_iterator(8, seed=0))
    assert set(batch) == {"tokens", "valid"}
    assert batch["tokens"].shape == batch["valid"].shape == (8, LENGTH)
    assert batch["tokens"].dtype == batch["valid"].dtype == np.int32


def test_eval_visits_every_test_sentence_once(mock_lm1b, vocab_path, tmp_path):
    data = _load(vocab_path, tmp_path)
    batch_size = 12  # 40 sentences -> 4 batches, 8 padding rows
    assert data.num_eval_batches(batch_size) == 4
    halves = [list(data.eval_batches(batch_size, p, 2)) for p in range(2)]
    rows, weights = [], []
    for i in range(4):
        for p in range(2):
            b = halves[p][i]
            assert b["tokens"].shape == (6, LENGTH) and b["weight"].dtype == np.float32
            rows.extend(b["tokens"][b["weight"] == 1].tolist())
            weights.extend(b["weight"])
            assert (b["valid"][b["weight"] == 0] == 0).all()
    assert sum(weights) == N
    assert rows == [data.val[i]["tokens"].tolist() for i in range(N)]  # in order, once


def test_packing_invariants(mock_lm1b, vocab_path, tmp_path):
    data = _load(vocab_path, tmp_path, length=64, pack=True)  # room for several sentences
    tok = data.tokenizer
    it = data.train_iterator(8, seed=2)
    sequences = 0
    for _ in range(4):
        batch = next(it)
        assert set(batch) == {"tokens", "valid", "segment_ids"}
        for tokens, valid, seg in zip(batch["tokens"], batch["valid"], batch["segment_ids"],
                                      strict=True):
            np.testing.assert_array_equal(valid, seg > 0)
            assert (tokens[seg == 0] == tok.pad_id).all()
            used = seg[seg > 0]
            assert (seg[:len(used)] == used).all()  # real tokens first, padding after
            assert used[0] == 1 and set(np.diff(used)) <= {0, 1}  # segments 1, 2, ... in order
            for s in range(1, used[-1] + 1):
                segment = tokens[seg == s]
                assert segment[0] == tok.bos_id and segment[-1] == tok.eos_id
                assert tok.bos_id not in segment[1:-1] and tok.eos_id not in segment[1:-1]
            sequences += used[-1]
    assert sequences > 4 * 8  # rows hold several sentences
    # evaluation stays padded, one sentence per row
    assert set(next(data.eval_batches(8))) == {"tokens", "valid", "weight"}


def test_wrap_option(mock_lm1b, vocab_path, tmp_path):
    data = _load(vocab_path, tmp_path, wrap=True)
    tok = data.tokenizer
    batch = next(data.train_iterator(4, seed=0))
    assert (batch["valid"] == 1).all()
    assert (batch["tokens"][:, 0] == tok.bos_id).all()
    assert (batch["tokens"][:, -1] == tok.eos_id).all()
    blocks = [data.val[i]["tokens"] for i in range(len(data.val))]
    stream = np.concatenate([b[1:-1] for b in blocks])
    docs = [tok.encode(detokenize(tfds.data_source("lm1b", split="test", data_dir=str(tmp_path))
                                  [i]["text"])) for i in range(N)]
    flat = [t for d in docs for t in [*d, tok.eos_id]]
    np.testing.assert_array_equal(stream, flat[:len(stream)])  # the test split, in order
    assert len(flat) - len(stream) < LENGTH - 2


@pytest.mark.parametrize("pack", [False, True])
def test_iterator_state_resumes_exactly(mock_lm1b, vocab_path, tmp_path, pack):
    data = _load(vocab_path, tmp_path, pack=pack)
    it = data.train_iterator(4, seed=3)
    for _ in range(5):  # past the first epoch of 40 sentences when padded
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(8)]
    restored = data.train_iterator(4, seed=3)
    restored.set_state(state)
    for batch in expected:
        got = next(restored)
        for key in batch:
            np.testing.assert_array_equal(got[key], batch[key])


def test_lm1b_wordpiece_is_uncased(vocab_path):
    tok = WordPieceTokenizer.from_file(vocab_path)
    assert tok.encode("ABCD") == tok.encode("abcd") == [tok.ids["ab"], tok.ids["##cd"]]


def test_prepare_lm1b_builds_a_tfds_dir_without_tensorflow(vocab_path, tmp_path):
    """The statmt.org layout -> TFDS lm1b in ArrayRecord, read back as real (bytes) records."""
    root = tmp_path / "src" / "1-billion-word-language-modeling-benchmark-r13output"
    train_dir = root / "training-monolingual.tokenized.shuffled"
    test_dir = root / "heldout-monolingual.tokenized.shuffled"
    train_dir.mkdir(parents=True)
    test_dir.mkdir()
    (train_dir / "news.en-00001-of-00100").write_text("a cat sat .\nit 's big , no ?\n")
    (train_dir / "news.en-00002-of-00100").write_text("dogs bark .\n")
    (test_dir / "news.en.heldout-00000-of-00050").write_text("held out .\n")
    build_tfds_lm1b(str(tmp_path / "src"), str(tmp_path / "tfds"), vocab_path)
    data = load_text_data(ml_collections.ConfigDict(
        {"source": "lm1b", "path": str(tmp_path / "tfds"), "pack": False, "wrap": False,
         "tokenizer_path": ""}), 32, str(tmp_path / "run"))  # vocab.txt found in data.path
    tok = data.tokenizer
    texts = sorted(tok.decode(data.train[i]["tokens"]) for i in range(len(data.train)))
    assert texts == ["a cat sat.", "dogs bark.", "it's big, no?"]  # detokenized, in some order
    assert [tok.decode(data.val[0]["tokens"])] == ["held out."]
    with pytest.raises(DataError, match="holds no LM1B files"):
        build_tfds_lm1b(str(tmp_path / "run"), str(tmp_path / "x"))
