"""Generative perplexity and entropy of samples, as the reference computes them (spec §6.2).

`gen_ppl_first_chunk_retok` (the number papers report): samples are decoded to text with their
special tokens written out, re-tokenized by the judge (truncated to the model length, right
padded with EOS to the longest), and scored on targets x[1:] that are not EOS, except the first
EOS of a row; the last prediction of every row is dropped; PPL = exp(sum NLL / count) over all
samples. `gen_ppl_all_no_retok` feeds the raw ids (only meaningful when the judge shares the
sampler's vocabulary) and counts every target but the last. Entropy is the Shannon entropy
(nats) of each sample's token-id histogram, averaged over samples.

The reference scores whole judge batches only (`num_batches = M // batch_size` drops the rest);
here the last batch is padded and masked, so every sample counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

ENDOFTEXT = "<|endoftext|>"
TokenNll = Callable[[np.ndarray], np.ndarray]  # int32 [B, T] -> float32 [B, T-1]


def texts_with_specials(samples: np.ndarray, decode: Callable[[Sequence[int]], str],
                        special_ids: Sequence[int], special_text: str = ENDOFTEXT) -> list[str]:
    """Each row decoded with its BOS/EOS ids written as `special_text`, like the reference's
    `batch_decode` of GPT-2 ids (where BOS = EOS = <|endoftext|>); the pieces between special
    ids are decoded by `decode` (which drops special ids)."""
    special = set(map(int, special_ids))
    texts = []
    for row in np.asarray(samples).tolist():
        parts, piece = [], []
        for token in row:
            if token in special:
                parts.append(decode(piece) + special_text)
                piece = []
            else:
                piece.append(token)
        parts.append(decode(piece))
        texts.append("".join(parts))
    return texts


def encode_with_specials(encode: Callable[[str], list[int]], eos_id: int
                         ) -> Callable[[str], list[int]]:
    """`encode` that turns each literal <|endoftext|> into `eos_id` (GPT-2's behaviour, given
    to every judge tokenizer)."""

    def encode_text(text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(ENDOFTEXT)):
            ids.extend(([eos_id] if i else []) + (encode(part) if part else []))
        return ids

    return encode_text


def retokenize(texts: Sequence[str], encode: Callable[[str], list[int]], eos_id: int,
               max_length: int) -> np.ndarray:
    """int32 [M, T]: each text encoded, truncated to max_length, right-padded with EOS to the
    longest row (T <= max_length)."""
    rows = [encode(t)[:max_length] for t in texts]
    out = np.full((len(rows), max(1, max(map(len, rows)))), eos_id, np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def first_chunk_weights(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """float32 [M, T-1] weights of the targets tokens[:, 1:]: non-EOS tokens and the row's
    first EOS count, and the last target of every row is dropped."""
    is_eos = tokens == eos_id
    valid = ~is_eos | (np.cumsum(is_eos, axis=1) == 1)
    return _drop_last(valid[:, 1:])


def all_weights(tokens: np.ndarray) -> np.ndarray:
    """float32 [M, T-1]: every target but the last of each row."""
    return _drop_last(np.ones((tokens.shape[0], tokens.shape[1] - 1), bool))


def _drop_last(valid: np.ndarray) -> np.ndarray:
    weights = valid.astype(np.float32)
    weights[:, -1:] = 0.0
    return weights


def perplexity(token_nll: TokenNll, tokens: np.ndarray, weights: np.ndarray, batch_size: int,
               pad_id: int) -> float:
    """exp(sum(nll * weights) / sum(weights)) over all rows, scored `batch_size` at a time (the
    last batch padded with `pad_id` rows of weight 0)."""
    total, count = 0.0, float(weights.sum())
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size]
        w = weights[start:start + batch_size]
        if len(batch) < batch_size:  # one compiled shape for every batch
            fill = batch_size - len(batch)
            batch = np.concatenate([batch, np.full((fill, batch.shape[1]), pad_id, np.int32)])
            w = np.concatenate([w, np.zeros((fill, w.shape[1]), np.float32)])
        total += float(np.sum(np.asarray(token_nll(batch), np.float64) * w))
    return math.exp(total / max(count, 1.0))


def entropy(samples: np.ndarray) -> float:
    """Mean over rows of the entropy (nats) of the row's token-id histogram."""
    values = []
    for row in np.asarray(samples):
        p = np.unique(row, return_counts=True)[1] / len(row)
        values.append(float(-np.sum(p * np.log(p))))
    return float(np.mean(values))
