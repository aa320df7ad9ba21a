"""Conditioning for the text samplers: which positions are given, which are to be decoded.

A `Conditioning` holds, per sequence, the given tokens at their absolute positions (BOS at 0
is always given), the positions to decode, and nothing else: the samplers keep every given
token exactly and decode only the `decode` positions (PGM puts the given tokens in the
encoder's clean set, MDLM leaves them unmasked, AR starts from the prefix).

* prefix prompts: `[BOS] + prompt` at 0..P-1, decode P..P+max_new-1 (ragged across a batch);
* infilling: `[BOS] + prefix` at the front, a gap of `max_new_tokens` positions, then the
  suffix; or any set of given positions (`Conditioning` directly).

Positions neither given nor decoded are left out by PGM (an any-order model samples the
marginal of the decoded positions) and truncated from the output of MDLM and AR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


class PromptError(ValueError):
    """A prompt that does not fit the model (raised with a one-line message)."""


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """tokens: int32 [N, L] (given tokens at `given`, `fill` elsewhere); given, decode: bool
    [N, L], disjoint, position 0 given (BOS)."""

    tokens: np.ndarray
    given: np.ndarray
    decode: np.ndarray

    def __post_init__(self):
        if not (self.tokens.shape == self.given.shape == self.decode.shape):
            raise ValueError("tokens, given and decode must have one shape [N, L]")
        if not self.given[:, 0].all():
            raise ValueError("position 0 (BOS) must be given")
        if (self.given & self.decode).any():
            raise ValueError("a position cannot be both given and decoded")

    @property
    def num_given(self) -> np.ndarray:
        """int32 [N]."""
        return self.given.sum(1).astype(np.int32)

    @property
    def num_decode(self) -> np.ndarray:
        """int32 [N]: positions left to decode per sequence."""
        return self.decode.sum(1).astype(np.int32)

    def is_prefix(self) -> bool:
        """True when every row's given positions are 0..P-1 and decoded ones follow them."""
        used = self.given | self.decode
        ok_given = (np.cumprod(self.given, 1) == self.given).all()
        ok_used = (np.cumprod(used, 1) == used).all()
        return bool(ok_given and ok_used)

    def rows(self, index: slice | np.ndarray) -> Conditioning:
        return Conditioning(self.tokens[index], self.given[index], self.decode[index])


def unconditional(num_samples: int, length: int, bos_id: int, fill: int = 0) -> Conditioning:
    """BOS at 0, every other position decoded (what the samplers do without a prompt)."""
    tokens = np.full((num_samples, length), fill, np.int32)
    tokens[:, 0] = bos_id
    given = np.zeros((num_samples, length), bool)
    given[:, 0] = True
    return Conditioning(tokens, given, ~given)


def from_segments(rows: Sequence[Sequence[tuple[list[int] | None, int]]], length: int,
                  bos_id: int, fill: int = 0) -> Conditioning:
    """One row per sequence: a list of (tokens, n) segments laid out after BOS.

    `(ids, _)` places given tokens; `(None, n)` leaves n positions to decode. Raises
    PromptError when a row needs more than `length` positions.
    """
    n = len(rows)
    tokens = np.full((n, length), fill, np.int32)
    given = np.zeros((n, length), bool)
    decode = np.zeros((n, length), bool)
    tokens[:, 0], given[:, 0] = bos_id, True
    for b, segments in enumerate(rows):
        pos = 1
        for ids, count in segments:
            size = count if ids is None else len(ids)
            if pos + size > length:
                raise PromptError(f"prompt {b}: needs {pos + size} positions (BOS, the given "
                                  f"tokens and the positions to decode), but model.length is "
                                  f"{length}; shorten it or lower --max_new_tokens")
            if ids is None:
                decode[b, pos:pos + size] = True
            else:
                tokens[b, pos:pos + size] = ids
                given[b, pos:pos + size] = True
            pos += size
    return Conditioning(tokens, given, decode)


def prefixes(prompts: Sequence[list[int]], length: int, bos_id: int,
             max_new_tokens: int | None = None, fill: int = 0) -> Conditioning:
    """`[BOS] + prompt` then `max_new_tokens` (default: the rest of the length) to decode."""
    rows = []
    for b, ids in enumerate(prompts):
        if 1 + len(ids) > length:
            raise PromptError(f"prompt {b}: {len(ids)} tokens + BOS is longer than "
                              f"model.length={length}; shorten it")
        new = length - 1 - len(ids) if max_new_tokens is None else max_new_tokens
        rows.append([(list(ids), 0), (None, min(new, length - 1 - len(ids)))])
    return from_segments(rows, length, bos_id, fill)


def infills(pairs: Sequence[tuple[list[int], list[int]]], gap: int, length: int, bos_id: int,
            fill: int = 0) -> Conditioning:
    """`[BOS] + prefix`, `gap` positions to decode, then `suffix` (given)."""
    return from_segments([[(list(p), 0), (None, gap), (list(s), 0)] for p, s in pairs], length,
                         bos_id, fill)


def split_output(tokens: np.ndarray, cond: Conditioning) -> list[dict]:
    """Per row: {'prompt': given ids after BOS in position order, 'completion': decoded ids,
    'tokens': every id up to the last used position}."""
    out = []
    used = cond.given | cond.decode
    for row, g, d, u in zip(tokens, cond.given, cond.decode, used, strict=True):
        end = int(np.flatnonzero(u)[-1]) + 1
        g = g.copy()
        g[0] = False  # BOS is not part of the prompt text
        out.append({"prompt": row[g].tolist(), "completion": row[d].tolist(),
                    "tokens": row[:end].tolist()})
    return out
