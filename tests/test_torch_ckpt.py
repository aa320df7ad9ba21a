"""Tests for the torch-free ``torch.save`` reader (:mod:`pgm_jax.interop.torch_ckpt`).

Synthetic checkpoints are written with a tiny pickler that emits exactly the opcodes
``torch.save`` produces (``GLOBAL torch._utils _rebuild_tensor_v2``, storage persistent
ids, ``collections.OrderedDict`` backward hooks), so no torch is needed. The real
fixtures under ``<shared>/fixtures`` are compared bit for bit with their ``.npz`` twins.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from pgm_jax.interop import CheckpointFormatError, UnknownObject, load_torch_checkpoint

# ----------------------------------------------------------------------------- fixtures


def _fixtures_dir() -> Path:
    """``<shared>/fixtures``; ``<shared>`` is ``$PGM_SHARED_DIR`` or the repo's sibling."""
    env = os.environ.get("PGM_SHARED_DIR")
    shared = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    return shared / "fixtures"


FIXTURES = _fixtures_dir()
_CKPT_SUFFIXES = (".ckpt", ".pth", ".pt")


def _fixture_checkpoints() -> list[Any]:
    """One pytest param per fixture checkpoint file, or a single None (the test fails)."""
    found: list[Path] = []
    if FIXTURES.is_dir():
        for case in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
            found += sorted(p for p in case.iterdir() if p.suffix in _CKPT_SUFFIXES)
    if not found:
        return [pytest.param(None, id="no-fixtures")]
    return [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in found]


def _no_fixtures() -> Path:
    """Fails the test: without the reference fixtures these tests must not pass by skipping."""
    pytest.fail(f"no fixture checkpoints at {FIXTURES}: put the project's shared/ beside the "
                "checkout or set PGM_SHARED_DIR", pytrace=False)


def _assert_same(actual: Any, expected: np.ndarray, name: str) -> None:
    assert isinstance(actual, np.ndarray), f"{name}: {type(actual).__name__}"
    assert actual.dtype == expected.dtype, f"{name}: {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    assert actual.flags.c_contiguous, name
    assert actual.tobytes() == expected.tobytes(), f"{name}: values differ"


def _model_state_dict(obj: Any, ckpt: Path) -> dict[str, np.ndarray]:
    """Where each fixture layout keeps its weights (README_text §2.2, IMAGE_README)."""
    assert isinstance(obj, dict)
    if ckpt.suffix == ".ckpt":  # Lightning: 'state_dict' with the 'backbone.' prefix
        sd = obj["state_dict"]
        assert all(k.startswith("backbone.") for k in sd)
        return {k.removeprefix("backbone."): v for k, v in sd.items()}
    if "model_state_dict" in obj:  # PGM / MaskGIT image checkpoints
        assert obj["optimizer_state_dict"] is None
        return dict(obj["model_state_dict"])
    return dict(obj["model"])  # VQ tokenizer


@pytest.mark.parametrize("ckpt", _fixture_checkpoints())
def test_fixture_checkpoint_matches_npz(ckpt: Path) -> None:
    ckpt = ckpt or _no_fixtures()
    obj = load_torch_checkpoint(ckpt)
    sd = _model_state_dict(obj, ckpt)
    with np.load(ckpt.parent / "state_dict.npz") as npz:
        expected = {k: npz[k] for k in npz.files}
    assert sorted(sd) == sorted(expected)
    for key, value in expected.items():
        _assert_same(sd[key], value, key)

    if ckpt.suffix != ".ckpt":
        if "tok_emb.weight" in sd and "head.weight" in sd:  # MaskGIT shares one storage
            _assert_same(sd["head.weight"], sd["tok_emb.weight"], "head.weight (tied)")
        return

    names = json.loads((ckpt.parent / "param_names.json").read_text())
    assert list(sd) == names["state_dict_keys"]
    ema = obj["ema"]
    assert ema["decay"] == pytest.approx(0.9999) and isinstance(ema["num_updates"], int)
    order = names["ema_shadow_params_order"]
    assert isinstance(ema["shadow_params"], list) and len(ema["shadow_params"]) == len(order)
    with np.load(ckpt.parent / "ema_state_dict.npz") as npz:
        for i, name in enumerate(order):
            _assert_same(ema["shadow_params"][i], npz[name], f"ema.shadow_params[{i}]={name}")
    assert isinstance(obj["hyper_parameters"]["config"], dict)
    assert isinstance(obj["global_step"], int)
    assert "torch" not in sys.modules


@pytest.mark.parametrize("ckpt", _fixture_checkpoints())
def test_truncated_fixture_is_rejected(ckpt: Path, tmp_path: Path) -> None:
    ckpt = ckpt or _no_fixtures()
    data = ckpt.read_bytes()
    for frac in (0.5, 0.99):
        bad = tmp_path / f"trunc_{frac}{ckpt.suffix}"
        bad.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(CheckpointFormatError, match=str(bad)):
            load_torch_checkpoint(bad)


def test_corrupted_storage_bytes_fail_crc(tmp_path: Path) -> None:
    cases = [p.values[0] for p in _fixture_checkpoints() if p.values[0] is not None]
    if not cases:
        _no_fixtures()
    src: Path = cases[0]
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 64)
    data = bytearray(src.read_bytes())
    # The payload follows the 30-byte local header, its file name and its extra field
    # (torch pads the local extra field for alignment, so read its lengths from there).
    hdr = info.header_offset
    name_len, extra_len = (int.from_bytes(data[hdr + i : hdr + i + 2], "little") for i in (26, 28))
    pos = hdr + 30 + name_len + extra_len + 32
    data[pos] ^= 0xFF
    bad = tmp_path / "flipped.ckpt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match="corrupt"):
        load_torch_checkpoint(bad)


# ------------------------------------------------------- a minimal torch.save emulator


class _G:
    """A pickle ``GLOBAL module name`` reference, written verbatim by :class:`_TorchPickler`."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # save_reduce() insists on a callable
        raise AssertionError("never called")


class _FakeStorage:
    """Raw storage bytes plus the ``torch.<X>Storage`` class name that describes them."""

    def __init__(
        self,
        key: str,
        type_name: str,
        data: bytes,
        numel: int,
        view: tuple[str, int, int] | None = None,
    ) -> None:
        self.key, self.type_name, self.data, self.numel, self.view = (
            key,
            type_name,
            data,
            numel,
            view,
        )


def _storage(key: str, values: np.ndarray, type_name: str) -> _FakeStorage:
    return _FakeStorage(key, type_name, values.tobytes(), values.size)


class _FakeTensor:
    """Reduces like a torch tensor: ``_rebuild_tensor_v2`` (or v3 with ``dtype``)."""

    def __init__(
        self,
        storage: _FakeStorage,
        offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        dtype: str | None = None,
    ) -> None:
        self.storage, self.offset, self.size, self.stride, self.dtype = (
            storage,
            offset,
            size,
            stride,
            dtype,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        hooks = collections.OrderedDict()
        if self.dtype is None:
            return (
                _G("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, self.size, self.stride, False, hooks),
            )
        return (
            _G("torch._utils", "_rebuild_tensor_v3"),
            (
                self.storage,
                self.offset,
                self.size,
                self.stride,
                False,
                hooks,
                _G("torch", self.dtype),
            ),
        )


class _FakeParameter:
    def __init__(self, data: _FakeTensor) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _G("torch._utils", "_rebuild_parameter"),
            (self.data, True, collections.OrderedDict()),
        )


class _FakeSize(tuple):
    def __reduce__(self) -> tuple[Any, ...]:
        return (_G("torch", "Size"), (tuple(self),))


class _FakeObject:
    """An arbitrary class instance: ``REDUCE`` of ``module.name`` then ``BUILD`` state."""

    def __init__(self, module: str, name: str, args: tuple[Any, ...], state: Any) -> None:
        self.g, self.args, self.state = _G(module, name), args, state

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.g, self.args, self.state)


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets us emit raw GLOBALs
    """Protocol-2 pickler writing storages as torch persistent ids."""

    def __init__(self, file: io.BytesIO, legacy: bool = False) -> None:
        super().__init__(file, protocol=2)
        # Only the stock save functions: `dill` (imported by lm-eval's dependencies in the same
        # test session) patches the pure-Python pickler's class-wide table in place.
        self.dispatch = {t: f for t, f in pickle._Pickler.dispatch.items()
                         if getattr(f, "__module__", "") == "pickle"}
        self.legacy = legacy
        self.storages: dict[str, _FakeStorage] = {}

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, _FakeStorage):
            return None
        self.storages.setdefault(obj.key, obj)
        pid = ("storage", _G("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return (*pid, obj.view) if self.legacy else pid

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _G):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def _write_zip_ckpt(
    path: Path, obj: Any, byteorder: str | None = "little", skip_records: tuple[str, ...] = ()
) -> Path:
    buf = io.BytesIO()
    pickler = _TorchPickler(buf)
    pickler.dump(obj)
    records = {"archive/data.pkl": buf.getvalue(), "archive/version": b"3\n"}
    if byteorder is not None:
        records["archive/byteorder"] = byteorder.encode()
    for key, storage in sorted(pickler.storages.items()):
        records[f"archive/data/{key}"] = storage.data
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            if name not in skip_records:
                zf.writestr(name, data)
    return path


def _write_legacy_ckpt(path: Path, obj: Any) -> Path:
    buf = io.BytesIO()
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 8},
    }
    for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
        pickle.dump(header, buf, protocol=2)
    pickler = _TorchPickler(buf, legacy=True)
    pickler.dump(obj)
    keys = sorted(pickler.storages)
    pickle.dump(keys, buf, protocol=2)
    for key in keys:
        storage = pickler.storages[key]
        buf.write(storage.numel.to_bytes(8, "little"))
        buf.write(storage.data)
    path.write_bytes(buf.getvalue())
    return path


def _strided(
    flat: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> np.ndarray:
    """Reference gather: out[idx] = flat[offset + sum(idx * stride)]."""
    out = np.empty(size, dtype=flat.dtype)
    for idx in np.ndindex(*size):
        out[idx] = flat[offset + sum(i * s for i, s in zip(idx, stride, strict=True))]
    return out


# ---------------------------------------------------------------------- synthetic tests


def test_strided_offset_and_dtypes(tmp_path: Path) -> None:
    f32 = np.arange(40, dtype=np.float32) * 0.5 - 3.0
    s_f32 = _storage("0", f32, "FloatStorage")
    bf16 = (np.arange(12, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16)
    dtype_storages = {
        "f64": (np.linspace(-1, 1, 6), "DoubleStorage"),
        "f16": (np.linspace(-2, 2, 6).astype(np.float16), "HalfStorage"),
        "bf16": (bf16, "BFloat16Storage"),
        "i64": (np.arange(-3, 3, dtype=np.int64) * (1 << 40), "LongStorage"),
        "i32": (np.arange(-3, 3, dtype=np.int32), "IntStorage"),
        "i16": (np.arange(-3, 3, dtype=np.int16), "ShortStorage"),
        "i8": (np.arange(-3, 3, dtype=np.int8), "CharStorage"),
        "u8": (np.arange(250, 256, dtype=np.uint8), "ByteStorage"),
        "bool": (np.array([True, False, True, True, False, False]), "BoolStorage"),
        "c64": (np.arange(6, dtype=np.complex64) * (1 + 2j), "ComplexFloatStorage"),
    }
    untyped = np.arange(8, dtype=np.float32).view(np.uint8)
    obj = {
        # transposed (3, 4) view of an (4, 3) block starting at element 5
        "transposed": _FakeTensor(s_f32, 5, (3, 4), (1, 3)),
        "strided_3d": _FakeTensor(s_f32, 2, (2, 2, 3), (17, 1, 4)),
        "broadcast": _FakeTensor(s_f32, 7, (2, 3), (0, 1)),  # expand(): stride 0
        "scalar": _FakeTensor(s_f32, 39, (), ()),
        "empty": _FakeTensor(s_f32, 0, (0, 4), (4, 1)),
        "param": _FakeParameter(_FakeTensor(s_f32, 0, (2, 5), (5, 1))),
        "v3_f32": _FakeTensor(
            _storage("u", untyped, "UntypedStorage"), 2, (3,), (2,), dtype="float32"
        ),
        "size": _FakeSize((2, 3)),
        "nested": collections.OrderedDict(a=[1, 2.5, "x", None, (True, b"raw")]),
    }
    for name, (values, type_name) in dtype_storages.items():
        obj[name] = _FakeTensor(_storage(name, values, type_name), 1, (2, 2), (1, 2))
    loaded = load_torch_checkpoint(_write_zip_ckpt(tmp_path / "syn.pt", obj))

    _assert_same(loaded["transposed"], _strided(f32, 5, (3, 4), (1, 3)), "transposed")
    np.testing.assert_array_equal(loaded["transposed"], f32[5:17].reshape(4, 3).T)
    _assert_same(loaded["strided_3d"], _strided(f32, 2, (2, 2, 3), (17, 1, 4)), "strided_3d")
    _assert_same(loaded["broadcast"], np.broadcast_to(f32[7:10], (2, 3)).copy(), "broadcast")
    _assert_same(loaded["scalar"], np.array(f32[39]), "scalar")
    _assert_same(loaded["empty"], np.zeros((0, 4), np.float32), "empty")
    _assert_same(loaded["param"], f32[:10].reshape(2, 5), "param")
    _assert_same(loaded["v3_f32"], np.array([2.0, 4.0, 6.0], np.float32), "v3_f32")
    for name, (values, _) in dtype_storages.items():
        _assert_same(loaded[name], _strided(values, 1, (2, 2), (1, 2)), name)
    assert loaded["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert loaded["size"] == (2, 3) and type(loaded["size"]) is tuple
    assert loaded["nested"] == collections.OrderedDict(a=[1, 2.5, "x", None, (True, b"raw")])
    assert isinstance(loaded["nested"], collections.OrderedDict)
    loaded["transposed"][0, 0] = 1.0  # a writable copy, not a view into the file buffer


def test_big_endian_byteorder_record(tmp_path: Path) -> None:
    f32 = np.arange(6, dtype=np.float32) - 2.5
    i64 = np.arange(4, dtype=np.int64) * 1000
    obj = {
        "f": _FakeTensor(
            _FakeStorage("0", "FloatStorage", f32.astype(">f4").tobytes(), 6), 0, (2, 3), (1, 2)
        ),
        "i": _FakeTensor(
            _FakeStorage("1", "LongStorage", i64.astype(">i8").tobytes(), 4), 1, (3,), (1,)
        ),
    }
    loaded = load_torch_checkpoint(_write_zip_ckpt(tmp_path / "be.pt", obj, byteorder="big"))
    np.testing.assert_array_equal(loaded["f"], f32.reshape(3, 2).T)
    np.testing.assert_array_equal(loaded["i"], i64[1:])
    assert loaded["f"].dtype == np.float32 and loaded["f"].dtype.isnative


def test_shared_storage_and_out_of_bounds(tmp_path: Path) -> None:
    s = _storage("0", np.arange(6, dtype=np.float32), "FloatStorage")
    ok = load_torch_checkpoint(
        _write_zip_ckpt(
            tmp_path / "ok.pt", [_FakeTensor(s, 0, (6,), (1,)), _FakeTensor(s, 3, (3,), (1,))]
        )
    )
    np.testing.assert_array_equal(ok[1], [3, 4, 5])
    bad = _write_zip_ckpt(tmp_path / "oob.pt", {"t": _FakeTensor(s, 3, (2, 2), (2, 1))})
    with pytest.raises(CheckpointFormatError, match="past the end of storage"):
        load_torch_checkpoint(bad)


def test_legacy_format_with_storage_view(tmp_path: Path) -> None:
    values = np.arange(10, dtype=np.float32) * 1.5
    root = _storage("140", values, "FloatStorage")
    view = _FakeStorage("140", "FloatStorage", b"", 3, view=("141", 4, 3))
    obj = {
        "root": _FakeTensor(root, 2, (2, 2), (1, 2)),
        "view": _FakeTensor(view, 1, (2,), (1,)),
        "step": 7,
    }
    loaded = load_torch_checkpoint(_write_legacy_ckpt(tmp_path / "legacy.pth", obj))
    _assert_same(loaded["root"], _strided(values, 2, (2, 2), (1, 2)), "root")
    _assert_same(loaded["view"], values[5:7].copy(), "view")
    assert loaded["step"] == 7


def test_missing_records_and_garbage(tmp_path: Path) -> None:
    obj = {"w": _FakeTensor(_storage("0", np.ones(4, np.float32), "FloatStorage"), 0, (4,), (1,))}
    no_storage = _write_zip_ckpt(tmp_path / "a.pt", obj, skip_records=("archive/data/0",))
    with pytest.raises(CheckpointFormatError, match=r"missing zip record 'archive/data/0'"):
        load_torch_checkpoint(no_storage)
    no_pickle = _write_zip_ckpt(tmp_path / "b.pt", obj, skip_records=("archive/data.pkl",))
    with pytest.raises(CheckpointFormatError, match="no <prefix>/data.pkl"):
        load_torch_checkpoint(no_pickle)
    short = _write_zip_ckpt(
        tmp_path / "c.pt",
        {"w": _FakeTensor(_FakeStorage("0", "FloatStorage", b"\0" * 8, 4), 0, (4,), (1,))},
    )
    with pytest.raises(CheckpointFormatError, match="expected 16"):
        load_torch_checkpoint(short)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="not a torch.save checkpoint"):
        load_torch_checkpoint(garbage)
    with pytest.raises(CheckpointFormatError, match="cannot open"):
        load_torch_checkpoint(tmp_path / "does_not_exist.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFormatError):
        load_torch_checkpoint(empty)


def _malicious_payloads(marker: Path) -> list[tuple[str, bytes]]:
    """Pickles that would run ``touch marker`` if loaded with a plain unpickler."""

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    raw = (
        b"\x80\x02cos\nsystem\nX"
        + len(f"touch {marker}").to_bytes(4, "little")
        + f"touch {marker}".encode()
        + b"\x85R."
    )
    return [
        (f"{os.system.__module__}.system", pickle.dumps({"state_dict": Evil()}, protocol=2)),
        ("os.system", raw),
        ("builtins.eval", b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R."),
    ]


def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for qualname, payload in _malicious_payloads(marker):
        path = tmp_path / "evil.pt"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
            zf.writestr("archive/byteorder", "little")
        with pytest.raises(CheckpointFormatError) as info:
            load_torch_checkpoint(path)
        message = str(info.value)
        assert f"'{qualname}'" in message and str(path) in message and "\n" not in message
        # allow_unknown never executes either: the call becomes an inert placeholder
        placeholder = load_torch_checkpoint(path, allow_unknown=True)
        if isinstance(placeholder, dict):
            placeholder = placeholder["state_dict"]
        assert isinstance(placeholder, UnknownObject)
        assert f"{placeholder.unknown_module}.{placeholder.unknown_name}" == qualname
        assert not marker.exists()


def test_allow_unknown_placeholders_keep_tensors(tmp_path: Path) -> None:
    s = _storage("0", np.arange(6, dtype=np.float32), "FloatStorage")
    config = _FakeObject(
        "omegaconf.dictconfig",
        "DictConfig",
        (),
        {
            "_content": {"lr": 3e-4},
            "_metadata": _FakeObject("omegaconf.base", "ContainerMetadata", (1, "x"), None),
        },
    )
    obj = {
        "state_dict": {"w": _FakeTensor(s, 0, (2, 3), (3, 1))},
        "hyper_parameters": {
            "config": config,
            "tokenizer": _FakeObject(
                "transformers", "GPT2TokenizerFast", ("vocab",), {"padding_side": "right"}
            ),
        },
    }
    path = _write_zip_ckpt(tmp_path / "released.ckpt", obj)
    with pytest.raises(CheckpointFormatError, match="'omegaconf.dictconfig.DictConfig'"):
        load_torch_checkpoint(path)
    loaded = load_torch_checkpoint(path, allow_unknown=True)
    np.testing.assert_array_equal(loaded["state_dict"]["w"], np.arange(6).reshape(2, 3))
    cfg = loaded["hyper_parameters"]["config"]
    assert isinstance(cfg, UnknownObject)
    assert (cfg.unknown_module, cfg.unknown_name) == ("omegaconf.dictconfig", "DictConfig")
    assert cfg.state["_content"] == {"lr": 3e-4}
    assert cfg.state["_metadata"].args == (1, "x")
    tok = loaded["hyper_parameters"]["tokenizer"]
    assert tok.args == ("vocab",) and tok.state == {"padding_side": "right"}

    # NEWOBJ + BUILD + SETITEMS + APPENDS on an unknown class are absorbed too.
    raw = b"\x80\x02cfoo.bar\nBaz\n)\x81}X\x01\x00\x00\x00aK\x01sb(X\x01\x00\x00\x00kK\x02u(K\x03e."
    path2 = tmp_path / "newobj.pt"
    with zipfile.ZipFile(path2, "w") as zf:
        zf.writestr("archive/data.pkl", raw)
    baz = load_torch_checkpoint(path2, allow_unknown=True)
    assert isinstance(baz, UnknownObject) and baz.state == {"a": 1}
    assert baz.dict_items == [("k", 2)] and baz.list_items == [3]


def test_torch_dtype_and_device_globals(tmp_path: Path) -> None:
    obj = {
        "cuda": _FakeObject("torch", "device", ("cuda", 1), None),
        "bf16": _G("torch", "bfloat16"),
        "f32": _G("torch", "float32"),
        "cpu": _FakeObject("torch", "device", ("cpu",), None),
        "set": {1, 2},
        "fs": frozenset({"a"}),
        "c": 1 + 2j,
        "np": np.float64(2.5),
        "arr": np.arange(3, dtype=np.int16),
    }
    loaded = load_torch_checkpoint(_write_zip_ckpt(tmp_path / "misc.pt", obj))
    assert loaded["cuda"] == "cuda:1" and loaded["cpu"] == "cpu"
    assert loaded["bf16"] == np.dtype(ml_dtypes.bfloat16) and loaded["f32"] == np.float32
    assert loaded["set"] == {1, 2} and loaded["fs"] == frozenset({"a"}) and loaded["c"] == 1 + 2j
    assert loaded["np"] == 2.5 and loaded["np"].dtype == np.float64
    np.testing.assert_array_equal(loaded["arr"], np.arange(3, dtype=np.int16))
    assert loaded["arr"].dtype == np.int16
