"""Device mesh and logical-axis sharding: the one place that knows about mesh axes.

The mesh has three named axes: `data` (pure data parallelism), `fsdp` (data parallelism with
parameters sharded over the embedding dimension) and `tensor` (heads / MLP / vocabulary).
Each axis is the product of an ICI part (`mesh.data` / `mesh.fsdp` / `mesh.tensor`: devices
inside one slice or node, fast interconnect) and a DCN part (`mesh.dcn_data` / ...: across
slices or nodes); one -1 per group is filled from the device count. With a DCN part the devices
form a hybrid mesh: each slice (TPU multislice) or process (GPU nodes) owns a contiguous block
of every axis, so only the DCN part of an axis crosses the slow network.

Parameters carry logical axis names (`logical_axes` metadata set in `models/layers.py`) that
`WEIGHT_RULES` maps to mesh axes; activations are constrained (`constrain`) with names of their
own (`activation_*`, the tuples in `models/layers.py`) that `ACTIVATION_RULES` maps, so a
weight and an activation dimension of the same size can be laid out differently (as maxtext
does). `LOGICAL_RULES` is the union of both. A dimension is only sharded when the mesh axis
size divides it; otherwise it stays replicated, so small test models run on any mesh, and
`check_replicated` refuses a layout where too much of the model ended up replicated that way.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DCN_KEYS = tuple(f"dcn_{a}" for a in MESH_AXES)

Rules = Mapping[str, tuple[str, ...] | None]

# logical name -> mesh axes (None = replicated).
# Weights: FSDP shards the embedding (and conditioning) dimension of every weight, tensor
# parallelism the heads, MLP and vocabulary dimensions.
WEIGHT_RULES: dict[str, tuple[str, ...] | None] = {
    "embed": ("fsdp",),
    "cond": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "vocab": ("tensor",),
    "norm": None,
}
# Activations: the batch over data x fsdp (so GSPMD gathers FSDP weights instead of resharding
# activations over the embedding), heads / MLP hidden / vocabulary over tensor, like the weights
# that produce them; length, embedding and per-head features stay whole.
ACTIVATION_RULES: dict[str, tuple[str, ...] | None] = {
    "activation_batch": BATCH_AXES,
    "activation_length": None,
    "activation_embed": None,
    "activation_heads": ("tensor",),
    "activation_kv": None,
    "activation_mlp": ("tensor",),
    "activation_vocab": ("tensor",),
}
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {**WEIGHT_RULES, **ACTIVATION_RULES}


class MeshError(ValueError):
    """A mesh that does not fit the devices or the model; the message names the config keys."""


# ----------------------------------------------------------------------------- mesh
def mesh_shape(sizes: Mapping[str, int], num_devices: int, keys: Sequence[str] = MESH_AXES,
               what: str = "devices") -> tuple[int, ...]:
    """Resolves one -1 among `sizes[keys]` (missing keys are 1) so the product is `num_devices`.

    The keys name the config entries (`mesh.<key>`) in error messages.
    """
    shape = [int(sizes.get(k, 1)) for k in keys]
    names = [f"mesh.{k}" for k in keys]
    unknown = [n for n, s in zip(names, shape, strict=True) if s == -1]
    if len(unknown) > 1:
        raise MeshError(f"{' and '.join(unknown)} are all -1; at most one may be")
    bad = {n: s for n, s in zip(names, shape, strict=True) if s == 0 or s < -1}
    if bad:
        raise MeshError(f"mesh sizes must be positive or -1, got {bad}")
    known = math.prod(s for s in shape if s != -1)
    if unknown:
        if num_devices % known:
            raise MeshError(f"{num_devices} {what} are not divisible by the fixed sizes "
                            f"{' x '.join(names)} = {known}; change them or the -1 entry")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise MeshError(f"{' x '.join(names)} = {math.prod(shape)} but {num_devices} {what} "
                        "are present; set one of them to -1 or match the count")
    return tuple(shape)


def device_granules(devices: Sequence[jax.Device]) -> list[list[jax.Device]]:
    """Devices grouped by TPU slice (`slice_index`), else by process; ordered by group id."""
    groups: dict[int, list[jax.Device]] = defaultdict(list)
    for d in devices:
        tpu_slice = d.platform == "tpu" and hasattr(d, "slice_index")
        groups[d.slice_index if tpu_slice else d.process_index].append(d)
    return [groups[k] for k in sorted(groups)]


def hybrid_device_array(ici: Sequence[int], dcn: Sequence[int],
                        granules: Sequence[Sequence[jax.Device]]) -> np.ndarray:
    """Devices [dcn_0 * ici_0, ...]: granule-major along every axis.

    granules: prod(dcn) groups of prod(ici) devices (slices or processes). Inside a granule the
    layout follows the physical topology (`mesh_utils.create_device_mesh`).
    """
    if len(granules) != math.prod(dcn) or any(len(g) != math.prod(ici) for g in granules):
        sizes = sorted({len(g) for g in granules})
        raise MeshError(
            f"mesh.dcn_* = {tuple(dcn)} needs {math.prod(dcn)} slices/processes of "
            f"{math.prod(ici)} devices (mesh.data x mesh.fsdp x mesh.tensor), found "
            f"{len(granules)} of {sizes} devices")
    per = [mesh_utils.create_device_mesh(ici, list(g), allow_split_physical_axes=True)
           for g in granules]
    blocks = np.stack(per).reshape(*dcn, *ici)  # [dcn..., ici...]
    n = len(ici)
    order = [i for pair in zip(range(n), range(n, 2 * n), strict=True) for i in pair]
    return blocks.transpose(order).reshape([d * i for d, i in zip(dcn, ici, strict=True)])


def make_mesh(cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh from a `config.mesh` mapping, automatic axis types.

    Axis types are Auto (GSPMD propagation, guided by `constrain`), chosen explicitly because
    `jax.make_mesh` defaults to Explicit in recent jax.
    """
    devices = list(devices) if devices is not None else jax.devices()
    types = (AxisType.Auto,) * len(MESH_AXES)
    dcn_sizes = {a: cfg.get(k, 1) for a, k in zip(MESH_AXES, DCN_KEYS, strict=True)}
    if all(s == 1 for s in dcn_sizes.values()):
        shape = mesh_shape(cfg, len(devices))
        return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)
    granules = device_granules(devices)
    dcn = mesh_shape({k: cfg.get(k, 1) for k in DCN_KEYS}, len(granules), DCN_KEYS,
                     "slices/processes")
    ici = mesh_shape(cfg, len(devices) // math.prod(dcn), MESH_AXES, "devices per slice")
    return Mesh(hybrid_device_array(ici, dcn, granules), MESH_AXES, axis_types=types)


# ----------------------------------------------------------------------------- logical axes
def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh,
                    rules: Rules = LOGICAL_RULES) -> P:
    """PartitionSpec for one array: map logical names, drop axes that do not divide.

    `mesh` is a Mesh or AbstractMesh; a mesh axis is used at most once per array.
    """
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape, strict=True):
        axes = rules.get(name) if name else None
        axes = tuple(a for a in (axes or ()) if mesh.shape[a] > 1 and a not in used)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    return P(*out)


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """How one parameter is laid out: path 'a.b.0.kernel', shape, logical names, spec."""

    path: str
    shape: tuple[int, ...]
    logical: tuple[str | None, ...]
    spec: P

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def replicated(self) -> bool:
        return all(s is None for s in self.spec)


def param_layouts(model: nnx.Module, mesh, rules: Rules = LOGICAL_RULES
                  ) -> dict[tuple, ParamLayout]:
    """Layout of every nnx.Param of `model` (abstract or concrete), keyed by its state path."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = tuple(var.shape)
        logical = tuple(var.get_metadata().get("logical_axes") or (None,) * len(shape))
        out[path] = ParamLayout(".".join(map(str, path)), shape, logical,
                                logical_to_spec(logical, shape, mesh, rules))
    return out


def param_specs(model: nnx.Module, mesh, rules: Rules = LOGICAL_RULES) -> dict:
    """PartitionSpecs as a pure dict matching `nnx.to_pure_dict(nnx.state(model, nnx.Param))`."""
    return _unflatten({p: lay.spec for p, lay in param_layouts(model, mesh, rules).items()})


def _unflatten(flat: dict[tuple, P]) -> dict:
    out: dict = {}
    for path, spec in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = spec
    return out


def _shard_shape(layout: ParamLayout, mesh) -> tuple[int, ...]:
    def parts(entry) -> int:
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        return math.prod(mesh.shape[a] for a in names)

    return tuple(d // parts(e) for d, e in zip(layout.shape, layout.spec, strict=True))


def sharding_table(layouts: Mapping[tuple, ParamLayout], mesh) -> str:
    """A text table of every parameter: shape, logical axes, mesh axes, per-device shard."""
    rows = [("parameter", "shape", "logical axes", "sharding", "per device")]
    for lay in layouts.values():
        rows.append((lay.path, "x".join(map(str, lay.shape)),
                     ",".join(n or "-" for n in lay.logical),
                     ",".join(_spec_entry(e) for e in lay.spec) or "-",
                     "x".join(map(str, _shard_shape(lay, mesh)))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    total = sum(lay.size for lay in layouts.values())
    per_device = sum(math.prod(_shard_shape(lay, mesh)) for lay in layouts.values())
    rep = sum(lay.size for lay in layouts.values() if lay.replicated)
    lines.append(f"{len(layouts)} parameters, {total:,} values, {per_device:,} per device; "
                 f"{rep / max(total, 1):.2%} replicated; mesh {dict(mesh.shape)}")
    return "\n".join(lines)


def _spec_entry(entry) -> str:
    if entry is None:
        return "-"
    return entry if isinstance(entry, str) else "+".join(entry)


def check_replicated(layouts: Mapping[tuple, ParamLayout], mesh, max_fraction: float) -> None:
    """Raises MeshError naming the replicated parameters when they exceed `max_fraction` of the
    model's values while the mesh has parameter-sharding axes (fsdp x tensor > 1)."""
    if mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
        return  # pure data parallelism replicates every parameter by design
    total = sum(lay.size for lay in layouts.values())
    rep = sorted((lay for lay in layouts.values() if lay.replicated), key=lambda x: -x.size)
    fraction = sum(lay.size for lay in rep) / max(total, 1)
    if fraction > max_fraction:
        shown = ", ".join(f"{lay.path} {lay.shape}" for lay in rep[:8])
        more = f" and {len(rep) - 8} more" if len(rep) > 8 else ""
        raise MeshError(
            f"{fraction:.1%} of the parameters stay replicated over mesh fsdp={mesh.shape['fsdp']}"
            f" x tensor={mesh.shape['tensor']}, above mesh.max_replicated_fraction="
            f"{max_fraction}: {shown}{more}; fix the logical rules or pick mesh sizes that divide "
            "these dimensions")


# ----------------------------------------------------------------------------- activations
def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by `ACTIVATION_RULES` names; a no-op outside
    `traced_under`. Raises KeyError for a name the rules do not know (checked on every call,
    so a typo fails on one device too).

    Pins e.g. [batch, length, embed] activations to batch-over-(data, fsdp) so GSPMD gathers
    FSDP weights instead of resharding activations over the embedding dimension.
    """
    unknown = [n for n in logical if n is not None and n not in ACTIVATION_RULES]
    if unknown:
        raise KeyError(f"unknown activation logical axes {unknown}; ACTIVATION_RULES has "
                       f"{sorted(ACTIVATION_RULES)}")
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(
        x, logical_to_spec(logical, x.shape, mesh, ACTIVATION_RULES))


def traced_under(mesh: Mesh, fn: Callable) -> Callable:
    """`fn` traced with `mesh` as the abstract mesh, so `constrain` inside it takes effect."""

    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return wrapped


# ----------------------------------------------------------------------------- shardings
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


# ----------------------------------------------------------------------------- inference
def inference_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of sampling, evaluation and judges: every device (or `devices`) on `data`.

    Inference replicates the weights on every device (fsdp = tensor = 1) and splits each batch
    over the data axis: the models served here fit one device, and a batch split needs no
    collective inside the network.
    """
    return make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)
