"""Sample quality of several runs at several sampling step counts, with one judge (spec §6.2).

What a distillation is measured by: generative perplexity and entropy of a teacher and its
SDTT student at e.g. 8, 16 and 32 steps, the same judge and number of samples for every cell.
"""

from __future__ import annotations

import time

from pgm_jax import sharding
from pgm_jax.config import load_run_config, model_config, on_current_schema
from pgm_jax.eval.evaluation import sample_quality
from pgm_jax.eval.judge import load_judge
from pgm_jax.sampling import text_run
from pgm_jax.sampling.settings import SamplerSettings


def steps_table(runs: dict[str, str], judge_path: str, steps: list[int], *, num_samples: int,
                batch_size: int, float64: bool = True, seed: int = 0,
                judge_batch_size: int = 8) -> list[dict]:
    """One row per (run, steps): {"run", "workdir", "step", "steps", "gen_ppl", "entropy",
    "num_samples", "judge", "seconds"} from each run's EMA weights (newest checkpoint)."""
    judge = load_judge(judge_path, sharding.inference_mesh())
    rows = []
    for name, workdir in runs.items():
        config = on_current_schema(load_run_config(workdir))
        mcfg = model_config(config)
        tokenizer = text_run.run_tokenizer(config, workdir)
        for n in steps:
            s = SamplerSettings.build(config, mcfg, num_samples=num_samples,
                                      batch_size=batch_size, steps=n, float64=float64)
            t0 = time.perf_counter()
            samples, ckpt_step = text_run.sample_run(workdir, config, s, None, seed, tokenizer,
                                                     progress=False)
            q = sample_quality(judge, samples, tokenizer, mcfg.length, judge_batch_size)
            rows.append({"run": name, "workdir": workdir, "step": ckpt_step, "steps": n,
                         "gen_ppl": q["gen_ppl_first_chunk_retok"], "entropy": q["entropy"],
                         "num_samples": q["num_samples"], "judge": q["judge"],
                         "seconds": time.perf_counter() - t0})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| run | steps | gen. ppl | entropy | samples |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['steps']} | {r['gen_ppl']:.2f} | {r['entropy']:.3f} | "
              f"{r['num_samples']} |" for r in rows]
    return "\n".join(lines)
