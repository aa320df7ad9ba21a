"""The LlamaGen VQ tokenizer (`vq_ds8_c2i.pt`, spec §1.3 and §1.6) in Flax NNX, NHWC.

images float32[batch, H, W, 3] in [-1, 1] --encoder--> float32[batch, h, w, z_channels]
--quant_conv--> latents float32[batch, h, w, D] --l2 lookup--> codes int32[batch, h, w] and
quant float32[batch, h, w, D] (unit-norm codebook rows); decode(quant) -> images (unclamped).
h = H / 2^(levels - 1). Codes flatten row-major into raster order (token k = row * w + col).

The module tree mirrors the reference state-dict names (`encoder.conv_blocks.3.attn.0.q`,
`decoder.mid.1.proj_out`, `quantize.embedding`, ...), so conversion (interop/vq_convert.py) is
a per-key relayout: conv `weight` (O, I, kh, kw) -> `kernel` (kh, kw, I, O), GroupNorm
`weight` -> `scale`. Parameters are float32 and every conv / dot runs at `cfg.precision`
("highest" by default: TF32 / bf16 passes on GPU miss the fp32 parity tolerances by orders of
magnitude and can flip near-tied codes; "default" trades that for speed).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from pgm_jax.models.layers import torch_uniform

Array = jax.Array
PRECISIONS = ("default", "high", "highest")
CODES_PER_MAP_STEP = 8  # images whose [h*w, K] distance matrix is built at once (memory bound)


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """Shapes of a LlamaGen VQ model; defaults are the released VQ-8 (`vq_ds8_c2i.pt`).

    Attention follows the reference rule: after every ResnetBlock of the lowest-resolution
    level (the encoder's last, the decoder's first) and in both mid blocks.
    `image_size` is the training resolution (informational: any size divisible by the
    downsample factor works).
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks_encoder: int = 2
    num_res_blocks_decoder: int = 3
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    in_channels: int = 3
    out_channels: int = 3
    groupnorm_groups: int = 32
    groupnorm_eps: float = 1e-6
    image_size: int = 256
    precision: str = "highest"

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_side(self) -> int:
        return self.image_size // self.downsample_factor

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> VQConfig:
        """From a fixture `hparams.json` / saved config (unknown keys ignored).

        `num_res_blocks` alone (LlamaGen's ModelArgs) means that many encoder blocks and one
        more per decoder level, as the reference builds them.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in hp.items() if k in names}
        if "num_res_blocks" in hp:
            kw.setdefault("num_res_blocks_encoder", int(hp["num_res_blocks"]))
            kw.setdefault("num_res_blocks_decoder", int(hp["num_res_blocks"]) + 1)
        if "ch_mult" in kw:
            kw["ch_mult"] = tuple(int(m) for m in kw["ch_mult"])
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    def problems(self) -> list[tuple[str, str]]:
        """(field, why) for every inconsistent setting."""
        out = []
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            out.append(("ch_mult", f"{self.ch_mult} must be a non-empty tuple of positive ints"))
        widths = [self.ch] + [self.ch * m for m in self.ch_mult]
        bad = [w for w in widths if w % self.groupnorm_groups]
        if bad:
            out.append(("ch", f"channel counts {sorted(set(bad))} are not divisible by "
                              f"groupnorm_groups={self.groupnorm_groups}"))
        for name in ("num_res_blocks_encoder", "num_res_blocks_decoder", "codebook_size",
                     "codebook_embed_dim", "z_channels"):
            if getattr(self, name) < 1:
                out.append((name, f"must be >= 1, got {getattr(self, name)}"))
        if self.image_size % self.downsample_factor:
            out.append(("image_size", f"{self.image_size} is not divisible by the downsample "
                                      f"factor {self.downsample_factor}"))
        if self.precision not in PRECISIONS:
            out.append(("precision", f"{self.precision!r}: use one of {PRECISIONS}"))
        return out

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        for field, why in self.problems():
            raise ValueError(f"VQ config {field}: {why}")


# ----------------------------------------------------------------------------- layers
class Conv(nnx.Module):
    """2-D convolution on NHWC; kernel [kh, kw, in, out] (torch's weight permuted), bias [out].

    padding: symmetric int, or ((top, bottom), (left, right)) for the downsample's
    right/bottom-only pad. PyTorch's default init (U(+-1/sqrt(fan_in))).
    """

    def __init__(self, in_ch: int, out_ch: int, size: int, *, rngs: nnx.Rngs, stride: int = 1,
                 padding: int | tuple[tuple[int, int], tuple[int, int]] | None = None,
                 precision: str = "highest"):
        init = torch_uniform(in_ch * size * size)
        self.kernel = nnx.Param(init(rngs.params(), (size, size, in_ch, out_ch)))
        self.bias = nnx.Param(init(rngs.params(), (out_ch,)))
        pad = size // 2 if padding is None else padding
        self.padding = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
        self.stride = stride
        self.precision = precision

    def __call__(self, x: Array) -> Array:
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...], (self.stride, self.stride), self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
        return y + self.bias[...]


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm on NHWC: statistics over (H, W, C / groups), biased variance."""

    def __init__(self, channels: int, groups: int, eps: float):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.groups, self.eps = groups, eps

    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        g = x.reshape(b, h, w, self.groups, c // self.groups)
        mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
        # Two-pass variance, as torch: E[x^2] - E[x]^2 loses digits on large activations.
        var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
        return y * self.scale[...] + self.bias[...]


class ResnetBlock(nnx.Module):
    """x + conv2(swish(GN2(conv1(swish(GN1(x)))))); a 1x1 `nin_shortcut` when widths differ."""

    def __init__(self, cfg: VQConfig, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        conv = functools.partial(Conv, rngs=rngs, precision=cfg.precision)
        self.norm1 = GroupNorm(in_ch, cfg.groupnorm_groups, cfg.groupnorm_eps)
        self.conv1 = conv(in_ch, out_ch, 3)
        self.norm2 = GroupNorm(out_ch, cfg.groupnorm_groups, cfg.groupnorm_eps)
        self.conv2 = conv(out_ch, out_ch, 3)
        self.nin_shortcut = conv(in_ch, out_ch, 1) if in_ch != out_ch else None

    def __call__(self, x: Array) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))  # dropout 0 in the released model
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nnx.Module):
    """x + proj_out(softmax(q k^T / sqrt(C)) v): one head over all H*W positions."""

    def __init__(self, cfg: VQConfig, channels: int, *, rngs: nnx.Rngs):
        conv = functools.partial(Conv, channels, channels, 1, rngs=rngs,
                                 precision=cfg.precision)
        self.norm = GroupNorm(channels, cfg.groupnorm_groups, cfg.groupnorm_eps)
        self.q, self.k, self.v, self.proj_out = conv(), conv(), conv(), conv()
        self.precision = cfg.precision

    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        n = self.norm(x)
        q, k, v = (f(n).reshape(b, h * w, c) for f in (self.q, self.k, self.v))
        scores = jnp.einsum("bic,bjc->bij", q, k, precision=self.precision) / math.sqrt(c)
        out = jnp.einsum("bij,bjc->bic", jax.nn.softmax(scores, axis=-1), v,
                         precision=self.precision)
        return x + self.proj_out(out.reshape(b, h, w, c))


class Downsample(nnx.Module):
    """Zero-pad right and bottom by 1, 3x3 stride-2 conv: [B, H, W, C] -> [B, H/2, W/2, C]."""

    def __init__(self, cfg: VQConfig, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, 3, rngs=rngs, stride=2, padding=((0, 1), (0, 1)),
                         precision=cfg.precision)

    def __call__(self, x: Array) -> Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 (pixel repeat, as torch's interpolate) then a 3x3 conv."""

    def __init__(self, cfg: VQConfig, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, 3, rngs=rngs, precision=cfg.precision)

    def __call__(self, x: Array) -> Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
    """One resolution level: `res` blocks, optional `attn` after each, optional resampling.

    `downsample` / `upsample` is set on every level but the encoder's last / decoder's last.
    """

    def __init__(self, cfg: VQConfig, in_ch: int, out_ch: int, blocks: int, *, attn: bool,
                 resample: str | None, rngs: nnx.Rngs):
        self.res = nnx.List([ResnetBlock(cfg, in_ch if i == 0 else out_ch, out_ch, rngs=rngs)
                             for i in range(blocks)])
        self.attn = nnx.List([AttnBlock(cfg, out_ch, rngs=rngs) for _ in range(blocks)]
                             if attn else [])
        self.downsample = Downsample(cfg, out_ch, rngs=rngs) if resample == "down" else None
        self.upsample = Upsample(cfg, out_ch, rngs=rngs) if resample == "up" else None

    def __call__(self, x: Array) -> Array:
        for i, res in enumerate(self.res):
            x = res(x)
            if len(self.attn):
                x = self.attn[i](x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


def _mid(cfg: VQConfig, channels: int, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([ResnetBlock(cfg, channels, channels, rngs=rngs),
                     AttnBlock(cfg, channels, rngs=rngs),
                     ResnetBlock(cfg, channels, channels, rngs=rngs)])


class Encoder(nnx.Module):
    """images [B, H, W, in_channels] -> features [B, H/f, W/f, z_channels]."""

    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        conv = functools.partial(Conv, rngs=rngs, precision=cfg.precision)
        last = len(cfg.ch_mult) - 1
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = conv(cfg.in_channels, cfg.ch, 3)
        self.conv_blocks = nnx.List([
            Level(cfg, ([cfg.ch] + widths)[i], widths[i], cfg.num_res_blocks_encoder,
                  attn=i == last, resample=None if i == last else "down", rngs=rngs)
            for i in range(len(widths))])
        self.mid = _mid(cfg, widths[-1], rngs)
        self.norm_out = GroupNorm(widths[-1], cfg.groupnorm_groups, cfg.groupnorm_eps)
        self.conv_out = conv(widths[-1], cfg.z_channels, 3)

    def __call__(self, x: Array) -> Array:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    """features [B, h, w, z_channels] -> images [B, h*f, w*f, out_channels] (unclamped).

    `conv_blocks[i]` is resolution level `levels - 1 - i` (lowest resolution first).
    """

    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        conv = functools.partial(Conv, rngs=rngs, precision=cfg.precision)
        widths = [cfg.ch * m for m in reversed(cfg.ch_mult)]
        last = len(widths) - 1
        self.conv_in = conv(cfg.z_channels, widths[0], 3)
        self.mid = _mid(cfg, widths[0], rngs)
        self.conv_blocks = nnx.List([
            Level(cfg, widths[max(i - 1, 0)], widths[i], cfg.num_res_blocks_decoder,
                  attn=i == 0, resample=None if i == last else "up", rngs=rngs)
            for i in range(len(widths))])
        self.norm_out = GroupNorm(widths[-1], cfg.groupnorm_groups, cfg.groupnorm_eps)
        self.conv_out = conv(widths[-1], cfg.out_channels, 3)

    def __call__(self, z: Array) -> Array:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


def l2_normalize(x: Array) -> Array:
    """x / max(||x||, 1e-12) over the last axis (torch.nn.functional.normalize)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


class Quantizer(nnx.Module):
    """Nearest codebook row by squared distance; `embedding` [K, D] as stored (not unit norm)."""

    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        k = cfg.codebook_size
        self.embedding = nnx.Param(
            jax.random.uniform(rngs.params(), (k, cfg.codebook_embed_dim), jnp.float32,
                               -1.0 / k, 1.0 / k))
        self.l2_norm, self.precision = cfg.codebook_l2_norm, cfg.precision

    def codebook(self) -> Array:
        """float32[K, D]: the rows codes index (l2-normalised when the model says so)."""
        e = self.embedding[...]
        return l2_normalize(e) if self.l2_norm else e

    def __call__(self, z: Array) -> tuple[Array, Array]:
        """latents [B, h, w, D] -> (codes int32[B, h, w], quant float32[B, h, w, D])."""
        b, h, w, d = z.shape
        e = self.codebook()
        z = l2_normalize(z) if self.l2_norm else z
        e_sq = jnp.sum(jnp.square(e), axis=-1)

        def nearest(zi: Array) -> Array:  # [h*w, D] -> int32[h*w]
            # The reference's expression and op order, so near-ties break the same way; argmin
            # returns the first minimum like torch.
            dist = (jnp.sum(jnp.square(zi), axis=-1, keepdims=True) + e_sq
                    - 2.0 * jnp.dot(zi, e.T, precision=self.precision))
            return jnp.argmin(dist, axis=-1).astype(jnp.int32)

        # [h*w, K] per image: 64 MiB at VQ-8 sizes, so a few images at a time, not the batch.
        codes = jax.lax.map(nearest, z.reshape(b, h * w, d),
                            batch_size=min(b, CODES_PER_MAP_STEP)).reshape(b, h, w)
        return codes, e[codes]

    def lookup(self, codes: Array) -> Array:
        """codes int[B, h, w] -> quant float32[B, h, w, D]."""
        return self.codebook()[codes]


class VQModel(nnx.Module):
    """LlamaGen VQModel: encoder, quant_conv, quantize, post_quant_conv, decoder."""

    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        conv = functools.partial(Conv, rngs=rngs, precision=cfg.precision)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        self.quantize = Quantizer(cfg, rngs=rngs)
        self.quant_conv = conv(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = conv(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def encode(self, images: Array, debug: dict | None = None) -> tuple[Array, Array]:
        """images float32[B, H, W, in_channels] in [-1, 1] -> (codes int32[B, h, w],
        quant float32[B, h, w, D]). `debug`, when given, receives `enc_features`
        [B, h, w, z_channels] and `enc_latent` [B, h, w, D] (before normalisation)."""
        features = self.encoder(images.astype(jnp.float32))
        latent = self.quant_conv(features)
        if debug is not None:
            debug.update(enc_features=features, enc_latent=latent)
        return self.quantize(latent)

    def decode(self, quant: Array) -> Array:
        """quant float32[B, h, w, D] -> images float32[B, H, W, out_channels], unclamped
        (the reference callers clip to [-1, 1])."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_codes(self, codes: Array) -> Array:
        """codes int[B, h, w] -> images float32[B, H, W, out_channels], unclamped.

        Codes are clipped to [0, K - 1] first, as the reference samplers do (spec §1.6), so a
        stray mask / BOS id decodes as the last code instead of reading out of bounds.
        """
        codes = jnp.clip(codes, 0, self.cfg.codebook_size - 1)
        return self.decode(self.quantize.lookup(codes))

    def __call__(self, images: Array) -> Array:
        """The reference forward: decode(encode(images).quant)."""
        return self.decode(self.encode(images)[1])


@functools.lru_cache(maxsize=8)
def _abstract_split(cfg: VQConfig) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: VQModel(cfg, rngs=nnx.Rngs(params=0))))


def build_vq(cfg: VQConfig, seed: int = 0) -> VQModel:
    """A randomly initialised VQ model in PyTorch's default ranges: conv weight and bias
    U(+-1/sqrt(fan_in)), GroupNorm 1 and 0, codebook U(+-1/K).

    Drawn with numpy: ~200 jax.random draws take over a minute to compile under jit on CPU (tens
    of seconds op by op), all waste for a model that is usually loaded.
    """
    rng = np.random.default_rng(seed)
    flat = dict(nnx.to_flat_state(_abstract_split(cfg)[1]))
    params = {}
    for path, var in flat.items():
        kernel = flat.get(path[:-1] + ("kernel",))
        if kernel is not None:  # a conv's kernel or bias
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:3]))
        elif path == ("quantize", "embedding"):
            bound = 1.0 / cfg.codebook_size
        else:  # GroupNorm
            params[path] = np.full(var.shape, path[-1] == "scale", np.float32)
            continue
        params[path] = rng.uniform(-bound, bound, var.shape).astype(np.float32)
    return vq_with_params(cfg, params)


def abstract_vq(cfg: VQConfig) -> VQModel:
    """The model's structure with ShapeDtypeStruct leaves: nothing is initialised.

    Tracing the constructor takes seconds at VQ-8 size, so the structure is cached per config
    and each call merges a fresh copy (callers may fill its variables in place).
    """
    graphdef, state = _abstract_split(cfg)
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state))


def vq_with_params(cfg: VQConfig, params: Mapping[tuple, Any]) -> VQModel:
    """VQModel(cfg) holding `params` ({param path: array}, every parameter, our layout)."""
    graphdef, state = _abstract_split(cfg)
    state = jax.tree.map(lambda leaf: leaf, state)  # the cached structure stays abstract
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(
        {p: jnp.asarray(v, jnp.float32) for p, v in params.items()}))
    return nnx.merge(graphdef, state)


def params_of(model: VQModel) -> dict[tuple, jax.Array]:
    """{param path: array} of `model` (what `vq_with_params` takes)."""
    return {p: v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def with_config(model: VQModel, cfg: VQConfig) -> VQModel:
    """`model`'s weights under `cfg`, which may change only `precision` and `image_size`."""
    if dataclasses.replace(cfg, precision=model.cfg.precision, image_size=model.cfg.image_size
                           ) != model.cfg:
        raise ValueError(f"VQ config {cfg} does not fit the weights' architecture {model.cfg}")
    return model if cfg == model.cfg else vq_with_params(cfg, params_of(model))


def jit_method(model: VQModel, method: str) -> Callable[..., Any]:
    """`model.<method>` as one jitted pure function of its array arguments.

    The model is split once; its state is a closed-over argument (not a constant), so the
    compiled function is reused for every call with the same shapes.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state: nnx.State, *args: Array) -> Any:
        return getattr(nnx.merge(graphdef, state), method)(*args)

    return functools.partial(run, state)
