"""Parity of the image PGM and the MaskGIT baseline against reference fixture directories
(a fixture family of `interop/parity.py`; layout in shared/fixtures/IMAGE_README.md).

A directory is recognised by the `model` string of its `hparams.json` (PartitionDIT / the
MaskGIT Transformer), every size is read from that file, the weights come from
`state_dict.npz` ('npz') or the release-layout `checkpoint.pth` ('ckpt', its
`model_state_dict`), and every output of `io.npz` this port can produce is recomputed:
training logits, intermediates and loss, the three recorded inference calls with the correct
masking (`*_fixed`) and with the released quirk (`*_released`), the training path at the
queried positions (must equal `*_fixed`), the RoPE / sinusoid tables and the Halton order;
MaskGIT logits and loss. The losses are the training losses (`objectives.losses.LOSSES`) fed
the fixture's partition / masking and label drops. Every other array of `io.npz` is a
documented input (`INPUTS`) or must be compared: an output this port does not produce fails.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgm_jax.interop.image_convert import load_image_weights
from pgm_jax.interop.parity import Row, UnsupportedFixture, compare, training_loss
from pgm_jax.interop.torch_ckpt import CheckpointFormatError
from pgm_jax.models import ModelConfig, build_model, embeddings
from pgm_jax.sampling import image_orders

WEIGHT_FILES = {"npz": "state_dict.npz", "ckpt": "checkpoint.pth"}
INFERENCE_CALLS = ("inf", "inf_step0", "inf_conf")  # io.npz prefixes of the recorded calls
_CALL_INPUTS = ("x", "clean_positions", "noisy_positions", "concrete_lengths", "y",
                "drop_label", "sampler_step", "train_equiv_x", "train_equiv_group_idxs")
# The documented inputs of io.npz (IMAGE_README.md §1.8, §2.3), with the arrays it documents
# as restating them (the register-padded groups, the effective label y', the partition ratio
# "info only", MaskGIT's mask): every other array is an output and must be compared.
INPUTS: dict[str, frozenset[str]] = {
    "image_pgm": frozenset({
        "train_codes", "train_x", "train_group_idxs", "train_y", "train_drop_label",
        "train_group_idxs_with_registers", "train_y_effective", "train_partition_ratio",
        "inf_sampler_labels",
        *(f"{p}_{k}" for p in INFERENCE_CALLS for k in _CALL_INPUTS)}),
    "maskgit": frozenset({"clean_codes", "masked_codes", "mask", "y", "drop_label",
                          "y_effective"}),
}


def kind_of(hparams: dict) -> str | None:
    """'image_pgm' / 'maskgit' from the fixture's `model` description, else None."""
    model = str(hparams.get("model", ""))
    if model.startswith("PartitionDIT"):
        return "image_pgm"
    if model.startswith("Transformer") and "MaskGIT" in model:
        return "maskgit"
    return None


def detect(hparams: dict) -> bool:
    return kind_of(hparams) is not None


def config_from_hparams(hp: dict, source: str | Path = "hparams.json") -> ModelConfig:
    """The ModelConfig of an image fixture (every size from its hparams.json)."""
    kind = kind_of(hp)
    if kind is None:
        raise UnsupportedFixture(f"{source}: not an image PGM / MaskGIT fixture")
    try:
        common = dict(
            kind=kind, vocab_size=hp["vocab_size"], mask_index=hp["mask_token_id"],
            codebook_size=hp["codebook_size"], num_classes=hp["num_classes"],
            length=hp["num_image_tokens"], hidden_size=hp["hidden_size"],
            n_heads=hp["num_heads"], dropout=float(hp.get("dropout", 0.0)))
        if kind == "image_pgm":
            cfg = ModelConfig(**common, mlp_ratio=hp["mlp_ratio"],
                              encoder_blocks=hp["encoder_blocks"],
                              decoder_blocks=hp["decoder_blocks"],
                              swap_pre_query_mode=hp["groupswap_pre_query_mode"],
                              swap_query_process_mode=hp["groupswap_query_process_mode"],
                              rope_base=float(hp["rope_base"]))
        else:
            ratio, rem = divmod(hp["mlp_dim_arg"], hp["hidden_size"])
            if rem:
                raise UnsupportedFixture(f"{source}: mlp_dim_arg must be a multiple of "
                                         "hidden_size")
            cfg = ModelConfig(**common, mlp_ratio=ratio, n_blocks=hp["depth"])
    except KeyError as e:
        raise CheckpointFormatError(f"{source}: missing key {e.args[0]!r}") from e
    if hp.get("null_class_id", cfg.null_class) != cfg.null_class:
        raise UnsupportedFixture(f"{source}: null_class_id must equal num_classes (our null "
                                 "class id)")
    problems = cfg.problems()
    if problems:
        field, msg = problems[0]
        raise CheckpointFormatError(f"{source}: {field}: {msg}")
    return cfg


@functools.partial(jax.jit, static_argnames=("graphdef", "method"))
def _run(graphdef: nnx.GraphDef, state: nnx.State, method: str, args: tuple, quirk: jax.Array):
    model = nnx.merge(graphdef, state)
    debug: dict = {}
    if method == "infer":
        return model.infer(*args, release_quirk=quirk, debug=debug), debug
    if method == "maskgit":
        return model(*args), debug
    return model(*args, debug=debug), debug


def _pgm_outputs(model: nnx.Module, io: dict, cfg: ModelConfig) -> dict[str, jax.Array]:
    graphdef, state = nnx.split(model)
    # release_quirk is traced, so the fixed and released calls share one compiled program.
    run = lambda method, args, quirk=False: _run(graphdef, state, method,
                                                 tuple(jnp.asarray(a) for a in args),
                                                 jnp.asarray(quirk))
    out: dict[str, jax.Array] = {}
    x = io["train_x"]
    logits, dbg = run("__call__", (x, io["train_group_idxs"], io["train_y"],
                                   io["train_drop_label"].astype(bool)))
    out["train_logits"] = logits
    b = x.shape[0]
    out["train_loss"] = training_loss(model, "image_pgm", {
        "tokens": jnp.asarray(io["train_codes"]).reshape(b, -1),
        "label": jnp.asarray(io["train_y"]), "groups": jnp.asarray(io["train_group_idxs"]),
        "drop_label": jnp.asarray(io["train_drop_label"]).astype(bool)}, False)
    out["train_cond"] = dbg["cond"]
    out["train_enc_out"] = dbg["enc_out"]
    # Register query rows are never computed (their predictions are dropped): compare the
    # BOS + image rows of the reference's 2 + N + 1 slots.
    out["train_groupswap_out[2:]"] = dbg["groupswap"]
    out["train_dec_out[2:]"] = dbg["dec_out"]
    for p in INFERENCE_CALLS:
        if f"{p}_x" not in io:
            continue
        args = (io[f"{p}_x"], io[f"{p}_clean_positions"], np.ones(io[f"{p}_x"].shape, bool),
                io[f"{p}_noisy_positions"], io[f"{p}_y"], io[f"{p}_drop_label"].astype(bool))
        for tag, quirk in (("fixed", False), ("released", True)):
            logits, dbg = run("infer", args, quirk)
            out[f"{p}_logits_{tag}"] = logits
            out[f"{p}_enc_out_{tag}"] = dbg["enc_out"]
        train, _ = run("__call__", (io[f"{p}_train_equiv_x"], io[f"{p}_train_equiv_group_idxs"],
                                    io[f"{p}_y"], io[f"{p}_drop_label"].astype(bool)))
        pos = jnp.asarray(io[f"{p}_noisy_positions"])
        out[f"{p}_train_path_vs_fixed"] = jnp.take_along_axis(train, pos[..., None], axis=1)
    n_slots = io["aux_rope_cos"].shape[0] if "aux_rope_cos" in io else cfg.length + 3
    cos, sin = embeddings.rope_table(n_slots, cfg.head_dim, cfg.rope_base)
    out["aux_rope_cos"], out["aux_rope_sin"] = cos, sin
    out["aux_groupswap_pos_freqs"] = embeddings.sinusoidal_table(n_slots, cfg.hidden_size)
    out["aux_halton_cells"] = image_orders.halton_cells(image_orders.grid_side(cfg.length))
    return out


def _maskgit_outputs(model: nnx.Module, io: dict, cfg: ModelConfig) -> dict[str, jax.Array]:
    graphdef, state = nnx.split(model)
    b = io["masked_codes"].shape[0]
    codes = jnp.asarray(io["masked_codes"]).reshape(b, -1)
    logits, _ = _run(graphdef, state, "maskgit",
                     (codes, jnp.asarray(io["y"]), jnp.asarray(io["drop_label"]).astype(bool)),
                     jnp.asarray(False))
    loss = training_loss(model, "maskgit", {
        "tokens": jnp.asarray(io["clean_codes"]).reshape(b, -1), "label": jnp.asarray(io["y"]),
        "masked": codes, "drop_label": jnp.asarray(io["drop_label"]).astype(bool)}, False)
    return {"logits": logits, "loss": loss}


# What a recomputed output is compared against in io.npz (default: the same name).
REFERENCE_NAME = {
    "train_groupswap_out[2:]": ("train_groupswap_out", slice(2, None)),
    "train_dec_out[2:]": ("train_dec_out", slice(2, None)),
    **{f"{p}_train_path_vs_fixed": (f"{p}_logits_fixed", slice(None)) for p in INFERENCE_CALLS},
}


def check(fixture: str | Path, weight_source: str) -> list[Row]:
    """One Row per recomputed output of `fixture/io.npz`; [] when the weight file is absent."""
    fixture = Path(fixture)
    hparams = fixture / "hparams.json"
    cfg = config_from_hparams(json.loads(hparams.read_text()), hparams)
    if weight_source not in WEIGHT_FILES:
        raise ValueError(f"weight_source={weight_source!r}: one of {sorted(WEIGHT_FILES)}")
    weights = fixture / WEIGHT_FILES[weight_source]
    if not weights.exists():
        return []
    model = build_model(cfg)
    load_image_weights(model, weights)
    with np.load(fixture / "io.npz") as z:
        io = {k: z[k] for k in z.files}
    outputs = (_pgm_outputs if cfg.kind == "image_pgm" else _maskgit_outputs)(model, io, cfg)
    rows, compared = [], set()
    for name, value in outputs.items():
        ref_name, rows_slice = REFERENCE_NAME.get(name, (name, slice(None)))
        if ref_name in io:
            ref = io[ref_name][:, rows_slice] if rows_slice != slice(None) else io[ref_name]
            if io[ref_name].dtype.kind in "iu":
                mism = int(np.sum(np.asarray(value) != ref)) if np.shape(value) == ref.shape \
                    else ref.size
                rows.append(Row(name, float(mism), 0.0, "mismatches"))
            else:
                rows.append(compare(name, np.asarray(value), ref))
            compared.add(ref_name)
    rows += [Row(name, float("inf"), 0.0, "not computed")
             for name in sorted(expected_outputs(cfg.kind, io) - compared)]
    return rows


def expected_outputs(kind: str, io: dict[str, np.ndarray]) -> set[str]:
    """The arrays of `io` a check must compare: every one but the documented inputs."""
    return set(io) - INPUTS[kind]
