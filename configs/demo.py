"""CPU demo: a small PGM trained on the Python documentation bundled with CPython.

Run (what `make demo` does):
  python -m pgm_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m pgm_jax.sample --workdir=runs/demo
Expected on a 2-core CPU: ~10 minutes (500 steps at ~1,900 tokens/s when the CPU is otherwise
idle); validation perplexity (EMA) 4,419 at step 0 -> ~366 at step 250 -> ~213 at step 500
(measured 2026-11-28).
MDLM baseline instead: add `--config.algo=mdlm`.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.model.length = 128
    c.model.hidden_size = 256
    c.model.cond_dim = 64
    c.model.n_heads = 4
    c.model.encoder_blocks = 2
    c.model.decoder_blocks = 2
    c.model.n_blocks = 4
    c.model.dropout = 0.0
    c.data.vocab_size = 4096
    c.data.val_fraction = 0.1
    c.train.batch_size = 16
    c.train.num_steps = 500
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.eval_batch_size = 32
    c.train.checkpoint_every = 250
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.schedule = "cosine"
    c.optim.ema_decay = 0.99
    c.sample.steps = 32
    c.sample.num_samples = 4
    c.sample.batch_size = 4
    return c
