"""Text data: raw documents -> SentencePiece tokens -> wrapped blocks -> grain batches.

`load_text_data` is the trainer's entry point; `train_iterator` and `eval_batches` turn its
blocks into per-process batches.
"""

import dataclasses
import os

import ml_collections
import numpy as np
from absl import logging

from pgm_jax.data.blocks import wrap_into_blocks
from pgm_jax.data.errors import DataError
from pgm_jax.data.pipeline import eval_batches, num_eval_batches, train_iterator
from pgm_jax.data.sources import load_documents, split_documents
from pgm_jax.data.tokenizer import Tokenizer, load_or_train_tokenizer

__all__ = [
    "DataError",
    "TextData",
    "Tokenizer",
    "eval_batches",
    "load_documents",
    "load_or_train_tokenizer",
    "load_text_data",
    "num_eval_batches",
    "split_documents",
    "train_iterator",
    "wrap_into_blocks",
]


@dataclasses.dataclass(frozen=True)
class TextData:
    """A tokenized corpus, wrapped into blocks of the model's length L."""

    tokenizer: Tokenizer
    train_blocks: np.ndarray  # int32[N, L]
    val_blocks: np.ndarray  # int32[M, L]


def load_text_data(data_cfg: ml_collections.ConfigDict, length: int, workdir: str) -> TextData:
    """Loads `data_cfg.source`, splits it, tokenizes it and wraps it into blocks of `length`.

    The tokenizer is trained on the train documents with `data_cfg.vocab_size` pieces and kept
    at WORKDIR/tokenizer.model, which later runs (and restarts) reuse.

    Args:
      data_cfg: ConfigDict with `source` ('pydoc' | 'files' | 'lm1b' | 'owt'), `files`
        (comma-separated paths/globs for 'files'), `vocab_size`, `val_fraction`.
      length: L, tokens per block (BOS and EOS included).
      workdir: run directory.
    """
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
    return TextData(tokenizer, train_blocks, val_blocks)


def _wrap_split(
    name: str, docs: list[str], tokenizer: Tokenizer, length: int
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
