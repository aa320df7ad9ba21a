"""The paper's configurations (configs/lm1b.py, configs/owt.py): parameter counts equal the
reference's (spec §1.12, abstract shapes only) and the hyperparameters are the paper's."""

import jax
import pytest
from flax import nnx

from configs import lm1b, owt
from pgm_jax import config as config_lib
from pgm_jax.models import build_model

REFERENCE_PARAMS = {  # spec §1.12, counted on the reference PyTorch models
    (lm1b, "pgm_6_6"): 141_662_266,
    (lm1b, "pgm_6_6_mean"): 141_662_266,
    (lm1b, "pgm_6_6_lsm"): 141_662_266,
    (lm1b, "mdlm"): 139_292_986,
    (lm1b, "complement_mdlm"): 139_292_986,
    (owt, "pgm_8_8"): 202_708_818,
    (owt, "pgm_6_6_dim1024"): 268_092_754,
    (owt, "pgm_6_6"): 171_996_498,
    (owt, "mdlm"): 169_627_218,
    (owt, "complement_mdlm"): 169_627_218,
}
ALL = [(m, p) for m in (lm1b, owt) for p in m.PRESETS]


def _id(case):
    return f"{case[0].__name__.split('.')[-1]}:{case[1]}"


@pytest.mark.parametrize("case", list(REFERENCE_PARAMS), ids=_id)
def test_parameter_count_equals_the_reference(case):
    module, preset = case
    model = nnx.eval_shape(lambda: build_model(config_lib.model_config(module.get_config(preset))))
    n = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == REFERENCE_PARAMS[case]


def test_every_paper_preset_has_a_reference_count():
    assert {c for c in ALL if c[1] != "cpu"} == set(REFERENCE_PARAMS)


@pytest.mark.parametrize("case", ALL, ids=_id)
def test_preset_is_valid_and_uses_the_paper_hyperparameters(case):
    module, preset = case
    c = module.get_config(preset)
    config_lib.validate(c)
    assert c.model.length % c.sample.steps == 0
    lm = module is lm1b
    assert (c.model.length, c.model.vocab_size, c.model.mask_index, c.data.bos_id) == (
        (128, 30522, 103, 101) if lm else (1024, 50258, 50257, 50256))
    assert c.data.source == ("lm1b" if lm else "owt")
    assert c.algo == {"mdlm": "mdlm", "complement_mdlm": "complement_mdlm"}.get(preset, "pgm")
    o = c.optim
    assert (o.lr, o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip, o.schedule) == (
        3e-4, 0.9, 0.999, 1e-8, 0.0, 1.0, "constant")
    assert o.ema_decay == 0.9999 and c.sample.float64
    if preset == "cpu":
        assert c.model.hidden_size == 256 and c.train.batch_size == 8
        return
    assert o.warmup_steps == 2_500
    t = c.train
    assert (t.batch_size, t.num_steps, t.eval_every, t.checkpoint_every) == (
        512, 1_000_000, 20_000, 5_000)
    assert c.model.dropout == 0.1 and c.sample.steps == 128
    assert c.model.swap_pre_query_mode == {
        "pgm_6_6_mean": "learn+freqs+mean", "pgm_6_6_lsm": "learn+freqs+logsumexp",
    }.get(preset, "learn+freqs")


@pytest.mark.parametrize("module", [lm1b, owt])
def test_unknown_preset_is_refused(module):
    with pytest.raises(ValueError, match="unknown preset 'pgm_9_9'"):
        module.get_config("pgm_9_9")
