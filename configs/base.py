"""Base configuration: every key the trainer reads, documented. Other configs start here.

Run (defaults train PGM on the embedded pydoc text; see configs/demo.py for the CPU demo):
  python -m pgm_jax.main --config=configs/base.py --workdir=runs/base
Override any key on the command line, e.g. `--config.optim.lr=1e-4`.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 1  # model init, time/partition noise, dropout and data order all derive from it
    c.algo = "pgm"  # "pgm" (Partition Generative Model) or "mdlm" (masked diffusion baseline)

    # --- model (spec §1); vocab_size / mask_index come from the tokenizer when -1
    c.model = ConfigDict()
    c.model.length = 1024  # sequence length L (RoPE / GroupSwap tables cover 0..L-1)
    c.model.hidden_size = 768  # H
    c.model.cond_dim = 128  # adaLN conditioning width C
    c.model.n_heads = 12  # head_dim = H / n_heads (64 in every paper config)
    c.model.mlp_ratio = 4
    c.model.dropout = 0.1  # on attention-output and MLP branches of every block
    c.model.encoder_blocks = 6  # PGM encoder depth
    c.model.decoder_blocks = 6  # PGM cross-attention decoder depth
    c.model.n_blocks = 12  # MDLM DiT depth
    # learn | learn+freqs | learn+freqs+mean | learn+freqs+logsumexp
    c.model.swap_pre_query_mode = "learn+freqs"
    c.model.swap_query_process_mode = "linear"  # linear | mlp4
    c.model.time_conditioning = False  # PGM requires False; baselines may switch it on
    c.model.dtype = "float32"  # matmul/attention compute dtype: float32 | bfloat16
    c.model.vocab_size = -1  # -1: from the tokenizer (includes the appended MASK id)
    c.model.mask_index = -1  # -1: from the tokenizer

    # --- data
    c.data = ConfigDict()
    c.data.source = "pydoc"  # pydoc (CPython docs, no download) | files | lm1b | owt
    c.data.files = ""  # source=files: comma-separated .txt/.jsonl paths or globs
    c.data.path = ""  # prepared dataset directory (local or gs://) for lm1b / owt / text
    c.data.vocab_size = 4096  # sentencepiece pieces (trained on first run, saved in workdir)
    c.data.val_fraction = 0.05  # last documents held out for validation
    c.data.worker_count = 0  # grain worker processes (0 = in-process; best on small hosts)

    # --- training loop
    c.train = ConfigDict()
    c.train.batch_size = 512  # global batch (sequences), split over data x fsdp devices
    c.train.num_steps = 1_000_000
    c.train.log_every = 100  # progress line + metrics.jsonl row
    c.train.eval_every = 20_000  # validation NELBO / perplexity with the EMA weights
    c.train.eval_batch_size = 32
    c.train.eval_batches = 0  # 0 = the whole validation split
    c.train.checkpoint_every = 5_000
    c.train.keep_checkpoints = 3
    c.train.sample_every = 0  # 0 = off; else write a few samples to the workdir periodically

    # --- optimizer (spec §5.1)
    c.optim = ConfigDict()
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 2_500
    c.optim.schedule = "constant"  # constant (reference) | cosine
    c.optim.min_lr_ratio = 0.1  # cosine floor as a fraction of lr
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.9999

    # --- device mesh (one -1 is filled from the device count)
    c.mesh = ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # --- sampling (pgm_jax.sample and periodic samples)
    c.sample = ConfigDict()
    c.sample.steps = 128  # network calls; PGM decodes L / steps tokens per call
    c.sample.num_samples = 4
    c.sample.batch_size = 4
    c.sample.top_p = 1.0  # nucleus filtering (1.0 = off)
    c.sample.temperature = 1.0  # 0 = greedy
    c.sample.float64 = False  # reference float64 Gumbel arithmetic
    return c
