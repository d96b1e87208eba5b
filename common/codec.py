"""msgpack <-> Python with numpy/torch tensors as (dtype, shape, raw bytes); safetensors for weights.

Never pickle (docs/architecture.md, principle 7). Decoding is bounded: the payload size is checked before
unpacking, msgpack's own length limits apply, every array's byte length must equal
prod(shape) * itemsize of a whitelisted dtype, and nothing is allocated beyond what the payload
already holds. Anything malformed raises :class:`CodecError` with the reason.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any

import msgpack
import numpy as np

__all__ = ["CodecError", "encode", "decode", "sha256", "to_torch", "state_to_bytes", "state_from_bytes",
           "MAX_PAYLOAD_BYTES"]

MAX_PAYLOAD_BYTES = 1 << 30
_EXT_NDARRAY = 1
_EXT_TORCH = 2
# bfloat16 has no numpy dtype: it travels as its raw 2-byte pattern under its own tag.
_DTYPES = {name: np.dtype(name) for name in (
    "bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64")}
_DTYPES["bfloat16"] = np.dtype("uint16")
_MAX_NDIM = 8


class CodecError(ValueError):
    """A payload that is truncated, oversized, of the wrong type or otherwise malformed."""


_MAGIC = b"DYR1"
_HEAD = struct.Struct("<4sQ")  # magic, header length


class _Frame:
    """Collects array buffers out of band while the msgpack header is built."""

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def add(self, arr: np.ndarray, tag: int, dtype_name: str) -> msgpack.ExtType:
        arr = np.ascontiguousarray(arr)
        self.buffers.append(memoryview(arr).cast("B"))
        body = msgpack.packb([dtype_name, list(arr.shape), len(self.buffers) - 1], use_bin_type=True)
        return msgpack.ExtType(tag, body)

    def default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if obj.dtype.name not in _DTYPES:
                raise CodecError(f"cannot encode array of dtype {obj.dtype}")
            return self.add(obj, _EXT_NDARRAY, obj.dtype.name)
        if isinstance(obj, np.generic):
            return obj.item()
        import torch
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:
                return self.add(t.view(torch.uint16).numpy(), _EXT_TORCH, "bfloat16")
            name = str(t.dtype).removeprefix("torch.")
            if name not in _DTYPES:
                raise CodecError(f"cannot encode tensor of dtype {t.dtype}")
            return self.add(t.numpy(), _EXT_TORCH, name)
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        raise CodecError(f"cannot encode object of type {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    """Pack dicts/lists/scalars/bytes/str and numpy arrays or torch tensors (returned as numpy).

    Layout: magic, header length, a msgpack header in which each array is an extension
    [dtype, shape, buffer index], then the raw array buffers back to back. Array bytes are copied
    exactly once (into the result) and decoded as zero-copy views.
    """
    frame = _Frame()
    header = msgpack.packb(obj, default=frame.default, use_bin_type=True)
    return b"".join([_HEAD.pack(_MAGIC, len(header)), header, *frame.buffers])


class _Reader:
    def __init__(self, buffers: memoryview):
        self.buffers = buffers
        self.specs: list[tuple[str, list[int], int]] = []
        self.offset = 0

    def ext_hook(self, code: int, data: bytes) -> Any:
        if code not in (_EXT_NDARRAY, _EXT_TORCH):
            raise CodecError(f"unknown extension type {code}")
        try:
            head = msgpack.unpackb(data, raw=False, max_array_len=_MAX_NDIM + 3, max_map_len=0,
                                   max_str_len=32, max_bin_len=0)
        except Exception as e:
            raise CodecError(f"malformed array header: {e}") from None
        if not (isinstance(head, list) and len(head) == 3):
            raise CodecError("array must be [dtype, shape, buffer index]")
        dtype_name, shape, index = head
        if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
            raise CodecError(f"array dtype {dtype_name!r} is not allowed")
        if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM
                and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x for x in shape)):
            raise CodecError(f"array shape {shape!r} is invalid")
        if not (isinstance(index, int) and index == len(self.specs)):
            raise CodecError(f"array buffer index {index!r} out of order")
        dt = _DTYPES[dtype_name]
        n = 1
        for x in shape:
            n *= x
        nbytes = n * dt.itemsize
        offset = self.offset
        if offset + nbytes > len(self.buffers):
            raise CodecError(f"truncated payload: array of shape {shape} and dtype {dtype_name} needs {nbytes} bytes, "
                             f"payload has {len(self.buffers) - offset} left")
        self.specs.append((dtype_name, shape, nbytes))
        self.offset += nbytes
        arr = np.frombuffer(self.buffers[offset:offset + nbytes], dtype=dt).reshape(shape)
        return _BF16(arr) if dtype_name == "bfloat16" else arr


class _BF16(np.ndarray):
    """uint16 view of bfloat16 data; :func:`to_torch` restores the dtype."""
    def __new__(cls, arr: np.ndarray):
        return arr.view(cls)


def decode(data: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> Any:
    """Inverse of :func:`encode`. Arrays come back as read-only numpy views of the payload."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise CodecError(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    view = memoryview(data).cast("B")
    if len(view) < _HEAD.size:
        raise CodecError(f"malformed payload: {len(view)} bytes is shorter than the frame header")
    magic, hlen = _HEAD.unpack_from(view)
    if magic != _MAGIC:
        raise CodecError(f"malformed payload: bad magic {bytes(magic)!r}")
    if _HEAD.size + hlen > len(view):
        raise CodecError(f"malformed payload: header of {hlen} bytes is truncated")
    header = view[_HEAD.size:_HEAD.size + hlen]
    reader = _Reader(view[_HEAD.size + hlen:])
    try:
        obj = msgpack.unpackb(header, ext_hook=reader.ext_hook, raw=False, strict_map_key=False,
                              max_bin_len=hlen, max_str_len=hlen, max_array_len=hlen,
                              max_map_len=hlen, max_ext_len=hlen)
    except CodecError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise CodecError(f"malformed payload: {type(e).__name__}: {e}") from None
    if reader.offset != len(reader.buffers):
        raise CodecError(f"malformed payload: {len(reader.buffers) - reader.offset} trailing bytes after the arrays")
    return obj


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_torch(arr: np.ndarray, device: str | None = None):
    """numpy array from :func:`decode` -> torch tensor (bfloat16 restored, writable copy)."""
    import torch
    if isinstance(arr, _BF16):
        t = torch.from_numpy(np.array(arr.view(np.ndarray), copy=True)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.array(arr, copy=True))
    return t.to(device) if device else t


def state_to_bytes(state: dict, metadata: dict[str, str] | None = None) -> bytes:
    """A dict of tensors -> safetensors bytes (the weight wire and file format)."""
    from safetensors.torch import save
    return save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata=metadata)


def state_from_bytes(data: bytes) -> dict:
    """safetensors bytes -> dict of CPU tensors; malformed bytes raise CodecError."""
    from safetensors.torch import load
    try:
        return load(bytes(data))
    except Exception as e:
        raise CodecError(f"not a valid safetensors payload: {e}") from None
