"""OpenWebText (GPT-2 tokenizer, L = 1024): the paper's models as presets.

Run (needs the prepared OWT dataset at --config.data.path; see the data pipeline):
  python -m pgm_jax.main --config=configs/owt.py:PRESET --workdir=runs/owt_PRESET \\
      --config.data.path=DATA_DIR
Released checkpoints (HF jdeschena/pgm) convert with the matching preset:
  python -m pgm_jax.convert --checkpoint=pgm_8_8.ckpt --config=configs/owt.py:pgm_8_8 \\
      --workdir=runs/owt_pgm_8_8

Presets, with the reference's parameter count (spec §1.12) and the paper's validation
perplexity on the last 100k OWT documents (spec §6.6; 1M steps of 512 x 1024 tokens on 16
GPUs in the reference; we have not reproduced them):
  pgm_8_8          PGM, 8 encoder / 8 decoder blocks, H 768   202,708,818 params  ppl 22.61
  pgm_6_6_dim1024  PGM, 6 / 6 blocks, H 1024, 16 heads        268,092,754 params  ppl 21.43
  pgm_6_6          PGM, 6 / 6 blocks, H 768                   171,996,498 params  (no paper number)
  mdlm             MDLM, 12-block DiT                         169,627,218 params  ppl 23.07
  complement_mdlm  MDLM trained with complementary masking    169,627,218 params  ppl 22.98
  cpu              a 2 + 2 block, H 256 PGM for smoke runs on a CPU (no paper number)
Default: pgm_8_8 (the released `pgm_8_8.ckpt`). Optimizer, schedule, EMA, clipping and batch
are the reference's (pgm_jax/schema.py defaults: AdamW 3e-4, 2,500 warm-up steps then
constant, clip 1.0, EMA 0.9999, global batch 512); sampling uses the evaluation scripts'
128 steps (8 tokens per step for PGM).
"""

from ml_collections import ConfigDict

from configs.presets import paper_config

PRESETS = ("pgm_8_8", "pgm_6_6_dim1024", "pgm_6_6", "mdlm", "complement_mdlm", "cpu")


def get_config(preset: str = "pgm_8_8") -> ConfigDict:
    c = paper_config("configs/owt.py", preset, PRESETS, source="owt", length=1024,
                     vocab_size=50258, mask_index=50257, bos_id=50256)  # GPT-2 + MASK
    if preset == "pgm_8_8":
        c.model.encoder_blocks = 8
        c.model.decoder_blocks = 8
    elif preset == "pgm_6_6_dim1024":
        c.model.hidden_size = 1024
        c.model.n_heads = 16
    return c
