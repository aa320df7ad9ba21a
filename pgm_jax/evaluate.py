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
Writes `WORKDIR/eval_step_<N>.json` (or `--output`) and prints it.
"""

from __future__ import annotations

import json
import os

from absl import flags

from pgm_jax import cli

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
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from pgm_jax import sharding  # noqa: PLC0415
    from pgm_jax.config import load_run_config, model_config  # noqa: PLC0415
    from pgm_jax.eval.evaluation import sample_quality, validation  # noqa: PLC0415
    from pgm_jax.eval.judge import load_judge  # noqa: PLC0415
    from pgm_jax.sampling import from_run  # noqa: PLC0415

    config = from_run.on_current_schema(load_run_config(workdir))
    ec = config.eval
    judge_path = ec["judge"] if _JUDGE.value is None else _JUDGE.value
    judge_batch = _JUDGE_BATCH.value or ec["judge_batch_size"]
    cli.require(judge_batch > 0, f"--judge_batch_size={judge_batch}: must be positive")
    cli.require(_VAL.value or bool(judge_path), "nothing to do: --noval and no --judge")
    if _BATCH.value is not None:
        cli.require(_BATCH.value > 0, f"--batch_size={_BATCH.value}: must be positive")
        config.train.eval_batch_size = _BATCH.value
    result: dict = {"workdir": os.path.abspath(workdir)}
    step = _STEP.value
    if _VAL.value:
        result["val"], step = validation(workdir, config, step, _MAX_BATCHES.value)
        result["step"] = step
        print(f"validation: nll {result['val']['nll']:.4f} | ppl {result['val']['ppl']:.2f} | "
              f"{int(result['val']['tokens'])} tokens in {result['val']['examples']} examples",
              flush=True)
    if judge_path:
        mcfg = model_config(config)
        tokenizer = from_run.run_tokenizer(config, workdir)
        cli.require(tokenizer is not None, f"{workdir} has no tokenizer: generative perplexity "
                    "needs the samples as text")
        judge = load_judge(judge_path, sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}))
        if _SAMPLES.value:
            rows, steps = read_samples(_SAMPLES.value)
            samples = np.asarray(rows, np.int32)
            result["gen"] = {"samples_file": os.path.abspath(_SAMPLES.value),
                             "sample_steps": sorted(s for s in steps if s is not None)}
            if len(steps) == 1 and "step" not in result:
                result["step"] = next(iter(steps))
        else:
            s = from_run.settings(config, mcfg, num_samples=_NUM.value or ec["num_samples"],
                                  batch_size=_SAMPLE_BATCH.value, steps=_STEPS.value,
                                  top_p=_TOP_P.value, float64=_F64.value)
            samples, step = from_run.sample_run(workdir, config, s, step, _SEED.value, tokenizer)
            result["step"] = step
            result["gen"] = {"sampling": dict(vars(s)), "seed": _SEED.value}
        result["gen"].update(sample_quality(judge, samples, tokenizer, mcfg.length, judge_batch))
        print(f"samples: gen ppl {result['gen']['gen_ppl_first_chunk_retok']:.2f} (judge "
              f"{judge.name}) | entropy {result['gen']['entropy']:.3f}", flush=True)
    path = _OUTPUT.value or os.path.join(workdir, f"eval_step_{result.get('step', 'na')}.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
