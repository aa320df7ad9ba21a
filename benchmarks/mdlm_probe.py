"""Probe: masked-token cross-entropy against the masking rate t, on the validation split.

  python benchmarks/mdlm_probe.py --workdir=runs/demo-mdlm [--workdir=runs/demo ...]

For an MDLM / complement-MDLM run, each validation row is masked at rate t (every token
independently, as in training) and the EMA model's cross-entropy (nats) on the masked tokens
is averaged; for a PGM run, group 1 (the tokens predicted from group 0) plays the masked tokens.
A model that uses context has a CE that rises with t (less context); one that stays flat at
the unigram entropy (printed for reference, from the training split's token counts) has learnt
little beyond token frequencies. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pgm_jax import sharding
from pgm_jax.config import on_current_schema
from pgm_jax.objectives import schedule
from pgm_jax.restore import restore_params
from pgm_jax.train import setup
from pgm_jax.train.step import TrainState  # noqa: F401

_WORKDIRS = flags.DEFINE_multi_string("workdir", None, "Run directories to probe.")
_TIMES = flags.DEFINE_list("t", ["0.05", "0.25", "0.5", "0.75", "0.95"], "Masking rates.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_SEED = flags.DEFINE_integer("seed", 0, "Masking noise seed.")

DIFFUSION = ("mdlm", "complement_mdlm", "pgm")


def masked_ce_fn(graphdef: nnx.GraphDef, algo: str, mask_index: int):
    """(params, tokens int32[B, L], valid int32[B, L], t float32[], key) -> (sum of -log p over
    the masked / group-1 valid tokens, their number)."""

    def fn(params, tokens, valid, t, key):
        model = nnx.merge(graphdef, params)
        tb = jnp.full((tokens.shape[0],), t, jnp.float32)
        if algo == "pgm":
            groups = schedule.sample_partition(key, tb, tokens.shape)
            logp = model(tokens, groups, targets=tokens)
            hit = groups.astype(bool)
        else:
            xt = schedule.mask_tokens(key, tokens, tb, mask_index)
            logp = model(xt, sigma=schedule.sigma_of(tb), targets=tokens)
            hit = xt == mask_index
        w = (hit & (valid > 0)).astype(jnp.float32)
        return jnp.sum(-logp * w), jnp.sum(w)

    return jax.jit(fn)


def unigram_ce(run: setup.Run) -> float:
    """Cross-entropy (nats) of the validation tokens under the training split's unigram
    (add-one smoothed over the real vocabulary)."""
    v = run.model_cfg.vocab_size
    counts = np.ones(v, np.float64)
    for i in range(len(run.data.train)):
        row = run.data.train[i]
        np.add.at(counts, row["tokens"][row["valid"] > 0], 1)
    counts[run.model_cfg.mask_index] = 0
    logp = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for i in range(len(run.data.val)):
        row = run.data.val[i]
        toks = row["tokens"][row["valid"] > 0]
        total, n = total - logp[toks].sum(), n + toks.size
    return total / n


def probe(workdir: str, times: list[float], step: int | None, seed: int) -> dict:
    with open(os.path.join(workdir, "config.json")) as f:
        from ml_collections import ConfigDict

        config = ConfigDict(json.load(f))
    run = setup.setup(on_current_schema(config), workdir)
    out = {"workdir": workdir, "algo": config.algo, "unigram_ce": unigram_ce(run)}
    if config.algo not in DIFFUSION:
        return out
    graphdef, params, out["step"] = restore_params(workdir, run.model_cfg, run.mesh, step)
    fn = masked_ce_fn(graphdef, config.algo, run.model_cfg.mask_index)
    bs = run.config.train.eval_batch_size
    key = jax.random.key(seed)
    for t in times:
        total, n = 0.0, 0.0
        for i, batch in enumerate(run.data.eval_batches(bs)):
            gb = sharding.global_batch(run.mesh, {k: batch[k] for k in ("tokens", "valid")})
            s, c = fn(params, gb["tokens"], gb["valid"], t, jax.random.fold_in(key, i))
            total, n = total + float(s), n + float(c)
        out[f"ce@{t}"] = total / max(n, 1.0)
    return out


def main(argv: list[str]) -> None:
    del argv
    times = [float(t) for t in _TIMES.value]
    rows = [probe(w, times, _STEP.value, _SEED.value) for w in _WORKDIRS.value]
    print("| run | algo | step | unigram CE | " + " | ".join(f"t={t}" for t in times) + " |")
    print("|---|---|---|---|" + "---|" * len(times))
    for r in rows:
        ces = " | ".join(f"{r[f'ce@{t}']:.3f}" if f"ce@{t}" in r else "-" for t in times)
        print(f"| {r['workdir']} | {r['algo']} | {r.get('step', '-')} | {r['unigram_ce']:.3f} "
              f"| {ces} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
