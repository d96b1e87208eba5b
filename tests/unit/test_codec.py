import msgpack
import numpy as np
import pytest
import torch

from common.codec import CodecError, decode, encode, state_from_bytes, state_to_bytes, to_torch


def frame(header_obj, buffers: bytes = b"") -> bytes:
    """Hand-build a payload in the codec's frame layout (magic, header length, header, buffers)."""
    import struct
    header = msgpack.packb(header_obj, use_bin_type=True)
    return b"DYR1" + struct.pack("<Q", len(header)) + header + buffers


def test_roundtrip_nested_with_arrays_and_tensors():
    obj = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "t": torch.ones(2, 3, dtype=torch.float16),
           "b": torch.randn(4, dtype=torch.bfloat16), "s": "x", "n": [1, 2.5, None, b"raw"], "i": np.int64(7)}
    out = decode(encode(obj))
    assert np.array_equal(out["a"], obj["a"]) and out["a"].dtype == np.float32
    assert torch.equal(to_torch(out["t"]), obj["t"])
    assert torch.equal(to_torch(out["b"]), obj["b"]) and to_torch(out["b"]).dtype == torch.bfloat16
    assert out["s"] == "x" and out["n"] == [1, 2.5, None, b"raw"] and out["i"] == 7


def test_truncated_payload_is_a_clear_error():
    data = encode({"a": np.zeros((64, 64), np.float32)})
    with pytest.raises(CodecError, match="truncated"):
        decode(data[: len(data) // 2])


def test_oversized_payload_refused_before_decoding():
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode(b"\x00" * 100, max_bytes=10)


def test_shape_that_disagrees_with_bytes_is_refused():
    body = msgpack.packb(["float32", [1000000, 1000000], 0], use_bin_type=True)
    with pytest.raises(CodecError, match="needs"):
        decode(frame(msgpack.ExtType(1, body), b"\x00" * 8))
    body = msgpack.packb(["float32", [2], 0], use_bin_type=True)
    with pytest.raises(CodecError, match="trailing"):
        decode(frame(msgpack.ExtType(1, body), b"\x00" * 12))


def test_unknown_dtype_and_ext_refused():
    body = msgpack.packb(["object", [1], 0], use_bin_type=True)
    with pytest.raises(CodecError, match="not allowed"):
        decode(frame(msgpack.ExtType(1, body), b"\x00" * 8))
    with pytest.raises(CodecError, match="unknown extension"):
        decode(frame(msgpack.ExtType(9, b"zz")))
    with pytest.raises(CodecError, match="bad magic"):
        decode(b"\x80" * 32)


def test_type_confused_header_refused():
    with pytest.raises(CodecError):
        decode(frame(msgpack.ExtType(1, msgpack.packb({"dtype": "float32"}))))
    with pytest.raises(CodecError, match="payload must be bytes"):
        decode("a string")  # type: ignore[arg-type]


def test_objects_are_never_pickled():
    class Thing:
        pass
    with pytest.raises(CodecError, match="cannot encode"):
        encode({"x": Thing()})


def test_safetensors_state_roundtrip_and_garbage():
    st = {"w": torch.randn(3, 4), "b": torch.zeros(4, dtype=torch.bfloat16)}
    back = state_from_bytes(state_to_bytes(st))
    assert all(torch.equal(back[k], v) for k, v in st.items())
    with pytest.raises(CodecError, match="safetensors"):
        state_from_bytes(b"not weights at all")
