"""Your own corpus: train on any folder prepared by `python -m pgm_jax.data.prepare text`.

Run (a sentencepiece tokenizer is trained on the corpus and saved with the data):
  python -m pgm_jax.data.prepare text --input=CORPUS_DIR --output=data/mine --length=1024
  python -m pgm_jax.main --config=configs/text.py --workdir=runs/mine \\
      --config.data.path=data/mine
model.length must equal the prepared --length (start-up says so otherwise); the vocabulary
comes from the prepared tokenizer. Padded data (`--layout=pad`) can be packed with
`--config.data.pack=True`.

Presets:
  pgm      PGM, 6 encoder / 6 decoder blocks, H 768 (the paper's OWT pgm_6_6 shape), the
           reference optimizer (pgm_jax/schema.py defaults)
  mdlm     the MDLM baseline, 12-block DiT, H 768
  cpu      a 2 + 2 block, H 256 PGM with L = 256 for smoke runs on a CPU: prepare with
           --length=256 (no reference number)
"""

from ml_collections import ConfigDict

from configs import base
from configs.presets import shrink_for_cpu

PRESETS = ("pgm", "mdlm", "cpu")


def get_config(preset: str = "pgm") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"configs/text.py: unknown preset {preset!r}; one of {PRESETS}")
    c = base.get_config()
    c.algo = "mdlm" if preset == "mdlm" else "pgm"
    c.data.source = "text"
    c.model.length = 1024
    if preset == "cpu":
        shrink_for_cpu(c)
        c.model.length = 256
    return c
