"""kvcodec as an LMCache serde: the multiprocess-mode Serializer / Deserializer contract.

LMCache hands a serde one KV object at a time (a "MemoryObj" whose ``.tensor`` is KV_2LTD,
[2, layers, tokens, kv_heads * head_dim], bf16 / fp16 / fp8 stored as uint8, usually 256 tokens)
and a caller-allocated byte buffer. The contract is three calls:

* ``estimate_serialized_size(layout_desc)``: an upper bound on the bytes serialize writes
  (kvcodec's max_encoded_size, so LMCache needs no extra margin);
* ``serialize(src, dst) -> int``: one kvcodec frame written into dst's buffer, its size returned;
* ``deserialize(src, dst)``: the frame decoded into dst's KV tensor, in place.

Frames are self-describing (shape, dtype, level, checksums). A MemoryObj of several groups
(``get_shapes()`` / ``get_tensor(i)``) gets one frame per group, back to back.

This module imports without LMCache. When LMCache is importable, ``register()`` (called at
import) adds the serde type ``"kvcodec"`` to LMCache's serde factory; an L2 adapter then uses it
with ``"serde": {"type": "kvcodec", "level": 4}``. Factory keyword arguments: level (default 4),
kv_heads (the model's kv heads: recorded in frames; default 1), chunk_tokens (default 256),
threads (per call, default 1), max_workers (LMCache's serde thread pool, default 2), fp8 (what
uint8 tensors hold, default "f8e4m3").
"""
import kvcodec

SERDE_TYPE = "kvcodec"


def _tensor(obj, index=0):
    """Group `index` of a MemoryObj (its .tensor when it has one group), or obj itself when it
    already is a tensor / array."""
    if _groups(obj) > 1:
        return obj.get_tensor(index)
    t = getattr(obj, "tensor", obj)
    if t is None and hasattr(obj, "get_tensor"):
        t = obj.get_tensor(index)
    if t is None:
        raise kvcodec.InvalidArgument("the memory object has no tensor")
    return t


def _groups(obj):
    shapes = obj.get_shapes() if hasattr(obj, "get_shapes") else None
    return len(shapes) if shapes else 1


def _byte_view(t):
    """A flat uint8 view of a buffer (torch tensor of any dtype, numpy array, bytearray...)."""
    if hasattr(t, "data_ptr") and hasattr(t, "view"):  # torch
        import torch
        flat = t.reshape(-1)
        return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)
    try:
        import numpy as np
        a = np.asarray(t)
        return a.reshape(-1).view(np.uint8)
    except (ImportError, ValueError, TypeError):
        return t


class KVCodecSerializer:
    """LMCache Serializer contract on KV_2LTD objects (one kvcodec frame per object and group)."""

    def __init__(self, level=kvcodec.DEFAULT_LEVEL, kv_heads=None, chunk_tokens=256, threads=1, fp8="f8e4m3",
                 **_ignored):
        self.level = int(level)
        self.kv_heads = int(kv_heads) if kv_heads else None
        self.chunk_tokens = int(chunk_tokens)
        self.threads = int(threads)
        self.fp8 = fp8

    def _raw_dtype(self, dtype):
        name = kvcodec._dtype_name(dtype)
        return self.fp8 if name in ("uint8", "int8") else None

    def estimate_serialized_size(self, layout_desc, dtype=None):
        """Upper bound for a layout: an object with .shapes / .dtypes (LMCache's MemoryLayoutDesc),
        or a [2, L, T, H*D] shape with its dtype."""
        if hasattr(layout_desc, "shapes"):
            pairs = zip(layout_desc.shapes, layout_desc.dtypes)
        else:
            pairs = [(layout_desc, dtype)]
        total = 0
        for shape, dt in pairs:
            dt = self._raw_dtype(dt) or dt
            total += kvcodec.max_encoded_size(tuple(int(d) for d in shape), dt, level=self.level, layout="lmcache",
                                              chunk_tokens=self.chunk_tokens, kv_heads=self.kv_heads)
        return total

    def serialize(self, src, dst, key=None):
        """Encodes src's KV tensor(s) into dst's buffer; returns the bytes written."""
        out = _byte_view(_tensor(dst))
        written = 0
        for g in range(_groups(src)):
            kv = _tensor(src, g)
            written += kvcodec.encode_into(kv, out[written:], level=self.level, layout="lmcache",
                                           chunk_tokens=self.chunk_tokens, threads=self.threads,
                                           kv_heads=self.kv_heads, dtype=self._raw_dtype(kv.dtype))
        return written


class KVCodecDeserializer:
    """LMCache Deserializer contract: decodes the frame(s) in src's buffer into dst's KV tensor(s)."""

    def __init__(self, threads=1, **_ignored):
        self.threads = int(threads)

    def deserialize(self, src, dst, key=None):
        data = _byte_view(_tensor(src))
        offset = 0
        for g in range(_groups(dst)):
            info = kvcodec.frame_info(data[offset:], verify=False)
            end = offset + info["frame_bytes"]
            kvcodec.decode_into(data[offset:end], _tensor(dst, g), layout="lmcache", threads=self.threads)
            offset = end


_registered = False


def register(name=SERDE_TYPE):
    """Registers the serde with LMCache's serde factory. False when LMCache is not importable."""
    global _registered
    if _registered:
        return True
    try:
        from lmcache.v1.distributed.serde.async_processor import AsyncSerdeProcessor
        from lmcache.v1.distributed.serde.base import Deserializer, Serializer
        from lmcache.v1.distributed.serde.factory import register_serde_factory
    except ImportError:
        return False
    ser_cls = type("KVCodecLMCacheSerializer", (KVCodecSerializer, Serializer), {})
    des_cls = type("KVCodecLMCacheDeserializer", (KVCodecDeserializer, Deserializer), {})

    def factory(kwargs):
        kwargs = dict(kwargs or {})
        workers = int(kwargs.pop("max_workers", 2))
        return AsyncSerdeProcessor(ser_cls(**kwargs), des_cls(**kwargs), max_workers=workers)

    try:
        register_serde_factory(name, factory)
    except ValueError:  # already registered (e.g. by another import path)
        pass
    _registered = True
    return True


register()
