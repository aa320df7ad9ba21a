"""The config schema: every key the library reads, with its default and documentation.

A config is valid only if it has exactly these keys (`config.validate`), so a misspelt key is
refused rather than ignored. Configs (configs/*.py) start from `default_config()` and override
what they change; a run's stored config.json is read against today's schema.
Defaults train PGM on the embedded pydoc text; see configs/demo.py for the CPU demo:
  python -m pgm_jax.main --config=configs/base.py --workdir=runs/base
Override any key on the command line, e.g. `--config.optim.lr=1e-4`.
"""

from ml_collections import ConfigDict


def default_config() -> ConfigDict:
    """Every key with its default; the comments document each."""
    c = ConfigDict()
    c.seed = 1  # model init, time/partition noise, dropout and data order all derive from it
    # pgm (Partition Generative Model) | mdlm (masked diffusion) | complement_mdlm (MDLM trained
    # on x_t and its complement, evaluated as MDLM) | ar (causal transformer, exact NLL)
    c.algo = "pgm"

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
    # memory / compile time (none changes the parameters or the results beyond float rounding):
    # per-block rematerialisation: none | full (keep block inputs only) | dots (keep matmul
    # outputs) | dots_no_batch (keep weight matmuls, recompute attention)
    c.model.remat = "none"
    # attention kernel: auto (splash on TPU, tokamax on GPU, dense elsewhere) | dense (the
    # oracle; CPU query chunks) | splash (Pallas TPU; O(L) memory) | tokamax (GPU flash
    # attention: Mosaic GPU / Triton). docs/attention.md says which serves what.
    c.model.attention = "auto"
    c.model.scan_layers = False  # lax.scan over the blocks: one compiled block per stack
    c.model.logits_chunk = 0  # >0: training head + log-softmax over this many positions at once
    # images (algo image_pgm | maskgit): class ids 0..num_classes-1, id num_classes = the null
    # (unconditional, CFG) class; image tokens 0..codebook_size-1 (VQ codes or pixel levels);
    # model.length = the number of image tokens (grid side squared)
    c.model.num_classes = 0
    c.model.codebook_size = 0
    c.model.label_dropout = 0.1  # training: P(label -> null class), for classifier-free guidance
    c.model.vocab_size = -1  # -1: from the tokenizer (includes the appended MASK id)
    c.model.mask_index = -1  # -1: from the tokenizer

    # --- data
    c.data = ConfigDict()
    # pydoc (CPython docs, no download) | files (local text, in memory) | owt | text (a folder
    # made by `python -m pgm_jax.data.prepare owt|text`) | lm1b (a TFDS data dir) | digits (the
    # 8x8 digit images bundled with scikit-learn, class-conditional) | imagenet_vq (a folder made
    # by `python -m pgm_jax.data.prepare imagenet_vq`)
    c.data.source = "pydoc"
    c.data.files = ""  # source=files: comma-separated .txt/.jsonl/.parquet paths or globs
    c.data.path = ""  # owt / text: the prepared dataset directory; lm1b: the TFDS data dir
    c.data.tokenizer_path = ""  # lm1b: bert-base-uncased vocab.txt ("": DATA.PATH/vocab.txt)
    c.data.wrap = False  # lm1b: wrap sentences into blocks (reference: padded, one per row)
    # padded data (lm1b, text --layout=pad): pack train sequences into rows with segment ids that
    # restrict attention (PGM); evaluation stays padded
    c.data.pack = False
    c.data.vocab_size = 4096  # sentencepiece pieces (trained on first run, saved in workdir)
    c.data.bos_id = -1  # BOS token id for sampling; -1: the tokenizer's (GPT-2 50256, BERT 101)
    c.data.val_fraction = 0.05  # last documents held out for validation
    # grain worker processes: -1 = automatic (none on <= 4 cores, else half the cores, <= 16),
    # 0 = read in the trainer process
    c.data.worker_count = -1
    # True: run the input pipeline only (no model) and print examples/s and tokens/s
    c.data.benchmark = False
    c.data.benchmark_batches = 200  # batches timed by the data-only benchmark

    # --- training loop
    c.train = ConfigDict()
    c.train.batch_size = 512  # global batch (sequences), split over data x fsdp devices
    c.train.grad_accum = 1  # micro-batches per step (batch_size / grad_accum sequences each)
    c.train.num_steps = 1_000_000
    c.train.log_every = 100  # progress line + metrics.jsonl row
    c.train.eval_every = 20_000  # validation NELBO / perplexity with the EMA weights
    c.train.eval_batch_size = 32
    c.train.eval_batches = 0  # 0 = the whole validation split
    c.train.checkpoint_every = 5_000
    c.train.keep_checkpoints = 3
    c.train.sample_every = 0  # 0 = off; else write a few samples to the workdir periodically
    # NaN / Inf loss or gradient norm: the step never updates params, optimizer or EMA, and is
    # logged with its number; "skip" continues, "stop" ends the run (exit status 1) at the next
    # log line with the last finite state (checkpoints are left as they were)
    c.train.nonfinite = "skip"
    # JAX profiler trace of steps profile_start .. profile_start + profile_steps - 1 on process
    # 0, written to WORKDIR/tb/plugins/profile/ (TensorBoard's profile tab); 0 = off
    c.train.profile_start = 0
    c.train.profile_steps = 5

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

    # --- device mesh: each axis = ICI size (inside a TPU slice / GPU node) x DCN size (across
    # slices / nodes); one -1 per group is filled from the device (slice) count
    c.mesh = ConfigDict()
    c.mesh.data = -1  # pure data parallelism
    c.mesh.fsdp = 1  # data parallelism with parameters sharded over the embedding dimension
    c.mesh.tensor = 1  # tensor parallelism over heads, MLP and vocabulary
    c.mesh.dcn_data = 1  # >1 (or -1): a hybrid mesh over TPU slices (multislice) or processes
    c.mesh.dcn_fsdp = 1
    c.mesh.dcn_tensor = 1
    # refuse to start when more than this fraction of the parameter values stays replicated
    # while fsdp x tensor > 1 (a rule or mesh size that does not divide the model's dimensions)
    c.mesh.max_replicated_fraction = 0.05

    # --- sampling (pgm_jax.sample and periodic samples)
    c.sample = ConfigDict()
    c.sample.steps = 128  # network calls; PGM decodes L / steps tokens per call
    c.sample.num_samples = 4
    c.sample.batch_size = 4
    c.sample.top_p = 1.0  # nucleus filtering (1.0 = off)
    c.sample.temperature = 1.0  # 0 = greedy
    # True: the reference's float64 Gumbel-max over the vocabulary; False: the same distribution
    # drawn in float32 (two-level Gumbel-max over ~sqrt(V) blocks, 32-bit noise)
    c.sample.float64 = False
    # PGM schedule: efficient-uniform (L / steps tokens per call, the reference default) |
    # efficient-non-uniform (Binomial(L, 1/steps) tokens per sequence and call)
    c.sample.mode = "efficient-uniform"
    # PGM encoder / AR prefix padded to a multiple of this many tokens (one compiled shape per
    # multiple; 0 = automatic: L/16, at least 64); the samples do not depend on it
    c.sample.bucket = 0
    # images: token order halton (a fixed 2-D Halton order) | confidence (most confident first);
    # cfg_w: classifier-free guidance weight (0 = conditional model only), ramped as the
    # reference does; release_quirk: PGM hides the newest clean token as the released inference
    # code does (spec pgm_image.md §4.5; False = the correct masking that matches training)
    c.sample.order = "halton"
    c.sample.cfg_w = 0.0
    c.sample.release_quirk = False

    # --- evaluation (pgm_jax.evaluate)
    c.eval = ConfigDict()
    # judge LM for generative perplexity: a Hugging Face GPT-2 directory (config.json +
    # model.safetensors) or a pgm_jax run trained with algo=ar; "" = no generative perplexity
    c.eval.judge = ""
    c.eval.num_samples = 64  # samples drawn for generative perplexity / entropy
    c.eval.judge_batch_size = 8  # sequences per judge call (the reference's perplexity_batch_size)

    # --- SDTT distillation (spec §8; configs/distill.py): training distils a teacher instead
    c.distill = ConfigDict()
    # "" = ordinary training; else the teacher: a pgm_jax workdir (algo pgm / mdlm) or a
    # reference checkpoint converted with pgm_jax.convert; student and teacher start from its
    # raw (non-EMA) weights, the EMA restarts from them
    c.distill.teacher = ""
    c.distill.num_distill_steps = 2  # teacher ancestral steps of dt per student step
    c.distill.orig_num_sampling_steps = 1024  # round 0: dt = (1 - 1e-5) / this
    c.distill.grow_dt_every = 10_000  # steps per round: dt doubles, student -> teacher
    c.distill.min_num_sampling_steps = 8  # stop when round(1 / dt) drops below this
    # True: the reference's teacher time grid [t + (1-t)(t-2dt), (1-t)(t-2dt)] (spec §9 item
    # 9); False: the intended [t, t - dt]
    c.distill.reference_time_grid = False
    return c
