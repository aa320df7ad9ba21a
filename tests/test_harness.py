"""lm-eval integration: the pgm_jax model on small local tasks (YAML + JSONL, no download)."""

import os

import numpy as np
import pytest
from flax import nnx
from helpers import randomized_model, tiny_config

from pgm_jax import sharding
from pgm_jax.cli import UsageError
from pgm_jax.eval import harness_run, local_tasks

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import lm_eval

from pgm_jax.eval.harness_model import PGMJaxLM

L, BOS, EOS = 32, 1, 2


class CharTokenizer:
    """Lower-case letters and space as ids 4..30."""

    bos_id, eos_id = BOS, EOS
    chars = "abcdefghijklmnopqrstuvwxyz "

    def encode(self, text):
        return [4 + self.chars.index(c) for c in text.lower() if c in self.chars]

    def decode(self, ids):
        return "".join(self.chars[i - 4] if 4 <= i < 31 else "" for i in ids)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tasks"))
    text = ["the cat sat on the mat and the dog sat on the log " * 6]
    mc, cloze = local_tasks.corpus_tasks(text, 3, context_words=4, answer_words=2)
    local_tasks.write_task(d, "tiny_mc", mc, "mc")
    local_tasks.write_task(d, "tiny_cloze", cloze, "cloze")
    local_tasks.write_task(d, "tiny_gen", [{"context": "the cat", "target": " sat"}] * 2, "gen",
                           max_gen_toks=5)
    with open(os.path.join(d, "absent.yaml"), "w") as f:
        f.write("task: absent_data\ndataset_path: no_such_org/no_such_dataset\n"
                "output_type: loglikelihood\ntest_split: test\ndoc_to_text: x\n"
                "doc_to_target: y\n")
    return d


# PGM only: the AR scorer is exact and checked in test_likelihood.py (this test compiles ~2 min).
@pytest.mark.parametrize("kind", ["pgm"])
def test_local_tasks_end_to_end(tasks, kind):
    cfg = tiny_config(encoder_blocks=1, decoder_blocks=1) if kind == "pgm" else \
        tiny_config(kind="ar", n_blocks=1)
    graphdef, params = nnx.split(randomized_model(cfg))
    mesh = sharding.inference_mesh()
    lm = PGMJaxLM(graphdef, nnx.to_pure_dict(params), cfg, CharTokenizer(), mesh, bos_id=BOS,
                  num_mc_samples=16, mc_batch=16, steps=8, batch_size=2)
    manager, _ = harness_run.task_dict(["tiny_mc", "tiny_cloze", "tiny_gen"], tasks)
    res = lm_eval.simple_evaluate(model=lm, tasks=["tiny_mc", "tiny_cloze", "tiny_gen"],
                                  task_manager=manager, log_samples=True, bootstrap_iters=10)
    r = res["results"]
    assert 0.0 <= r["tiny_mc"]["acc,none"] <= 1.0 and "acc_stderr,none" in r["tiny_mc"]
    assert np.isfinite(r["tiny_cloze"]["perplexity,none"])
    assert len(res["samples"]["tiny_mc"]) == 3
    # Every choice was scored by a finite, negative log-likelihood.
    lls = [resp[0][0] for s in res["samples"]["tiny_mc"] for resp in s["resps"]]
    assert len(lls) == 12 and all(np.isfinite(lls)) and max(lls) < 0
    gens = [s["resps"][0][0] for s in res["samples"]["tiny_gen"]]
    assert all(isinstance(g, str) and len(g) <= 5 for g in gens)


def test_unknown_task_and_missing_data_are_one_line_errors(tasks):
    with pytest.raises(UsageError, match="unknown task"):
        harness_run.task_dict(["no_such_task_xyz"], tasks)
    with pytest.raises(UsageError, match="could not be loaded offline") as e:
        harness_run.task_dict(["absent_data"], tasks)
    assert "\n" not in str(e.value)
