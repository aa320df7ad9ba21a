"""SDTT distillation (spec §8): a trained PGM / MDLM run -> a student that samples in fewer steps.

Run (the teacher: a pgm_jax workdir, or a released checkpoint converted with pgm_jax.convert;
its raw, non-EMA weights start both teacher and student):
  python -m pgm_jax.main --config=configs/distill.py:PRESET --workdir=runs/PRESET_sdtt \\
      --config.distill.teacher=runs/owt_PRESET --config.data.path=DATA_DIR
  python -m pgm_jax.evaluate --workdir=runs/PRESET_sdtt --judge=GPT2_DIR --steps=32 --val=false

Presets (OWT, the reference's distillation runs `scripts/pgm_8_8.sh`, `pgm_6_6_dim1024.sh` and
the MDLM one): pgm_8_8, pgm_6_6_dim1024, mdlm -- the model of configs/owt.py's preset of that
name in float32 ("32-true"), global batch 128, 50k steps, AdamW lr 3e-4 (0.9, 0.999), eps 1e-8,
no weight decay, 2,500 warm-up steps then constant, clip 1.0, EMA 0.9999 (re-initialised from
the teacher), validation every 5k steps; 2 teacher steps per student step, dt from 1/1024,
doubling every 10k steps (rounds 0-4: the student ends at ~32-step sampling), stop below 8
steps. The released `*_sdtt_*.ckpt` files are the reference's results of these runs; they
convert with the same presets of configs/owt.py (same keys as the undistilled checkpoints).

demo: distils the `make demo` run (runs/demo) on a CPU, what `make demo-distill` does:
  python -m pgm_jax.main --config=configs/distill.py:demo --workdir=runs/demo-distill
dt from 1/64 (student 32 steps) doubling every 100 steps: 3 rounds, 300 steps of batch 16,
ending with a student for 8-step sampling. Measured 2026-12-05 (2-core AVX-512 EPYC; teacher
= the `make demo` run, val ppl 213.4; judge = the AR demo run at lr 1e-3, val ppl 123.3; 64
samples per cell, float64 sampling; `pgm_jax.compare_steps`):

  run      gen. ppl @8 / 16 / 32 steps    entropy @8 / 16 / 32
  teacher  1574.7 / 1491.0 / 1473.3      4.261 / 4.265 / 4.254
  student  2031.3 / 1803.6 / 1476.4      4.315 / 4.291 / 4.245

At this scale the 300-step distillation does NOT reach the goal (student at 8 steps no worse
than the teacher at 32): the student is worse than the teacher at 8 and 16 steps and equal at
32, and its val ppl rose from 199.5 to 221.4. The distillation took 33.5 min of wall time on a
CPU shared with other jobs (10.8 CPU-minutes).
"""

from ml_collections import ConfigDict

from configs import demo, owt

PRESETS = ("pgm_8_8", "pgm_6_6_dim1024", "mdlm", "demo")


def get_config(preset: str = "pgm_8_8") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"configs/distill.py: unknown preset {preset!r}; one of {PRESETS}")
    if preset == "demo":
        return demo_config()
    c = owt.get_config(preset)
    c.model.dtype = "float32"  # the distillation scripts' "32-true" precision
    c.distill.teacher = f"runs/owt_{preset}"  # e.g. the converted released checkpoint
    c.train.batch_size = 128
    c.train.num_steps = 50_000
    c.train.eval_every = 5_000
    c.train.checkpoint_every = 5_000
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 2_500
    c.optim.schedule = "constant"
    c.optim.ema_decay = 0.9999
    c.sample.steps = 32
    return c


def demo_config() -> ConfigDict:
    c = demo.get_config()
    c.distill.teacher = "runs/demo"
    c.distill.orig_num_sampling_steps = 64
    c.distill.grow_dt_every = 100
    c.distill.min_num_sampling_steps = 8
    c.train.num_steps = 300
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.log_every = 10
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 20
    c.optim.schedule = "constant"
    c.optim.ema_decay = 0.98
    c.sample.steps = 8
    c.sample.float64 = True
    return c
