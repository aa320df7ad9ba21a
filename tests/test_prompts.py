"""Conditional sampling: prompts (ragged prefixes) and infilling in the PGM, MDLM and AR
samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomized_model, tiny_config

from pgm_jax import sharding
from pgm_jax.objectives import schedule
from pgm_jax.sampling import generate, generate_many, pgm, prompts

L, V, MASK, BOS = 32, 64, 63, 1


def split(cfg):
    model = randomized_model(cfg)
    graphdef, params = nnx.split(model)
    return cfg, model, graphdef, nnx.to_pure_dict(params)


@pytest.fixture(scope="module")
def models():
    return {"pgm": split(tiny_config(encoder_blocks=1, decoder_blocks=1)),
            "mdlm_dit": split(tiny_config(kind="mdlm_dit", n_blocks=1)),
            "ar": split(tiny_config(kind="ar", n_blocks=1))}


def ragged(n: int = 6, max_new: int | None = None) -> prompts.Conditioning:
    """Prompts of 0, 3, 7, ... tokens; positions to decode hold MASK (never drawn)."""
    rng = np.random.default_rng(0)
    ids = [rng.integers(4, 60, size=(5 * b) % 23).tolist() for b in range(n)]
    return prompts.prefixes(ids, L, BOS, max_new_tokens=max_new, fill=MASK)


def test_prefix_layout_and_errors():
    c = prompts.prefixes([[5, 6], []], 8, BOS, max_new_tokens=3, fill=0)
    np.testing.assert_array_equal(c.tokens[0, :3], [BOS, 5, 6])
    np.testing.assert_array_equal(c.decode[0], [0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(c.decode[1], [0, 1, 1, 1, 0, 0, 0, 0])
    assert c.is_prefix() and c.num_given.tolist() == [3, 1] and c.num_decode.tolist() == [3, 3]
    with pytest.raises(prompts.PromptError, match="longer than model.length=8"):
        prompts.prefixes([list(range(8))], 8, BOS)
    with pytest.raises(prompts.PromptError, match="needs 10 positions"):
        prompts.infills([([5], [6, 7])], gap=6, length=8, bos_id=BOS)
    inf = prompts.infills([([5], [6, 7])], gap=2, length=8, bos_id=BOS)
    assert not inf.is_prefix()
    out = prompts.split_output(np.arange(8)[None] + 10 * inf.given[0], inf)[0]
    assert out == {"prompt": [11, 14, 15], "completion": [2, 3], "tokens": [10, 11, 2, 3, 14, 15]}


def test_uniform_schedule_counts_only_positions_left():
    remaining = np.array([31, 10, 0, 17])
    counts = pgm.uniform_counts(4, L, 8, remaining)  # k = 4
    assert counts.shape[1] == 8 and counts.max() == 4  # ceil(31 / 4) calls
    np.testing.assert_array_equal(counts.sum(1), remaining)
    assert pgm.uniform_counts(2, L, 8, np.array([9, 5])).shape[1] == 3  # ceil(9 / 4)
    np.testing.assert_array_equal(pgm.uniform_counts(3, L, 8), pgm.uniform_counts(
        3, L, 8, np.full(3, L - 1)))
    # Encoder buckets start at the longest prompt: given 20 + decoded 0 needs the 32 bucket.
    segs = pgm.plan_segments(pgm.uniform_counts(2, L, 8, np.array([8, 8])), L, 16, True,
                             given=np.array([20, 3]))
    assert [s.bucket for s in segs] == [32] and sum(s.last - s.first for s in segs) == 2


def check_kept_and_filled(x: np.ndarray, c: prompts.Conditioning, fills_rest: bool):
    np.testing.assert_array_equal(x[c.given], c.tokens[c.given])  # given tokens never change
    assert not (x[c.decode] == MASK).any()  # every decode position is drawn
    if fills_rest:
        assert (x[~(c.given | c.decode)] == MASK).all()  # PGM leaves the unused ones alone


@pytest.mark.parametrize("kind,mode", [("pgm", "efficient-uniform"),
                                       ("pgm", "efficient-non-uniform"),
                                       ("mdlm_dit", None), ("ar", None)])
def test_given_tokens_never_change_on_ragged_prompts(models, kind, mode):
    cfg, _, graphdef, params = models[kind]
    kw = dict(mode=mode) if mode else {}
    for c in (ragged(), ragged(max_new=5)):
        x = np.asarray(generate(graphdef, params, cfg, jax.random.key(3), num_samples=6, steps=8,
                                bos_id=BOS, bucket=16, cond=c, **kw))
        # MDLM decodes every position (the caller keeps the first ones); the others leave
        # the positions past each completion alone.
        check_kept_and_filled(x, c, fills_rest=kind != "mdlm_dit")


@pytest.mark.parametrize("kind", ["pgm", "mdlm_dit"])
def test_infilling_keeps_scattered_given_tokens(models, kind):
    cfg, _, graphdef, params = models[kind]
    rng = np.random.default_rng(1)
    given = rng.random((4, L)) < np.array([0.1, 0.4, 0.7, 0.95])[:, None]
    given[:, 0] = True
    tokens = np.where(given, rng.integers(4, 60, (4, L)), MASK).astype(np.int32)
    tokens[:, 0] = BOS
    c = prompts.Conditioning(tokens, given, ~given)
    x = np.asarray(generate_many(graphdef, params, cfg, jax.random.key(5),
                                 sharding.inference_mesh(),
                                 num_samples=4, batch_size=3, steps=8, bos_id=BOS,
                                 progress=False, cond=c))
    check_kept_and_filled(x, c, fills_rest=False)


def test_pgm_prompt_is_the_encoder_context(models):
    """Greedy PGM with one position left equals the argmax of `infer` on the given tokens."""
    cfg, model, graphdef, params = models["pgm"]
    rng = np.random.default_rng(2)
    given = np.ones((3, L), bool)
    holes = np.array([5, 17, 31])
    given[np.arange(3), holes] = False
    tokens = rng.integers(4, 60, (3, L)).astype(np.int32)
    tokens[:, 0] = BOS
    c = prompts.Conditioning(np.where(given, tokens, MASK), given, ~given)
    x = np.asarray(pgm.sample(graphdef, params, jax.random.key(0), num_samples=3, length=L,
                              steps=8, bos_id=BOS, temperature=0.0, cond=c))
    keep = np.stack([np.flatnonzero(g) for g in given])
    logits = model.infer(jnp.asarray(tokens[np.arange(3)[:, None], keep]), jnp.asarray(keep),
                         jnp.asarray(holes[:, None]), jnp.full((3,), L - 1))
    want = np.asarray(jnp.argmax(schedule.pgm_logprobs(logits, MASK)[:, 0], -1))
    np.testing.assert_array_equal(x[np.arange(3), holes], want)


def test_ar_prompt_matches_a_plain_greedy_loop(models):
    cfg, model, graphdef, params = models["ar"]
    c = prompts.prefixes([[7, 8, 9], [10]], L, BOS, max_new_tokens=4, fill=BOS)
    x = np.asarray(generate(graphdef, params, cfg, jax.random.key(0), num_samples=2, steps=8,
                            bos_id=BOS, temperature=0.0, bucket=16, cond=c))
    forward = jax.jit(lambda t: schedule.pgm_logprobs(model(t), MASK))
    ref = c.tokens.copy()
    for b, p in enumerate([4, 2]):
        for i in range(p - 1, p + 3):
            ref[b, i + 1] = int(jnp.argmax(forward(jnp.asarray(ref[b:b + 1]))[0, i]))
    np.testing.assert_array_equal(x, ref)
