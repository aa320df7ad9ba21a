"""Generic numerical parity against reference fixture directories.

A fixture directory holds `hparams.json` (the model), weights (`state_dict.npz`,
`ema_state_dict.npz` and/or `checkpoint.ckpt`) and `io.npz` (inputs and the reference's
outputs, layout in `shared/fixtures/README_text.md`). `check_fixture` rebuilds the model
from the hparams, loads the weights through the converter's reader, recomputes every output
it knows how to produce and returns one row per output with its max error and tolerance;
every array of `io.npz` that is not a documented input (`INPUTS`) must be compared, so an
output this port does not produce fails instead of passing unnoticed. The loss scalars come
from the training losses themselves (`objectives.losses.LOSSES`, fed the fixture's times and
partition / masking), not from a copy kept for parity.
`check_directories` does it for many directories and both weight sources (what
`python -m pgm_jax.convert check` prints). Nothing here knows fixture names: directories are
selected by `model_kind`, and what is compared by which arrays `io.npz` contains.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgm_jax.interop.convert import read_reference_checkpoint
from pgm_jax.interop.state_dict import load_state_dict
from pgm_jax.interop.torch_ckpt import CheckpointFormatError
from pgm_jax.models import ModelConfig, build_model
from pgm_jax.objectives import schedule
from pgm_jax.objectives.losses import LOSSES
from pgm_jax.sampling.categorical import categorical_from_uniform

# Tolerances (fp32): README_text.md §7.
ATOL_LOGITS = 1e-4
RTOL_LOSS = 1e-5
ATOL_NEAR_NEG_LARGE = 0.5  # MDLM's -1e6 mask column: float32 spacing there is 0.0625
WEIGHT_SOURCES = ("npz", "ckpt")
WEIGHT_FILES = {
    "npz": {"raw": "state_dict.npz", "ema": "ema_state_dict.npz"},
    "ckpt": {"raw": "checkpoint.ckpt", "ema": "checkpoint.ckpt"},
}


# The documented inputs of each family's io.npz (README_text.md §5.1, §5.3-5.5 and §6): every
# other array is an output and must be compared.
_INFERENCE_INPUTS = ("x", "clean_positions", "noisy_positions", "concrete_lengths", "equiv_x",
                     "equiv_groups")
INPUTS: dict[str, frozenset[str]] = {
    "pgm": frozenset({"x", "groups", "t_uniform_u", "valid", "inf_sample_u",
                      *(f"{tag}_{k}" for tag in ("inf", "infu") for k in _INFERENCE_INPUTS)}),
    "mdlm_dit": frozenset({"x0", "x", "t_uniform_u", "valid"}),
}
# The training loss of each model kind (the table entry the training loop uses).
ALGO = {"pgm": "pgm", "mdlm_dit": "mdlm"}


@dataclasses.dataclass
class Row:
    name: str
    error: float
    tolerance: float
    kind: str  # "abs" | "rel" | "mismatches"

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


class UnsupportedFixture(CheckpointFormatError):
    """A fixture whose `model_kind` text parity does not know (e.g. the image models)."""


def model_config_from_hparams(hp: dict, source: str | Path = "hparams.json") -> ModelConfig:
    """ModelConfig from a fixture's `hparams.json` (reference field names)."""
    kind = hp.get("model_kind")
    if kind not in OUTPUTS:
        raise UnsupportedFixture(
            f"{source}: unsupported model_kind {kind!r} (text parity knows {sorted(OUTPUTS)})")
    return ModelConfig(
        kind=kind,
        vocab_size=hp["vocab_size"],
        mask_index=hp["mask_index"],
        length=hp["length"],
        hidden_size=hp["hidden_size"],
        cond_dim=hp["cond_dim"],
        n_heads=hp["n_heads"],
        mlp_ratio=hp.get("mlp_ratio", 4),
        dropout=hp.get("dropout", 0.0),
        encoder_blocks=hp.get("encoder_blocks", 1),
        decoder_blocks=hp.get("decoder_blocks", 1),
        n_blocks=hp.get("n_blocks", 1),
        swap_pre_query_mode=hp.get("swap_pre_query_mode", "learn+freqs"),
        swap_query_process_mode=hp.get("swap_query_process_mode", "linear"),
        time_conditioning=hp.get("time_conditioning", False),
        rope_base=float(hp.get("rope_base", 10000.0)),
    )


def compare(name: str, ours, ref) -> Row:
    """Max error of `ours` against `ref` with the tolerance the output kind calls for."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return Row(name, float("inf"), 0.0, f"shape {ours.shape} vs {ref.shape}")
    if ref.ndim == 0 or name.startswith(("loss", "nelbo")):
        err = float(np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12)))
        return Row(name, err, RTOL_LOSS, "rel")
    inf_mismatch = np.isinf(ours) != np.isinf(ref)
    same_inf = np.isinf(ref) & (ours == ref)
    finite = np.isfinite(ref) & np.isfinite(ours)
    if inf_mismatch.any() or (np.isinf(ref) & ~same_inf).any():
        return Row(name, float("inf"), ATOL_LOGITS, "abs (inf pattern differs)")
    diff = np.abs(np.where(finite, ours, 0.0) - np.where(finite, ref, 0.0))
    near_large = finite & (ref < -1e5)
    tol_map = np.where(near_large, ATOL_NEAR_NEG_LARGE, ATOL_LOGITS)
    if name.startswith("token_nll"):  # weighted by 1/t: compare relatively as well
        tol_map = tol_map + RTOL_LOSS * np.abs(np.where(finite, ref, 0.0))
    err = float(np.max(diff / tol_map)) * ATOL_LOGITS if diff.size else 0.0
    return Row(name, err, ATOL_LOGITS, "abs")


@functools.partial(jax.jit, static_argnames=("graphdef", "method"))
def _forward(graphdef: nnx.GraphDef, state: nnx.State, method: str, *args: jax.Array):
    debug: dict = {}
    return getattr(nnx.merge(graphdef, state), method)(*args, debug=debug), debug


def forward(model: nnx.Module, method: str, *args: jax.Array) -> tuple[jax.Array, dict]:
    """(logits, debug intermediates) of `model.<method>(*args)`, compiled once per shape."""
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, method, *args)


@functools.partial(jax.jit, static_argnames=("graphdef", "algo", "train"))
def _loss(graphdef: nnx.GraphDef, state: nnx.State, algo: str, batch: dict, train: bool):
    # The batch fixes every random draw of the loss; the key only feeds dropout (0 here).
    return LOSSES[algo](nnx.merge(graphdef, state), batch, jax.random.key(0), train)


def training_loss(model: nnx.Module, algo: str, batch: dict[str, jax.Array], train: bool
                  ) -> jax.Array:
    """The per-token loss float32 [] of the training loss `LOSSES[algo]` on `batch`."""
    graphdef, state = nnx.split(model)
    total, count = _loss(graphdef, state, algo, batch, train)
    return total / count


def _pgm_outputs(model, io, prefix: str, mask_index: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if "x" in io and "groups" in io:
        logits, dbg = forward(model, "__call__", jnp.asarray(io["x"]), jnp.asarray(io["groups"]))
        lp = schedule.pgm_logprobs(logits, mask_index)
        out[f"logprobs_{prefix}"] = lp
        suffix = "" if prefix == "raw" else "_ema"
        if prefix == "raw":
            out["logits_raw"] = logits
            for k, v in dbg.items():
                out[f"dbg_{k}"] = jnp.broadcast_to(v, io.get(f"dbg_{k}", v).shape)
        if "t" in io:
            logp_x0 = jnp.take_along_axis(lp, jnp.asarray(io["x"])[..., None], -1)[..., 0]
            t = jnp.asarray(io["t"])
            batch = {"tokens": jnp.asarray(io["x"]), "valid": jnp.asarray(io["valid"]), "t": t,
                     "groups": jnp.asarray(io["groups"])}
            for split, train in (("train", True), ("val", False)):
                out[f"token_nll_{split}{suffix}"] = schedule.pgm_token_nll(
                    logp_x0, batch["groups"], t, train=train)
                out[("loss_train" if train else "nelbo_val") + suffix] = training_loss(
                    model, ALGO["pgm"], batch, train)
            out["t"] = schedule.stratify(jnp.asarray(io["t_uniform_u"]))
    for tag in ("inf", "infu"):
        if f"{tag}_x" not in io:
            continue
        logits, dbg = forward(
            model, "infer", *(jnp.asarray(io[f"{tag}_{k}"]) for k in
                              ("x", "clean_positions", "noisy_positions", "concrete_lengths")))
        out[f"{tag}_logprobs_{prefix}"] = schedule.pgm_logprobs(logits, mask_index)
        if prefix == "raw":
            out[f"{tag}_logits_raw"] = logits
            out[f"{tag}_dbg_groupswap"] = dbg["groupswap"]
    if prefix == "raw" and "inf_sample_u" in io:
        with jax.enable_x64(True):
            out["inf_sampled_tokens"] = categorical_from_uniform(
                jnp.asarray(io["inf_logprobs_raw"], jnp.float64), jnp.asarray(io["inf_sample_u"])
            )
    return out


def _dit_outputs(model, io, prefix: str, mask_index: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    xt, x0 = jnp.asarray(io["x"]), jnp.asarray(io["x0"])
    logits, dbg = forward(model, "__call__", xt)
    lp = schedule.subs_logprobs(logits, xt, mask_index)
    suffix = "" if prefix == "raw" else "_ema"
    out[f"logprobs_{prefix}"] = lp
    if prefix == "raw":
        out["logits_raw"] = logits
        for k, v in dbg.items():
            out[f"dbg_{k}"] = jnp.broadcast_to(v, io.get(f"dbg_{k}", v).shape)
    if "t" in io:
        logp_x0 = jnp.take_along_axis(lp, x0[..., None], -1)[..., 0]
        t = jnp.asarray(io["t"])
        out[f"token_nll{suffix}"] = schedule.mdlm_token_nll(logp_x0, xt, t, mask_index)
        batch = {"tokens": x0, "valid": jnp.asarray(io["valid"]), "t": t, "xt": xt}
        out[f"loss_train{suffix}"] = training_loss(model, ALGO["mdlm_dit"], batch, True)
        out[f"nelbo_val{suffix}"] = training_loss(model, ALGO["mdlm_dit"], batch, False)
        out["t"] = schedule.stratify(jnp.asarray(io["t_uniform_u"]))
    return out


OUTPUTS: dict[str, Callable] = {"pgm": _pgm_outputs, "mdlm_dit": _dit_outputs}


def load_fixture(fixture: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(model config from `hparams.json`, arrays of `io.npz`) of a fixture directory."""
    fixture = Path(fixture)
    hparams = fixture / "hparams.json"
    cfg = model_config_from_hparams(json.loads(hparams.read_text()), hparams)
    with np.load(fixture / "io.npz") as z:
        return cfg, {k: z[k] for k in z.files}


def fixture_model(fixture: str | Path, cfg: ModelConfig, which: str, source: str
                  ) -> nnx.Module | None:
    """The fixture's model with its `which` ('raw' | 'ema') weights read by the converter from
    `source` ('npz': state_dict.npz / ema_state_dict.npz, 'ckpt': checkpoint.ckpt); None when
    the directory has no such file."""
    path = Path(fixture) / WEIGHT_FILES[source][which]
    if not path.exists():
        return None
    model = build_model(cfg)
    load_state_dict(model, read_reference_checkpoint(path, "raw" if source == "npz" else which))
    return model


# Other model families (images, VQ) register here: module path -> a module with
# `detect(hparams: dict) -> bool` and `check(fixture, weight_source) -> list[Row]`, where
# weight_source is one of WEIGHT_SOURCES ('npz': the state-dict npz, 'ckpt': the release-layout
# checkpoint file). The first family whose `detect` accepts the hparams checks the directory;
# text (this module) is the fallback. Imported lazily so text parity never pays for them.
FAMILIES: tuple[str, ...] = ("pgm_jax.interop.image_parity", "pgm_jax.interop.vq_parity")


def _family_for(fixture: str | Path):
    """The registered family module that accepts `fixture/hparams.json`, or None (text)."""
    import importlib

    hp_path = Path(fixture) / "hparams.json"
    hp = json.loads(hp_path.read_text())
    for name in FAMILIES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        if module.detect(hp):
            return module
    return None


def check_fixture(fixture: str | Path, weight_source: str = "npz") -> list[Row]:
    """Recomputes every known output of `fixture/io.npz`; one Row per compared array.

    weight_source: 'npz' or 'ckpt' (see `fixture_model`). Raises UnsupportedFixture for a
    model kind no family knows.
    """
    family = _family_for(fixture)
    if family is not None:
        return family.check(fixture, weight_source)
    cfg, io = load_fixture(fixture)
    computed: dict[str, np.ndarray] = {}
    loaded = []
    for which in ("raw", "ema"):
        model = fixture_model(fixture, cfg, which, weight_source)
        if model is not None:
            loaded.append(which)
            computed.update(OUTPUTS[cfg.kind](model, io, which, cfg.mask_index))
    if not loaded:
        return []
    rows = []
    for name, value in computed.items():
        if name not in io:
            continue
        if name.endswith("sampled_tokens") or io[name].dtype.kind in "iu":
            mism = int(np.sum(np.asarray(value) != io[name]))
            rows.append(Row(name, float(mism), 0.0, "mismatches"))
        else:
            rows.append(compare(name, value, io[name]))
    compared = {r.name for r in rows}
    rows += [Row(name, float("inf"), 0.0, "not computed")
             for name in sorted(expected_outputs(cfg.kind, io, loaded) - compared)]
    return rows


def expected_outputs(kind: str, io: dict[str, np.ndarray], weights: list[str]) -> set[str]:
    """The arrays of `io` a check with the `weights` ('raw' / 'ema') loaded must compare: every
    one but the documented inputs (and the other weight set's outputs)."""
    names = set(io) - INPUTS[kind]
    if "ema" not in weights:
        names = {n for n in names if not n.endswith("_ema")}
    if "raw" not in weights:
        names = {n for n in names if n.endswith("_ema")}
    return names


def check_directories(dirs: list[str | Path], emit: Callable[[str], None]
                      ) -> tuple[int, int, int]:
    """Checks every fixture directory with every weight source, emitting one line per output
    (`name source output error <= tolerance kind OK|FAIL`) and `SKIP ...` for unsupported
    model kinds. Returns (fixtures checked, outputs compared, failures)."""
    checked, compared, failed = 0, 0, 0
    for d in dirs:
        name = Path(d).name
        before = compared
        for source in WEIGHT_SOURCES:
            try:
                rows = check_fixture(d, source)
            except UnsupportedFixture as e:
                emit(f"SKIP {e}")
                break
            except (CheckpointFormatError, OSError) as e:
                emit(f"{name:<24} {source:<4} FAIL  {e}")
                failed += 1
                continue
            if not rows:
                emit(f"{name:<24} {source:<4} (no {source} weights: not checked)")
            for r in rows:
                emit(f"{name:<24} {source:<4} {r.name:<24} {r.error:10.3g} <= {r.tolerance:<7.0e}"
                     f" {r.kind:<10} {'OK' if r.ok else 'FAIL'}")
                failed += not r.ok
            compared += len(rows)
        else:
            checked += 1
            if compared == before:
                emit(f"{name:<24} FAIL  no weights found ({', '.join(WEIGHT_FILES)} files)")
                failed += 1
    return checked, compared, failed
