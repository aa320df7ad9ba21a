"""Typed model configuration: the boundary between ml-collections configs and the modules."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from pgm_jax.models.registry import IMAGE_KINDS, MODEL_KINDS, PARTITION_KINDS

PRE_QUERY_MODES = ("learn", "learn+freqs", "learn+freqs+mean", "learn+freqs+logsumexp")
QUERY_PROCESS_MODES = ("linear", "mlp4")
REMAT_MODES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_KERNELS = ("auto", "dense", "splash", "tokamax")  # models/attention.py


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and switches of a PGM encoder-decoder, an MDLM DiT, a causal AR transformer, or
    an image model (class-conditional image PGM, MaskGIT baseline).

    `vocab_size` counts the mask token; `length` is the maximum sequence length (RoPE and
    GroupSwap position tables are built for positions 0..length-1). For the image kinds
    `length` is the number of image tokens N (grid side squared, raster order); the image PGM
    adds BOS and two registers internally. Image ids (spec pgm_image.md §0), the properties
    below being their one definition: codes 0..codebook_size-1, `image_mask_id` =
    codebook_size, `image_bos_id` = codebook_size + 1 (image PGM only); class ids
    0..num_classes-1 and `null_class` = num_classes (unconditional).
    """

    kind: str = "pgm"
    vocab_size: int = 512
    mask_index: int = 511
    length: int = 128
    hidden_size: int = 768
    cond_dim: int = 128
    n_heads: int = 12
    mlp_ratio: int = 4
    dropout: float = 0.1
    encoder_blocks: int = 6
    decoder_blocks: int = 6
    n_blocks: int = 12
    swap_pre_query_mode: str = "learn+freqs"
    swap_query_process_mode: str = "linear"
    time_conditioning: bool = False
    rope_base: float = 10000.0
    dtype: str = "float32"
    remat: str = "none"  # per-block rematerialisation policy (models/dit.py:REMAT_POLICIES)
    scan_layers: bool = False  # lax.scan over stacked blocks (one compiled block per stack)
    logits_chunk: int = 0  # >0: training head + log-softmax over this many positions at once
    num_classes: int = 0  # images: class ids 0..num_classes-1; num_classes = the null class
    codebook_size: int = 0  # images: token ids 0..codebook_size-1
    label_dropout: float = 0.1  # images, training: P(label -> null class) for CFG
    attention: str = "auto"  # kernel: auto | dense | splash | tokamax (models/attention.py)
    # The platform the program is compiled for ("" = this process's default backend); the
    # dry run sets it to the target's, so that `auto` and the dense layout follow the target.
    attention_platform: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def image_mask_id(self) -> int:
        """Images: the mask id, one past the codebook (for the image PGM a logit column only)."""
        return self.codebook_size

    @property
    def image_bos_id(self) -> int:
        """Image PGM: the BOS id at sequence position 0 (MaskGIT has none)."""
        return self.codebook_size + 1

    @property
    def null_class(self) -> int:
        """Images: the class id of the unconditional (dropped-label) branch."""
        return self.num_classes

    @property
    def image_vocab_size(self) -> int:
        """Images: codes + mask, + BOS for the image PGM."""
        last = self.image_bos_id if self.kind == "image_pgm" else self.image_mask_id
        return last + 1

    @classmethod
    def from_mapping(cls, m: Any) -> ModelConfig:
        """Builds from a ConfigDict / dict, ignoring keys that are not model fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        items = dict(m.items()) if hasattr(m, "items") else dict(m)
        return cls(**{k: v for k, v in items.items() if k in names})

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every inconsistent setting; empty when valid."""
        out = []
        if self.kind not in MODEL_KINDS:
            out.append(("kind", f"must be one of {MODEL_KINDS}"))
        if self.hidden_size % self.n_heads:
            out.append(("hidden_size", f"{self.hidden_size} is not divisible by n_heads"))
        elif self.head_dim % 2:
            out.append(("n_heads", "head_dim = hidden_size / n_heads must be even (RoPE)"))
        if self.hidden_size % 2:
            out.append(("hidden_size", "must be even (sinusoidal query positions)"))
        if not 0 <= self.mask_index < self.vocab_size:
            out.append(("mask_index", f"{self.mask_index} is outside [0, vocab_size)"))
        if self.swap_pre_query_mode not in PRE_QUERY_MODES:
            out.append(("swap_pre_query_mode", f"must be one of {PRE_QUERY_MODES}"))
        if self.swap_query_process_mode not in QUERY_PROCESS_MODES:
            out.append(("swap_query_process_mode", f"must be one of {QUERY_PROCESS_MODES}"))
        if not 0.0 <= self.dropout < 1.0:
            out.append(("dropout", "must be in [0, 1)"))
        if self.attention not in ATTENTION_KERNELS:
            out.append(("attention", f"must be one of {ATTENTION_KERNELS}"))
        if self.remat not in REMAT_MODES:
            out.append(("remat", f"must be one of {REMAT_MODES}"))
        if self.logits_chunk < 0:
            out.append(("logits_chunk", "must be >= 0 (0 = the whole sequence at once)"))
        if self.dtype not in ("float32", "bfloat16", "float16"):
            out.append(("dtype", "must be float32, bfloat16 or float16"))
        if self.kind in ("pgm", "ar", *IMAGE_KINDS) and self.time_conditioning:
            out.append(("time_conditioning",
                        f"{self.kind} never uses time (the reference asserts it off)"))
        for name in ("length", "hidden_size", "cond_dim", "n_heads", "mlp_ratio", "vocab_size"):
            if getattr(self, name) <= 0:
                out.append((name, "must be positive"))
        partition = self.kind in PARTITION_KINDS
        blocks = ("encoder_blocks", "decoder_blocks") if partition else ("n_blocks",)
        for name in blocks:
            if getattr(self, name) <= 0:
                out.append((name, "must be positive"))
        if self.kind in IMAGE_KINDS:
            out.extend(self._image_problems())
        return out

    def _image_problems(self) -> list[tuple[str, str]]:
        """The image kinds' id layout and switches (spec pgm_image.md §2)."""
        out = []
        for name in ("num_classes", "codebook_size"):
            if getattr(self, name) <= 0:
                out.append((name, f"must be positive for kind={self.kind}"))
        extra = self.image_vocab_size - self.codebook_size
        if self.codebook_size > 0 and self.vocab_size != self.image_vocab_size:
            out.append(("vocab_size", f"must be codebook_size + {extra} = "
                        f"{self.image_vocab_size} for kind={self.kind}"))
        if self.codebook_size > 0 and self.mask_index != self.image_mask_id:
            out.append(("mask_index", f"must be codebook_size = {self.codebook_size} for "
                        f"kind={self.kind}"))
        if not 0.0 <= self.label_dropout < 1.0:
            out.append(("label_dropout", "must be in [0, 1)"))
        if self.kind == "image_pgm" and self.swap_pre_query_mode not in ("learn", "learn+freqs"):
            out.append(("swap_pre_query_mode",
                        "the image PGM supports 'learn' and 'learn+freqs' only"))
        return out
