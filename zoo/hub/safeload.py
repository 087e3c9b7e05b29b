"""The tensors of a TorchScript archive, read as data: its code is never compiled nor run.

`torch.jit.load` compiles the archive's `code/` and runs it (a module's TorchScript `__setstate__`
runs while the file is opened), so a crafted file executes whatever it holds. This reader opens the
zip, unpickles `data.pkl` with an unpickler that knows only what rebuilds tensors (storages,
`torch._utils._rebuild_tensor_v2`, OrderedDict, TorchScript's list builders) and turns every
TorchScript class into an inert record of its attributes; any other global (`os.system`,
`builtins.exec`, ...) is refused before anything is built. The names of the tensors found are the
ones `torch.jit.load(path).state_dict()` gives (submodule and attribute names joined by dots).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

#: pickled storage class names -> dtypes (the legacy `torch.*Storage` names TorchScript archives use)
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_MAX_DEPTH = 64


class UnsafeArchiveError(ValueError):
    """A TorchScript archive whose data cannot be read as plain tensors (unknown globals, bad records)."""


class ScriptObject:
    """An inert stand-in for a TorchScript class instance: its pickled state, nothing else."""

    qualname = "__torch__"

    def __init__(self, *args: Any) -> None:  # REDUCE on the class: arguments are kept, not interpreted
        self.state: Any = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_: Any) -> torch.Tensor:
    if not torch.is_tensor(storage):
        raise UnsafeArchiveError(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise UnsafeArchiveError(f"tensor of size {size}, stride {stride}, offset {offset} is malformed")
    if all(size):
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if extent >= storage.numel():
            raise UnsafeArchiveError(
                f"tensor of size {size}, stride {stride}, offset {offset} reaches beyond its storage of "
                f"{storage.numel()} elements"
            )
    return torch.as_strided(storage, size, stride, offset)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _type: value,
}


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, torch.Tensor] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafeArchiveError(
            f"{self.source}: data.pkl names the global {module}.{name}, which is not a tensor or "
            "storage: refused (loading it could run code); nothing was executed"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeArchiveError(f"{self.source}: unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if (
            not isinstance(storage_type, _StorageType)
            or not isinstance(key, str)
            or not isinstance(numel, int)
        ):
            raise UnsafeArchiveError(f"{self.source}: malformed storage record {pid!r:.80}")
        if key not in self.storages:
            record = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(record)
            except KeyError:
                raise UnsafeArchiveError(f"{self.source}: storage {record} is missing") from None
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) != numel * itemsize:
                raise UnsafeArchiveError(
                    f"{self.source}: storage {record} holds {len(raw)} bytes, expected {numel} x {itemsize}"
                )
            flat = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else torch.empty(0)
            self.storages[key] = flat.to(storage_type.dtype)
        return self.storages[key]


def is_torchscript_archive(path: str | Path) -> bool:
    """A zip holding `constants.pkl` or `code/` records (what `torch.load` also calls TorchScript)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _named_tensors(root: Any) -> dict[str, torch.Tensor]:
    """Tensors of the object tree, named as a module's state dict (attribute names joined by dots)."""
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    seen: set[int] = set()
    while stack:
        obj, prefix, depth = stack.pop()
        if id(obj) in seen or depth > _MAX_DEPTH:
            continue
        seen.add(id(obj))
        state = obj.state if isinstance(obj, ScriptObject) else obj
        if not isinstance(state, dict):
            continue
        for key, value in state.items():
            if not isinstance(key, str):
                continue
            if torch.is_tensor(value):
                out[prefix + key] = value
            elif isinstance(value, ScriptObject):
                stack.append((value, f"{prefix}{key}.", depth + 1))
    return dict(sorted(out.items()))


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The named tensors (parameters, buffers, tensor attributes) of a TorchScript archive, as data."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        records = [name for name in names if name.endswith("data.pkl") and name.count("/") <= 1]
        if len(records) != 1:
            raise UnsafeArchiveError(f"{path}: expected one data.pkl record, found {len(records)}")
        prefix = records[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise UnsafeArchiveError(f"{path}: big-endian archives are not supported")
        unpickler = _DataUnpickler(archive.read(records[0]), archive, prefix, str(path))
        root = unpickler.load()
    return _named_tensors(root)
