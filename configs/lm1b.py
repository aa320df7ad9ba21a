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
(configs/base.py defaults: AdamW 3e-4, 2,500 warm-up steps then constant, clip 1.0, EMA
0.9999, global batch 512). Sampling uses 128 steps: the reference's default of 1024 does not
divide L = 128 and makes its LM1B runs crash at the first validation (spec §9.4).
"""

from ml_collections import ConfigDict

from configs import base, demo

PRESETS = ("pgm_6_6", "pgm_6_6_mean", "pgm_6_6_lsm", "mdlm", "complement_mdlm", "cpu")


def get_config(preset: str = "pgm_6_6") -> ConfigDict:
    c = paper_config("configs/lm1b.py", preset, PRESETS, source="lm1b", length=128,
                     vocab_size=30522, mask_index=103, bos_id=101)  # bert-base-uncased
    if preset == "pgm_6_6_mean":
        c.model.swap_pre_query_mode = "learn+freqs+mean"
    elif preset == "pgm_6_6_lsm":
        c.model.swap_pre_query_mode = "learn+freqs+logsumexp"
    return c


def paper_config(name: str, preset: str, presets: tuple[str, ...], *, source: str, length: int,
                 vocab_size: int, mask_index: int, bos_id: int) -> ConfigDict:
    """configs/base.py (the reference's optimizer, schedule, EMA, batch, steps) with one
    dataset's sequence length and vocabulary, the evaluation scripts' batch and sampling
    settings, the algorithm the preset names, and the `cpu` preset's small model."""
    if preset not in presets:
        raise ValueError(f"{name}: unknown preset {preset!r}; one of {presets}")
    c = base.get_config()
    c.algo = preset if preset in ("mdlm", "complement_mdlm") else "pgm"
    c.data.source, c.data.bos_id = source, bos_id
    c.model.length, c.model.vocab_size, c.model.mask_index = length, vocab_size, mask_index
    c.model.dtype = "bfloat16"  # the reference's autocast (fp32 params, LayerNorm, softmax)
    c.train.eval_batch_size = 32  # scripts/eval/*/*_val_ppl.sh
    c.sample.steps = 128
    c.sample.float64 = True  # the reference's float64 Gumbel noise (spec §3.4)
    if preset == "cpu":
        shrink_for_cpu(c)
    return c


def shrink_for_cpu(c: ConfigDict) -> None:
    """The demo's model size (2 + 2 blocks or a 4-block DiT, H 256), batch 8, float32."""
    small = demo.get_config().model
    for key in ("hidden_size", "cond_dim", "n_heads", "encoder_blocks", "decoder_blocks",
                "n_blocks"):
        c.model[key] = small[key]
    c.model.dtype = "float32"  # bfloat16 is slower than float32 on CPUs
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.num_steps = 1_000
    c.train.log_every = 20
    c.train.eval_every = 500
    c.train.eval_batches = 20
    c.train.checkpoint_every = 500
    c.optim.warmup_steps = 100
    c.sample.num_samples = 2
    c.sample.batch_size = 2
