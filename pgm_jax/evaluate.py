"""Evaluate a run with its EMA weights: exact validation NELBO / perplexity, sample quality.

  python -m pgm_jax.evaluate --workdir=runs/demo [--judge=DIR --num_samples=64 --steps=32]

* Validation (spec §6.1): the reference's estimator (PGM: group-1 terms of a random partition,
  times stratified over each batch; MDLM: masked tokens; AR: exact NLL) over the *whole*
  validation split, the last batch padded and masked so no example is dropped; nats per token,
  perplexity, bits per token.
* With `--judge`: samples (drawn now, or read from `--samples=FILE.jsonl`) scored by a judge
  causal LM (spec §6.2): `gen_ppl_first_chunk_retok` (decoded, retokenized by the judge),
  `gen_ppl_all_no_retok` (raw ids; only when the judge shares the sampler's vocabulary) and the
  mean per-sample token entropy. The judge is a Hugging Face GPT-2 directory (config.json +
  model.safetensors, any size; GPT-2 BPE from its vocab.json + merges.txt or OpenAI's bundled
  files) or a pgm_jax run directory trained with `algo=ar`.
* Image runs (algo image_pgm / maskgit): the validation loss (the run's training objective,
  nats per image token, over every validation image) and, with `--inception=WEIGHTS` and
  `--fid_stats=STATS` (and `--vq=VQ` to decode VQ codes), FID and Inception Score of
  `--num_samples` class-balanced samples (spec pgm_image.md §5). Digits runs skip FID: 8x8
  pixel-level images are not what the FID Inception protocol measures.

    python -m pgm_jax.evaluate --workdir=runs/in_pgm --inception=inception_v3_weights_fid.pickle \
        --fid_stats=imagenet_val_256.npz --vq=vq8 --num_samples=50000 --cfg_w=2
Writes `WORKDIR/eval_step_<N>.json` (or `--output`) and prints it. This module parses the flags
and dispatches: validation to `eval.evaluation`, samples to `sampling.text_run` and
`eval.image_fid`, all on `sharding.inference_mesh()` (the validation on the run's own mesh).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from absl import flags

from pgm_jax import cli

if TYPE_CHECKING:  # imported lazily below: flag errors are reported before JAX loads
    from ml_collections import ConfigDict

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by pgm_jax.main/convert.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_BATCH = flags.DEFINE_integer("batch_size", None,
                              "Validation batch size (default: config train.eval_batch_size).")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", 0, "Validation batches (0 = all).")
_VAL = flags.DEFINE_bool("val", True, "Compute the validation NELBO.")
_JUDGE = flags.DEFINE_string("judge", None, "Judge LM for generative perplexity: a GPT-2 "
                             "directory or a pgm_jax AR run (default: config eval.judge).")
_JUDGE_BATCH = flags.DEFINE_integer("judge_batch_size", None,
                                    "Judge batch size (default: config eval.judge_batch_size).")
_SAMPLES = flags.DEFINE_string("samples", None, "Score these samples (a samples.jsonl written "
                               "by pgm_jax.sample) instead of drawing new ones.")
_NUM = flags.DEFINE_integer("num_samples", None, "Samples to draw (default: config "
                            "eval.num_samples).")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch_size", None,
                                     "Samples per batch (default: config sample.batch_size).")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps (default: config sample.steps).")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus probability (1.0 = off).")
_F64 = flags.DEFINE_bool("float64", None, "Reference float64 Gumbel arithmetic.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUTPUT = flags.DEFINE_string("output", None, "Results file (default: "
                              "WORKDIR/eval_step_<N>.json).")
_INCEPTION = flags.DEFINE_string("inception", None, "Images: FID Inception weights (a local "
                                 "file: jax-fid's pickle or a pytorch-fid / torch-fidelity .pth).")
_FID_STATS = flags.DEFINE_string("fid_stats", None, "Images: reference FID statistics (.npz "
                                 "with mu, sigma, or PGM's torch file {mu, cov}).")
_VQ = flags.DEFINE_string("vq", None, "Images with VQ codes: the VQ model that decodes samples "
                          "for FID (a `pgm_jax.convert vq` folder or vq_ds8_c2i.pt).")
_CFG_W = flags.DEFINE_float("cfg_w", None, "Images: guidance weight (default: config).")
_ORDER = flags.DEFINE_enum("order", None, ["halton", "confidence"],
                           "Images: token order (default: config sample.order).")
TEXT_FLAGS = ("judge", "judge_batch_size", "samples", "top_p", "float64")
IMAGE_FLAGS = ("inception", "fid_stats", "vq", "cfg_w", "order")
SAMPLE_FLAG_NAMES = {"batch_size": "sample_batch_size"}  # sampler setting -> its flag here


def read_samples(path: str) -> tuple[list, set]:
    """Token rows and checkpoint steps of a samples.jsonl."""
    if not os.path.isfile(path):
        raise cli.UsageError(f"--samples={path}: no such file (write one with pgm_jax.sample)")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    cli.require(bool(rows), f"--samples={path} holds no samples")
    return [r["tokens"] for r in rows], {r.get("step") for r in rows}


def main(argv: list[str]) -> None:
    cli.no_positional_args(argv)
    cli.require(bool(_WORKDIR.value), "--workdir is required")
    workdir = _WORKDIR.value
    cli.require(os.path.isdir(workdir), f"--workdir={workdir}: no such directory (a run of "
                "pgm_jax.main)")
    cli.require(_MAX_BATCHES.value >= 0, f"--max_batches={_MAX_BATCHES.value}: must be >= 0")
    from pgm_jax.config import is_image, load_run_config, on_current_schema

    config = on_current_schema(load_run_config(workdir))
    image = is_image(config)
    for name in TEXT_FLAGS if image else IMAGE_FLAGS:
        cli.require(flags.FLAGS[name].present == 0, f"--{name} applies to "
                    f"{'text' if image else 'image'} runs only; {workdir} is a {config.algo} run")
    if _BATCH.value is not None:
        cli.require(_BATCH.value > 0, f"--batch_size={_BATCH.value}: must be positive")
        config.train.eval_batch_size = _BATCH.value
    result = (evaluate_images if image else evaluate_text)(workdir, config)
    write_result(workdir, result)


def evaluate_text(workdir: str, config: ConfigDict) -> dict:
    """The text branch of `main`: validation NELBO, then sample quality under a judge."""
    import numpy as np

    from pgm_jax import sharding
    from pgm_jax.config import model_config
    from pgm_jax.eval.evaluation import sample_quality
    from pgm_jax.eval.judge import load_judge
    from pgm_jax.sampling import text_run
    from pgm_jax.sampling.settings import SamplerSettings

    ec = config.eval
    judge_path = ec["judge"] if _JUDGE.value is None else _JUDGE.value
    judge_batch = _JUDGE_BATCH.value or ec["judge_batch_size"]
    cli.require(judge_batch > 0, f"--judge_batch_size={judge_batch}: must be positive")
    cli.require(_VAL.value or bool(judge_path), "nothing to do: --noval and no --judge")
    mcfg = model_config(config)
    s = None
    if judge_path and not _SAMPLES.value:  # checked before the validation pass
        s = SamplerSettings.build(config, mcfg, flag_names=SAMPLE_FLAG_NAMES,
                                  num_samples=_NUM.value or ec["num_samples"],
                                  batch_size=_SAMPLE_BATCH.value, steps=_STEPS.value,
                                  top_p=_TOP_P.value, float64=_F64.value)
    result: dict = {"workdir": os.path.abspath(workdir)}
    step = _STEP.value
    if _VAL.value:
        result["val"], step = run_validation(workdir, config, step)
        result["step"] = step
        print(f"validation: nll {result['val']['nll']:.4f} | ppl {result['val']['ppl']:.2f} | "
              f"{int(result['val']['tokens'])} tokens in {result['val']['examples']} examples",
              flush=True)
    if judge_path:
        tokenizer = text_run.run_tokenizer(config, workdir)
        cli.require(tokenizer is not None, f"{workdir} has no tokenizer: generative perplexity "
                    "needs the samples as text")
        judge = load_judge(judge_path, sharding.inference_mesh())
        if _SAMPLES.value:
            rows, steps = read_samples(_SAMPLES.value)
            samples = np.asarray(rows, np.int32)
            result["gen"] = {"samples_file": os.path.abspath(_SAMPLES.value),
                             "sample_steps": sorted(s for s in steps if s is not None)}
            if len(steps) == 1 and "step" not in result:
                result["step"] = next(iter(steps))
        else:
            samples, step = text_run.sample_run(workdir, config, s, step, _SEED.value, tokenizer)
            result["step"] = step
            result["gen"] = {"sampling": s.text_fields(), "seed": _SEED.value}
        result["gen"].update(sample_quality(judge, samples, tokenizer, mcfg.length, judge_batch))
        print(f"samples: gen ppl {result['gen']['gen_ppl_first_chunk_retok']:.2f} (judge "
              f"{judge.name}) | entropy {result['gen']['entropy']:.3f}", flush=True)
    return result


def run_validation(workdir: str, config: ConfigDict, step: int | None) -> tuple[dict, int]:
    """(validation metrics, checkpoint step), text or image: the run set up as training sets it
    up (same mesh, data and checks), then `eval.evaluation.validation`."""
    from pgm_jax.eval.evaluation import validation
    from pgm_jax.train.setup import setup

    run = setup(config, workdir)
    return validation(workdir, config, run.data, run.mesh, run.model_cfg, step,
                      _MAX_BATCHES.value)


def write_result(workdir: str, result: dict) -> None:
    """Prints `result` and writes it to `--output` (default WORKDIR/eval_step_<N>.json)."""
    import jax

    path = _OUTPUT.value or os.path.join(workdir, f"eval_step_{result.get('step', 'na')}.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


def evaluate_images(workdir: str, config: ConfigDict) -> dict:
    """The image branch of `main`: validation loss, then FID / IS when asked for."""
    from pgm_jax.config import model_config
    from pgm_jax.eval.image_fid import image_fid
    from pgm_jax.sampling.settings import SamplerSettings

    want_fid = bool(_INCEPTION.value or _FID_STATS.value)
    cli.require(bool(_INCEPTION.value) == bool(_FID_STATS.value),
                "--inception and --fid_stats go together (FID needs both)")
    source = config.data.source
    if want_fid and source == "digits":
        print("note: FID skipped: data.source=digits holds 8x8 pixel-level images, not the "
              "256x256 VQ-decoded images the FID Inception protocol measures", flush=True)
        want_fid = False
    if want_fid:
        cli.require(bool(_VQ.value), f"FID of data.source={source} samples needs --vq=VQ "
                    "(the VQ model that decodes the codes to pixels)")
    cli.require(_VAL.value or want_fid, "nothing to do: --noval and no --inception/--fid_stats")
    if want_fid:  # checked before the validation pass
        s = SamplerSettings.build(config, model_config(config), flag_names=SAMPLE_FLAG_NAMES,
                                  num_samples=_NUM.value or config.eval.num_samples,
                                  batch_size=_SAMPLE_BATCH.value, steps=_STEPS.value,
                                  cfg_w=_CFG_W.value, order=_ORDER.value)
    result: dict = {"workdir": os.path.abspath(workdir)}
    step = _STEP.value
    if _VAL.value:
        result["val"], step = run_validation(workdir, config, step)
        result["step"] = step
        v = result["val"]
        print(f"validation: nll {v['nll']:.4f} nats/token ({v['bits_per_token']:.4f} bits) | "
              f"{int(v['images'])} of {v['examples']} images", flush=True)
    if want_fid:
        result["fid"], step = image_fid(workdir, config, s, inception_path=_INCEPTION.value,
                                        fid_stats_path=_FID_STATS.value, vq_path=_VQ.value,
                                        step=step, seed=_SEED.value)
        result["step"] = step
        print(f"samples: FID {result['fid']['fid']:.2f} | IS "
              f"{result['fid']['inception_score']:.2f}", flush=True)
    return result


if __name__ == "__main__":
    cli.run(main)
