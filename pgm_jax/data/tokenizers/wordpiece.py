"""BERT WordPiece tokenizer from a local `vocab.txt` (pure Python, with a word cache).

Follows BERT's two stages: the basic tokenizer (clean control characters, space out CJK
ideographs, lower-case and strip accents for uncased vocabularies, split on whitespace and
punctuation), then greedy longest-match-first WordPiece with `##` continuation pieces and
`[UNK]` for words it cannot spell or that are longer than 100 characters.

Kept by hand rather than Hugging Face `tokenizers` (issue 12, measured on 50,000 generated
sentences on a shared 2-core CPU): `tokenizers` 0.23.3 was 3.7-4.8x slower here (7,000 vs
26,000-34,000 sentences/s; the word cache makes most words one dict lookup), and its BERT
normaliser differs from BERT's Python `BertTokenizer`, which the reference uses (spec §4.1):
no final-sigma lower-casing, U+2028 / U+2029 as whitespace, U+2B820-2B91F not spaced out as
CJK, and older Unicode tables (~49,000 code points classified differently).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable

from pgm_jax.data.errors import DataError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_MAX_WORD_CHARS = 100
_CACHE_WORDS = 1 << 18  # distinct words remembered; LM1B has ~800k, the frequent ones hit
# CJK Unified Ideographs blocks that BERT spaces out (Hangul, Hiragana, Katakana excluded).
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# Hugging Face's decode clean-up (on for BERT): re-attach punctuation and contractions.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _is_punctuation(ch: str) -> bool:
    """BERT counts all non-alphanumeric ASCII and every Unicode P* character as punctuation."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK)


class _CharTable(dict):
    """A `str.translate` table filled on first sight of each character (translate looks
    characters up one by one; the cache makes each Unicode category lookup happen once)."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def __missing__(self, cp: int) -> str | None:
        self[cp] = value = self.rule(chr(cp))
        return value


def _clean(ch: str) -> str | None:
    """Drop NUL, U+FFFD and control characters, whitespace -> ' ', CJK ideographs spaced out."""
    cat = unicodedata.category(ch)
    if ch in "\t\n\r" or cat == "Zs":
        return " "
    if ch in "\x00\ufffd" or cat.startswith("C"):
        return None
    return f" {ch} " if _is_cjk(ord(ch)) else ch


_CLEAN = _CharTable(_clean)
_STRIP_ACCENTS = _CharTable(lambda ch: None if unicodedata.category(ch) == "Mn" else ch)
_SPLIT_PUNCTUATION = _CharTable(lambda ch: f" {ch} " if _is_punctuation(ch) else ch)


class WordPieceTokenizer:
    """WordPiece over `vocab` (one piece per line, id = line number), BERT special ids.

    bos = [CLS], eos = [SEP], pad = [PAD], mask = [MASK]; the MASK id is in the vocabulary,
    so vocab_size = len(vocab) (30,522 / mask 103 / bos 101 / eos 102 / pad 0 for
    bert-base-uncased, spec §4.1).
    """

    kind = "wordpiece"

    def __init__(self, vocab: list[str], lowercase: bool = True):
        self.pieces = vocab
        self.ids = {piece: i for i, piece in enumerate(vocab)}
        missing = [s for s in SPECIALS if s not in self.ids]
        if missing:
            raise DataError(
                f"WordPiece vocabulary lacks {', '.join(missing)}: need a BERT vocab.txt")
        self.lowercase = lowercase
        self.vocab_size = len(vocab)
        self.pad_id, self.unk_id = self.ids["[PAD]"], self.ids["[UNK]"]
        self.bos_id, self.eos_id = self.ids["[CLS]"], self.ids["[SEP]"]
        self.mask_id = self.ids["[MASK]"]
        self._specials = frozenset(self.ids[s] for s in SPECIALS)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: str, lowercase: bool = True) -> WordPieceTokenizer:
        """From a BERT `vocab.txt` (or a directory holding one)."""
        if os.path.isdir(path):
            path = os.path.join(path, "vocab.txt")
        try:
            with open(path, encoding="utf-8") as f:
                vocab = [line.rstrip("\n") for line in f]
        except OSError as e:
            raise DataError(f"cannot read WordPiece vocabulary {path}: {e.strerror}") from None
        return cls(vocab, lowercase)

    def save(self, directory: str) -> dict:
        """Writes vocab.txt to `directory`; returns the manifest entry."""
        with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("".join(p + "\n" for p in self.pieces))
        return {"kind": self.kind, "lowercase": self.lowercase}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}  # workers start with an empty cache

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids, without [CLS]/[SEP]."""
        ids: list[int] = []
        for word in self._basic_tokens(text):
            cached = self._cache.get(word)
            if cached is None:
                cached = self._word_pieces(word)
                if len(self._cache) < _CACHE_WORDS:
                    self._cache[word] = cached
            ids.extend(cached)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text: pieces joined by spaces, `##` pieces glued on, special ids dropped."""
        pieces = [self.pieces[i] for i in map(int, ids)
                  if 0 <= i < self.vocab_size and i not in self._specials]
        text = " ".join(pieces).replace(" ##", "")
        for old, new in _CLEANUP:
            text = text.replace(old, new)
        return text

    def _basic_tokens(self, text: str) -> list[str]:
        """BERT's basic tokenizer, as three character-table passes over the whole text."""
        text = text.translate(_CLEAN)
        if self.lowercase:
            text = unicodedata.normalize("NFD", text.lower()).translate(_STRIP_ACCENTS)
        return [w for w in text.translate(_SPLIT_PUNCTUATION).split(" ") if w]

    def _word_pieces(self, word: str) -> list[int]:
        if len(word) > _MAX_WORD_CHARS:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    ids.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return ids
