"""CPU demo: a small PGM trained on the Python documentation bundled with CPython.

Run (what `make demo` does):
  python -m pgm_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m pgm_jax.sample --workdir=runs/demo
Expected on a 2-core CPU: ~10 minutes (500 steps at ~1,900 tokens/s when the CPU is otherwise
idle); validation perplexity (EMA) 4,419 at step 0 -> ~366 at step 250 -> ~213 at step 500
(measured 2026-11-28).
Baselines at the same size (`make demo-mdlm`; benchmarks/compare.py trains them all):
  python -m pgm_jax.main --config=configs/demo.py:mdlm --workdir=runs/demo-mdlm
Presets: pgm (default) | mdlm | complement_mdlm | ar; each sets `algo`, its learning rate
(LEARNING_RATES: the compare sweep's choice, also what benchmarks/compare.py --no_sweep uses;
pgm keeps the demo's 1e-3) and, for AR, the depth that matches PGM's parameter count
(AR_BLOCKS). Measured at the demo shape before the sweep (lr 1e-3 for all, 2026-12-05): MDLM
ppl 459 at step 500, AR 123.
"""

from configs import base

# Learning rate per model, from `make compare` (benchmarks/compare.py, 2026-12-05: demo corpus,
# L 256, H 128, 200 steps of batch 16, grid 3e-4 / 1e-3 / 3e-3, each chosen on its own
# validation NELBO at the full budget; docs/mdlm_vs_pgm.md): PGM 3e-3 (6.063 nats vs 6.340 at
# 1e-3), MDLM 3e-4 (6.491; every rate within 0.01 of it), complement-MDLM 3e-3 (6.476), AR 3e-3
# (5.510 vs 5.834). `python -m benchmarks.compare --no_sweep` trains these, and the mdlm /
# complement_mdlm / ar presets use them. The pgm preset (`make demo`) keeps DEMO_PGM_LR, the
# rate its measured figures above come from.
LEARNING_RATES = {"pgm": 3e-3, "mdlm": 3e-4, "complement_mdlm": 3e-3, "ar": 3e-3}
DEMO_PGM_LR = 1e-3
AR_BLOCKS = 5  # 6.04M parameters vs PGM 2/2's 5.97M (MDLM's 4 blocks: 5.71M)


def get_config(preset: str = "pgm"):
    if preset not in LEARNING_RATES:
        raise ValueError(f"configs/demo.py:{preset}: presets are {', '.join(LEARNING_RATES)}")
    c = base.get_config()
    c.algo = preset
    c.model.length = 128
    c.model.hidden_size = 256
    c.model.cond_dim = 64
    c.model.n_heads = 4
    c.model.encoder_blocks = 2
    c.model.decoder_blocks = 2
    c.model.n_blocks = AR_BLOCKS if preset == "ar" else 4
    c.model.dropout = 0.0
    c.data.vocab_size = 4096
    c.data.val_fraction = 0.1
    c.train.batch_size = 16
    c.train.num_steps = 500
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.eval_batch_size = 32
    c.train.checkpoint_every = 250
    c.optim.lr = DEMO_PGM_LR if preset == "pgm" else LEARNING_RATES[preset]
    c.optim.warmup_steps = 50
    c.optim.schedule = "cosine"
    c.optim.ema_decay = 0.99
    c.sample.steps = 32
    c.sample.num_samples = 4
    c.sample.batch_size = 4
    return c
