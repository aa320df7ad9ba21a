"""LM1B (One Billion Words, BERT tokenizer, L = 128): the paper's models as presets.

Run (needs the prepared LM1B dataset at --config.data.path; see the data pipeline):
  python -m pgm_jax.main --config=configs/lm1b.py:PRESET --workdir=runs/lm1b_PRESET \\
      --config.data.path=DATA_DIR

Presets, with the reference's parameter count (spec §1.12) and the paper's validation
perplexity on the LM1B test split (spec §6.6; 1M steps of 512 x 128 tokens on 8 GPUs in the
reference; we have not reproduced them):
  pgm_6_6          PGM, 6 encoder / 6 decoder blocks, H 768   141,662,266 params  ppl 26.80
  pgm_6_6_mean     the same, GroupSwap queries + mean of the other group  (no paper number)
  pgm_6_6_lsm      the same, + per-feature logsumexp of the other group   (no paper number)
  mdlm             MDLM, 12-block DiT                         139,292,986 params  ppl 27.67
  complement_mdlm  MDLM trained with complementary masking    139,292,986 params  ppl 25.72
  cpu              a 2 + 2 block, H 256 PGM for smoke runs on a CPU (no paper number)
Default: pgm_6_6. The optimizer, schedule, EMA, clipping and batch are the reference's
(pgm_jax/schema.py defaults: AdamW 3e-4, 2,500 warm-up steps then constant, clip 1.0, EMA
0.9999, global batch 512). Sampling uses 128 steps: the reference's default of 1024 does not
divide L = 128 and makes its LM1B runs crash at the first validation (spec §9.4).
"""

from ml_collections import ConfigDict

from configs.presets import paper_config

PRESETS = ("pgm_6_6", "pgm_6_6_mean", "pgm_6_6_lsm", "mdlm", "complement_mdlm", "cpu")


def get_config(preset: str = "pgm_6_6") -> ConfigDict:
    c = paper_config("configs/lm1b.py", preset, PRESETS, source="lm1b", length=128,
                     vocab_size=30522, mask_index=103, bos_id=101)  # bert-base-uncased
    if preset == "pgm_6_6_mean":
        c.model.swap_pre_query_mode = "learn+freqs+mean"
    elif preset == "pgm_6_6_lsm":
        c.model.swap_pre_query_mode = "learn+freqs+logsumexp"
    return c
