"""PGM against its baselines (MDLM, complement-MDLM, AR), trained fairly: the seed's table, small.

  python -m benchmarks.compare                      # `make compare`: demo corpus, L=256, 200 steps
  python -m benchmarks.compare --models=pgm,mdlm --steps=50 --no_sweep --output=runs/cmp
  python -m benchmarks.compare --corpus='novel/*.txt' --output=runs/cmp_novel

Measured with the defaults (2026-12-05, 819k training tokens per run; docs/mdlm_vs_pgm.md):
validation perplexity PGM 429.8, MDLM 658.9, complement-MDLM 649.4, AR 247.3; sampling a batch
of 4 at 128 steps PGM 1.74 s, MDLM 6.75 s (3.9x); swept rates PGM / complement-MDLM / AR 3e-3,
MDLM 3e-4.

Every model starts from the same preset (configs/demo.py:<model> at --size: `small`, H 128 and
2 heads, by default; `demo` is the demo's shape) and gets:
* a parameter count matched to PGM's: the MDLM / AR depth is the one closest to PGM's count
  (printed with the ratio; a mismatch above 5% is flagged);
* the same seed, data order, validation split, tokenizer (trained once, copied into every
  run) and number of training tokens (--steps x batch x --length);
* its own learning rate: each lr of --lrs is trained for the full --steps and the one with the
  lowest validation NELBO (its own validation loss, EMA weights) is kept; the sweep goes to
  OUTPUT/sweep.json. --no_sweep trains only the recorded rate (configs/demo.py LEARNING_RATES).
Every run goes through the paths users run, as subprocesses: `pgm_jax.main` (training, with
periodic validation for the curve), `pgm_jax.evaluate` (exact validation NELBO over the whole
split; generative perplexity and entropy of --num_samples samples under the AR run of this
comparison as judge, or --judge) and `benchmarks.run_sampling_speed` (latency of one batch
and tokens/s at L and 128 steps, the sampling benchmark's timer). Runs live in
OUTPUT/runs/<model>_lr<lr>_<config hash>; each phase's result is cached there, and an
interrupted run resumes from its last checkpoint, so re-running the command continues.
Writes OUTPUT/compare.md (the table), OUTPUT/compare.json and OUTPUT/curves.png (validation
perplexity against training tokens).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("pgm", "mdlm", "complement_mdlm", "ar")
SWEEP_LRS = (3e-4, 1e-3, 3e-3)
SAMPLE_STEPS = 128  # the seed table's sampling steps
# Phase costs relative to one training step, for the ETA only.
EVAL_COST, SPEED_COST = 0.3, 0.2
# --size: tiny is for tests (seconds per run); demo is configs/demo.py's shape; small (the
# default: H 128, 2 heads) trains ~2.2x faster than demo: the whole default comparison (4 models
# x 3 learning rates + evaluation and speed) took 67 CPU-minutes (user + sys) on a 2-core
# AVX-512 EPYC, 2026-12-05: ~41 minutes on an idle 2-core machine at the 1.6 cores a training
# run keeps busy (estimated from CPU time; not timed idle).
SIZES = {
    "demo": {},
    "small": {"model.hidden_size": 128, "model.n_heads": 2, "model.cond_dim": 32},
    "tiny": {"model.hidden_size": 64, "model.n_heads": 2, "model.cond_dim": 32,
             "model.encoder_blocks": 1, "model.decoder_blocks": 1, "model.n_blocks": 2,
             "data.vocab_size": 512, "data.val_fraction": 0.02, "train.batch_size": 8,
             "train.eval_batch_size": 8},
}


class UsageError(Exception):
    """Bad flags: one line, exit status 2."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--steps", type=int, default=200, help="training steps of every run")
    p.add_argument("--length", type=int, default=256, help="sequence length L")
    p.add_argument("--corpus", default="", help="text files / globs (default: the demo corpus)")
    p.add_argument("--output", default="runs/compare")
    p.add_argument("--no_sweep", action="store_true", help="use the recorded learning rates")
    p.add_argument("--lrs", default=",".join(map(str, SWEEP_LRS)), help="the sweep's grid")
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--batch_size", type=int, default=0, help="0: the preset's")
    p.add_argument("--evals", type=int, default=8, help="validation points on the curve")
    p.add_argument("--num_samples", type=int, default=16, help="samples for gen. perplexity")
    p.add_argument("--sample_batch", type=int, default=4, help="batch of the speed / samples")
    p.add_argument("--judge", default="", help="AR judge run (default: this comparison's AR)")
    a = p.parse_args(argv)
    a.models = [m for m in a.models.split(",") if m]
    bad = [m for m in a.models if m not in MODELS]
    if bad or not a.models:
        raise UsageError(f"--models={','.join(a.models)}: choose from {','.join(MODELS)}")
    if a.steps < 2 or a.length < 8 or a.evals < 1:
        raise UsageError("--steps must be >= 2, --length >= 8, --evals >= 1")
    try:
        a.lrs = [float(x) for x in a.lrs.split(",") if x]
    except ValueError:
        raise UsageError(f"--lrs={a.lrs}: comma-separated numbers, e.g. 5e-4,1e-3") from None
    if a.corpus:
        import glob

        paths = [p for pat in a.corpus.split(",") for p in (glob.glob(pat) or [pat])]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise UsageError(f"--corpus: {missing[0]} not found (text / jsonl / parquet files)")
    return a


# ----------------------------------------------------------------------------- configuration
def base_overrides(a: argparse.Namespace) -> dict:
    """Config overrides every model shares (shape, data, budget, schedule of evaluations)."""
    every = max(a.steps // a.evals, 1)
    o = dict(SIZES[a.size])
    o.update({"model.length": a.length, "train.num_steps": a.steps, "train.eval_every": every,
              "train.checkpoint_every": every, "train.log_every": max(min(every, 25), 1),
              "optim.warmup_steps": min(50, max(a.steps // 10, 1))})
    if a.batch_size:
        o["train.batch_size"] = a.batch_size
    if a.corpus:
        o.update({"data.source": "files", "data.files": a.corpus})
    return o


def preset(model: str, overrides: dict):
    """configs/demo.py:<model> with the overrides applied (for parameter counts and lrs)."""
    sys.path.insert(0, REPO)
    from configs import demo

    c = demo.get_config(model)
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def param_count(model: str, overrides: dict) -> int:
    """Parameters of the model the overrides describe (abstract: nothing is allocated)."""
    import jax
    import numpy as np
    from flax import nnx

    from pgm_jax.config import model_config
    from pgm_jax.models import build_model

    c = preset(model, overrides)
    vocab = c.data.vocab_size + 1  # sentencepiece pieces + the appended MASK
    cfg = model_config(c, vocab_size=vocab, mask_index=vocab - 1)
    abstract = nnx.eval_shape(lambda: build_model(cfg))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def matched_depths(models: list[str], shared: dict) -> dict[str, dict]:
    """Per model: {"n_blocks"?, "params", "ratio"}: DiT / AR depth closest to PGM's count."""
    target = param_count("pgm", shared)
    out = {}
    for m in models:
        if m == "pgm":
            out[m] = {"params": target, "ratio": 1.0}
            continue
        # The count is affine in the depth: two abstract builds give every depth's.
        one, two = (param_count(m, {**shared, "model.n_blocks": n}) for n in (1, 2))
        best = max(1, round((target - one) / (two - one)) + 1)
        n = param_count(m, {**shared, "model.n_blocks": best})
        out[m] = {"n_blocks": best, "params": n, "ratio": n / target}
    return out


def config_hash(model: str, overrides: dict) -> str:
    blob = json.dumps({"model": model, **overrides}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- running
class Progress:
    """One line per phase: which model and phase, elapsed time and an ETA from the work left
    (in training-step units; cached phases cost nothing)."""

    def __init__(self, total_units: float):
        self.total, self.done, self.spent, self.start = total_units, 0.0, 0.0, time.time()

    def begin(self, model: str, phase: str, detail: str = "") -> None:
        elapsed = time.time() - self.start
        rate = self.spent / max(self.done, 1e-9) if self.done else None
        eta = "?" if rate is None else _fmt(rate * (self.total - self.done))
        print(f"[compare] {model:15s} {phase:8s} {detail:24s} | {self.done / self.total:4.0%} "
              f"| elapsed {_fmt(elapsed)} | ETA {eta}", flush=True)

    def end(self, units: float, seconds: float, cached: bool) -> None:
        self.done += units
        if not cached:
            self.spent += seconds
        else:
            self.total -= units
            self.done -= units


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def run(cmd: list[str], log: str) -> str:
    """Runs `python -m cmd...` in the repository, output to `log`; returns stdout's last line."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=f, text=True)
        f.write(proc.stdout)
    if proc.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}); log {log}:\n"
                           f"{tail}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def train(model: str, lr: float, overrides: dict, out: str, progress: Progress,
          steps: int) -> str:
    """Trains (or resumes, or finds finished) one run; returns its workdir."""
    o = {**overrides, "optim.lr": lr}
    workdir = os.path.join(out, "runs", f"{model}_lr{lr:g}_{config_hash(model, o)}")
    done = os.path.join(workdir, "checkpoints", str(steps))
    progress.begin(model, "train", f"lr {lr:g}")
    t0, cached = time.time(), os.path.isdir(done)
    if not cached:
        os.makedirs(workdir, exist_ok=True)
        tok = os.path.join(out, "tokenizer.model")
        if os.path.exists(tok) and not os.path.exists(os.path.join(workdir, "tokenizer.model")):
            shutil.copy(tok, workdir)  # one tokenizer for every run: the same tokens
        flags = [f"--config.{k}={v}" for k, v in sorted(o.items())]
        run(["pgm_jax.main", f"--config=configs/demo.py:{model}", f"--workdir={workdir}",
             *flags], os.path.join(workdir, "compare.log"))
        if not os.path.exists(tok):
            shutil.copy(os.path.join(workdir, "tokenizer.model"), tok)
    progress.end(steps, time.time() - t0, cached)
    return workdir


def curve(workdir: str, tokens_per_step: int) -> list[dict]:
    """The run's periodic validation: [{"step", "tokens", "nll", "ppl"}] (EMA weights)."""
    rows = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "eval":
                rows.append({"step": r["step"], "tokens": r["step"] * tokens_per_step,
                             "nll": r["nll"], "ppl": r["ppl"]})
    last = {r["step"]: r for r in rows}  # a resumed run may repeat its final evaluation
    return [last[s] for s in sorted(last)]


def cached_json(path: str, model: str, phase: str, units: float, progress: Progress,
                make) -> dict:
    progress.begin(model, phase)
    t0, cached = time.time(), os.path.exists(path)
    if not cached:
        result = make()
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    progress.end(units, time.time() - t0, cached)
    with open(path) as f:
        return json.load(f)


def evaluate(workdir: str, judge: str, a: argparse.Namespace) -> dict:
    out = os.path.join(workdir, "compare_eval.json")
    cmd = ["pgm_jax.evaluate", f"--workdir={workdir}", f"--output={out}"]
    if judge:
        cmd += [f"--judge={judge}", f"--num_samples={a.num_samples}",
                f"--sample_batch_size={a.sample_batch}", f"--steps={sample_steps(a.length)}"]
    run(cmd, os.path.join(workdir, "compare.log"))
    with open(out) as f:
        return json.load(f)


def speed(workdir: str, a: argparse.Namespace) -> dict:
    line = run(["benchmarks.run_sampling_speed", f"--workdir={workdir}",
                f"--batch={a.sample_batch}", f"--steps={sample_steps(a.length)}"],
               os.path.join(workdir, "compare.log"))
    return json.loads(line)


def sample_steps(length: int) -> int:
    """128 steps (the seed's), or fewer when L is shorter: PGM needs steps to divide L."""
    return SAMPLE_STEPS if length % SAMPLE_STEPS == 0 else max(
        d for d in range(1, min(SAMPLE_STEPS, length) + 1) if length % d == 0)


# ----------------------------------------------------------------------------- outputs
def table(rows: list[dict], a: argparse.Namespace) -> str:
    s = sample_steps(a.length)
    head = (f"| model | params | val ppl (≤) | latency s (batch {a.sample_batch}, L={a.length}, "
            f"{s} steps) | tokens/s | gen. ppl (AR judge) | entropy | lr |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gen = r.get("gen") or {}
        gp = f"{gen['gen_ppl_first_chunk_retok']:.1f}" if gen else "-"
        ent = f"{gen['entropy']:.3f}" if gen else "-"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M ({r['params_ratio']:.3f}) | "
                     f"{r['val_ppl']:.2f} | {r['latency_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{gp} | {ent} | {r['lr']:g} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        pts = [p for p in r["curve"] if p["step"] > 0]
        ax.plot([p["tokens"] for p in pts], [p["ppl"] for p in pts], marker="o", label=(
            f"{r['model']} (lr {r['lr']:g})"))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation perplexity (EMA; NELBO bound for diffusion)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def compare(a: argparse.Namespace) -> list[dict]:
    out = os.path.abspath(a.output)
    os.makedirs(out, exist_ok=True)
    shared = base_overrides(a)
    depths = matched_depths(a.models, shared)
    for m in a.models:
        d = depths[m]
        flag = "" if abs(d["ratio"] - 1.0) <= 0.05 else "  MISMATCH > 5%"
        print(f"[compare] params {m:15s} {d['params']:>11,d} ({d['ratio']:.3f} x PGM's)"
              + (f", {d['n_blocks']} blocks" if "n_blocks" in d else "") + flag, flush=True)
    from configs import demo

    recorded = {m: float(demo.LEARNING_RATES[m]) for m in a.models}  # the last sweep's choices
    grid = {m: ([recorded[m]] if a.no_sweep else a.lrs) for m in a.models}
    # The AR run is the judge of the others' samples: it goes first.
    order = sorted(a.models, key=lambda m: m != "ar")
    units = sum(len(grid[m]) * a.steps for m in order) + len(order) * a.steps * (
        EVAL_COST + SPEED_COST)
    progress = Progress(units)
    tokens_per_step = (shared.get("train.batch_size") or preset("pgm", {}).train.batch_size
                       ) * a.length
    sweep_path = os.path.join(out, "sweep.json")
    sweep = json.load(open(sweep_path)) if os.path.exists(sweep_path) else {}
    judge, rows = a.judge, []
    for m in order:
        o = {**shared, **({"model.n_blocks": depths[m]["n_blocks"]} if "n_blocks" in depths[m]
                          else {})}
        runs = {lr: train(m, lr, o, out, progress, a.steps) for lr in grid[m]}
        val = {lr: curve(w, tokens_per_step)[-1]["nll"] for lr, w in runs.items()}
        lr = min(val, key=val.get)
        sweep[m] = {"lrs": {f"{k:g}": v for k, v in val.items()}, "chosen": lr,
                    "swept": not a.no_sweep, "steps": a.steps}
        with open(sweep_path, "w") as f:
            json.dump(sweep, f, indent=2)
        workdir = runs[lr]
        if m == "ar" and not judge:  # the AR run judges every model, its own samples included
            judge = workdir
        ev = cached_json(os.path.join(workdir, "compare_eval.json"), m, "evaluate",
                         a.steps * EVAL_COST, progress,
                         lambda w=workdir, j=judge: evaluate(w, j, a))
        sp = cached_json(os.path.join(workdir, "compare_speed.json"), m, "speed",
                         a.steps * SPEED_COST, progress, lambda w=workdir: speed(w, a))
        rows.append({"model": m, "params": depths[m]["params"],
                     "params_ratio": depths[m]["ratio"], "lr": lr, "workdir": workdir,
                     "val_nll": ev["val"]["nll"], "val_ppl": ev["val"]["ppl"],
                     "val_tokens": ev["val"]["tokens"], "gen": ev.get("gen"),
                     "latency_s": sp["latency_s"], "tokens_per_s": sp["tokens_per_s"],
                     "speed": sp, "curve": curve(workdir, tokens_per_step),
                     "train_tokens": a.steps * tokens_per_step})
    rows.sort(key=lambda r: MODELS.index(r["model"]))
    md = table(rows, a)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump({"args": {k: v for k, v in vars(a).items()}, "rows": rows, "sweep": sweep},
                  f, indent=2)
    plot(rows, os.path.join(out, "curves.png"))
    print(md)
    print(f"[compare] wrote {out}/compare.md, compare.json, curves.png, sweep.json "
          f"({_fmt(time.time() - progress.start)})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        a = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        compare(a)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
