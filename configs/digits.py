"""CPU image demo: a class-conditional PGM on scikit-learn's bundled 8x8 digits.

The 1,797 digit images (10 classes) are token grids of N = 64 pixels whose level 0..16 is the
token (codebook 17); the last 10% of each class is the validation split.

Run (what `make demo-images` does):
  python -m pgm_jax.main --config=configs/digits.py --workdir=runs/digits
  python -m pgm_jax.sample --workdir=runs/digits --num_samples=10 --batch_size=50
Expected on a 2-core CPU (1.29M parameters, 600 steps of 32 images, 0.3-0.55 s a step): 6.5
minutes for both commands (5m45s of training with evaluations and samples, ~20 s to sample 100
images), measured 2026-11-28 while other jobs shared the CPU (load ~4; faster when idle).
Validation NLL (EMA weights, nats per pixel token: the image PGM's objective over all 64 tokens
with a random partition; ln 18 = 2.89 at the start): 2.890 at step 0 -> 1.519 at 200 -> 1.441
at 400 -> 1.418 at 600; training loss (one batch) 2.07 at step 50, 1.77 at 100, 1.54 at 200,
1.43 at 400, 1.40-1.53 at 500-600. The digits are recognisable in every row from step ~200.
Samples: WORKDIR/samples/step_<N>.png every 200 steps and WORKDIR/samples.png (one row per
digit class, 8x8 pixels upscaled 4x, level v drawn as intensity v / 16) with the codes (.npz).
MaskGIT baseline instead: add `--config.algo=maskgit` (a 4-block transformer, `model.n_blocks`,
1.49M parameters): 5m45s for 600 steps; validation NLL 2.477 -> 0.922 (200) -> 0.917 (400)
-> 0.914 (600). Its loss also scores the visible tokens (spec §3.2), so it is not comparable
with the PGM's.
"""

from configs import base


def get_config():
    c = base.get_config()
    c.algo = "image_pgm"
    c.data.source = "digits"
    c.data.val_fraction = 0.1  # the last 10% of each class
    c.model.num_classes = 10
    c.model.codebook_size = 17  # pixel levels 0..16
    c.model.length = 64  # 8 x 8
    c.model.label_dropout = 0.1
    c.model.hidden_size = 128
    c.model.cond_dim = 128  # the image models condition on the class embedding (width H)
    c.model.n_heads = 4
    c.model.encoder_blocks = 2
    c.model.decoder_blocks = 2
    c.model.n_blocks = 4  # MaskGIT: as deep as the PGM's encoder + decoder
    c.model.dropout = 0.0
    c.train.batch_size = 32
    c.train.num_steps = 600
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.eval_batch_size = 64  # 185 validation images: 3 batches, the last one padded
    c.train.checkpoint_every = 200
    c.train.sample_every = 200
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.schedule = "cosine"
    c.optim.ema_decay = 0.99
    c.sample.steps = 16
    c.sample.order = "halton"
    c.sample.cfg_w = 1.0
    c.sample.num_samples = 8  # per class: one grid row of 8 per digit
    c.sample.batch_size = 40
    return c
