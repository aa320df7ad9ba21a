"""Downstream accuracy of text runs through lm-eval-harness, on local tasks built from the
held-out text of their corpus (no download): the paper's "without sacrificing downstream
performance" claim, small.

  python -m benchmarks.downstream --runs=pgm=runs/demo,mdlm=runs/demo-mdlm,ar=runs/demo-ar \
      --output=runs/downstream

Tasks (pgm_jax/eval/local_tasks.py, written to OUTPUT/tasks from the validation documents of
the first run's corpus, the documents no run trained on):
* `heldout_mc`: a 24-word context and 4 candidate 4-word continuations, one true (acc,
  acc_norm);
* `heldout_order`: the same kind of context, its true next 4 words against 3 reorderings of
  them (acc, acc_norm);
* `heldout_cloze`: a 24-word context and its next word (acc = the word is the greedy
  continuation, as LAMBADA scores it).
Every run goes through `python -m pgm_jax.harness` (the user's path; PGM / MDLM: conditional
Monte-Carlo ELBO with --num_mc_samples antithetic draws, AR: exact). Prints one markdown table
(accuracy per task per model, with lm-eval's stderr) and one JSON line; writes
OUTPUT/downstream.md / .json and each run's lm-eval results JSON. `--time_mc=1024` also times
one `loglikelihood` call per run at that many Monte-Carlo samples (compiled first; the mean of
`--time_reps` calls on cloze examples).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = {"heldout_mc": ("acc", "acc_norm"), "heldout_order": ("acc", "acc_norm"),
         "heldout_cloze": ("acc",)}


class UsageError(Exception):
    """Bad flags: one line, exit status 2."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="name=WORKDIR,name=WORKDIR,...")
    p.add_argument("--output", default="runs/downstream")
    p.add_argument("--n", type=int, default=40, help="examples per task")
    p.add_argument("--num_mc_samples", type=int, default=64)
    p.add_argument("--mc_batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time_mc", type=int, default=0, help="also time loglikelihood at K samples")
    p.add_argument("--time_reps", type=int, default=3)
    return p.parse_args(argv)


def parse_runs(spec: str) -> dict[str, str]:
    runs = {}
    for item in spec.split(","):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--runs: {item!r} is not name=WORKDIR")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UsageError(f"--runs: {path} has no config.json: train it with pgm_jax.main")
        runs[name] = path
    return runs


def held_out_texts(workdir: str) -> list[str]:
    """The validation documents of the run's in-memory corpus (data.source pydoc / files)."""
    from pgm_jax.config import load_run_config
    from pgm_jax.data.documents import load_documents, split_documents

    data = load_run_config(workdir).data
    docs = load_documents(data.source, data.get("files", ""))
    return split_documents(docs, data.val_fraction)[1]


def build_tasks(workdir: str, directory: str, n: int, seed: int) -> None:
    from pgm_jax.eval import local_tasks

    mc, cloze = local_tasks.corpus_tasks(held_out_texts(workdir), n, seed=seed)
    local_tasks.write_task(directory, "heldout_mc", mc, "mc")
    local_tasks.write_task(directory, "heldout_cloze", cloze, "cloze")
    order = local_tasks.corpus_order_task(held_out_texts(workdir), n, seed=seed)
    local_tasks.write_task(directory, "heldout_order", order, "mc")


def run_harness(workdir: str, tasks_dir: str, out: str, args: argparse.Namespace) -> dict:
    """lm-eval's results for the run, from `out` when an earlier call wrote it (then
    "seconds" is not re-measured)."""
    if not os.path.isfile(out):
        cmd = [sys.executable, "-m", "pgm_jax.harness", f"--workdir={workdir}",
               f"--tasks={','.join(TASKS)}", f"--include_path={tasks_dir}",
               f"--num_mc_samples={args.num_mc_samples}", f"--mc_batch={args.mc_batch}",
               f"--seed={args.seed}", f"--output={out}"]
        print("[downstream]", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        with open(out) as f:
            res = json.load(f)
        res["pgm_jax"]["seconds"] = time.perf_counter() - t0
        with open(out, "w") as f:
            json.dump(res, f, indent=2, default=str)
        return res
    with open(out) as f:
        return json.load(f)


def time_loglikelihood(workdir: str, tasks_dir: str, k: int, reps: int) -> float:
    """Seconds per `loglikelihood(context, continuation)` at k Monte-Carlo samples."""
    import jax

    from pgm_jax import sharding
    from pgm_jax.config import load_run_config, model_config
    from pgm_jax.eval.likelihood import Scorer
    from pgm_jax.restore import restore_params
    from pgm_jax.sampling import text_run

    config = load_run_config(workdir)
    mcfg = model_config(config)
    tok = text_run.run_tokenizer(config, workdir)
    mesh = sharding.inference_mesh()
    graphdef, params, _ = restore_params(workdir, mcfg, mesh)
    scorer = Scorer(graphdef, params, mcfg, bos_id=text_run.bos_id(config, tok, workdir),
                    eos_id=tok.eos_id, num_mc_samples=k, mc_batch=min(k, 256))
    with open(os.path.join(tasks_dir, "heldout_cloze.jsonl")) as f:
        docs = [json.loads(line) for line in f][:reps + 1]
    pairs = [(tok.encode(d["context"]), tok.encode(d["target"])) for d in docs]
    scorer.loglikelihood(*pairs[0])  # compile
    jax.effects_barrier()
    t0 = time.perf_counter()
    for c, x in pairs[1:]:
        scorer.loglikelihood(c, x)
    return (time.perf_counter() - t0) / max(1, len(pairs) - 1)


def table(rows: list[dict]) -> str:
    head = ["model", "kind", "step"] + [f"{t} {m}" for t, ms in TASKS.items() for m in ms]
    if any("s_per_loglikelihood" in r for r in rows):
        head.append("s / loglikelihood")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["kind"], str(r["step"])]
        cells += [f"{r[t][m]:.3f} ± {r[t][m + '_stderr']:.3f}" for t, ms in TASKS.items()
                  for m in ms]
        if "s_per_loglikelihood" in r:
            cells.append(f"{r['s_per_loglikelihood']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        runs = parse_runs(args.runs)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    tasks_dir = os.path.join(args.output, "tasks")
    build_tasks(next(iter(runs.values())), tasks_dir, args.n, args.seed)
    rows = []
    for name, workdir in runs.items():
        res = run_harness(workdir, tasks_dir, os.path.join(args.output, f"{name}.json"), args)
        row = {"model": name, "workdir": workdir, "kind": res["pgm_jax"]["kind"],
               "step": res["pgm_jax"]["step"], "n": args.n,
               "num_mc_samples": args.num_mc_samples,
               "seconds": res["pgm_jax"].get("seconds")}
        for task, metrics in TASKS.items():
            got = res["results"][task]
            row[task] = {m: got[f"{m},none"] for m in metrics}
            row[task].update({f"{m}_stderr": got[f"{m}_stderr,none"] for m in metrics})
        if args.time_mc:
            row["s_per_loglikelihood"] = time_loglikelihood(workdir, tasks_dir, args.time_mc,
                                                            args.time_reps)
            row["time_mc"] = args.time_mc
        rows.append(row)
    md = table(rows)
    print(md)
    with open(os.path.join(args.output, "downstream.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.output, "downstream.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(json.dumps({"downstream": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
