"""ImageNet 256x256 as LlamaGen VQ-8 codes (32 x 32 = 1024 tokens, codebook 16384, 1000
classes): the paper's image models as presets (spec pgm_image.md §2, §3, §4).

Run (needs the tokenized ImageNet folder at --config.data.path, made by
`python -m pgm_jax.data.prepare imagenet_vq`):
  python -m pgm_jax.main --config=configs/imagenet_vq.py:PRESET --workdir=runs/in_PRESET \\
      --config.data.path=DATA_DIR
Released checkpoints (HF jdeschena/pgm: images_pgm_12_12_100epochs.ckpt,
images_pgm_14_10_100epochs.ckpt, maskgit_100epochs.ckpt) load with
`pgm_jax.interop.image_convert.image_params_from_checkpoint(path, model_config)`.

Presets, with the parameter counts of our modules (equal to the reference's, spec §2) and the
paper's numbers (abstract v2: FID vs ImageNet-val statistics, Halton sampler; which PGM
variant and guidance weight give the headline numbers is unconfirmed; we have not reproduced
any of them):
  pgm_12_12   image PGM, 12 encoder / 12 decoder blocks, H 1024   494,220,290 params
  pgm_14_10   image PGM, 14 / 10 blocks                           494,218,242 params
              PGM: FID 5.54 at 7.5x MaskGIT's throughput (32 steps); FID 4.56 at 3.9x (64)
  maskgit_l   MaskGIT-L baseline, 24 blocks, SwiGLU 2816          480,443,393 params  FID 5.35
  cpu         a 2 + 2 block, H 128 image PGM for smoke runs on a CPU (no paper number)
Default: pgm_14_10. Training is the reference's (§3.4): AdamW lr 1e-4, betas (0.9, 0.999),
weight decay 0.03, 2,500 warm-up steps then constant, clip 1.0, global batch 256, about 100
epochs = 500k steps, dropout 0.1, label dropout 0.1, bf16 compute, no EMA (ema_decay 0 keeps
the EMA equal to the weights). Sampling: 32 steps, Halton order, temperature 1, correct
inference masking (sample.release_quirk=True reproduces the released code, §4.5); the
reference sweeps the guidance weight (PGM w = 0..7, MaskGIT 0, 1, 4), so cfg_w is 0 here.
"""

from ml_collections import ConfigDict

from configs import base

PRESETS = ("pgm_12_12", "pgm_14_10", "maskgit_l", "cpu")
SIDE, CODEBOOK, CLASSES = 32, 16384, 1000  # VQ-8 on 256x256 images


def get_config(preset: str = "pgm_14_10") -> ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"configs/imagenet_vq.py: unknown preset {preset!r}; one of {PRESETS}")
    c = base.get_config()
    c.algo = "maskgit" if preset == "maskgit_l" else "image_pgm"
    c.data.source, c.data.path = "imagenet_vq", ""  # the user passes --config.data.path
    m = c.model
    m.length, m.codebook_size, m.num_classes = SIDE * SIDE, CODEBOOK, CLASSES
    m.vocab_size = m.mask_index = -1  # derived: mask = 16384, PGM BOS = 16385
    m.hidden_size, m.n_heads, m.mlp_ratio = 1024, 16, 4
    m.cond_dim = m.hidden_size  # the image models' adaLN reads the class embedding (width H)
    m.dropout, m.label_dropout = 0.1, 0.1
    m.dtype = "bfloat16"  # the reference's autocast (fp32 params, norms, softmax)
    m.encoder_blocks, m.decoder_blocks = (12, 12) if preset == "pgm_12_12" else (14, 10)
    m.n_blocks = 24  # MaskGIT-L
    c.train.batch_size = 256
    c.train.num_steps = 500_000  # 5,004 steps per epoch, ~100 epochs
    c.train.eval_every = 5_000  # the reference's validation loss once per epoch
    c.optim.lr, c.optim.weight_decay = 1e-4, 0.03
    c.optim.b1, c.optim.b2, c.optim.warmup_steps = 0.9, 0.999, 2_500
    c.optim.schedule, c.optim.grad_clip = "constant", 1.0
    c.optim.ema_decay = 0.0  # no EMA in the reference
    c.sample.steps, c.sample.order, c.sample.temperature = 32, "halton", 1.0
    c.sample.cfg_w, c.sample.release_quirk = 0.0, False
    if preset == "cpu":
        m.hidden_size, m.cond_dim, m.n_heads = 128, 128, 4
        m.encoder_blocks, m.decoder_blocks, m.n_blocks = 2, 2, 4
        m.dtype = "float32"  # bfloat16 is slower than float32 on CPUs
        c.train.batch_size = c.train.eval_batch_size = 8
        c.train.num_steps, c.train.log_every = 1_000, 20
        c.train.eval_every, c.train.eval_batches, c.train.checkpoint_every = 500, 20, 500
        c.optim.warmup_steps = 100
        c.sample.num_samples = c.sample.batch_size = 2
    return c
