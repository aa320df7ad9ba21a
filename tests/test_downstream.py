"""benchmarks/downstream.py: tasks from held-out documents only, the table, bad flags."""

from __future__ import annotations

import json

from benchmarks import downstream
from configs import demo


def write_run(tmp_path, docs: list[str]) -> str:
    files = []
    for i, text in enumerate(docs):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(text)
        files.append(str(p))
    c = demo.get_config()
    c.data.source, c.data.files, c.data.val_fraction = "files", ",".join(files), 0.25
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(c.to_json())
    return str(run)


def test_tasks_come_from_validation_documents_only(tmp_path):
    train = [" ".join(f"train{i}w{j}" for j in range(60)) for i in range(3)]
    held = " ".join(f"held{j}" for j in range(200))
    run = write_run(tmp_path, train + [held])
    assert downstream.held_out_texts(run) == [held]
    downstream.build_tasks(run, str(tmp_path / "tasks"), n=5, seed=0)
    for name in downstream.TASKS:
        rows = [json.loads(x) for x in open(tmp_path / "tasks" / f"{name}.jsonl")]
        assert len(rows) == 5
        assert all("train" not in json.dumps(r) for r in rows)


def test_table_has_every_metric_with_stderr():
    row = {"model": "pgm", "kind": "pgm", "step": 500, "s_per_loglikelihood": 1.5}
    for task, metrics in downstream.TASKS.items():
        row[task] = {m: 0.5 for m in metrics} | {f"{m}_stderr": 0.1 for m in metrics}
    md = downstream.table([row])
    assert md.count("0.500 ± 0.100") == sum(len(m) for m in downstream.TASKS.values())
    assert md.splitlines()[2].endswith("| 1.50 |")


def test_bad_runs_flag(tmp_path, capsys):
    assert downstream.main([f"--runs=pgm={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runs:") and err.count("\n") == 1


def test_order_task_choices_are_reorderings_of_the_true_words():
    from pgm_jax.eval import local_tasks

    text = " ".join(f"w{j}" for j in range(300)).replace("w17 ", "w17\n")
    docs = local_tasks.corpus_order_task([text], n=6, seed=1)
    assert len(docs) == 6
    for d in docs:
        words = [sorted(c.split()) for c in d["choices"]]
        assert all(w == words[0] for w in words) and len(set(d["choices"])) == 4
        true = d["choices"][d["label"]]
        start = text.index(d["context"]) + len(d["context"])
        assert text[start:start + len(true)] == true
