"""Small local lm-eval tasks (YAML + JSONL, no download), e.g. from held-out corpus text.

* multiple choice (`output_type: multiple_choice`, metrics acc / acc_norm): a context, the true
  next words and `choices - 1` word spans drawn from elsewhere in the text;
* word order (multiple choice): a context, its true next words and `choices - 1` reorderings
  of those same words (what an LM that knows the text's syntax gets right before it uses
  much of the context);
* cloze (`output_type: loglikelihood`, metrics acc = is_greedy / perplexity): a context and
  its next word, as LAMBADA.
"""

from __future__ import annotations

import json
import os
import random
import re

MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
target_delimiter: ""
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
target_delimiter: ""
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
    YAML path. mc docs: {context, choices, label}; cloze / gen docs: {context, target}. mc and
    cloze continuations carry their own leading whitespace (no target delimiter is added)."""
    os.makedirs(directory, exist_ok=True)
    data = os.path.abspath(os.path.join(directory, f"{name}.jsonl"))
    with open(data, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    template = {"mc": MC_YAML, "cloze": CLOZE_YAML, "gen": GEN_YAML}[kind]
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(template.format(name=name, data=json.dumps(data), max_gen_toks=max_gen_toks))
    return path


def _word_windows(texts: list[str], span: int) -> list[tuple[str, list[tuple[int, int]]]]:
    """(document, [(start, end) of each of `span` words]) for every window inside a document."""
    windows = []
    for text in texts:
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        windows += [(text, words[i:i + span]) for i in range(len(words) - span + 1)]
    return windows


def corpus_tasks(texts: list[str], n: int, seed: int = 0, context_words: int = 24,
                 answer_words: int = 4, choices: int = 4) -> tuple[list[dict], list[dict]]:
    """(multiple-choice docs, cloze docs), `n` each, from windows of words inside the documents
    `texts`, their original spacing and line breaks kept (what the models were trained on); a
    continuation carries the whitespace that precedes it. A window never crosses documents."""
    span = context_words + answer_words
    windows = _word_windows(texts, span)
    if len(windows) < 4:
        raise ValueError(f"need documents of at least {span} words (+3 windows), got "
                         f"{len(windows)} windows")
    rng = random.Random(seed)
    picks = rng.sample(range(len(windows)), min(2 * n, len(windows)))

    def split(i: int, answer_len: int) -> tuple[str, str]:
        text, words = windows[i]
        cut = words[context_words - 1][1]
        return (text[words[0][0]:cut],
                text[cut:words[context_words + answer_len - 1][1]])

    mc, cloze = [], []
    for i in picks[:n]:
        context, answer = split(i, answer_words)
        others = set()
        while len(others) < choices - 1:
            other = split(rng.randrange(len(windows)), answer_words)[1]
            if other != answer:
                others.add(other)
        options = sorted(others) + [answer]
        rng.shuffle(options)
        mc.append({"context": context, "choices": options, "label": options.index(answer)})
    for i in picks[n:2 * n]:
        context, target = split(i, 1)
        cloze.append({"context": context, "target": target})
    return mc, cloze


def corpus_order_task(texts: list[str], n: int, seed: int = 0, context_words: int = 24,
                      answer_words: int = 4, choices: int = 4) -> list[dict]:
    """`n` multiple-choice docs: a context (original spacing) and its next `answer_words`
    words against `choices - 1` distinct reorderings of them (the whitespace between words
    stays in place); windows whose words allow too few distinct orders are skipped."""
    span = context_words + answer_words
    windows = _word_windows(texts, span)
    rng = random.Random(seed)
    docs = []
    for i in rng.sample(range(len(windows)), len(windows)):
        text, words = windows[i]
        cut = words[context_words - 1][1]
        answer = words[context_words:]
        tokens = [text[a:b] for a, b in answer]
        ends = [cut] + [b for _, b in answer[:-1]]  # the whitespace before each answer word
        gaps = [text[end:a] for end, (a, _) in zip(ends, answer, strict=True)]
        true = "".join(g + t for g, t in zip(gaps, tokens, strict=True))
        others = set()
        for _ in range(50):
            order = rng.sample(tokens, len(tokens))
            other = "".join(g + t for g, t in zip(gaps, order, strict=True))
            if other != true:
                others.add(other)
            if len(others) == choices - 1:
                break
        if len(others) < choices - 1:
            continue
        options = sorted(others) + [true]
        rng.shuffle(options)
        docs.append({"context": text[words[0][0]:cut], "choices": options,
                     "label": options.index(true)})
        if len(docs) == n:
            break
    return docs
