"""Image samplers: orders, schedules, CFG, and the PGM / MaskGIT sampling loops.

Probe models (defined here) output a one-hot logit at a token that encodes what they were
shown (how many clean keys, whether the label was dropped), so the samplers' bookkeeping can
be checked exactly; randomized real models check seed and bucket invariances.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomized_model

from pgm_jax import sharding
from pgm_jax.models import ModelConfig
from pgm_jax.sampling import image
from pgm_jax.sampling import image_orders as io

A = 40.0  # probe logit: the one-hot token is sampled with probability ~1 - V e^-A


# ----------------------------------------------------------------------------- probes
class ProbePGM(nnx.Module):
    """`infer` puts logit A at token (number of visible clean keys) % V, or at token 0 for
    the unconditional branch (`mode="cfg"`: conditional logits are all zero)."""

    def __init__(self, cfg: ModelConfig, mode: str = "count"):
        self.cfg = cfg
        self.mode = mode
        self.unused = nnx.Param(jnp.zeros((1,)))

    def infer(self, x, clean_positions, clean_valid, query_positions, labels, drop_label, *,
              release_quirk=False):
        b, q = query_positions.shape
        v = self.cfg.vocab_size
        if self.mode == "cfg":
            null = jnp.where(drop_label, self.cfg.num_classes, labels) == self.cfg.num_classes
            hot = jax.nn.one_hot(jnp.zeros((b, q), jnp.int32), v) * null[:, None, None]
            return A * hot
        visible = clean_valid.sum(axis=1) - (1 if release_quirk else 0)  # [B]
        target = jnp.broadcast_to((visible % v)[:, None], (b, q))
        return A * jax.nn.one_hot(target, v)


class ProbeMaskGIT(nnx.Module):
    """Logit A at token (number of unmasked input cells) % codebook, or the CFG probe."""

    def __init__(self, cfg: ModelConfig, mode: str = "count"):
        self.cfg = cfg
        self.mode = mode
        self.unused = nnx.Param(jnp.zeros((1,)))

    def __call__(self, codes, labels, drop_label, *, key=None):
        b, n = codes.shape
        v = self.cfg.codebook_size + 1
        if self.mode == "cfg":
            null = jnp.where(drop_label, self.cfg.num_classes, labels) == self.cfg.num_classes
            return A * jax.nn.one_hot(jnp.zeros((b, n), jnp.int32), v) * null[:, None, None]
        known = (codes != self.cfg.codebook_size).sum(axis=1)
        target = jnp.broadcast_to((known % self.cfg.codebook_size)[:, None], (b, n))
        return A * jax.nn.one_hot(target, v)


def image_cfg(kind: str, side: int, codebook: int, **kw) -> ModelConfig:
    extra = 2 if kind == "image_pgm" else 1
    base = dict(kind=kind, length=side * side, codebook_size=codebook,
                vocab_size=codebook + extra, mask_index=codebook, num_classes=3, hidden_size=32,
                n_heads=4, encoder_blocks=1, decoder_blocks=1, n_blocks=1, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def split(model):
    graphdef, params = nnx.split(model)
    return graphdef, nnx.to_pure_dict(params)


LABELS = jnp.array([0, 2], jnp.int32)


# ----------------------------------------------------------------------------- orders
def test_halton_order_side32_matches_reference_prefix():
    cells = io.halton_cells(32)
    assert cells[:4].tolist() == [[16, 10], [8, 21], [24, 3], [4, 14]]
    order = io.halton_order(32)
    assert sorted(order.tolist()) == list(range(1024))
    assert order[0] == 16 * 32 + 10


@pytest.mark.parametrize("side", [1, 2, 3, 5, 8, 16, 64])
def test_halton_order_is_a_permutation(side):
    assert sorted(io.halton_order(side).tolist()) == list(range(side * side))


def test_grid_side_rejects_non_square():
    with pytest.raises(ValueError, match="not a square"):
        io.grid_side(1000)


# ----------------------------------------------------------------------------- schedules
def test_halton_schedule_matches_spec_counts():
    c32 = io.halton_counts(1024, 32)
    assert c32.sum() == 1024 and c32[:3].tolist() == [20, 20, 21]
    assert c32[-4:].tolist() == [45, 53, 68, 164]
    c64 = io.halton_counts(1024, 64)
    assert c64.sum() == 1024 and c64[:2].tolist() == [10, 10]
    assert c64[-3:].tolist() == [37, 48, 116]
    assert (c32 > 0).all() and (c64 > 0).all()


@pytest.mark.parametrize("steps", [32, 64])
def test_confidence_schedules_cover_every_token(steps):
    totals = io.confidence_totals(1024, steps)
    assert totals[0] == 0 and totals[-1] == 1024 and (np.diff(totals) >= 0).all()
    k = io.maskgit_confidence_k(1024, steps)
    assert k[0] == 1 and k[-1] == 1024 and (k >= np.arange(1, steps + 1)).all()
    n = io.pgm_confidence_counts(1024, steps)
    assert n.sum() == 1024 and n[0] == 1 and (n >= 0).all()
    # PGM is one token ahead of MaskGIT's totals until the last step.
    np.testing.assert_array_equal(np.cumsum(n)[1:-1], totals[1:-1] + 1)


def test_schedule_rejects_bad_steps():
    with pytest.raises(ValueError, match="sample.steps"):
        io.halton_counts(16, 1)
    with pytest.raises(ValueError, match="sample.steps"):
        io.pgm_confidence_counts(16, 17)


def test_weights_temperatures_noise():
    np.testing.assert_allclose(io.cfg_weights(3.0, 4, ramp=True), [0, 1, 2, 3])
    np.testing.assert_allclose(io.cfg_weights(3.0, 4, ramp=False), [3, 3, 3, 3])
    np.testing.assert_allclose(io.halton_temperatures(1.0, 4), [0.5, 1, 1, 1])
    np.testing.assert_allclose(io.gumbel_scales(3), [5.0, 2.5, 0.0])


# ----------------------------------------------------------------------------- CFG, ranks
def test_guide_and_doubled_conditioning():
    labels, drop = io.doubled_conditioning(jnp.array([4, 7]))
    assert labels.tolist() == [4, 7, 4, 7] and drop.tolist() == [False, False, True, True]
    logits = jax.random.normal(jax.random.key(0), (4, 3, 5))
    np.testing.assert_array_equal(io.guide(logits, 0.0), logits[:2])  # w = 0: exactly cond
    np.testing.assert_allclose(io.guide(logits, 2.0), 3 * logits[:2] - 2 * logits[2:],
                               rtol=1e-6)


def test_descending_ranks_match_argsort():
    scores = jax.random.normal(jax.random.key(1), (3, 17))
    ranks = np.asarray(io.descending_ranks(scores))
    expected = np.argsort(np.argsort(-np.asarray(scores), axis=1), axis=1)
    np.testing.assert_array_equal(ranks, expected)


# ----------------------------------------------------------------------------- PGM probes
SIDE, CODEBOOK = 8, 80  # N = 64 tokens; counts of clean keys (<= 65) never wrap the codebook


@pytest.fixture(scope="module")
def probe_pgm():
    cfg = image_cfg("image_pgm", SIDE, CODEBOOK)
    return (cfg, *split(ProbePGM(cfg)))


# Each (bucket, query width) is one compiled step: bucket 16 gives 3 shapes, the default 1.
@pytest.mark.parametrize("bucket", [16, 0])
def test_pgm_halton_decodes_each_cell_once_at_its_step(probe_pgm, bucket):
    cfg, graphdef, params = probe_pgm
    n, steps = cfg.length, 6
    out = np.asarray(image.sample_images(graphdef, params, cfg, jax.random.key(0),
                                         labels=LABELS, steps=steps, bucket=bucket))
    counts = io.halton_counts(n, steps)
    before = np.cumsum(counts) - counts
    expected = np.empty(n, np.int64)
    order = io.halton_order(SIDE)
    for s in range(steps):  # the cells of step s saw BOS + `before[s]` clean keys
        expected[order[before[s]:before[s] + counts[s]]] = 1 + before[s]
    assert out.shape == (2, n) and out.dtype == np.int32
    np.testing.assert_array_equal(out, np.broadcast_to(expected, out.shape))


def test_pgm_release_quirk_reaches_the_model(probe_pgm):
    cfg, graphdef, params = probe_pgm
    kw = dict(labels=LABELS, steps=6, order="halton")
    fixed = image.sample_images(graphdef, params, cfg, jax.random.key(0), **kw)
    quirk = image.sample_images(graphdef, params, cfg, jax.random.key(0), release_quirk=True,
                                **kw)
    np.testing.assert_array_equal(np.asarray(quirk), np.asarray(fixed) - 1)


@pytest.mark.parametrize("bucket", [16, 0])
def test_pgm_confidence_decodes_each_cell_once(probe_pgm, bucket):
    cfg, graphdef, params = probe_pgm
    n, steps = cfg.length, 6
    out = np.asarray(image.sample_images(graphdef, params, cfg, jax.random.key(1),
                                         labels=LABELS, steps=steps, order="confidence",
                                         bucket=bucket))
    counts = io.pgm_confidence_counts(n, steps)
    before = np.cumsum(counts) - counts
    for row in out:  # step s wrote exactly counts[s] cells, each with value 1 + before[s]
        values, seen = np.unique(row, return_counts=True)
        assert dict(zip(values.tolist(), seen.tolist(), strict=True)) == {
            int(1 + b): int(c) for b, c in zip(before, counts, strict=True) if c}
    assert not np.array_equal(out[0], out[1])  # confidence order is random per image


def test_pgm_plan_buckets_and_widths():
    for order in image.ORDERS:
        plans = image.plan_pgm_steps(1024, 32, order, bucket=72)
        assert [p.step for p in plans] == list(range(32))
        assert sum(p.count for p in plans) == 1024
        for p in plans:
            assert 1 + p.decoded <= p.bucket <= 1025 and p.count <= p.width
            if order == "confidence":
                assert p.width >= 1024 - p.decoded
        shapes = {(p.bucket, p.width) for p in plans}
        assert len(shapes) <= 1025 // 72 + 1  # one compiled step per bucket


def test_cfg_uses_null_class_in_unconditional_branch():
    """Unconditional logits favour token 0, conditional ones are flat: guidance (w > 0) must
    suppress token 0, which only happens if the second half reaches the model as dropped."""
    cfg = image_cfg("image_pgm", SIDE, 16)
    graphdef, params = split(ProbePGM(cfg, mode="cfg"))
    labels = jnp.array([0, 1, 2, 0], jnp.int32)
    steps = 4
    kw = dict(labels=labels, steps=steps, order="halton")
    plain = np.asarray(image.sample_images(graphdef, params, cfg, jax.random.key(0), **kw))
    guided = np.asarray(image.sample_images(graphdef, params, cfg, jax.random.key(0), cfg_w=1.0,
                                            **kw))
    last = io.halton_order(SIDE)[-io.halton_counts(cfg.length, steps)[-1]:]  # w_i = w there
    assert (plain[:, last] == 0).any() and not (guided[:, last] == 0).any()

    mcfg = image_cfg("maskgit", SIDE, 16)
    graphdef, params = split(ProbeMaskGIT(mcfg, mode="cfg"))
    plain = np.asarray(image.sample_images(graphdef, params, mcfg, jax.random.key(0), **kw))
    guided = np.asarray(image.sample_images(graphdef, params, mcfg, jax.random.key(0),
                                            cfg_w=1.0, **kw))
    assert (plain == 0).any() and not (guided == 0).any()  # MaskGIT-Halton: constant w


# ----------------------------------------------------------------------------- MaskGIT probes
@pytest.fixture(scope="module")
def probe_maskgit():
    cfg = image_cfg("maskgit", SIDE, CODEBOOK)
    return (cfg, *split(ProbeMaskGIT(cfg)))


@pytest.mark.parametrize("order", image.ORDERS)
def test_maskgit_resamples_known_cells_every_step(probe_maskgit, order):
    """Every cell is rewritten at the last step, which saw the cells revealed before it."""
    cfg, graphdef, params = probe_maskgit
    steps = 5
    out = np.asarray(image.sample_images(graphdef, params, cfg, jax.random.key(0),
                                         labels=LABELS, steps=steps, order=order))
    totals = (io.halton_totals(cfg.length, steps) if order == "halton"
              else io.maskgit_confidence_k(cfg.length, steps))
    assert (out == totals[-2]).all()


# ----------------------------------------------------------------------------- real models
# Randomized weights: the reference's zero-init adaLN / head would give constant logits.
@pytest.fixture(scope="module")
def real_pgm():
    cfg = image_cfg("image_pgm", 4, 16)
    return (cfg, *split(randomized_model(cfg)))


@pytest.fixture(scope="module")
def real_maskgit():
    cfg = image_cfg("maskgit", 4, 16)
    return (cfg, *split(randomized_model(cfg)))


def check_seed_and_cfg_invariances(cfg, graphdef, params, order, unguided_doubled):
    """Same seed -> same sample, another seed -> another; w = 0 through the doubled CFG batch
    (`unguided_doubled`, the kind's sampler with guided=True) samples what the conditional
    model samples; w = 3 changes the sample. Returns the base sample."""
    kw = dict(labels=LABELS, steps=4, order=order)
    base = np.asarray(image.sample_images(graphdef, params, cfg, jax.random.key(3), **kw))
    assert base.shape == (2, 16) and base.min() >= 0 and base.max() < cfg.codebook_size
    again = image.sample_images(graphdef, params, cfg, jax.random.key(3), **kw)
    np.testing.assert_array_equal(np.asarray(again), base)  # same seed, same sample
    other = image.sample_images(graphdef, params, cfg, jax.random.key(4), **kw)
    assert not np.array_equal(np.asarray(other), base)
    doubled = unguided_doubled(graphdef, params, cfg, jax.random.key(3), temperature=1.0,
                               cfg_w=0.0, guided=True, **kw)
    np.testing.assert_array_equal(np.asarray(doubled), base)
    guided = image.sample_images(graphdef, params, cfg, jax.random.key(3), cfg_w=3.0, **kw)
    assert not np.array_equal(np.asarray(guided), base)
    return base


@pytest.mark.parametrize("order", image.ORDERS)
def test_pgm_seed_bucket_and_cfg_invariances(real_pgm, order):
    cfg, graphdef, params = real_pgm
    base = check_seed_and_cfg_invariances(cfg, graphdef, params, order, image.sample_pgm)
    # The default bucket pads every step to the full length; bucket 8 compiles 2 shapes.
    small = image.sample_images(graphdef, params, cfg, jax.random.key(3), bucket=8,
                                labels=LABELS, steps=4, order=order)
    np.testing.assert_array_equal(np.asarray(small), base)


@pytest.mark.parametrize("order", image.ORDERS)
def test_maskgit_seed_and_cfg_invariances(real_maskgit, order):
    cfg, graphdef, params = real_maskgit
    check_seed_and_cfg_invariances(cfg, graphdef, params, order, image.sample_maskgit)


def test_bad_arguments_are_clear(real_pgm):
    cfg, graphdef, params = real_pgm
    with pytest.raises(ValueError, match="sample.order"):
        image.sample_images(graphdef, params, cfg, jax.random.key(0), labels=LABELS, steps=4,
                            order="random")
    with pytest.raises(ValueError, match="model.kind"):
        image.sample_images(graphdef, params, image_cfg("pgm", 4, 16), jax.random.key(0),
                            labels=LABELS, steps=4)
    with pytest.raises(ValueError, match="sample.steps"):
        image.sample_images(graphdef, params, cfg, jax.random.key(0), labels=LABELS, steps=99)
    with pytest.raises(ValueError, match="class ids"):
        image.sample_images(graphdef, params, cfg, jax.random.key(0), labels=jnp.array([3]),
                            steps=4)
    with pytest.raises(ValueError, match="temperature"):
        image.sample_images(graphdef, params, cfg, jax.random.key(0), labels=LABELS, steps=4,
                            temperature=0.0)


@pytest.mark.parametrize("kind, order", [("image_pgm", "confidence"), ("maskgit", "halton")])
def test_sampling_split_over_8_devices_gives_the_one_device_images(real_pgm, real_maskgit,
                                                                   kind, order):
    """Hardening c: batches split over a data-parallel mesh of the 8 fake devices draw the
    images one device draws, and the sampler's output really is split over the 8."""
    cfg, graphdef, params = real_pgm if kind == "image_pgm" else real_maskgit
    eight = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    labels = np.arange(12, dtype=np.int32) % cfg.num_classes  # 2 batches of 8, the last padded
    kw = dict(steps=4, order=order, cfg_w=1.5)
    split = image.sample_images(graphdef, params, cfg, jax.random.key(5), labels=labels[:8],
                                mesh=eight, **kw)
    assert len(split.sharding.device_set) == 8 and not split.sharding.is_fully_replicated
    codes = {name: image.image_samples(graphdef, params, cfg, jax.random.key(5), labels, 8,
                                       mesh=mesh, **kw) for name, mesh in
             (("eight", eight), ("one", None))}
    assert codes["one"].shape == (12, 16)
    np.testing.assert_array_equal(codes["eight"], codes["one"])
