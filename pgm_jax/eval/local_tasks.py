"""Small local lm-eval tasks (YAML + JSONL, no download), e.g. from held-out corpus text.

* multiple choice (`output_type: multiple_choice`, metrics acc / acc_norm): a context, the true
  next words and `choices - 1` word spans drawn from elsewhere in the text;
* cloze (`output_type: loglikelihood`, metrics acc = is_greedy / perplexity): a context and
  its next word, as LAMBADA.
"""

from __future__ import annotations

import json
import os
import random

MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

CLOZE_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
"""

GEN_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_task(directory: str, name: str, docs: list[dict], kind: str,
               max_gen_toks: int = 8) -> str:
    """Writes DIR/NAME.yaml and DIR/NAME.jsonl; kind: 'mc', 'cloze' or 'gen'. Returns the
    YAML path. mc docs: {context, choices, label}; cloze / gen docs: {context, target}."""
    os.makedirs(directory, exist_ok=True)
    data = os.path.abspath(os.path.join(directory, f"{name}.jsonl"))
    with open(data, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    template = {"mc": MC_YAML, "cloze": CLOZE_YAML, "gen": GEN_YAML}[kind]
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(template.format(name=name, data=json.dumps(data), max_gen_toks=max_gen_toks))
    return path


def corpus_tasks(texts: list[str], n: int, seed: int = 0, context_words: int = 24,
                 answer_words: int = 4, choices: int = 4) -> tuple[list[dict], list[dict]]:
    """(multiple-choice docs, cloze docs), `n` each, from windows of the words of `texts`."""
    words = " ".join(texts).split()
    span = context_words + answer_words
    if len(words) < 4 * span:
        raise ValueError(f"need at least {4 * span} words of text, got {len(words)}")
    rng = random.Random(seed)
    starts = rng.sample(range(len(words) - span), min(2 * n, len(words) - span))
    mc, cloze = [], []
    for s in starts[:n]:
        context = " ".join(words[s:s + context_words])
        answer = " " + " ".join(words[s + context_words:s + span])
        others = set()
        while len(others) < choices - 1:
            o = rng.randrange(len(words) - answer_words)
            text = " " + " ".join(words[o:o + answer_words])
            if text != answer:
                others.add(text)
        options = sorted(others) + [answer]
        rng.shuffle(options)
        mc.append({"context": context, "choices": options, "label": options.index(answer)})
    for s in starts[n:2 * n]:
        cloze.append({"context": " ".join(words[s:s + context_words]),
                      "target": " " + words[s + context_words]})
    return mc, cloze
