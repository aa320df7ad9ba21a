"""Helpers shared by the paper presets (configs/lm1b.py, owt.py, text.py)."""

from ml_collections import ConfigDict

from configs import base, demo


def paper_config(name: str, preset: str, presets: tuple[str, ...], *, source: str, length: int,
                 vocab_size: int, mask_index: int, bos_id: int) -> ConfigDict:
    """The schema's defaults (the reference's optimizer, schedule, EMA, batch, steps) with one
    dataset's sequence length and vocabulary, the evaluation scripts' batch and sampling
    settings, the algorithm the preset names, and the `cpu` preset's small model."""
    if preset not in presets:
        raise ValueError(f"{name}: unknown preset {preset!r}; one of {presets}")
    c = base.get_config()
    c.algo = preset if preset in ("mdlm", "complement_mdlm") else "pgm"
    c.data.source, c.data.bos_id = source, bos_id
    c.model.length, c.model.vocab_size, c.model.mask_index = length, vocab_size, mask_index
    c.model.dtype = "bfloat16"  # the reference's autocast (fp32 params, LayerNorm, softmax)
    # Why: OWT's float32 logits are [32, 1024, 50258] = 6.6 GiB per v5p chip at the paper's
    # batch, plus their gradient; 256 positions at a time cut OWT PGM 8/8's splash peak from
    # 31.0 to 20.8 GiB (benchmarks/memory.py). Same loss; the chunks are recomputed backward.
    c.model.logits_chunk = 256
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
    c.model.logits_chunk = 0  # the demo's 4k vocabulary: one piece is faster on a CPU
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
