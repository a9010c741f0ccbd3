"""Reads a PyTorch state dict file into numpy arrays, without PyTorch and without running
code from the file.

`torch.save(model.state_dict(), f)` writes a pickle whose tensors point at raw storages.
Two serializations exist and both are read here:

- legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`; the authors' 2019 files):
  five pickles back to back (magic number, protocol version, system info, the object, the
  sorted storage keys), then each storage as an int64 element count and its raw bytes;
- zip (torch >= 1.6): a zip archive `<name>/data.pkl` with the object and `<name>/data/<key>`
  with each storage's raw bytes.

A pickle can name any importable callable and have it called. The unpickler here resolves
only the names a state dict needs: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`
(replaced by a function that views a numpy storage) and the `torch.<Type>Storage` markers of
the element type. Any other name (a model class, `os.system`, ...) stops the read with a
`CheckpointError` that names it; nothing from the file is imported or executed.

    state = read_state_dict("CornerNet_500000.pkl")   # {"module.hg.pre.0.conv.weight": ndarray}
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Optional

import numpy as np

from cornernet_tf.errors import UserError

# torch/serialization.py: the first pickle of a legacy file, and the format version after it.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage classes of a torch file -> numpy element type (little-endian).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(UserError, ValueError):
    """The file is not a readable state dict; the message says what was found and where."""


class _StorageType:
    """What `torch.FloatStorage` etc. resolve to: only the element type."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """One storage of the file; `data` (a 1-D array) is filled once its bytes are read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data = None


class _TensorRef:
    """A tensor as the pickle describes it: a strided view of a storage (elements)."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(n) for n in size)
        self.stride = tuple(int(s) for s in stride)

    def to_numpy(self, name: str, path: str, budget: "_CopyBudget") -> np.ndarray:
        """The tensor as an array: a view of the storage when it is contiguous, else a copy.

        A state dict's tensors are views that stay inside their storage and do not
        overlap themselves; anything else is refused before an element is read: a
        negative size, a negative or zero stride (on a dimension of more than one
        element; such strides read before the storage or repeat one element into a huge
        array), a view reaching outside the storage, or more elements than the storage
        holds. Copies (non-contiguous views) count against `budget`.
        """
        data = self.storage.data
        if data is None:
            raise CheckpointError(f"{path}: storage {self.storage.key} of {name!r} has no data "
                                  f"in the file (truncated or not written by torch.save)")
        where = (f"{path}: tensor {name!r} (size {list(self.size)}, stride "
                 f"{list(self.stride)}, offset {self.offset})")
        if len(self.size) != len(self.stride) or any(n < 0 for n in self.size):
            raise CheckpointError(f"{where}: expected as many strides as sizes, all sizes >= 0")
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, data.dtype)
        if any(s < 1 for n, s in zip(self.size, self.stride) if n > 1):
            raise CheckpointError(f"{where}: a stride below 1 is not a state dict's tensor "
                                  f"(expected strides >= 1 on every dimension longer than 1)")
        numel = int(np.prod(self.size, dtype=object))
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= data.size or numel > data.size:
            raise CheckpointError(f"{where}: reaches outside its storage of {data.size} "
                                  f"elements (elements {self.offset} to {last}, {numel} in all)")
        contiguous = tuple(int(np.prod(self.size[i + 1:])) for i in range(len(self.size)))
        if self.stride == contiguous or numel == 1:
            # The usual case: a read-only view of the file's bytes, no copy.
            return data[self.offset:self.offset + numel].reshape(self.size)
        budget.take(numel * data.itemsize, where)
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size,
            strides=[s * data.itemsize for s in self.stride], writeable=False)
        return np.array(view)  # a contiguous copy


class _CopyBudget:
    """Bytes the non-contiguous tensors of one file may copy in all: the file's size (each
    view stays inside its storage, but many views of one storage would each be copied)."""

    def __init__(self, limit: int):
        self.left = limit

    def take(self, nbytes: int, where: str) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise CheckpointError(f"{where}: the file's strided views copy more bytes than "
                                  f"the file holds (overlapping views of one storage)")


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
    """Stands in for torch._utils._rebuild_tensor_v2 (same positional arguments)."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"a tensor refers to {type(storage).__name__}, not a storage")
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a state dict; persistent ids become `_Storage`s."""

    ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor}

    def __init__(self, file: BinaryIO, path: str, storages: dict, legacy: bool):
        super().__init__(file)
        self.path = path
        self.storages = storages
        self.legacy = legacy

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name == "BFloat16Storage":
            raise CheckpointError(f"{self.path}: bfloat16 tensors are not supported (found "
                                  f"torch.BFloat16Storage); save the state dict as float32")
        raise CheckpointError(
            f"{self.path}: refusing to load {module}.{name}: only tensors in an OrderedDict "
            f"(a state_dict saved with torch.save) are read, and nothing in the file is run")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: unexpected persistent id {pid!r:.80}; expected "
                                  f"('storage', torch.<Type>Storage, key, location, numel)")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        view = pid[5] if self.legacy and len(pid) > 5 else None
        if view is not None:  # old torch: a storage slice (view key, offset, size)
            view_key, offset, size = view
            sliced = _Storage(str(view_key), storage.dtype, int(size))
            sliced.parent, sliced.parent_offset = storage, int(offset)
            self.storages.setdefault("view:" + str(view_key), sliced)
            return sliced
        return storage


def read_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """Reads a `torch.save`d state dict (legacy or zip serialization) as numpy arrays.

    Args:
      path: the file, e.g. the authors' `CornerNet_500000.pkl`.

    Returns:
      OrderedDict name -> array (float32 weights keep their dtype; `num_batches_tracked`
      entries are int64), in the file's order. Names are as saved (a `module.` prefix stays).

    Raises:
      CheckpointError: the file is missing, truncated, not a torch file, holds objects other
        than tensors in a dict, or holds something other than a flat name -> tensor dict.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        try:
            if head == b"PK\x03\x04":
                obj, storages = _read_zip(f, path)
            else:
                obj, storages = _read_legacy(f, path, size)
            return _flatten(obj, storages, path, _CopyBudget(size))
        except CheckpointError:
            raise
        except MemoryError:  # numpy's _ArrayMemoryError too
            raise CheckpointError(f"{path}: reading it needs more memory than this machine "
                                  f"can give (a tensor or storage larger than the file "
                                  f"suggests)") from None
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error,
                ValueError, KeyError, IndexError, TypeError, AttributeError,
                UnicodeDecodeError, OverflowError, RecursionError) as e:
            raise CheckpointError(f"{path}: not a readable PyTorch state dict file (truncated or "
                                  f"another format): {type(e).__name__}: {e}"[:400]) from None


def _read_legacy(f: BinaryIO, path: str, file_size: int):
    storages: dict = {}
    magic = _RestrictedUnpickler(f, path, storages, legacy=True).load()
    if magic != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch file (neither a zip archive nor a legacy "
                              f"torch.save stream: its first pickle is {magic!r:.40})")
    protocol = _RestrictedUnpickler(f, path, storages, legacy=True).load()
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: legacy torch format version {protocol!r:.20}, expected "
                              f"{LEGACY_PROTOCOL}")
    sys_info = _RestrictedUnpickler(f, path, storages, legacy=True).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError(f"{path}: written on a big-endian machine; not supported")
    obj = _RestrictedUnpickler(f, path, storages, legacy=True).load()
    keys = _RestrictedUnpickler(f, path, storages, legacy=True).load()
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: expected the list of storage keys after the object, "
                              f"found {type(keys).__name__}")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointError(f"{path}: storage {key} is listed but no tensor uses it")
        (numel,) = struct.unpack("<q", _read_exact(f, 8, path, key))
        nbytes = numel * storage.dtype.itemsize
        if numel < 0 or nbytes > file_size - f.tell():  # checked before anything is read
            raise CheckpointError(f"{path}: truncated: storage {key} claims {numel} elements "
                                  f"({nbytes} bytes); the file has {file_size - f.tell()} "
                                  f"bytes left")
        raw = _read_exact(f, nbytes, path, key)
        storage.data = np.frombuffer(raw, storage.dtype)
    _resolve_views(storages, path)
    return obj, storages


def _read_exact(f: BinaryIO, n: int, path: str, key) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError(f"{path}: truncated: storage {key} needs {n} more bytes, the file "
                              f"has {len(data)}")
    return data


def _member(archive: zipfile.ZipFile, name: str, path: str, need: Optional[int] = None) -> bytes:
    """A member's bytes, its size checked before it is read.

    torch writes every member stored (uncompressed), so a member is never larger than the
    file; a compressed member (whose inflated size only its header vouches for: a zip bomb)
    or one of another size than its tensors need is refused before it is inflated.
    """
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
        raise CheckpointError(f"{path}: member {name} is compressed ({info.compress_size} bytes "
                              f"that inflate to {info.file_size}); torch.save writes every "
                              f"member uncompressed")
    if need is not None and info.file_size < need:
        raise CheckpointError(f"{path}: {name} has {info.file_size} bytes, the tensor needs "
                              f"{need}")
    with archive.open(info) as member:
        return member.read(info.file_size if need is None else need)


def _read_zip(f: BinaryIO, path: str):
    storages: dict = {}
    with zipfile.ZipFile(f) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: a zip file but not a torch.save archive (expected "
                                  f"one '<name>/data.pkl', found {len(pickles)})")
        prefix = pickles[0][:-len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and _member(archive, order, path).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: big-endian archive; not supported")
        obj = _RestrictedUnpickler(io.BytesIO(_member(archive, pickles[0], path)), path,
                                   storages, legacy=False).load()
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path}: truncated or incomplete: {member} is missing")
            if storage.numel < 0:
                raise CheckpointError(f"{path}: storage {key} claims {storage.numel} elements")
            raw = _member(archive, member, path, storage.numel * storage.dtype.itemsize)
            storage.data = np.frombuffer(raw, storage.dtype)
    return obj, storages


def _resolve_views(storages: dict, path: str) -> None:
    for key, storage in storages.items():
        parent = getattr(storage, "parent", None)
        if parent is not None and parent.data is not None:
            start = storage.parent_offset
            if start < 0 or storage.numel < 0 or start + storage.numel > parent.data.size:
                raise CheckpointError(f"{path}: storage view {key} (elements {start} to "
                                      f"{start + storage.numel}) reaches outside storage "
                                      f"{parent.key} of {parent.data.size} elements")
            storage.data = parent.data[start:start + storage.numel]


def _flatten(obj: Any, storages: dict, path: str,
             budget: _CopyBudget) -> "collections.OrderedDict[str, np.ndarray]":
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found a "
                              f"{type(obj).__name__}")
    _resolve_views(storages, path)
    out = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            kind = type(value).__name__ if isinstance(name, str) else type(name).__name__
            raise CheckpointError(
                f"{path}: expected a state dict of tensors; entry {name!r:.60} is a {kind} "
                f"(a training snapshot with other entries? save model.state_dict() alone)")
        out[name] = value.to_numpy(name, path, budget)
    return out
