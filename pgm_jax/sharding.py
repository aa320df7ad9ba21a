"""Device mesh and logical-axis sharding: the one place that knows about mesh axes.

The mesh has three named axes: `data` (pure data parallelism), `fsdp` (data parallelism with
parameters sharded over the embedding dimension) and `tensor` (heads / MLP / vocabulary).
Parameters carry logical axis names (`logical_axes` metadata set in `models/layers.py`);
`LOGICAL_RULES` maps each name to mesh axes. A dimension is only sharded when the mesh axis
size divides it; otherwise it stays replicated, so small test models run on any mesh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axes (None = replicated)
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "vocab": ("tensor",),
    "norm": None,
}


class MeshError(ValueError):
    """A mesh shape that does not fit the devices; the message names the config keys."""


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves one -1 entry of `sizes` (keys data/fsdp/tensor) from the device count."""
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    unknown = [a for a, s in zip(MESH_AXES, shape, strict=True) if s == -1]
    if len(unknown) > 1:
        raise MeshError(f"mesh.{' and mesh.'.join(unknown)} are both -1; at most one may be")
    if any(s == 0 or s < -1 for s in shape):
        sizes_now = dict(zip(MESH_AXES, shape, strict=True))
        raise MeshError(f"mesh sizes must be positive or -1, got {sizes_now}")
    known = math.prod(s for s in shape if s != -1)
    if unknown:
        if num_devices % known:
            raise MeshError(
                f"mesh: {num_devices} devices are not divisible by the fixed axes ({known})"
            )
        shape[MESH_AXES.index(unknown[0])] = num_devices // known
    if math.prod(shape) != num_devices:
        raise MeshError(
            f"mesh.data x mesh.fsdp x mesh.tensor = {math.prod(shape)} but {num_devices} "
            "devices are present"
        )
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with automatic (GSPMD) axis types."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(sizes, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
    """PartitionSpec for one array: map logical names, drop axes that do not divide."""
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape, strict=True):
        axes = LOGICAL_RULES.get(name) if name else None
        axes = tuple(a for a in (axes or ()) if mesh.shape[a] > 1 and a not in used)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    return P(*out)


def param_specs(model: nnx.Module, mesh: Mesh) -> dict:
    """PartitionSpecs as a pure dict matching `nnx.to_pure_dict(nnx.state(model, nnx.Param))`."""
    state = nnx.state(model, nnx.Param)
    flat = {}
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("logical_axes") or (None,) * len(var.shape)
        flat[path] = logical_to_spec(axes, var.shape, mesh)
    return _unflatten(flat)


def _unflatten(flat: dict[tuple, P]) -> dict:
    out: dict = {}
    for path, spec in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = spec
    return out


def named(mesh: Mesh, specs):
    """Tree of PartitionSpecs -> tree of NamedShardings."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays sharded over the batch axes."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
        for k, v in local.items()
    }
