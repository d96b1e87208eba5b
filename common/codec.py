"""msgpack <-> Python with numpy/torch tensors as (dtype, shape, raw bytes); safetensors for weights.

Never pickle (DESIGN.md principle 7). Decoding is bounded: the payload size is checked before
unpacking, msgpack's own length limits apply, every array's byte length must equal
prod(shape) * itemsize of a whitelisted dtype, and nothing is allocated beyond what the payload
already holds. Anything malformed raises :class:`CodecError` with the reason.
"""
from __future__ import annotations

import hashlib
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


def _pack_array(arr: np.ndarray, tag: int, dtype_name: str) -> msgpack.ExtType:
    arr = np.ascontiguousarray(arr)
    body = msgpack.packb([dtype_name, list(arr.shape), arr.tobytes()], use_bin_type=True)
    return msgpack.ExtType(tag, body)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in _DTYPES:
            raise CodecError(f"cannot encode array of dtype {obj.dtype}")
        return _pack_array(obj, _EXT_NDARRAY, obj.dtype.name)
    if isinstance(obj, np.generic):
        return obj.item()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return _pack_array(t.view(torch.uint16).numpy(), _EXT_TORCH, "bfloat16")
        name = str(t.dtype).removeprefix("torch.")
        if name not in _DTYPES:
            raise CodecError(f"cannot encode tensor of dtype {t.dtype}")
        return _pack_array(t.numpy(), _EXT_TORCH, name)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise CodecError(f"cannot encode object of type {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    """Pack dicts/lists/scalars/bytes/str and numpy arrays or torch tensors (returned as numpy)."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def _unpack_array(code: int, data: bytes) -> Any:
    if code not in (_EXT_NDARRAY, _EXT_TORCH):
        raise CodecError(f"unknown extension type {code}")
    try:
        head = msgpack.unpackb(data, raw=False, max_array_len=_MAX_NDIM + 3, max_map_len=0,
                               max_str_len=32, max_bin_len=len(data), strict_map_key=True)
    except Exception as e:
        raise CodecError(f"malformed array header: {e}") from None
    if not (isinstance(head, list) and len(head) == 3):
        raise CodecError("array must be [dtype, shape, bytes]")
    dtype_name, shape, raw = head
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise CodecError(f"array dtype {dtype_name!r} is not allowed")
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape)):
        raise CodecError(f"array shape {shape!r} is invalid")
    if not isinstance(raw, bytes):
        raise CodecError("array data must be bytes")
    dt = _DTYPES[dtype_name]
    n = 1
    for s in shape:
        n *= s
    if n * dt.itemsize != len(raw):
        raise CodecError(f"array of shape {shape} and dtype {dtype_name} needs {n * dt.itemsize} bytes, payload has {len(raw)}")
    arr = np.frombuffer(raw, dtype=dt).reshape(shape)
    if dtype_name == "bfloat16":
        return _BF16(arr)
    return arr


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
    try:
        return msgpack.unpackb(bytes(data), ext_hook=_unpack_array, raw=False, strict_map_key=False,
                               max_bin_len=len(data), max_str_len=len(data), max_array_len=len(data),
                               max_map_len=len(data), max_ext_len=len(data))
    except CodecError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise CodecError(f"malformed payload: {type(e).__name__}: {e}") from None


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
