"""The MDLM/PGM "wrap" layout: documents concatenated and cut into fixed-length blocks."""

from collections.abc import Sequence

import numpy as np


def wrap_into_blocks(
    token_lists: Sequence[Sequence[int]], length: int, bos_id: int, eos_id: int
) -> np.ndarray:
    """Wraps tokenized documents into blocks of `length` tokens.

    Each document's tokens are followed by EOS and all documents are concatenated into one
    stream, which is cut into chunks of `length - 2` tokens; each chunk becomes
    `[BOS] + chunk + [EOS]`. The final incomplete chunk is dropped.

    Returns:
      int32[n_blocks, length], n_blocks = sum(len(doc) + 1) // (length - 2).
    """
    if length < 3:
        raise ValueError(f"block length must be >= 3 (BOS + tokens + EOS), got {length}")
    stream = np.empty(sum(len(tokens) + 1 for tokens in token_lists), np.int32)
    start = 0
    for tokens in token_lists:
        stream[start:start + len(tokens)] = tokens
        stream[start + len(tokens)] = eos_id
        start += len(tokens) + 1
    body = length - 2
    n_blocks = len(stream) // body
    chunks = stream[:n_blocks * body].reshape(n_blocks, body)
    bos = np.full((n_blocks, 1), bos_id, np.int32)
    eos = np.full((n_blocks, 1), eos_id, np.int32)
    return np.concatenate([bos, chunks, eos], axis=1)
