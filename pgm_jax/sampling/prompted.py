"""Prompted sampling from a run: read prompts, encode them, sample, split prompt / completion.

Prompt files are JSON lines: a JSON string or plain text per line is a prefix prompt;
`{"prefix": ..., "suffix": ...}` asks for an infill of `max_new_tokens` tokens between them.
Blank lines are skipped. Errors are `UsageError`s with one line naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from pgm_jax.cli import UsageError, require
from pgm_jax.sampling.prompts import Conditioning, PromptError, from_segments


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A prefix prompt (suffix None) or an infill request."""

    prefix: str
    suffix: str | None = None


def read_prompts_file(path: str) -> list[Prompt]:
    """Prompts of a `--prompts_file` (see the module docstring)."""
    require(os.path.isfile(path), f"--prompts_file={path}: no such file")
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = line.rstrip("\n")
            if isinstance(value, dict):
                bad = set(value) - {"prefix", "suffix"}
                require(not bad and isinstance(value.get("prefix", ""), str) and
                        isinstance(value.get("suffix", ""), str),
                        f"--prompts_file={path}:{n}: an object needs string keys 'prefix' and "
                        f"'suffix' only (got {sorted(value)})")
                out.append(Prompt(value.get("prefix", ""), value.get("suffix", "")))
            else:
                out.append(Prompt(value if isinstance(value, str) else line.rstrip("\n")))
    require(bool(out), f"--prompts_file={path}: no prompts (write one prompt per line, or "
            '{"prefix": ..., "suffix": ...} for infilling)')
    return out


def encode(prompts: list[Prompt], tokenizer, length: int, bos_id: int,
           max_new_tokens: int | None, fill: int) -> Conditioning:
    """One row per prompt: `[BOS] + prefix`, then `max_new_tokens` to decode (default: up to
    the model length, or for an infill the room left by the suffix), then the suffix."""
    rows = []
    for p in prompts:
        pre = tokenizer.encode(p.prefix) if p.prefix else []
        suf = tokenizer.encode(p.suffix) if p.suffix else []
        room = length - 1 - len(pre) - len(suf)
        new = room if max_new_tokens is None else max_new_tokens
        if new > room:
            asked = "" if room < 0 else f" + {new} new tokens (--max_new_tokens)"
            raise UsageError(f"prompt {p.prefix[:24]!r}...: BOS + {len(pre) + len(suf)} prompt "
                             f"tokens{asked} is longer than model.length={length}; shorten the "
                             "prompt" + ("" if room < 0 else " or lower --max_new_tokens"))
        rows.append([(pre, 0), (None, new)] + ([(suf, 0)] if suf else []))
    try:
        return from_segments(rows, length, bos_id, fill)
    except PromptError as e:
        raise UsageError(str(e)) from None


def records(prompts: list[Prompt], cond: Conditioning, tokens: np.ndarray, tokenizer,
            per_prompt: int, step: int) -> list[dict]:
    """samples.jsonl rows: prompt (text; prefix/suffix for infills), completion (text and ids).

    `tokens`: int32 [len(prompts) * per_prompt, L], prompt-major.
    """
    out = []
    for i, row in enumerate(tokens):
        p, g, d = prompts[i // per_prompt], cond.given[i], cond.decode[i]
        completion = row[d].tolist()
        prompt = p.prefix if p.suffix is None else {"prefix": p.prefix, "suffix": p.suffix}
        g = g.copy()
        g[0] = False
        out.append({"step": step, "prompt": prompt, "completion": tokenizer.decode(completion),
                    "prompt_tokens": row[g].tolist(), "completion_tokens": completion,
                    "sample": i % per_prompt})
    return out


def sample_prompts(graphdef, params, model_cfg, mesh, prompts: list[Prompt], tokenizer, *,
                   bos_id: int, per_prompt: int, max_new_tokens: int | None, seed: int,
                   batch_size: int, **kwargs) -> tuple[Conditioning, np.ndarray]:
    """(conditioning, int32 [len(prompts) * per_prompt, L] samples) with `generate_many`."""
    from pgm_jax.sampling import generate_many

    if model_cfg.kind == "ar":
        require(all(p.suffix is None for p in prompts), "the AR model continues prefixes only: "
                "drop the 'suffix' lines from --prompts_file (infilling needs PGM or MDLM)")
    cond = encode([p for p in prompts for _ in range(per_prompt)], tokenizer, model_cfg.length,
                  bos_id, max_new_tokens, fill=bos_id)
    tokens = generate_many(graphdef, params, model_cfg, jax.random.key(seed), mesh,
                           num_samples=len(cond.tokens), batch_size=batch_size, cond=cond,
                           bos_id=bos_id, **kwargs)
    return cond, tokens
