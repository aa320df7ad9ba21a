"""The bfloat16 compute path (`model.dtype="bfloat16"`: bf16 matmuls and attention, float32
parameters, LayerNorm, residual stream and softmax) against the reference's float32 outputs.

Tolerances (docs/fidelity.md, "Precision"). Measured on these fixtures, against each bound:
mean |dlogit| <= 0.017 (57 % of 0.03), max |dlogit| <= 1.6 % of max |logit| (80 % of 2 %),
KL <= 9e-4 nats (45 % of 2e-3), argmax-token |dlog p| <= 0.065 (65 % of 0.1). One bf16 rounding
step of a logit near 11 is 0.0625, so the argmax bound cannot be much tighter.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from pgm_jax.interop.parity import fixture_model, forward, load_fixture
from pgm_jax.objectives import schedule
from tests.test_parity import text_dirs

MEAN_ABS_LOGIT = 3e-2
MAX_ABS_LOGIT_REL = 2e-2  # of the largest |logit|
MAX_KL = 2e-3  # nats, KL(p_fp32 || p_bf16) per position
MAX_ARGMAX_LOGP = 0.1  # |d log p| of the reference's most likely token


def _logprobs(logits: np.ndarray, mask_index: int) -> np.ndarray:
    return np.asarray(schedule.pgm_logprobs(jnp.asarray(logits), mask_index), np.float64)


@pytest.mark.parametrize("fixture", text_dirs(), ids=lambda p: p.name)
def test_bf16_compute_matches_the_fp32_reference(fixture):
    cfg, io = load_fixture(fixture)
    model = fixture_model(fixture, dataclasses.replace(cfg, dtype="bfloat16"), "raw", "npz")
    args = (io["x"], io["groups"]) if cfg.kind == "pgm" else (io["x"],)
    logits, _ = forward(model, "__call__", *map(jnp.asarray, args))
    assert logits.dtype == jnp.bfloat16  # the head ran in bf16
    ours, ref = np.asarray(logits, np.float64), io["logits_raw"].astype(np.float64)
    err = np.abs(ours - ref)
    assert 1e-3 < err.mean() <= MEAN_ABS_LOGIT  # bf16 really ran, and within tolerance
    assert err.max() <= MAX_ABS_LOGIT_REL * np.abs(ref).max()
    # Distributions over the vocabulary, MASK excluded.
    lp, lp_ref = _logprobs(ours, cfg.mask_index), _logprobs(ref, cfg.mask_index)
    p_ref = np.exp(lp_ref)
    support = p_ref > 0
    kl = np.sum(p_ref * (np.where(support, lp_ref, 0.0) - np.where(support, lp, 0.0)), -1)
    assert kl.max() <= MAX_KL
    top = lp_ref.argmax(-1)[..., None]
    top_err = np.abs(np.take_along_axis(lp, top, -1) - np.take_along_axis(lp_ref, top, -1))
    assert top_err.max() <= MAX_ARGMAX_LOGP
