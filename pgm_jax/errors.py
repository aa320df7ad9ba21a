"""Error types shared across layers, with no imports of their own (the lowest layer)."""

from __future__ import annotations


class CheckpointFormatError(ValueError):
    """A checkpoint file is corrupt, unsupported, or pickles a refused global."""
