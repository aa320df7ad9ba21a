"""Random-access examples: token rows and documents -> what the pipelines batch.

An `Examples` object has `len()` and `[i]` -> dict of int32 arrays. Fixed-length rows carry
{"tokens": int32[L], "valid": int32[L]}; documents to be packed or wrapped carry variable-length
{"tokens": int32[n]} and become rows in the pipeline (`pipeline.Packing`, `pipeline.Wrapping`).
The classes are plain and picklable, so grain's worker processes can read them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

Example = dict[str, np.ndarray]
FORMS = ("pad", "pack", "wrap")


class Examples(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


class TokenSequences(Protocol):
    """Anything with len() and [i] -> int array (in-memory blocks, ArrayRecord records, ...)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class BlockExamples:
    """Wrapped blocks: `[i]` -> {"tokens": int32[L], "valid": all ones} (blocks hold no padding)."""

    def __init__(self, blocks: TokenSequences):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> Example:
        tokens = np.asarray(self.blocks[index], np.int32)
        return {"tokens": tokens, "valid": np.ones_like(tokens)}


class DocExamples:
    """Documents (ids without BOS/EOS) in one of three forms:

    pad:  [BOS] doc[:L-2] [EOS] [PAD]... -> {"tokens": int32[L], "valid": 1 up to EOS}, the
          reference's unwrapped layout (`padding='max_length', truncation=True`, spec §4.2);
    pack: [BOS] doc[:L-2] [EOS] -> {"tokens": int32[<= L]}, for first-fit packing;
    wrap: doc [EOS] -> {"tokens": int32[n + 1]}, for concatenate-and-split wrapping.
    """

    def __init__(self, docs: TokenSequences, length: int, bos_id: int, eos_id: int, pad_id: int,
                 form: str = "pad"):
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.docs, self.length, self.form = docs, length, form
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, index: int) -> Example:
        doc = np.asarray(self.docs[index], np.int32)
        if self.form == "wrap":
            return {"tokens": np.append(doc, np.int32(self.eos_id))}
        n = min(len(doc), self.length - 2)
        size = self.length if self.form == "pad" else n + 2
        tokens = np.full(size, self.pad_id, np.int32)
        tokens[0], tokens[1:n + 1], tokens[n + 1] = self.bos_id, doc[:n], self.eos_id
        if self.form == "pack":
            return {"tokens": tokens}
        valid = (np.arange(self.length) < n + 2).astype(np.int32)
        return {"tokens": tokens, "valid": valid}
