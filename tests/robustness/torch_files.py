"""Crafted `torch.save` files, written by hand (zip layout and pickle opcodes), no PyTorch.

A torch zip archive holds `<name>/data.pkl` (the state dict: an OrderedDict whose values are
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
calls, each storage a persistent id `("storage", torch.<Type>Storage, key, "cpu", numel)`)
and `<name>/data/<key>` with each storage's raw little-endian bytes, stored (torch does not
compress). The writer below emits exactly that, so a test can give a tensor any offset,
size or stride, and a member any size or compression, without PyTorch.
"""

from __future__ import annotations

import collections
import io
import struct
import zipfile
from typing import NamedTuple, Optional, Sequence

import numpy as np

from cornernet_tf.convert import torch_reader


class Tensor(NamedTuple):
    """One state-dict entry: a strided view of storage `key`."""
    name: str
    key: str
    offset: int
    size: tuple
    stride: tuple
    storage: str = "FloatStorage"
    numel: Optional[int] = None  # the storage's element count (default: its data's)


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(value: int) -> bytes:
    data = int(value).to_bytes(max(1, (int(value).bit_length() + 8) // 8), "little",
                               signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1: any size and sign


def _tuple(values: Sequence[int]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def state_dict_pickle(tensors: Sequence[Tensor], numels: dict) -> bytes:
    """The pickle (protocol 2) of an OrderedDict of the given tensor views."""
    ordered_dict = b"ccollections\nOrderedDict\n)R"  # GLOBAL, EMPTY_TUPLE, REDUCE
    out = [b"\x80\x02", ordered_dict]
    for t in tensors:
        numel = t.numel if t.numel is not None else numels[t.key]
        pid = (b"(" + _text("storage") + f"ctorch\n{t.storage}\n".encode() + _text(t.key)
               + _text("cpu") + _int(numel) + b"tQ")  # BINPERSID
        out += [_text(t.name), b"ctorch._utils\n_rebuild_tensor_v2\n(", pid, _int(t.offset),
                _tuple(t.size), _tuple(t.stride), b"\x89", ordered_dict, b"tR", b"s"]
    return b"".join(out) + b"."


def write_zip(path: str, tensors: Sequence[Tensor], storages: dict,
              compressed: Sequence[str] = ()) -> str:
    """A torch zip archive: `tensors` over `storages` ({key: 1-D array or raw bytes}).

    Args:
      path: the file to write.
      tensors: the state dict's entries, in order.
      storages: each storage's data; raw bytes are written as they are.
      compressed: storage keys whose member is deflated (torch never does this).
    """
    raw = {k: v if isinstance(v, bytes) else np.ascontiguousarray(v).tobytes()
           for k, v in storages.items()}
    itemsize = {t.key: torch_reader.STORAGE_DTYPES[t.storage].itemsize for t in tensors}
    numels = {k: len(data) // itemsize.get(k, 1) for k, data in raw.items()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", state_dict_pickle(tensors, numels))
        archive.writestr("archive/byteorder", "little")
        for key, data in raw.items():
            kind = zipfile.ZIP_DEFLATED if key in compressed else zipfile.ZIP_STORED
            archive.writestr(f"archive/data/{key}", data, compress_type=kind)
    return path


def write_deflated_zeros(path: str, inflated_bytes: int) -> str:
    """A torch archive whose one storage member is `inflated_bytes` zeros, deflated (a zip
    bomb: the file is about a thousandth of that), and whose pickle claims that many
    float32 elements."""
    numel = inflated_bytes // 4
    tensor = Tensor("weight", "0", 0, (numel,), (1,))
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", state_dict_pickle([tensor], {"0": numel}))
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            for _ in range(inflated_bytes // len(chunk)):
                member.write(chunk)
    return path


def views_of(path: str) -> tuple[list, dict]:
    """The entries (as `Tensor`s) and raw storages of a torch zip archive, to rewrite it."""
    with zipfile.ZipFile(path) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        prefix = pkl[:-len("data.pkl")]
        storages: dict = {}
        obj = torch_reader._RestrictedUnpickler(  # pylint: disable=protected-access
            io.BytesIO(archive.read(pkl)), path, storages, legacy=False).load()
        raw = {key: archive.read(f"{prefix}data/{key}") for key in storages}
    names = {v: k for k, v in torch_reader.STORAGE_DTYPES.items()}
    tensors = [Tensor(name, ref.storage.key, ref.offset, ref.size, ref.stride,
                      names[ref.storage.dtype])
               for name, ref in obj.items()]
    assert isinstance(obj, collections.OrderedDict)
    return tensors, raw
