"""kvcodec.lmcache: LMCache's serde contract on KV_2LTD objects, with and without LMCache."""
import sys
import types

import numpy as np
import pytest

import kvcodec
import kvcodec.lmcache as serde
from conftest import kv_values, need_torch
from test_codec import error_bound


class MemoryObj:
    """The part of LMCache's MemoryObj a serde uses."""

    def __init__(self, tensor):
        self.tensor = tensor


class MultiGroupObj:
    def __init__(self, tensors):
        self._t = tensors

    def get_shapes(self):
        return [t.shape for t in self._t]

    def get_tensor(self, i):
        return self._t[i]


class LayoutDesc:
    def __init__(self, shapes, dtypes):
        self.shapes, self.dtypes = shapes, dtypes


def kv_2ltd(torch, dtype, layers=3, tokens=256, heads=2, dim=16, seed=0):
    x = kv_values(layers, tokens, heads, dim, seed)  # [L, 2, T, H, D]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4).reshape(2, layers, tokens, -1))).to(dtype)


@pytest.mark.parametrize("level", [0, 4])
def test_serialize_deserialize_a_256_token_object(level):
    torch = need_torch()
    kv = kv_2ltd(torch, torch.bfloat16)
    ser, des = serde.KVCodecSerializer(level=level, kv_heads=2), serde.KVCodecDeserializer()
    bound = ser.estimate_serialized_size(LayoutDesc([kv.shape], [kv.dtype]))
    dst = MemoryObj(torch.full((bound + 100,), 0xEE, dtype=torch.uint8))
    n = ser.serialize(MemoryObj(kv), dst)
    assert 0 < n <= bound
    assert (dst.tensor[n:] == 0xEE).all()  # nothing written past the frame
    info = kvcodec.frame_info(dst.tensor[:n])
    assert (info["tokens"], info["layers"], info["kv_heads"], info["head_dim"], info["chunks"]) == (256, 3, 2, 16, 1)
    out = MemoryObj(torch.zeros_like(kv))
    des.deserialize(dst, out)
    if level == 0:
        assert torch.equal(out.tensor, kv)
    else:
        x = kv.float().numpy().reshape(2, 3, 256, 2, 16).transpose(1, 0, 2, 3, 4)
        y = out.tensor.float().numpy().reshape(2, 3, 256, 2, 16).transpose(1, 0, 2, 3, 4)
        # bf16 output: the ulp term of the bound is bf16's (8 bits of mantissa)
        ulp = np.abs(y) * 2.0 ** -7
        assert (np.abs(x - y) <= error_bound(x, x, level) + ulp / 2).all()


def test_fp8_objects_stored_as_uint8_and_several_groups():
    torch = need_torch()
    bits = torch.randint(0, 0x7E, (2, 2, 256, 64), dtype=torch.uint8)
    other = kv_2ltd(torch, torch.float16, layers=2, tokens=100)
    ser, des = serde.KVCodecSerializer(level=0), serde.KVCodecDeserializer()
    src = MultiGroupObj([bits, other])
    bound = ser.estimate_serialized_size(LayoutDesc([bits.shape, other.shape], [bits.dtype, other.dtype]))
    buf = MemoryObj(torch.zeros(bound, dtype=torch.uint8))
    n = ser.serialize(src, buf)
    assert n <= bound
    assert kvcodec.frame_info(buf.tensor[:n], verify=False)["dtype"] == "f8e4m3"
    dst = MultiGroupObj([torch.zeros_like(bits), torch.zeros_like(other)])
    des.deserialize(buf, dst)
    assert torch.equal(dst.get_tensor(0), bits) and torch.equal(dst.get_tensor(1), other)


def test_plain_arrays_and_a_short_buffer():
    x = kv_values(tokens=256)
    kv = np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4).reshape(2, 3, 256, 16))
    ser = serde.KVCodecSerializer(level=4)
    bound = ser.estimate_serialized_size(kv.shape, kv.dtype)
    buf = bytearray(bound)
    n = ser.serialize(kv, buf)
    out = np.zeros_like(kv)
    serde.KVCodecDeserializer().deserialize(buf, out)
    assert np.abs(out - kv).max() > 0 and n <= bound
    with pytest.raises(kvcodec.BufferTooSmall):
        ser.serialize(kv, bytearray(n // 2))
    with pytest.raises(kvcodec.InvalidArgument, match="does not match the frame's"):
        serde.KVCodecDeserializer().deserialize(buf, np.zeros((2, 3, 255, 16), np.float32))


def test_registers_with_lmcaches_serde_factory(monkeypatch):
    """With LMCache importable, register() puts a factory named 'kvcodec' in its registry whose
    processor wraps the serde (a stand-in package with LMCache's module paths and signatures)."""
    registry = {}

    class Serializer:
        pass

    class Deserializer:
        pass

    class AsyncSerdeProcessor:
        def __init__(self, serializer, deserializer, max_workers=1):
            self.serializer, self.deserializer, self.max_workers = serializer, deserializer, max_workers

    def register_serde_factory(name, factory):
        if name in registry:
            raise ValueError(name)
        registry[name] = factory

    mods = {"lmcache": {}, "lmcache.v1": {}, "lmcache.v1.distributed": {}, "lmcache.v1.distributed.serde": {},
            "lmcache.v1.distributed.serde.base": {"Serializer": Serializer, "Deserializer": Deserializer},
            "lmcache.v1.distributed.serde.async_processor": {"AsyncSerdeProcessor": AsyncSerdeProcessor},
            "lmcache.v1.distributed.serde.factory": {"register_serde_factory": register_serde_factory}}
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.setattr(serde, "_registered", False)
    assert serde.register()
    proc = registry["kvcodec"]({"level": 6, "kv_heads": 8, "max_workers": 3})
    assert isinstance(proc.serializer, Serializer) and isinstance(proc.serializer, serde.KVCodecSerializer)
    assert isinstance(proc.deserializer, Deserializer)
    assert proc.serializer.level == 6 and proc.serializer.kv_heads == 8 and proc.max_workers == 3


def test_importable_without_lmcache():
    try:
        import lmcache  # noqa: F401
        pytest.skip("LMCache is installed here")
    except ImportError:
        pass
    serde._registered = False
    assert serde.register() is False
