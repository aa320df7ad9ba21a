"""Sample from a trained (or converted) run with its EMA weights.

  python -m pgm_jax.sample --workdir=runs/demo [--num_samples=8 --steps=32 --top_p=0.9]
  python -m pgm_jax.sample --workdir=runs/demo --prompt="def main(" [--max_new_tokens=64]
  python -m pgm_jax.sample --workdir=runs/demo --prompts_file=prompts.jsonl --max_new_tokens=16
  python -m pgm_jax.sample --workdir=runs/digits [--num_samples=8 --classes=0,3 --cfg_w=2
      --order=confidence --vq=VQ_DIR]

PGM runs use the efficient sampler (`--mode`: efficient-uniform or efficient-non-uniform), MDLM
runs the ancestral sampler, AR runs decode left to right. The EMA weights are restored onto a
data-parallel mesh over every device and each batch is sharded over it (when the devices
divide `--batch_size`); a progress bar counts samples. Writes `samples.jsonl` (checkpoint step,
token ids, text) and `samples.txt` under the workdir (or the `--output` prefix).

Prompts (`--prompt`, or `--prompts_file` with one prompt per line, a JSON string or plain
text, or `{"prefix": ..., "suffix": ...}` for infilling `--max_new_tokens` tokens between them)
are kept exactly and only the positions after (or between) them are decoded; `--num_samples`
is then the number of samples per prompt (default 1). `samples.jsonl` keeps the prompt and the
completion apart (text and token ids).

Image runs (algo image_pgm / maskgit) draw `--num_samples` images of each class of `--classes`
(default: every class, or 10 spread over them) with the run's sampler settings (`--order`,
`--cfg_w`, `--steps`, `--temperature`, `--release_quirk`) and write `samples.npz` (codes int32
[M, N] in raster order, labels int32 [M], step) and `samples.png`, a grid with one row per
class. Digits tokens are pixel levels (intensity level / 16); VQ codes (imagenet_vq) are
decoded to pixels only with `--vq` (a converted VQ folder or the reference `.pt`).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from pgm_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by pgm_jax.main/convert.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_NUM = flags.DEFINE_integer("num_samples", None, "Number of samples (default: config).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Samples per batch (default: config).")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps / network calls (default: config).")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus probability (1.0 = off).")
_TEMP = flags.DEFINE_float("temperature", None,
                           "Divides the logits (text and images); 0 = greedy (text only).")
_F64 = flags.DEFINE_bool("float64", None, "Reference float64 Gumbel arithmetic.")
_MODE = flags.DEFINE_enum("mode", None, ["efficient-uniform", "efficient-non-uniform"],
                          "PGM schedule (default: config sample.mode).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUTPUT = flags.DEFINE_string("output", None, "Output path prefix (default: WORKDIR/samples).")
_CFG_W = flags.DEFINE_float("cfg_w", None, "Images: classifier-free guidance weight (default: "
                            "config sample.cfg_w; 0 = none).")
_ORDER = flags.DEFINE_enum("order", None, ["halton", "confidence"],
                           "Images: token order (default: config sample.order).")
_QUIRK = flags.DEFINE_bool("release_quirk", None, "Images, PGM: hide the newest clean token "
                           "as the released sampler does (default: config).")
_CLASSES = flags.DEFINE_list("classes", None, "Images: class ids, one grid row each (default: "
                             "every class, or 10 spread over them).")
_VQ = flags.DEFINE_string("vq", None, "Images with VQ codes: the VQ model that decodes them to "
                          "pixels (a `pgm_jax.convert vq` folder or vq_ds8_c2i.pt).")
_PROMPT = flags.DEFINE_string("prompt", None, "Text prompt to continue (text runs).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "JSON lines of prompts: a string per "
                                    'line, or {"prefix": ..., "suffix": ...} to infill.')
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Tokens to decode after a prompt (or "
                                "between prefix and suffix); default: up to model.length.")
PROMPT_FLAGS = ("prompt", "prompts_file", "max_new_tokens")
IMAGE_FLAGS = ("cfg_w", "order", "release_quirk", "classes", "vq")
TEXT_FLAGS = ("top_p", "float64", "mode", *PROMPT_FLAGS)


def main(argv: list[str]) -> None:
    cli.no_positional_args(argv)
    cli.require(bool(_WORKDIR.value), "--workdir is required")
    cli.require(os.path.isdir(_WORKDIR.value),
                f"--workdir={_WORKDIR.value}: no such directory (a run of pgm_jax.main)")
    cli.require(_STEP.value is None or _STEP.value >= 0, f"--step={_STEP.value}: must be >= 0")
    import jax

    from pgm_jax.config import IMAGE_ALGOS, load_run_config, model_config
    from pgm_jax.sampling import from_run

    workdir = _WORKDIR.value
    config = load_run_config(workdir)
    image = config.get("algo") in IMAGE_ALGOS
    for name in TEXT_FLAGS if image else IMAGE_FLAGS:
        cli.require(flags.FLAGS[name].present == 0, f"--{name} applies to "
                    f"{'text' if image else 'image'} runs only; {workdir} is a "
                    f"{config.get('algo')} run")
    if image:
        sample_images(workdir, config)
        return
    s = from_run.settings(config, model_config(config), num_samples=_NUM.value,
                          batch_size=_BATCH.value, steps=_STEPS.value, top_p=_TOP_P.value,
                          temperature=_TEMP.value, float64=_F64.value, mode=_MODE.value)
    tokenizer = from_run.run_tokenizer(config, workdir)
    if _PROMPT.value is not None or _PROMPTS_FILE.value is not None or _MAX_NEW.present:
        sample_prompted(workdir, config, s, tokenizer)
        return
    t0 = time.perf_counter()
    tokens, step = from_run.sample_run(workdir, config, s, _STEP.value, _SEED.value, tokenizer)
    seconds = time.perf_counter() - t0
    texts = [tokenizer.decode(row) if tokenizer else None for row in tokens.tolist()]
    prefix = _OUTPUT.value or os.path.join(workdir, "samples")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        with open(prefix + ".jsonl", "w") as f:
            for row, text in zip(tokens.tolist(), texts, strict=True):
                f.write(json.dumps({"step": step, "tokens": row, "text": text}) + "\n")
        with open(prefix + ".txt", "w") as f:
            for j, (row, text) in enumerate(zip(tokens.tolist(), texts, strict=True)):
                f.write(f"=== sample {j} ===\n{row if text is None else text}\n\n")
    for j, (row, text) in enumerate(zip(tokens.tolist(), texts, strict=True)):
        print(f"=== sample {j} ===\n{row if text is None else text}\n")
    print(f"wrote {prefix}.jsonl and {prefix}.txt ({len(tokens)} samples in {seconds:.1f}s, "
          f"compilation included)")


def sample_prompted(workdir: str, config, s, tokenizer) -> None:
    """The prompt branch: samples.jsonl rows with the prompt and the completion apart."""
    import jax

    from pgm_jax import sharding
    from pgm_jax.config import model_config
    from pgm_jax.restore import restore_params
    from pgm_jax.sampling import from_run, prompted

    cli.require((_PROMPT.value is None) != (_PROMPTS_FILE.value is None),
                "give one of --prompt and --prompts_file")
    cli.require(_MAX_NEW.value is None or _MAX_NEW.value >= 0,
                f"--max_new_tokens={_MAX_NEW.value}: must be >= 0")
    cli.require(tokenizer is not None, f"{workdir} has no tokenizer, so text prompts cannot be "
                "encoded: put the run's tokenizer file in the workdir (see data.tokenizer_path)")
    prompts = ([prompted.Prompt(_PROMPT.value)] if _PROMPT.value is not None
               else prompted.read_prompts_file(_PROMPTS_FILE.value))
    mcfg = model_config(config)
    per_prompt = _NUM.value or 1
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    graphdef, params, step = restore_params(workdir, mcfg, mesh, _STEP.value, item="ema")
    t0 = time.perf_counter()
    cond, tokens = prompted.sample_prompts(
        graphdef, params, mcfg, mesh, prompts, tokenizer,
        bos_id=from_run.bos_id(config, tokenizer, workdir), per_prompt=per_prompt,
        max_new_tokens=_MAX_NEW.value, seed=_SEED.value,
        **(s.generate_kwargs() | {"batch_size": min(s.batch_size, len(prompts) * per_prompt)}))
    seconds = time.perf_counter() - t0
    rows = prompted.records(prompts, cond, tokens, tokenizer, per_prompt, step)
    prefix = _OUTPUT.value or os.path.join(workdir, "samples")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        with open(prefix + ".jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    for j, r in enumerate(rows):
        print(f"=== sample {j} ===\nPROMPT: {json.dumps(r['prompt'])}\n"
              f"COMPLETION: {r['completion']}\n")
    print(f"wrote {prefix}.jsonl ({len(rows)} samples in {seconds:.1f}s, compilation included)")


def image_settings(config, model_cfg) -> dict:
    """The run's `sample.*` image settings overridden by the flags given; checked."""
    from pgm_jax.sampling.from_run import on_current_schema
    from pgm_jax.sampling.image import sampler_settings

    s = sampler_settings(on_current_schema(config).sample)
    given = {"steps": _STEPS.value, "order": _ORDER.value, "temperature": _TEMP.value,
             "cfg_w": _CFG_W.value, "release_quirk": _QUIRK.value}
    s.update({k: v for k, v in given.items() if v is not None})
    n = model_cfg.length
    cli.require(0 < s["steps"] <= n, f"--steps={s['steps']}: must be in [1, {n}] (the image "
                "tokens)")
    cli.require(s["cfg_w"] >= 0, f"--cfg_w={s['cfg_w']}: must be >= 0")
    # Same meaning as text (logits / temperature); the image samplers have no greedy mode.
    cli.require(s["temperature"] > 0, f"--temperature={s['temperature']}: must be > 0 for "
                "image runs (it divides the logits; 0 = greedy exists for text only)")
    return s


def image_classes(num_classes: int) -> list[int] | None:
    """`--classes` as ints in [0, num_classes), or None (the default spread)."""
    if _CLASSES.value is None:
        return None
    try:
        classes = [int(c) for c in _CLASSES.value]
    except ValueError:
        raise cli.UsageError(f"--classes={','.join(_CLASSES.value)}: must be integers") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    cli.require(bool(classes) and not bad, f"--classes: {bad or 'empty'}: class ids must be in "
                f"[0, {num_classes})")
    return classes


def sample_images(workdir: str, config) -> None:
    """The image branch: per-class samples -> PREFIX.npz and PREFIX.png (see module doc)."""
    import jax
    import numpy as np

    from pgm_jax import sharding
    from pgm_jax.config import model_config
    from pgm_jax.data import images
    from pgm_jax.eval import grid
    from pgm_jax.interop.vq_convert import vq_from_checkpoint
    from pgm_jax.restore import restore_params
    from pgm_jax.sampling import image as image_sampling
    from pgm_jax.sampling.from_run import on_current_schema

    mcfg = model_config(config)
    settings = image_settings(config, mcfg)
    per_class = _NUM.value or on_current_schema(config).sample.num_samples
    batch = _BATCH.value or on_current_schema(config).sample.batch_size
    cli.require(per_class > 0, f"--num_samples={per_class}: must be positive")
    cli.require(batch > 0, f"--batch_size={batch}: must be positive")
    labels = image_sampling.grid_labels(mcfg.num_classes, per_class,
                                        image_classes(mcfg.num_classes))
    source = config.data.source
    cli.require(not (_VQ.value and source == "digits"), "--vq decodes VQ codes, but "
                f"{workdir} is a digits run (its tokens are pixel levels)")
    if source != "digits" and not _VQ.value:
        print(f"note: data.source={source} samples are VQ codes: pass --vq=DIR to decode them "
              "to a PNG; writing the codes only")
    vq = vq_from_checkpoint(_VQ.value) if _VQ.value else None
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    graphdef, params, step = restore_params(workdir, mcfg, mesh, _STEP.value, item="ema")
    t0 = time.perf_counter()
    codes = image_sampling.image_samples(graphdef, params, mcfg, jax.random.key(_SEED.value),
                                         labels, batch, **settings)
    seconds = time.perf_counter() - t0
    if source == "digits":
        pixels = images.digits_pixels(codes)
    else:
        pixels = None if vq is None else images.vq_pixels(vq, codes)
    prefix = _OUTPUT.value or os.path.join(workdir, "samples")
    paths = []
    if jax.process_index() == 0:
        paths = grid.save_image_samples(prefix, codes, labels, pixels, per_class,
                                        step=np.int64(step), settings=json.dumps(settings))
    counts = np.bincount(labels, minlength=mcfg.num_classes)
    print(f"step {step}: {len(codes)} samples ({int(counts.max())} per class, classes "
          f"{sorted(set(labels.tolist()))}) in {seconds:.1f}s (compilation included), "
          f"{json.dumps(settings)}")
    print(f"wrote {' and '.join(paths)}")


if __name__ == "__main__":
    cli.run(main)
