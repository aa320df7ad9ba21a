"""FID InceptionV3 (TF 2015-12-05 weights) in Flax NNX, and a batched feature extractor.

The network is the "FID Inception" of pytorch-fid / torch-fidelity ("inception-v3-compat"), spec
§5.3 and §8: the average pools inside Mixed_5*/6*/7b exclude padding from the count, Mixed_7c
pools its last branch with a max pool, BatchNorm eps is 1e-3, and the head has 1008 classes.
Outputs: pool-2048 features (FID) and `logits_unbiased` = features @ fc.kernel, no bias (IS).

Weights are a local file, never downloaded (`WEIGHTS_HELP` says how to get one):
- `inception_v3_weights_fid.pickle` (jax-fid / fidjax): a plain pickle of nested dicts of numpy
  arrays, `{"Conv2d_1a_3x3": {"conv": {"kernel": HWIO}, "bn": {"scale", "bias", "mean", "var"}},
  "Mixed_5b": {"branch1x1": {...}}, ..., "fc": {"kernel": [2048, 1008], "bias": [1008]}}`.
  The module attribute names below are those keys, so the file is the model's pure state dict.
- `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid) or
  `weights-inception-2015-12-05-6726825d.pth` (torch-fidelity): the same weights as a torch
  state dict (`Conv2d_1a_3x3.conv.weight` OIHW, `.bn.running_mean`, `fc.weight` [1008, 2048]),
  read without torch and converted.
- `.npz` with the pickle's paths joined by "/" (`Conv2d_1a_3x3/conv/kernel`), as
  `save_inception_weights` writes.

Preprocessing (`InceptionExtractor(preprocess=...)`), for [B, H, W, 3] uint8 or float [-1, 1]:
- "pgm" (default, the PGM protocol, spec §5.3): x -> (x+1)/2*255 as float, PIL bicubic resize of
  each channel in float mode to 299 (clean-fid), truncation to uint8, then (x-128)/128 on device.
  The resize runs on the host (threads).
- "fidjax": on device, x in [-1, 1], `jax.image.resize` bilinear without antialiasing to 299.
  Faster; a small systematic offset against "pgm" (spec §8), so keep one fixed per comparison.

Usage:
    model = load_inception("/data/inception_v3_weights_fid.pickle")
    extract = InceptionExtractor(model, mesh=mesh, batch_size=256)
    feats, logits = extract(images)      # [B, 2048] float32, [B, 1008] float32 (numpy)
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from pgm_jax import sharding
from pgm_jax.interop.torch_ckpt import CheckpointFormatError, load_torch_checkpoint

NUM_CLASSES = 1008
FEATURE_DIM = 2048
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # smallest side for which every stride-2 stage keeps >= 1 pixel
BN_EPSILON = 1e-3
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save stream
PREPROCESS = ("pgm", "fidjax")
WEIGHTS_FILE = "inception_v3_weights_fid.pickle"  # jax-fid's name; .pth / .npz also load
WEIGHTS_HELP = (
    f"give the FID Inception weights as a local file: jax-fid's {WEIGHTS_FILE} "
    "(https://www.dropbox.com/s/xt6zvlvt22dcwck/inception_v3_weights_fid.pickle?dl=1), or "
    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (https://github.com/mseitzer/pytorch-fid"
    "/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth), or torch-fidelity's "
    "weights-inception-2015-12-05-6726825d.pth; download it on a machine with network access")


class InceptionWeightsError(CheckpointFormatError):
    """An Inception weight file that is missing or does not have the FID Inception layout."""


# ----------------------------------------------------------------------------- layers
def _max_pool(x: jax.Array, stride: int, pad: int) -> jax.Array:
    """3x3 max pool over [B, H, W, C]; padded cells are -inf, so they never win."""
    pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                                 pads)


def _avg_pool_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool, padding 1, padded cells not counted (count_include_pad=False,
    as the TF graph the weights come from): border outputs average 4 or 6 cells, not 9."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    return total / count


def _host_zeros(key: jax.Array, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """Initializer for weights that always come from a file: lazily zeroed host memory, so
    building the 24M-parameter model costs nothing (no random init, no tracing)."""
    del key
    return np.zeros(shape, dtype)


class ConvBN(nnx.Module):
    """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU; keys conv/bn."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: str = "VALID", *, precision: Any, rngs: nnx.Rngs):
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.conv = nnx.Conv(cin, cout, kernel, stride, padding=padding, use_bias=False,
                             precision=precision, kernel_init=_host_zeros, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=BN_EPSILON,
                                bias_init=_host_zeros, scale_init=_host_zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
    """Mixed_5b/5c/5d: 35x35, out 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int, **kw):
        self.branch1x1 = ConvBN(cin, 64, 1, **kw)
        self.branch5x5_1 = ConvBN(cin, 48, 1, **kw)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding="SAME", **kw)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1, **kw)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding="SAME", **kw)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding="SAME", **kw)
        self.branch_pool = ConvBN(cin, pool_features, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_same(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a: 35x35 -> 17x17 (stride 2), out 384 + 96 + cin channels."""

    def __init__(self, cin: int, **kw):
        self.branch3x3 = ConvBN(cin, 384, 3, 2, **kw)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1, **kw)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding="SAME", **kw)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, 2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([a, b, _max_pool(x, 2, 0)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b..6e: 17x17 with factorised 7x7 convolutions, out 768 channels."""

    def __init__(self, cin: int, c7: int, **kw):
        self.branch1x1 = ConvBN(cin, 192, 1, **kw)
        self.branch7x7_1 = ConvBN(cin, c7, 1, **kw)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding="SAME", **kw)
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding="SAME", **kw)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1, **kw)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding="SAME", **kw)
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding="SAME", **kw)
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding="SAME", **kw)
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding="SAME", **kw)
        self.branch_pool = ConvBN(cin, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_same(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a: 17x17 -> 8x8 (stride 2), out 320 + 192 + cin channels."""

    def __init__(self, cin: int, **kw):
        self.branch3x3_1 = ConvBN(cin, 192, 1, **kw)
        self.branch3x3_2 = ConvBN(192, 320, 3, 2, **kw)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1, **kw)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding="SAME", **kw)
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding="SAME", **kw)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, 2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return jnp.concatenate([a, b, _max_pool(x, 2, 0)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b (average pool) / Mixed_7c (max pool, the FID variant): 8x8, out 2048."""

    def __init__(self, cin: int, max_pool: bool, **kw):
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1, **kw)
        self.branch3x3_1 = ConvBN(cin, 384, 1, **kw)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding="SAME", **kw)
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding="SAME", **kw)
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1, **kw)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding="SAME", **kw)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding="SAME", **kw)
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding="SAME", **kw)
        self.branch_pool = ConvBN(cin, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = jnp.concatenate([self.branch3x3_2a(b), self.branch3x3_2b(b)], axis=-1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = jnp.concatenate([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], axis=-1)
        pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_same(x)
        return jnp.concatenate([a, b, c, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
    """FID InceptionV3. __call__: float32 [B, H, W, 3] already normalised (H, W >= 75; 299 for
    FID) -> (features float32 [B, 2048], logits_unbiased float32 [B, num_classes]).

    Parameters start as zeros (use `load_inception`); attribute names are the weight keys."""

    def __init__(self, num_classes: int = NUM_CLASSES, *, precision: Any = "highest"):
        # "highest": no TF32/bf16 passes on GPU/TPU, so features do not depend on the chip.
        kw = {"precision": precision, "rngs": nnx.Rngs(0)}
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, 2, **kw)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3, **kw)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding="SAME", **kw)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1, **kw)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3, **kw)
        self.Mixed_5b = InceptionA(192, 32, **kw)
        self.Mixed_5c = InceptionA(256, 64, **kw)
        self.Mixed_5d = InceptionA(288, 64, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = InceptionC(768, 128, **kw)
        self.Mixed_6c = InceptionC(768, 160, **kw)
        self.Mixed_6d = InceptionC(768, 160, **kw)
        self.Mixed_6e = InceptionC(768, 192, **kw)
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, max_pool=False, **kw)
        self.Mixed_7c = InceptionE(2048, max_pool=True, **kw)
        self.fc = nnx.Linear(FEATURE_DIM, num_classes, precision=precision,
                             kernel_init=_host_zeros, bias_init=_host_zeros, rngs=kw["rngs"])
        self.precision = precision

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool(x, 2, 0)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _max_pool(x, 2, 0)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        features = jnp.mean(x, axis=(1, 2))
        # torch-fidelity's logits_unbiased: IS is computed without the fc bias (spec §5.3).
        logits = jnp.dot(features, self.fc.kernel[...], precision=self.precision)
        return features, logits


# ----------------------------------------------------------------------------- weights
def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


@functools.lru_cache(maxsize=4)
def _layout(num_classes: int) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
    state = nnx.state(InceptionV3(num_classes)).to_pure_dict()
    return tuple((path, tuple(leaf.shape)) for path, leaf in _flatten(state).items())


def weights_layout(num_classes: int = NUM_CLASSES) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Expected {("Mixed_5b", "branch1x1", "conv", "kernel"): shape} of the pickle layout."""
    return dict(_layout(num_classes))


# Torch state-dict leaf names -> pickle names, with the transform from torch's layout.
_TORCH_LEAVES: dict[tuple[str, str], tuple[str, str, Callable[[np.ndarray], np.ndarray]]] = {
    ("conv", "weight"): ("conv", "kernel", lambda w: w.transpose(2, 3, 1, 0)),  # OIHW -> HWIO
    ("bn", "weight"): ("bn", "scale", lambda w: w),
    ("bn", "bias"): ("bn", "bias", lambda w: w),
    ("bn", "running_mean"): ("bn", "mean", lambda w: w),
    ("bn", "running_var"): ("bn", "var", lambda w: w),
}


def tree_from_torch_state_dict(state_dict: Mapping[str, np.ndarray], source: str = "<dict>"
                               ) -> dict:
    """pytorch-fid / torch-fidelity state dict -> the pickle layout (nested numpy dicts).

    `num_batches_tracked` and the unused `AuxLogits.*` head are dropped."""
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for name, value in state_dict.items():
        parts = tuple(name.split("."))
        if parts[0] == "AuxLogits" or parts[-1] == "num_batches_tracked":
            continue
        if parts == ("fc", "weight"):
            flat[("fc", "kernel")] = np.asarray(value).T
        elif parts == ("fc", "bias"):
            flat[("fc", "bias")] = np.asarray(value)
        elif parts[-2:] in _TORCH_LEAVES:
            module, leaf, transform = _TORCH_LEAVES[parts[-2:]]
            flat[(*parts[:-2], module, leaf)] = transform(np.asarray(value))
        else:
            raise InceptionWeightsError(
                f"{source}: unexpected key '{name}' for an FID Inception state dict; "
                f"{WEIGHTS_HELP}")
    return _unflatten(flat)


class _NumpyUnpickler(pickle.Unpickler):
    """Plain pickles of containers of numpy arrays only: no other global can run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing global '{module}.{name}' (numpy arrays only)")
        return super().find_class(module, name)


def _read_tree(path: str) -> dict:
    """The weight file at `path` as nested dicts of numpy arrays in the pickle layout."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_torch = any(name.endswith("data.pkl") for name in zf.namelist())
        if not is_torch:  # .npz of "/"-joined paths
            with np.load(path, allow_pickle=False) as data:
                return _unflatten({tuple(k.split("/")): data[k] for k in data.files})
        return _tree_from_torch(load_torch_checkpoint(path), path)
    try:
        with open(path, "rb") as fh:
            tree = _NumpyUnpickler(io.BytesIO(fh.read())).load()
    except Exception as exc:  # any unpickling failure means a file of another kind
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise InceptionWeightsError(f"{path}: not a pickle of numpy arrays nor a torch state "
                                    f"dict ({detail}); {WEIGHTS_HELP}") from exc
    if tree == _TORCH_LEGACY_MAGIC:  # the first of the pickles of a legacy torch.save file
        return _tree_from_torch(load_torch_checkpoint(path), path)
    if not isinstance(tree, Mapping):
        raise InceptionWeightsError(f"{path}: the pickle holds a {type(tree).__name__}, not the "
                                    f"nested dict of jax-fid's layout; {WEIGHTS_HELP}")
    return dict(tree)


def _tree_from_torch(state: Any, path: str) -> dict:
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise InceptionWeightsError(f"{path}: a torch file holding a {type(state).__name__}, "
                                    f"not a state dict; {WEIGHTS_HELP}")
    return tree_from_torch_state_dict(state, path)


def _check_layout(flat: dict[tuple[str, ...], np.ndarray], expected: Mapping, source: str
                  ) -> None:
    # jax-fid style trees may carry an all-zero conv bias the bias-free convolutions ignore.
    for path in [p for p in flat if p not in expected and p[-2:] == ("conv", "bias")]:
        if np.any(np.asarray(flat[path]) != 0):
            raise InceptionWeightsError(f"{source}: non-zero {'/'.join(path)}: the FID "
                                        "Inception convolutions have no bias")
        del flat[path]
    missing = sorted("/".join(p) for p in expected if p not in flat)
    extra = sorted("/".join(p) for p in flat if p not in expected)
    wrong = [f"{'/'.join(p)} {tuple(np.shape(flat[p]))} (expected {s})"
             for p, s in expected.items() if p in flat and tuple(np.shape(flat[p])) != s]
    problems = [f"{len(missing)} missing ({', '.join(missing[:3])}...)" if missing else "",
                f"{len(extra)} unexpected ({', '.join(extra[:3])}...)" if extra else "",
                f"wrong shapes: {', '.join(wrong[:3])}" if wrong else ""]
    if any(problems):
        raise InceptionWeightsError(
            f"{source}: not the FID Inception layout: {'; '.join(p for p in problems if p)}; "
            f"{WEIGHTS_HELP}")


def load_inception(path: str | os.PathLike[str], num_classes: int = NUM_CLASSES) -> InceptionV3:
    """InceptionV3 with the weights of a local pickle / torch state dict / npz (module doc).

    Raises InceptionWeightsError (one line, naming the file and how to obtain it) when the file
    is missing or its keys / shapes are not the FID Inception's."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise InceptionWeightsError(f"{source}: Inception weights not found; {WEIGHTS_HELP}")
    try:
        flat = _flatten(_read_tree(source))
    except InceptionWeightsError:
        raise
    except CheckpointFormatError as exc:
        raise InceptionWeightsError(f"{exc}; {WEIGHTS_HELP}") from exc
    _check_layout(flat, weights_layout(num_classes), source)
    graphdef, state = nnx.split(InceptionV3(num_classes))
    arrays = {p: jnp.asarray(np.asarray(v, np.float32)) for p, v in flat.items()}
    nnx.replace_by_pure_dict(state, _unflatten(arrays))
    return nnx.merge(graphdef, state)


def save_inception_weights(path: str | os.PathLike[str], tree: Mapping) -> None:
    """Writes a nested dict of arrays in the pickle layout: `.npz` ("/"-joined keys) or, for
    any other suffix, a plain pickle of numpy arrays (what jax-fid ships)."""
    flat = {p: np.asarray(v) for p, v in _flatten(tree).items()}
    if os.fspath(path).endswith(".npz"):
        np.savez(path, **{"/".join(p): v for p, v in flat.items()})
    else:
        with open(path, "wb") as fh:
            pickle.dump(_unflatten(flat), fh, protocol=4)


def random_inception_weights(seed: int = 0, num_classes: int = NUM_CLASSES) -> dict:
    """A nested dict of random float32 numpy arrays in the pickle layout (for tests): He-scaled
    kernels, BN statistics near (0, 1), so activations stay finite through all 94 layers."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in weights_layout(num_classes).items():
        leaf = path[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif leaf in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            value = rng.normal(0.0, 0.1, shape)
        flat[path] = value.astype(np.float32)
    return _unflatten(flat)


# ----------------------------------------------------------------------------- preprocessing
def _to_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 or float [-1, 1] [B, H, W, 3] -> float32 [0, 255] (floats clamped first)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")
    x = (np.clip(images.astype(np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return np.clip(x, 0.0, 255.0)


def _pil_bicubic_channel(channel: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = Image.fromarray(np.ascontiguousarray(channel, np.float32)).resize(
        (size, size), resample=Image.Resampling.BICUBIC)
    return np.asarray(out)


def pgm_host_preprocess(images: np.ndarray, size: int = INPUT_SIZE,
                        pool: concurrent.futures.Executor | None = None) -> np.ndarray:
    """The PGM protocol's host half: uint8 / float [-1, 1] [B, H, W, 3] -> uint8 [B, size,
    size, 3] by clean-fid's float-mode PIL bicubic resize per channel, clipped to [0, 255],
    truncated (not rounded) to uint8 as `.to(torch.uint8)` does."""
    x = _to_pixels(images)
    if x.shape[1:3] != (size, size):
        channels = [x[b, :, :, c] for b in range(x.shape[0]) for c in range(x.shape[3])]
        run = pool.map if pool is not None else map
        resized = list(run(functools.partial(_pil_bicubic_channel, size=size), channels))
        x = np.stack(resized).reshape(x.shape[0], x.shape[3], size, size).transpose(0, 2, 3, 1)
        x = np.clip(x, 0.0, 255.0)
    return x.astype(np.uint8)


def _normalize(images: jax.Array, preprocess: str, size: int) -> jax.Array:
    """Device half of preprocessing -> float32 [B, size, size, 3] as the network expects."""
    if preprocess == "pgm":  # uint8 from pgm_host_preprocess; torch-fidelity's scaling
        return (images.astype(jnp.float32) - 128.0) / 128.0
    if images.dtype == jnp.uint8:  # fidjax: [0, 255] -> [-1, 1], bilinear resize
        x = images.astype(jnp.float32) / 127.5 - 1.0
    else:
        x = jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=False)
    return x


def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, preprocess: str,
             size: int) -> tuple[jax.Array, jax.Array]:
    return nnx.merge(graphdef, state)(_normalize(images, preprocess, size))


# ----------------------------------------------------------------------------- extractor
class InceptionExtractor:
    """Batched, jitted features + logits of image batches, sharded over the mesh's batch axes.

    __call__(images uint8 or float [-1, 1] [N, H, W, 3], any N) -> (features float32 [N, 2048],
    logits_unbiased float32 [N, num_classes]) as numpy. Batches of `batch_size` (rounded up to a
    multiple of the data-parallel size) go through one compiled function; the last one is
    padded, so there is one compile per input resolution. With a mesh the weights are
    replicated and the batch is split over (data, fsdp). In a multi-process run every process
    passes its own images and gets its own rows back (merge the accumulators afterwards).
    """

    def __init__(self, model: InceptionV3, *, mesh: Mesh | None = None, batch_size: int = 200,
                 preprocess: str = "pgm", size: int = INPUT_SIZE, host_threads: int | None = None):
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess={preprocess!r}: choose one of {PREPROCESS}")
        if size < MIN_INPUT_SIZE:
            raise ValueError(f"size={size}: InceptionV3 needs images of at least "
                             f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (299 for FID)")
        self.mesh, self.preprocess, self.size = mesh, preprocess, size
        graphdef, state = nnx.split(model)
        fn = functools.partial(_forward, graphdef, preprocess=preprocess, size=size)
        if mesh is None:
            self._local = 1
            self._fn = jax.jit(fn)
        else:
            # Rows per process: batches are split over every device of the batch axes.
            self._local = sharding.data_parallel_size(mesh) // jax.process_count()
            state = jax.device_put(state, sharding.replicated(mesh))
            self._fn = jax.jit(fn, in_shardings=(sharding.replicated(mesh),
                                                 sharding.batch_sharding(mesh, 4)),
                               out_shardings=(sharding.batch_sharding(mesh, 2),) * 2)
        self._state = state
        self.batch_size = -(-batch_size // self._local) * self._local
        self._pool = concurrent.futures.ThreadPoolExecutor(host_threads or os.cpu_count() or 1)

    def _device_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = batch.shape[0]
        if n < self.batch_size:  # pad with copies of the last row: no recompile for the tail
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - n, 0)])
        if self.mesh is None:
            feats, logits = self._fn(self._state, jnp.asarray(batch))
        elif jax.process_count() == 1:
            feats, logits = self._fn(self._state, jax.device_put(
                batch, sharding.batch_sharding(self.mesh, 4)))
        else:
            spec = sharding.batch_sharding(self.mesh, 4).spec
            global_batch = multihost_utils.host_local_array_to_global_array(batch, self.mesh,
                                                                            spec)
            out = self._fn(self._state, global_batch)
            feats, logits = multihost_utils.global_array_to_host_local_array(
                out, self.mesh, (sharding.batch_sharding(self.mesh, 2).spec,) * 2)
        return np.asarray(feats)[:n], np.asarray(logits)[:n]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [batch, height, width, 3], got {images.shape}")
        if images.shape[0] == 0:
            raise ValueError("images is empty")
        feats, logits = [], []
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start:start + self.batch_size]
            if self.preprocess == "pgm":
                chunk = pgm_host_preprocess(chunk, self.size, self._pool)
            elif chunk.dtype != np.uint8:
                chunk = chunk.astype(np.float32)
            f, lg = self._device_batch(chunk)
            feats.append(f)
            logits.append(lg)
        return np.concatenate(feats), np.concatenate(logits)
