"""GPT-2 in Flax NNX, loaded from a local Hugging Face checkpoint (the gen-ppl judge, spec §6.2).

A checkpoint directory holds `config.json` and `model.safetensors` in the Hugging Face layout of
`GPT2LMHeadModel` (any size: small, medium, large, xl). The model: learned token and position
embeddings, pre-LN blocks (causal self-attention, then an MLP with gelu_new, each added to the
residual stream), a final LayerNorm, and output logits tied to the token embedding.

Hugging Face's `Conv1D` stores weights as [in, out], which is `layers.Linear`'s kernel layout, and
the fused `c_attn` output splits into q | k | v, heads major, as `layers.split_heads` expects.
The safetensors format is read with numpy alone: an 8-byte little-endian header length, a JSON
header naming each tensor's dtype, shape and byte range, then the raw little-endian buffers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from pgm_jax.errors import CheckpointFormatError
from pgm_jax.models import layers

Array = jax.Array

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U8": "u1", "BOOL": "?"}
# Buffers some checkpoints carry besides the weights (causal masks; the tied output head).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "lm_head.weight")


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The `config.json` fields the forward pass needs."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int = 50256

    @classmethod
    def from_json(cls, path: str) -> GPT2Config:
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointFormatError(f"cannot read GPT-2 config {path}: {e}") from None
        activation = raw.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointFormatError(
                f"{path}: activation_function={activation!r}; only GPT-2's gelu_new is supported")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class Block(nnx.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(x)); causal self-attention, learned positions."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        h, eps = cfg.n_embd, cfg.layer_norm_epsilon
        self.n_head = cfg.n_head
        self.ln_1 = layers.LayerNorm(h, use_bias=True, eps=eps)
        self.c_attn = layers.Linear(h, 3 * h, rngs=rngs)
        self.c_proj = layers.Linear(h, h, rngs=rngs)
        self.ln_2 = layers.LayerNorm(h, use_bias=True, eps=eps)
        self.mlp = layers.Mlp(h, 4 * h, h, rngs=rngs, activation="gelu_tanh")

    def __call__(self, x: Array, causal: Array) -> Array:
        """x: float32 [batch, n, H]; causal: bool [batch, n, n] -> [batch, n, H]."""
        q, k, v = jnp.split(self.c_attn(self.ln_1(x)), 3, axis=-1)
        heads = [layers.split_heads(a, self.n_head) for a in (q, k, v)]
        x = x + self.c_proj(layers.masked_attention(*heads, causal))
        return x + self.mlp(self.ln_2(x))


class GPT2(nnx.Module):
    """GPT2LMHeadModel: `model(tokens)[:, i]` scores token i + 1 given tokens 0..i."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(0.02)
        self.wte = nnx.Param(init(rngs.params(), (cfg.vocab_size, cfg.n_embd)))
        self.wpe = nnx.Param(init(rngs.params(), (cfg.n_positions, cfg.n_embd)))
        self.h = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.ln_f = layers.LayerNorm(cfg.n_embd, use_bias=True, eps=cfg.layer_norm_epsilon)

    def __call__(self, tokens: Array) -> Array:
        """tokens: int32 [batch, n], n <= n_positions -> logits float32 [batch, n, V]."""
        b, n = tokens.shape
        wte = self.wte[...]
        x = jnp.take(wte, tokens, axis=0) + self.wpe[...][None, :n]
        causal = jnp.broadcast_to(jnp.tril(jnp.ones((n, n), bool)), (b, n, n))
        for block in self.h:
            x = block(x, causal)
        return jnp.einsum("bnh,vh->bnv", self.ln_f(x), wte)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (BF16 widened to float32)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            buffer = f.read()
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{path} is not a readable safetensors file: {e}") from None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = buffer[start:end]
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            halves = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            array = halves.view(np.float32)
        elif info["dtype"] in _DTYPES:
            array = np.frombuffer(raw, _DTYPES[info["dtype"]])
        else:
            raise CheckpointFormatError(f"{path}: tensor {name} has unsupported dtype "
                                        f"{info['dtype']}")
        if array.size != math.prod(info["shape"]):
            raise CheckpointFormatError(f"{path}: tensor {name} is truncated")
        tensors[name] = array.reshape(info["shape"])
    return tensors


def hf_to_path(name: str) -> tuple | None:
    """A Hugging Face weight name -> its path in our parameter dict (None: not a weight).

    [transformer.]h.3.attn.c_attn.weight -> ('h', 3, 'c_attn', 'kernel');
    h.3.mlp.c_fc.bias -> ('h', 3, 'mlp', 'fc_in', 'bias'); ln_f.weight -> ('ln_f', 'scale').
    """
    name = name.removeprefix("transformer.")
    if name.endswith(_IGNORED_SUFFIXES):
        return None
    *module, leaf = name.split(".")
    if module in (["wte"], ["wpe"]):
        return (module[0],)
    if "mlp" in module:
        module = [{"c_fc": "fc_in", "c_proj": "fc_out"}.get(m, m) for m in module]
    module = [int(m) if m.isdigit() else m for m in module if m != "attn"]
    if leaf == "weight":
        leaf = "scale" if str(module[-1]).startswith("ln_") else "kernel"
    return (*module, leaf)


def params_from_state_dict(state_dict: dict[str, np.ndarray], cfg: GPT2Config) -> dict:
    """Hugging Face GPT-2 tensors -> our pure float32 param dict, checked against `cfg`."""
    flat = {}
    for name, array in state_dict.items():
        path = hf_to_path(name)
        if path is not None:
            flat[path] = np.asarray(array, np.float32)
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: GPT2(cfg, rngs=nnx.Rngs(0)))))
    expected = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(abstract).items()}
    missing = sorted(".".join(map(str, p)) for p in expected.keys() - flat.keys())
    unknown = sorted(".".join(map(str, p)) for p in flat.keys() - expected.keys())
    if missing or unknown:
        raise CheckpointFormatError(
            f"GPT-2 weights do not match config.json: missing {missing[:3]}, unexpected "
            f"{unknown[:3]}")
    for path, shape in expected.items():
        if flat[path].shape != shape:
            raise CheckpointFormatError(
                f"GPT-2 weight {'.'.join(map(str, path))} has shape {flat[path].shape}, "
                f"config.json implies {shape}")
    return traverse_util.unflatten_dict(flat)


def load_gpt2(directory: str) -> tuple[nnx.GraphDef, dict, GPT2Config]:
    """(graphdef, float32 params, config) of the checkpoint in `directory`."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise CheckpointFormatError(
                f"{os.path.join(directory, name)} not found: a GPT-2 judge directory needs "
                f"{CONFIG_FILE} and {WEIGHTS_FILE} (Hugging Face layout)")
    cfg = GPT2Config.from_json(os.path.join(directory, CONFIG_FILE))
    params = params_from_state_dict(read_safetensors(os.path.join(directory, WEIGHTS_FILE)), cfg)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: GPT2(cfg, rngs=nnx.Rngs(0))))
    return graphdef, jax.tree.map(jnp.asarray, params), cfg
