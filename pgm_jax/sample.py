"""Sample from a trained (or converted) run with its EMA weights.

  python -m pgm_jax.sample --workdir=runs/demo [--num_samples=8 --steps=32 --top_p=0.9]
  python -m pgm_jax.sample --workdir=runs/demo --prompt="def main(" [--max_new_tokens=64]
  python -m pgm_jax.sample --workdir=runs/demo --prompts_file=prompts.jsonl --max_new_tokens=16
  python -m pgm_jax.sample --workdir=runs/digits [--num_samples=8 --classes=0,3 --cfg_w=2
      --order=confidence --vq=VQ_DIR]

PGM runs use the efficient sampler (`--mode`: efficient-uniform or efficient-non-uniform), MDLM
runs the ancestral sampler, AR runs decode left to right. For text and images alike the EMA
weights are restored onto `sharding.inference_mesh()` (every device on the data axis) and each
batch is sharded over it (when the devices divide `--batch_size`); a progress bar counts text
samples. The flags override the run's `sample.*` settings (`sampling.settings.SamplerSettings`,
checked before any checkpoint is read); this module parses them and dispatches to
`sampling.text_run` / `sampling.image_run`. Writes `samples.jsonl` (checkpoint step,
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
from typing import TYPE_CHECKING

from absl import flags

from pgm_jax import cli

if TYPE_CHECKING:  # imported lazily below: flag errors are reported before JAX loads
    from ml_collections import ConfigDict

    from pgm_jax.sampling.settings import SamplerSettings

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
    from pgm_jax.config import is_image, load_run_config, model_config
    from pgm_jax.sampling.settings import SamplerSettings

    workdir = _WORKDIR.value
    config = load_run_config(workdir)
    image = is_image(config)
    for name in TEXT_FLAGS if image else IMAGE_FLAGS:
        cli.require(flags.FLAGS[name].present == 0, f"--{name} applies to "
                    f"{'text' if image else 'image'} runs only; {workdir} is a "
                    f"{config.get('algo')} run")
    given = {"num_samples": _NUM.value, "batch_size": _BATCH.value, "steps": _STEPS.value,
             "temperature": _TEMP.value}
    if image:
        given |= {"order": _ORDER.value, "cfg_w": _CFG_W.value, "release_quirk": _QUIRK.value}
    else:
        given |= {"top_p": _TOP_P.value, "float64": _F64.value, "mode": _MODE.value}
    s = SamplerSettings.build(config, model_config(config), **given)
    prefix = _OUTPUT.value or os.path.join(workdir, "samples")
    if image:
        sample_images(workdir, config, s, prefix)
    elif _PROMPT.value is not None or _PROMPTS_FILE.value is not None or _MAX_NEW.present:
        sample_prompted(workdir, config, s, prefix)
    else:
        sample_text(workdir, config, s, prefix)


def sample_text(workdir: str, config: ConfigDict, s: SamplerSettings, prefix: str) -> None:
    """Unconditional text samples -> PREFIX.jsonl and PREFIX.txt, printed."""
    from pgm_jax.sampling import text_run

    tokenizer = text_run.run_tokenizer(config, workdir)
    t0 = time.perf_counter()
    tokens, step = text_run.sample_run(workdir, config, s, _STEP.value, _SEED.value, tokenizer)
    seconds = time.perf_counter() - t0
    texts = [tokenizer.decode(row) if tokenizer else None for row in tokens.tolist()]
    text_run.write_samples(prefix, tokens, texts, step)
    for j, (row, text) in enumerate(zip(tokens.tolist(), texts, strict=True)):
        print(f"=== sample {j} ===\n{row if text is None else text}\n")
    print(f"wrote {prefix}.jsonl and {prefix}.txt ({len(tokens)} samples in {seconds:.1f}s, "
          f"compilation included)")


def sample_prompted(workdir: str, config: ConfigDict, s: SamplerSettings, prefix: str
                    ) -> None:
    """The prompt flags: PREFIX.jsonl rows with the prompt and the completion apart."""
    from pgm_jax.sampling import prompted, text_run

    cli.require((_PROMPT.value is None) != (_PROMPTS_FILE.value is None),
                "give one of --prompt and --prompts_file")
    cli.require(_MAX_NEW.value is None or _MAX_NEW.value >= 0,
                f"--max_new_tokens={_MAX_NEW.value}: must be >= 0")
    tokenizer = text_run.run_tokenizer(config, workdir)
    cli.require(tokenizer is not None, f"{workdir} has no tokenizer, so text prompts cannot be "
                "encoded: put the run's tokenizer file in the workdir (see data.tokenizer_path)")
    prompts = ([prompted.Prompt(_PROMPT.value)] if _PROMPT.value is not None
               else prompted.read_prompts_file(_PROMPTS_FILE.value))
    t0 = time.perf_counter()
    rows, _ = text_run.sample_prompted_run(
        workdir, config, s, prompts, tokenizer, per_prompt=_NUM.value or 1,
        max_new_tokens=_MAX_NEW.value, step=_STEP.value, seed=_SEED.value)
    seconds = time.perf_counter() - t0
    text_run.write_prompted(prefix, rows)
    for j, r in enumerate(rows):
        print(f"=== sample {j} ===\nPROMPT: {json.dumps(r['prompt'])}\n"
              f"COMPLETION: {r['completion']}\n")
    print(f"wrote {prefix}.jsonl ({len(rows)} samples in {seconds:.1f}s, compilation included)")


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


def sample_images(workdir: str, config: ConfigDict, s: SamplerSettings, prefix: str
                  ) -> None:
    """Per-class image samples -> PREFIX.npz and PREFIX.png (see the module doc), printed."""
    import numpy as np

    from pgm_jax.config import model_config
    from pgm_jax.interop.vq_convert import vq_from_checkpoint
    from pgm_jax.sampling.image_run import sample_image_run

    num_classes = model_config(config).num_classes
    classes = image_classes(num_classes)
    source = config.data.source
    cli.require(not (_VQ.value and source == "digits"), "--vq decodes VQ codes, but "
                f"{workdir} is a digits run (its tokens are pixel levels)")
    if source != "digits" and not _VQ.value:
        print(f"note: data.source={source} samples are VQ codes: pass --vq=DIR to decode them "
              "to a PNG; writing the codes only")
    vq = vq_from_checkpoint(_VQ.value) if _VQ.value else None
    out = sample_image_run(workdir, config, s, prefix, classes=classes, step=_STEP.value,
                           seed=_SEED.value, vq=vq)
    counts = np.bincount(out.labels, minlength=num_classes)
    print(f"step {out.step}: {len(out.codes)} samples ({int(counts.max())} per class, classes "
          f"{sorted(set(out.labels.tolist()))}) in {out.seconds:.1f}s (compilation included), "
          f"{json.dumps(s.image_kwargs())}")
    print(f"wrote {' and '.join(out.paths)}")


if __name__ == "__main__":
    cli.run(main)
