"""The one list of algorithms and model kinds: which algorithm trains which kind, which kinds
model text and which images. Names only (no model classes), so every layer may import it."""

from __future__ import annotations

# config.algo -> ModelConfig.kind (complement_mdlm trains the MDLM DiT on a different loss)
ALGO_TO_KIND: dict[str, str] = {"pgm": "pgm", "mdlm": "mdlm_dit", "complement_mdlm": "mdlm_dit",
                                "ar": "ar", "image_pgm": "image_pgm", "maskgit": "maskgit"}
TEXT_KINDS = ("pgm", "mdlm_dit", "ar")  # token sequences
IMAGE_KINDS = ("image_pgm", "maskgit")  # class-conditional models over image token grids
MODEL_KINDS = TEXT_KINDS + IMAGE_KINDS
PARTITION_KINDS = ("pgm", "image_pgm")  # encoder-decoder partition models (no n_blocks)
ALGOS = tuple(ALGO_TO_KIND)
IMAGE_ALGOS = tuple(a for a, k in ALGO_TO_KIND.items() if k in IMAGE_KINDS)
TEXT_ALGOS = tuple(a for a, k in ALGO_TO_KIND.items() if k in TEXT_KINDS)
