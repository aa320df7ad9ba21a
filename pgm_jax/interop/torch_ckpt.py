"""Torch-free reader for checkpoint files written by ``torch.save``.

Two on-disk layouts are understood:

* the zip format (torch >= 1.6, the default since then): a zip archive holding
  ``<prefix>/data.pkl`` (a pickle, protocol 2) and the raw tensor storages
  ``<prefix>/data/<key>``, plus small records such as ``<prefix>/byteorder``;
* the legacy stream format (``_use_new_zipfile_serialization=False`` or torch < 1.6):
  a sequence of pickles (magic number, protocol version, system info, the object,
  the list of storage keys) followed by the raw storages, each prefixed by its
  element count as a little-endian int64.

The pickle is read by a restricted :class:`pickle.Unpickler` whose ``find_class``
resolves only an explicit allow-list of globals (tensor rebuild functions, storage
types, ``torch.Size``/``torch.device``/dtypes, ``collections.OrderedDict`` and a few
builtins and numpy reconstructors needed for plain data). Anything else is refused
with :class:`CheckpointFormatError`, or, with ``allow_unknown=True``, replaced by an
inert :class:`UnknownObject` placeholder that records its arguments and state and
never runs any code. Every tensor comes back as a C-contiguous :class:`numpy.ndarray`
with the tensor's dtype and shape; ``storage_offset`` and arbitrary strides are honoured.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pgm_jax.errors import CheckpointFormatError

__all__ = ["CheckpointFormatError", "UnknownObject", "load_torch_checkpoint"]

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


# --------------------------------------------------------------------------- dtypes


def _ml_dtype(name: str) -> np.dtype:
    """Return the ``ml_dtypes`` numpy dtype called ``name`` (e.g. ``bfloat16``)."""
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - ml_dtypes ships with jax
        raise CheckpointFormatError(
            f"reading {name} tensors needs the 'ml_dtypes' package (installed with jax)"
        ) from exc
    try:
        return np.dtype(getattr(ml_dtypes, name))
    except AttributeError as exc:
        raise CheckpointFormatError(
            f"the installed ml_dtypes {ml_dtypes.__version__} has no {name} dtype"
        ) from exc


_NUMPY_DTYPE_NAMES: dict[str, str] = {
    "float64": "<f8",
    "double": "<f8",
    "float32": "<f4",
    "float": "<f4",
    "float16": "<f2",
    "half": "<f2",
    "int64": "<i8",
    "long": "<i8",
    "int32": "<i4",
    "int": "<i4",
    "int16": "<i2",
    "short": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "bool": "?",
    "complex128": "<c16",
    "cdouble": "<c16",
    "complex64": "<c8",
    "cfloat": "<c8",
}
_ML_DTYPE_NAMES: frozenset[str] = frozenset(
    {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    }
)


def _torch_dtype_to_numpy(name: str) -> np.dtype:
    """Map a ``torch.<name>`` dtype to the numpy dtype used for its tensors."""
    if name in _NUMPY_DTYPE_NAMES:
        return np.dtype(_NUMPY_DTYPE_NAMES[name])
    if name in _ML_DTYPE_NAMES:
        return _ml_dtype(name)
    raise KeyError(name)


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class named in a storage persistent id."""

    name: str
    dtype_name: str  # torch dtype of one storage element ("uint8" for UntypedStorage)

    @property
    def dtype(self) -> np.dtype:
        return _torch_dtype_to_numpy(self.dtype_name)


_STORAGE_TYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "UntypedStorage": "uint8",
}


# ----------------------------------------------------------------- storages/tensors


@dataclass
class _Storage:
    """One serialized storage: ``numel`` elements of ``dtype`` as raw bytes.

    ``raw`` is ``None`` only during the first (discovery) pass over a legacy file.
    """

    key: str
    dtype: np.dtype
    numel: int
    raw: bytes | None
    big_endian: bool = False

    def view(self, offset: int, size: int) -> _Storage:
        """Sub-storage of ``size`` elements starting at element ``offset`` (legacy views)."""
        if offset < 0 or size < 0 or offset + size > self.numel:
            raise CheckpointFormatError(
                f"storage view [{offset}, {offset + size}) exceeds storage {self.key!r} "
                f"of {self.numel} elements"
            )
        raw = None
        if self.raw is not None:
            item = self.dtype.itemsize
            raw = self.raw[offset * item : (offset + size) * item]
        return _Storage(
            f"{self.key}[{offset}:{offset + size}]", self.dtype, size, raw, self.big_endian
        )


class _PendingTensor:
    """Tensor placeholder used while discovering the storages of a legacy file."""


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """Validate a tensor ``size``/``stride`` argument as a tuple of non-negative ints."""
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise CheckpointFormatError(
            f"tensor {what} must be a tuple of non-negative ints, got {value!r}"
        )
    return tuple(value)


def _byteswap(arr: np.ndarray) -> np.ndarray:
    """Swap the byte order of every element (or complex component) of ``arr``."""
    unit = arr.dtype.itemsize // 2 if arr.dtype.kind == "c" else arr.dtype.itemsize
    if unit == 1:
        return arr
    swapped = arr.view(np.dtype(f"u{unit}")).byteswap()
    return swapped.view(arr.dtype)


def _tensor_from_storage(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None = None
) -> np.ndarray | _PendingTensor:
    """Materialize a tensor view of ``storage`` as a contiguous numpy array.

    ``offset`` and ``stride`` count elements of the tensor dtype (``dtype`` when given,
    as in ``_rebuild_tensor_v3``, else the storage's own dtype).
    """
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(
            f"tensor rebuild expected a storage, got {type(storage).__name__}"
        )
    shape = _as_int_tuple(size, "size")
    strides = _as_int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise CheckpointFormatError(f"tensor size {shape} and stride {strides} differ in rank")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise CheckpointFormatError(f"invalid tensor storage_offset {offset!r}")
    dt = storage.dtype if dtype is None else dtype
    if storage.raw is None:
        return _PendingTensor()
    flat = np.frombuffer(storage.raw, dtype=dt, count=len(storage.raw) // dt.itemsize)
    if 0 in shape:
        return np.zeros(shape, dtype=dt)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if last >= flat.size:
        raise CheckpointFormatError(
            f"tensor (offset {offset}, size {shape}, stride {strides}) reads element {last} "
            f"past the end of storage {storage.key!r} ({flat.size} elements)"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[offset:],
        shape=shape,
        strides=tuple(s * dt.itemsize for s in strides),
        writeable=False,
    )
    out = np.array(view, dtype=dt, order="C", copy=True)
    return _byteswap(out) if storage.big_endian else out


# ------------------------------------------------------- allow-listed pickle globals


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
    """``torch._utils._rebuild_tensor`` (very old torch)."""
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Any:
    """``torch._utils._rebuild_tensor_v2``: autograd flags and metadata are dropped."""
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> Any:
    """``torch._utils._rebuild_tensor_v3``: an (untyped) storage reinterpreted as ``dtype``."""
    if not isinstance(dtype, np.dtype):
        raise CheckpointFormatError(f"_rebuild_tensor_v3 expected a dtype, got {dtype!r}")
    return _tensor_from_storage(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is returned as its data."""
    return data


def _rebuild_parameter_with_state(
    data: Any, requires_grad: Any, backward_hooks: Any, state: Any
) -> Any:
    """``torch._utils._rebuild_parameter_with_state``: Python attributes are dropped."""
    return data


class _TensorClass:
    """Inert stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` used as a pickle global."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __repr__(self) -> str:
        return f"<torch class {self.qualname}>"


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2``: rebuild with ``func``, drop the subclass."""
    if func not in _TENSOR_REBUILDERS or not isinstance(args, tuple):
        raise CheckpointFormatError(
            f"_rebuild_from_type_v2 with unsupported rebuild function {func!r}"
        )
    return func(*args)


_TENSOR_REBUILDERS: tuple[Callable[..., Any], ...] = (
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
)


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    """``torch.Size(dims)`` as a plain tuple."""
    return tuple(_as_int_tuple(tuple(dims), "torch.Size"))


def _torch_device(kind: Any, index: Any = None) -> str:
    """``torch.device(kind[, index])`` as its string form, e.g. ``'cuda:0'``."""
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise CheckpointFormatError(f"invalid torch.device arguments {(kind, index)!r}")
    return kind if index is None or ":" in kind else f"{kind}:{index}"


_TEXT_CODECS: frozenset[str] = frozenset(
    {"latin1", "latin-1", "iso-8859-1", "ascii", "utf-8", "utf8"}
)


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Restricted ``_codecs.encode`` (protocol-2 pickles encode ``bytes`` this way)."""
    if not isinstance(text, str) or not isinstance(encoding, str) or errors != "strict":
        raise CheckpointFormatError("unsupported _codecs.encode arguments")
    if encoding.lower() not in _TEXT_CODECS:
        raise CheckpointFormatError(f"refusing _codecs.encode with codec {encoding!r}")
    return text.encode(encoding)


def _bytes_like(cls: type[bytes] | type[bytearray]) -> Callable[..., bytes | bytearray]:
    """Restricted ``builtins.bytes``/``bytearray``: only from text or bytes, never a size."""

    def build(data: Any = b"", encoding: Any = None, errors: Any = "strict") -> Any:
        if isinstance(data, bytes | bytearray) and encoding is None:
            return cls(data)
        if isinstance(data, str):
            return cls(_codecs_encode(data, encoding or "utf-8", errors))
        raise CheckpointFormatError(
            f"refusing builtins.{cls.__name__} with a {type(data).__name__} argument"
        )

    return build


class _NdarrayClass:
    """Inert stand-in for the ``numpy.ndarray`` global (only valid in ``_reconstruct``)."""

    def __repr__(self) -> str:
        return "<numpy.ndarray>"


_NDARRAY = _NdarrayClass()


def _np_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct``: an empty array filled later by BUILD."""
    if subtype is not _NDARRAY:
        raise CheckpointFormatError(f"numpy _reconstruct of unsupported type {subtype!r}")
    if isinstance(dtype_code, bytes):
        dtype_code = dtype_code.decode("ascii")
    return np.ndarray(_as_int_tuple(tuple(shape), "numpy shape"), dtype=np.dtype(dtype_code))


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: a numpy scalar from its raw bytes."""
    if not isinstance(dtype, np.dtype):
        raise CheckpointFormatError(f"numpy scalar with invalid dtype {dtype!r}")
    if dtype.hasobject:
        return data
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise CheckpointFormatError(f"numpy scalar with invalid data for dtype {dtype}")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


@dataclass(frozen=True)
class _LazyDtype:
    """A ``torch.<dtype>`` global, resolved to numpy only when used (ml_dtypes is lazy)."""

    name: str


def _build_allowed_globals() -> dict[str, Any]:
    """The allow-list: ``'module.name'`` -> the object ``find_class`` returns."""
    allowed: dict[str, Any] = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.Tensor": _TensorClass("torch.Tensor"),
        "torch._tensor.Tensor": _TensorClass("torch.Tensor"),
        "torch.nn.parameter.Parameter": _TensorClass("torch.nn.parameter.Parameter"),
        "torch.Size": _torch_size,
        "torch.device": _torch_device,
        "collections.OrderedDict": collections.OrderedDict,
        "collections.defaultdict": collections.defaultdict,
        "collections.Counter": collections.Counter,
        "_codecs.encode": _codecs_encode,
        "numpy.dtype": np.dtype,
        "numpy.ndarray": _NDARRAY,
        "numpy.core.multiarray._reconstruct": _np_reconstruct,
        "numpy._core.multiarray._reconstruct": _np_reconstruct,
        "numpy.core.multiarray.scalar": _np_scalar,
        "numpy._core.multiarray.scalar": _np_scalar,
    }
    for cls in (set, frozenset, dict, list, tuple, int, float, complex, str, bool, slice):
        allowed[f"builtins.{cls.__name__}"] = cls
    allowed["builtins.bytes"] = _bytes_like(bytes)
    allowed["builtins.bytearray"] = _bytes_like(bytearray)
    for name, dtype_name in _STORAGE_TYPES.items():
        allowed[f"torch.{name}"] = _StorageType(name, dtype_name)
    allowed["torch.storage.UntypedStorage"] = allowed["torch.UntypedStorage"]
    for name in (*_NUMPY_DTYPE_NAMES, *_ML_DTYPE_NAMES):
        allowed[f"torch.{name}"] = _LazyDtype(name)
    return allowed


# Python-2 spellings written by protocol-2 pickles with ``fix_imports``.
_MODULE_ALIASES: dict[str, str] = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class UnknownObject:
    """Inert placeholder for a pickled global that is not on the allow-list.

    Only created with ``load_torch_checkpoint(..., allow_unknown=True)``. Each unknown
    global ``module.name`` becomes a subclass with ``unknown_module``/``unknown_name``
    set; calling it (pickle ``REDUCE``/``NEWOBJ``) creates an instance recording the
    call arguments in ``args``/``kwargs``; ``BUILD`` state goes to ``state`` and
    ``APPENDS``/``SETITEMS`` to ``list_items``/``dict_items``. Nothing else ever runs.
    """

    unknown_module: ClassVar[str] = "?"
    unknown_name: ClassVar[str] = "?"

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    list_items: list[Any]
    dict_items: list[tuple[Any, Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> UnknownObject:
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.list_items = []
        obj.dict_items = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Arguments were already recorded by ``__new__``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dict_items.append((key, value))

    def append(self, item: Any) -> None:
        """Record an item added by the pickle ``APPEND`` opcode."""
        self.list_items.append(item)

    def extend(self, items: Any) -> None:
        """Record items added by the pickle ``APPENDS`` opcode."""
        self.list_items.extend(items)

    def __repr__(self) -> str:
        return f"<unknown {self.unknown_module}.{self.unknown_name}>"


def _placeholder_class(module: str, name: str) -> type[UnknownObject]:
    """A fresh :class:`UnknownObject` subclass standing in for ``module.name``."""
    cls_name = name if name.isidentifier() else "Unknown"
    return type(
        cls_name,
        (UnknownObject,),
        {
            "unknown_module": module,
            "unknown_name": name,
            "__module__": __name__,
            "__qualname__": f"UnknownObject[{module}.{name}]",
        },
    )


_ALLOWED_GLOBALS: dict[str, Any] = _build_allowed_globals()


# --------------------------------------------------------------------- unpickler


StorageLoader = Callable[[str, _StorageType, int, Any], _Storage]


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and torch storage ids."""

    def __init__(
        self,
        file: io.BytesIO,
        *,
        source: str,
        allow_unknown: bool,
        load_storage: StorageLoader | None,
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._allow_unknown = allow_unknown
        self._load_storage = load_storage
        self._placeholders: dict[str, type[UnknownObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        qualname = f"{module}.{name}"
        obj = _ALLOWED_GLOBALS.get(qualname)
        if isinstance(obj, _LazyDtype):
            try:
                return _torch_dtype_to_numpy(obj.name)
            except CheckpointFormatError:
                obj = None
        if obj is not None:
            return obj
        if self._allow_unknown:
            if qualname not in self._placeholders:
                self._placeholders[qualname] = _placeholder_class(module, name)
            return self._placeholders[qualname]
        raise CheckpointFormatError(
            f"{self._source}: refusing to unpickle global '{qualname}' (not on the "
            f"checkpoint allow-list; pass allow_unknown=True to replace unknown objects "
            f"by inert placeholders)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._load_storage is None:
            raise CheckpointFormatError(f"{self._source}: unexpected persistent id in pickle")
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointFormatError(f"{self._source}: malformed persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise CheckpointFormatError(
                f"{self._source}: checkpoint pickles a whole torch.nn.Module; only state "
                f"dicts and plain containers of tensors are supported"
            )
        if kind != "storage" or len(pid) not in (5, 6):
            raise CheckpointFormatError(f"{self._source}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(
                f"{self._source}: unsupported tensor storage type {storage_type!r}"
            )
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointFormatError(f"{self._source}: malformed storage id {pid!r}")
        view = pid[5] if len(pid) == 6 else None
        return self._load_storage(key, storage_type, numel, view)


def _unpickle(
    data: io.BytesIO, source: str, allow_unknown: bool, load_storage: StorageLoader | None
) -> Any:
    """Run the restricted unpickler, turning every failure into CheckpointFormatError."""
    unpickler = _RestrictedUnpickler(
        data, source=source, allow_unknown=allow_unknown, load_storage=load_storage
    )
    try:
        return unpickler.load()
    except CheckpointFormatError as exc:
        msg = str(exc)
        raise CheckpointFormatError(msg if msg.startswith(source) else f"{source}: {msg}") from exc
    except RecursionError as exc:
        raise CheckpointFormatError(f"{source}: pickle nesting too deep") from exc
    except Exception as exc:  # any unpickling failure means a bad file
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise CheckpointFormatError(
            f"{source}: corrupt or unsupported checkpoint pickle ({detail})"
        ) from exc


# -------------------------------------------------------------------- zip format


def _zip_prefix(names: list[str], source: str) -> str:
    """Find the archive's top-level folder (``<prefix>/data.pkl``)."""
    candidates = [
        n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1
    ]
    if names and "/" in names[0]:
        first = names[0].split("/", 1)[0]
        if first in candidates:
            return first
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise CheckpointFormatError(
            f"{source}: zip archive has no <prefix>/data.pkl; not a torch.save checkpoint"
        )
    raise CheckpointFormatError(f"{source}: zip archive has several data.pkl records")


def _load_zip(path: str, allow_unknown: bool) -> Any:
    """Read a zip-format ``torch.save`` file."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointFormatError(
            f"{path}: not a readable zip archive, truncated or corrupt ({exc})"
        ) from exc
    with archive:
        names = archive.namelist()
        prefix = _zip_prefix(names, path)
        name_set = set(names)
        if f"{prefix}/constants.pkl" in name_set or f"{prefix}/code/" in name_set:
            raise CheckpointFormatError(
                f"{path}: TorchScript archive (torch.jit.save) is not supported"
            )

        def read(name: str) -> bytes:
            try:
                return archive.read(name)
            except KeyError as exc:
                raise CheckpointFormatError(f"{path}: missing zip record {name!r}") from exc
            except (
                zipfile.BadZipFile,
                zlib.error,
                OSError,
                EOFError,
                ValueError,
                NotImplementedError,
            ) as exc:
                raise CheckpointFormatError(
                    f"{path}: zip record {name!r} is truncated or corrupt ({exc})"
                ) from exc

        big_endian = False
        if f"{prefix}/byteorder" in name_set:
            order = read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byteorder record {order!r}")
            big_endian = order == "big"

        cache: dict[str, _Storage] = {}

        def load_storage(key: str, storage_type: _StorageType, numel: int, view: Any) -> _Storage:
            if view is not None:
                raise CheckpointFormatError(f"{path}: storage views are not valid in zip format")
            dtype = storage_type.dtype
            if key in cache:
                cached = cache[key]
                if cached.dtype != dtype or cached.numel != numel:
                    raise CheckpointFormatError(
                        f"{path}: storage {key!r} referenced with inconsistent type or size"
                    )
                return cached
            raw = read(f"{prefix}/data/{key}")
            nbytes = numel * dtype.itemsize
            if len(raw) < nbytes:
                raise CheckpointFormatError(
                    f"{path}: storage {key!r} holds {len(raw)} bytes, expected {nbytes}"
                )
            storage = _Storage(key, dtype, numel, raw[:nbytes], big_endian)
            cache[key] = storage
            return storage

        data = read(f"{prefix}/data.pkl")
        return _unpickle(io.BytesIO(data), path, allow_unknown, load_storage)


# ----------------------------------------------------------------- legacy format


def _load_plain(stream: io.BytesIO, source: str) -> Any:
    """Unpickle one of the small header/trailer pickles of a legacy file."""
    return _unpickle(stream, source, allow_unknown=False, load_storage=None)


def _load_legacy(path: str, allow_unknown: bool) -> Any:
    """Read a legacy (non-zip, torch < 1.6 default) ``torch.save`` stream.

    The object pickle precedes the storage data, so it is read twice: a first pass
    learns each storage's dtype (needed to skip over the raw data), the second pass
    builds the real tensors.
    """
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read file ({exc})") from exc
    stream = io.BytesIO(blob)
    if _load_plain(stream, path) != _LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad magic number)")
    version = _load_plain(stream, path)
    if version != _LEGACY_PROTOCOL_VERSION:
        raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {version!r}")
    sys_info = _load_plain(stream, path)
    if not isinstance(sys_info, dict):
        raise CheckpointFormatError(f"{path}: malformed legacy system info")
    main_start = stream.tell()

    # Pass 1: find every storage's dtype without materializing tensors.
    root_types: dict[str, tuple[np.dtype, int]] = {}

    def discover(key: str, storage_type: _StorageType, numel: int, view: Any) -> _Storage:
        root_types.setdefault(key, (storage_type.dtype, numel))
        return _Storage(key, storage_type.dtype, numel, None)

    _unpickle(stream, path, allow_unknown, discover)
    keys = _load_plain(stream, path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointFormatError(f"{path}: malformed legacy storage key list")
    raw_by_key: dict[str, bytes] = {}
    pos = stream.tell()
    for key in keys:
        if key not in root_types:
            raise CheckpointFormatError(f"{path}: storage {key!r} is never referenced")
        dtype, _ = root_types[key]
        header = blob[pos : pos + 8]
        count = int.from_bytes(header, "little", signed=True) if len(header) == 8 else -1
        end = pos + 8 + count * dtype.itemsize
        if count < 0 or end > len(blob):
            raise CheckpointFormatError(f"{path}: legacy storage {key!r} is truncated")
        raw_by_key[key] = blob[pos + 8 : end]
        pos = end
    missing = set(root_types) - set(raw_by_key)
    if missing:
        raise CheckpointFormatError(f"{path}: legacy storages missing: {sorted(missing)}")

    # Pass 2: the real object, with storage data (always little-endian on disk).
    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}

    def load_storage(key: str, storage_type: _StorageType, numel: int, view: Any) -> _Storage:
        dtype = storage_type.dtype
        if key not in roots:
            raw = raw_by_key[key]
            if len(raw) < numel * dtype.itemsize or root_types[key][0] != dtype:
                raise CheckpointFormatError(f"{path}: legacy storage {key!r} size/type mismatch")
            roots[key] = _Storage(key, dtype, len(raw) // dtype.itemsize, raw)
        root = roots[key]
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise CheckpointFormatError(f"{path}: malformed legacy storage view {view!r}")
        view_key, offset, size = view
        if view_key not in views:
            if not isinstance(offset, int) or not isinstance(size, int):
                raise CheckpointFormatError(f"{path}: malformed legacy storage view {view!r}")
            views[view_key] = root.view(offset, size)
        return views[view_key]

    stream.seek(main_start)
    return _unpickle(stream, path, allow_unknown, load_storage)


# -------------------------------------------------------------------- public API


def _looks_like_legacy(head: bytes) -> bool:
    """True when ``head`` starts with the pickled legacy torch magic number."""
    if not head.startswith(b"\x80"):
        return False
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name in ("PROTO", "STOP"):
                continue
            return arg == _LEGACY_MAGIC_NUMBER
    except Exception:  # a short or garbled header does not match
        return False
    return False


def load_torch_checkpoint(path: str | os.PathLike[str], allow_unknown: bool = False) -> Any:
    """Load a ``torch.save`` file without torch, with every tensor as a numpy array.

    Args:
        path: the checkpoint file (``.ckpt``/``.pth``/``.pt``/``.bin``...).
        allow_unknown: when False (default) any pickled global outside the allow-list
            raises :class:`CheckpointFormatError`. When True such globals are replaced
            by inert :class:`UnknownObject` placeholders (e.g. the OmegaConf config and
            tokenizer pickled in released Lightning checkpoints); tensors are still read.

    Returns:
        The unpickled object. Tensors and parameters become C-contiguous
        ``numpy.ndarray`` copies with the tensor's shape and dtype (bfloat16 and float8
        use ``ml_dtypes``); ``torch.Size`` becomes a tuple, ``torch.device`` a string,
        ``torch.<dtype>`` a ``numpy.dtype``, ``OrderedDict`` stays an ``OrderedDict``.

    Raises:
        CheckpointFormatError: the file is missing, truncated, corrupt, not a torch
            checkpoint, uses an unsupported feature, or pickles a refused global.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise CheckpointFormatError(f"{source}: cannot open checkpoint ({exc})") from exc
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _load_zip(source, allow_unknown)
    if _looks_like_legacy(head):
        return _load_legacy(source, allow_unknown)
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CheckpointFormatError(
            f"{source}: tar-based torch checkpoint (torch < 0.4) is not supported; "
            f"re-save it with a recent torch (torch.save(torch.load(f), f))"
        )
    raise CheckpointFormatError(
        f"{source}: not a torch.save checkpoint (neither zip nor legacy pickle format); "
        f"if it is one, re-save it with a recent torch"
    )
