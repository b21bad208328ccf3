"""kvcodec: compress and decompress LLM KV caches (numpy arrays, torch tensors, DLPack).

Arrays and tensors are read and written in place through the buffer protocol or ``__dlpack__``
(host memory). Element types: float32, float16, bfloat16, float8_e4m3fn; numpy has no bfloat16
or float8, so uint16 / uint8 arrays holding their bits are accepted with ``dtype="bf16"`` /
``dtype="f8e4m3"``.

Layouts (``layout=``), for the KV cache of one context with L layers, T tokens, H kv heads of
dimension D:

* ``"contiguous"``  one array [L, 2, T, H, D] (kvcodec's own)
* ``"lmcache"``     one array [2, L, T, H*D] (LMCache's KV_2LTD; ``kv_heads=`` splits H*D)
* ``"hf"``          a sequence of (key, value) per layer, each [1, H, T, D] (transformers' legacy
                    cache; objects with ``to_legacy_cache()`` or ``key_cache`` / ``value_cache``
                    lists, like DynamicCache, are accepted too)
* ``"per_layer"``   a sequence of (key, value) per layer, each [T, H, D]
* ``"vllm"``        vLLM's paged cache: per layer (2, num_blocks, block_size, H, D), as a sequence
                    of per-layer tensors or one tensor [L, 2, num_blocks, block_size, H, D], with
                    ``block_table=`` (the context's blocks in order) and, encoding, ``tokens=``
* ``"vllm_hnd"``    the same with (2, num_blocks, H, block_size, D) per layer
* ``"flashinfer"``  FlashInfer's paged cache: per layer (num_blocks, 2, block_size, H, D)
                    (``"flashinfer_hnd"``: (num_blocks, 2, H, block_size, D))
* ``"paged_split"`` separate K and V pools (vLLM backends with two tensors, SGLang's token pools
                    with block_size 1): per layer a (k_pool, v_pool) pair, each
                    (num_blocks, block_size, H, D) (``"paged_split_hnd"``: (num_blocks, H, block_size, D))
* ``"mla"``         MLA latent cache (DeepSeek) [L, T, latent_dim]; ``"mla_paged"``: per layer
                    (num_blocks, block_size, latent_dim). A frame holds it as H = 1,
                    D = latent_dim / 2 (K = first half of each row, V = second half).

Every paged layout takes either ``block_table=`` (the context's blocks in order) or vLLM's
``slot_mapping=`` (int64, each token's slot = block * block_size + offset); ``tokens=`` (encoding)
defaults to all the table's blocks / the mapping's length.

Streaming (when built with the streaming library, ``kvcodec.HAS_STREAM``): :class:`Store` opens
``mem:``, ``file:DIR`` or ``redis://HOST:PORT[/DB]``; :func:`put` stores a context at several
levels, chunk by chunk, under an id; :func:`load` decodes one level from a store into a
destination; :class:`Server` serves a store over TCP (``kvcodec serve``) and :func:`fetch`
streams a context from it with the adaptive per-chunk controller (``kvcodec fetch``).

Every array must be C-contiguous (paged: each block pool). Every call releases the GIL while it
encodes or decodes. Failures raise a :class:`kvcodec.Error` subclass carrying the pinned status
code (``.code``, ``.code_name``) and a message naming what was expected.
"""

from collections import namedtuple

from . import _kvcodec as _k
from ._errors import (BufferTooSmall, ChecksumMismatch, CorruptData, Error, InternalError, InvalidArgument,
                      IoError, NotFound, OutOfRange, ResourceExhausted, Timeout, Unavailable,
                      UnsupportedVersion, error_class)

__version__ = _k.__version__
FORMAT_VERSION = _k.FORMAT_VERSION
MAX_LEVEL = _k.MAX_LEVEL
DEFAULT_LEVEL = _k.DEFAULT_LEVEL
LAYOUTS = ("contiguous", "lmcache", "hf", "per_layer", "mla", "vllm", "vllm_hnd", "flashinfer", "flashinfer_hnd",
           "paged_split", "paged_split_hnd", "mla_paged")

KVShape = namedtuple("KVShape", "layers tokens kv_heads head_dim")
KVShape.__doc__ = "The logical shape of one context's KV cache (layout-independent)."

HAS_STREAM = _k.HAS_STREAM

__all__ = ["Store", "Server", "put", "load", "manifest", "remove", "fetch", "HAS_STREAM", "encode", "encode_into",
           "decode", "decode_into", "max_encoded_size", "frame_info", "KVShape", "Profile",
           "Error", "InvalidArgument", "CorruptData", "UnsupportedVersion", "BufferTooSmall",
           "ChecksumMismatch", "OutOfRange", "Unavailable", "IoError", "NotFound", "Timeout",
           "ResourceExhausted", "InternalError", "error_class", "LAYOUTS"]


Profile = _k.Profile
Profile.__doc__ = """A transform-coding profile of a model (`kvcodec calibrate`; docs/format.md 8).

    Profile.load(path) / Profile.from_bytes(data); .digest (hex, what frames name), .size (bytes
    as a file), .layers, .kv_heads, .head_dim, .keys_before_rope, .to_bytes(). Pass it as
    profile= to encode / encode_into (levels 1..9: a format version 4 frame) and to decode /
    decode_into; decoding such a frame without it, or with another, raises InvalidArgument naming
    the digest it needs (frame_info(frame)["profile_digest"])."""


def encode(kv, *, level=DEFAULT_LEVEL, layout="contiguous", chunk_tokens=256, threads=0, dtype=None,
           kv_heads=None, block_table=None, tokens=None, group_tokens=1, table_groups=8, step_mode="layer",
           slot_mapping=None, profile=None, first_position=0):
    """Encodes one context's KV cache into a new frame (bytes).

    level: 0 lossless, 1..9 lossy (docs/format.md bounds the error); chunk_tokens: tokens per
    independently decodable chunk; threads: 0 = all cores (the bytes do not depend on it).
    dtype: what raw uint16 / uint8 arrays hold ("bf16", "f16", "f8e4m3"). Layout arguments: see
    the module docstring. profile: a Profile to transform-code with (levels 1..9);
    first_position: RoPE position of the first token (profiles with keys before RoPE).
    """
    return _k.encode(kv, level=level, layout=layout, chunk_tokens=chunk_tokens, threads=threads,
                     dtype=_dtype_name(dtype), kv_heads=kv_heads, block_table=block_table,
                     slot_mapping=slot_mapping, tokens=tokens, group_tokens=group_tokens, table_groups=table_groups,
                     step_mode=step_mode, profile=profile, first_position=first_position)


def encode_into(kv, out, *, level=DEFAULT_LEVEL, layout="contiguous", chunk_tokens=256, threads=0, dtype=None,
                kv_heads=None, block_table=None, tokens=None, group_tokens=1, table_groups=8, step_mode="layer",
                slot_mapping=None, profile=None, first_position=0):
    """Encodes into `out` (a writable contiguous byte buffer: bytearray, numpy/torch uint8) and
    returns the frame's size. BufferTooSmall when `out` is shorter than the frame
    (max_encoded_size always suffices)."""
    return _k.encode_into(kv, out, level=level, layout=layout, chunk_tokens=chunk_tokens, threads=threads,
                          dtype=_dtype_name(dtype), kv_heads=kv_heads, block_table=block_table,
                          slot_mapping=slot_mapping, tokens=tokens, group_tokens=group_tokens,
                          table_groups=table_groups, step_mode=step_mode, profile=profile,
                          first_position=first_position)


def decode_into(frame, dst, *, layout="contiguous", dtype=None, block_table=None, threads=0, verify=True,
                chunks=None, layers=None, slot_mapping=None, profile=None):
    """Decodes `frame` (bytes-like or uint8 array) into `dst`, in place.

    dst must hold exactly the frame's shape and dtype in `layout` (raw uint16 / uint8 arrays are
    taken as the frame's bf16 / f16 / f8 bits). chunks=(begin, end) and layers=(begin, end)
    decode only those chunks / layers and leave the rest of dst untouched. verify=False skips the
    chunk checksums (benchmarks only). profile: the Profile a format version 4 frame was encoded
    with (required for those; not used for others).
    """
    cb, ce = chunks if chunks is not None else (0, 0xFFFFFFFF)
    lb, le = layers if layers is not None else (0, 0xFFFFFFFF)
    _k.decode_into(frame, dst, layout=layout, dtype=_dtype_name(dtype), block_table=block_table,
                   slot_mapping=slot_mapping, threads=threads, verify=verify, chunk_begin=cb, chunk_end=ce,
                   layer_begin=lb, layer_end=le, profile=profile)


def decode(frame, *, backend="auto", threads=0, profile=None):
    """Decodes a whole frame into a new array [L, 2, T, H, D] of the frame's dtype.

    backend="numpy" returns a numpy array: float32 / float16, and for bf16 / f8e4m3 frames (numpy
    has neither) a uint16 / uint8 array of their bits. backend="torch" returns a torch tensor
    (float8 as torch.uint8 bits where torch lacks float8_e4m3fn). backend="auto" (default) returns
    numpy for f32 / f16 frames and torch for bf16 / f8e4m3 frames when torch is importable (else
    numpy bits). profile: as for decode_into.
    """
    if backend not in ("auto", "numpy", "torch"):
        raise InvalidArgument(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    info = _k.frame_info(frame, verify=False)
    shape = (info["layers"], 2, info["tokens"], info["kv_heads"], info["head_dim"])
    dt = info["dtype"]
    torch = None
    if backend == "torch" or (backend == "auto" and dt in ("bf16", "f8e4m3")):
        try:
            import torch
        except ImportError:
            if backend == "torch":
                raise Unavailable("backend='torch' but torch is not importable") from None
    if torch is not None:
        tdt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
               "f8e4m3": getattr(torch, "float8_e4m3fn", torch.uint8)}[dt]
        out = torch.empty(shape, dtype=tdt)
    else:
        import numpy as np
        out = np.empty(shape, dtype={"f32": np.float32, "f16": np.float16, "bf16": np.uint16,
                                     "f8e4m3": np.uint8}[dt])
    _k.decode_into(frame, out, threads=threads, profile=profile)
    return out


def max_encoded_size(shape, dtype, *, level=DEFAULT_LEVEL, layout="contiguous", chunk_tokens=256, kv_heads=None,
                     tokens=None, group_tokens=1, table_groups=8, step_mode="layer"):
    """Upper bound on the frame size of a cache of this shape and dtype (the buffer encode_into needs).

    shape: a KVShape, or the array shape in `layout`: contiguous (L, 2, T, H, D); lmcache
    (2, L, T, H*D) with kv_heads= (default 1); hf (L, 1, H, T, D) and per_layer (L, T, H, D)
    (layers, then one tensor's shape); mla (L, T, latent_dim); the paged layouts: layers, then one
    layer's pool shape (one pool for paged_split), with tokens=. dtype: a name ("bf16"), numpy or
    torch dtype.
    """
    s = _logical_shape(tuple(int(d) for d in shape) if not isinstance(shape, KVShape) else shape, layout,
                       kv_heads, tokens)
    return _k.max_encoded_size(s.layers, s.tokens, s.kv_heads, s.head_dim, _dtype_name(dtype), level=level,
                               chunk_tokens=chunk_tokens, group_tokens=group_tokens, table_groups=table_groups,
                               step_mode=step_mode)


def frame_info(frame, *, verify=True):
    """Describes a frame (or just its head) with the fields of `kvcodec inspect --json`.

    checksum_ok is None when `frame` holds only the head or verify=False.
    """
    return _k.frame_info(frame, verify=verify)


if HAS_STREAM:
    Store = _k.Store
    Server = _k.Server
    Store.__doc__ = """A key-value store of contexts: Store("mem:"), Store("file:DIR"), Store("redis://HOST:PORT[/DB]")
    (connect_timeout_ms=, command_timeout_ms=). put/get/exists/remove of raw keys; contexts go
    through kvcodec.put / load / manifest / remove."""
    Server.__doc__ = """Serves a Store's contexts over TCP in background threads (what `kvcodec serve` runs):
    Server(store, host="127.0.0.1", port=0, bandwidth_gbps=None, rtt_s=0.0) emulates a link when
    bandwidth_gbps is given. .port, .stats(), .stop(); also a context manager."""
    Server.__enter__ = lambda self: self
    Server.__exit__ = lambda self, *exc: self.stop()
else:
    class Store:
        def __init__(self, *args, **kwargs):
            raise Unavailable("this kvcodec build has no streaming library (KVCODEC_BUILD_STREAM=OFF)")

    Server = Store


def _stream():
    if not HAS_STREAM:
        raise Unavailable("this kvcodec build has no streaming library (KVCODEC_BUILD_STREAM=OFF)")
    return _k


def put(store, id, kv, *, levels=(0, 2, 4, 6, 8), chunk_tokens=256, text_tokens=(), threads=0, measure=True,
        layout="contiguous", dtype=None, kv_heads=None, block_table=None, tokens=None, slot_mapping=None,
        profile=None, first_position=0):
    """Stores context `id` at each level (head and chunk bodies apart, manifest last) and returns
    its manifest (dict). text_tokens: the context's token ids, for clients that recompute chunks.
    profile: transform-code the lossy levels with this Profile (load and fetch then need it)."""
    return _stream().put(store, id, kv, levels=list(levels), chunk_tokens=chunk_tokens,
                         text_tokens=[int(t) for t in text_tokens], threads=threads, measure=measure, layout=layout,
                         dtype=_dtype_name(dtype), kv_heads=kv_heads, block_table=block_table,
                         slot_mapping=slot_mapping, tokens=tokens, profile=profile, first_position=first_position)


def load(store, id, dst, *, level=None, layout="contiguous", dtype=None, block_table=None, threads=0,
         slot_mapping=None, profile=None):
    """Decodes context `id` from `store` into dst in place, at `level` (default: the lowest stored,
    the most faithful). Every head and chunk is verified against the manifest's checksums."""
    _stream().load(store, id, dst, level=level, layout=layout, dtype=_dtype_name(dtype), block_table=block_table,
                   slot_mapping=slot_mapping, threads=threads, profile=profile)


def manifest(store, id):
    """The manifest of context `id`: shape, dtype, chunks, and per level its sizes and error."""
    return _stream().manifest(store, id)


def remove(store, id):
    """Removes context `id` (manifest first, then its heads and chunks)."""
    _stream().remove(store, id)


def fetch(host, port, id, dst=None, *, layout="contiguous", dtype=None, block_table=None, slo_s=1.0,
          decode_threads=1, policy="adaptive", connect_timeout_ms=2000, io_timeout_ms=5000, slot_mapping=None,
          profile=None):
    """Streams context `id` from a kvcodec Server, the controller choosing each chunk's level
    within the TTFT objective slo_s. Returns (kv, report): kv is dst (written in place) or a new
    [L, 2, T, H, D] array (numpy; torch for bf16 when importable), report the fetch's account
    (`kvcodec fetch --json`). A failed fetch raises an Error whose .report says what happened.
    profile: the Profile the context was put with; levels that need another one (or one, when
    None) are not planned, and with none left InvalidArgument names the digest needed before
    anything is fetched."""
    kv, report = _stream().fetch(host, port, id, dst=dst, layout=layout, dtype=_dtype_name(dtype),
                                 block_table=block_table, slot_mapping=slot_mapping, slo_s=slo_s,
                                 decode_threads=decode_threads, policy=policy,
                                 connect_timeout_ms=connect_timeout_ms, io_timeout_ms=io_timeout_ms,
                                 profile=profile)
    if dst is None and kv.dtype.itemsize != 4 and kv.dtype.kind == "u":
        try:
            import numpy as np
            import torch
            bf16 = kv.dtype.itemsize == 2
            f8 = getattr(torch, "float8_e4m3fn", None)
            if bf16 or f8 is not None:
                kv = torch.from_numpy(kv.view(np.int16 if bf16 else np.uint8)).view(torch.bfloat16 if bf16 else f8)
        except ImportError:
            pass
    return kv, report


# Per paged layout: (dimensions of one layer's pool, index of H, index of D; H None for MLA).
_PAGED = {"vllm": (5, 3, 4), "vllm_hnd": (5, 2, 4), "flashinfer": (5, 3, 4), "flashinfer_hnd": (5, 2, 4),
          "paged_split": (4, 2, 3), "paged_split_hnd": (4, 1, 3), "mla_paged": (3, None, 2)}


def _logical_shape(shape, layout, kv_heads, tokens):
    if isinstance(shape, KVShape):
        return shape
    forms = {"contiguous": 5, "lmcache": 4, "hf": 5, "per_layer": 4, "mla": 3}
    forms.update({k: v[0] + 1 for k, v in _PAGED.items()})
    if layout not in forms:
        raise InvalidArgument(f"unknown layout {layout!r} ({', '.join(LAYOUTS)})")
    if len(shape) != forms[layout]:
        raise InvalidArgument(f"shape {shape}: layout {layout!r} expects {forms[layout]} dimensions")
    if layout == "contiguous":
        return KVShape(shape[0], shape[2], shape[3], shape[4])
    if layout == "lmcache":
        heads = kv_heads or 1
        if shape[3] % heads:
            raise InvalidArgument(f"kv_heads={heads} does not divide {shape[3]}")
        return KVShape(shape[1], shape[2], heads, shape[3] // heads)
    if layout == "hf":
        return KVShape(shape[0], shape[3], shape[2], shape[4])
    if layout == "per_layer":
        return KVShape(shape[0], shape[1], shape[2], shape[3])
    if layout == "mla":
        return KVShape(shape[0], shape[1], 1, shape[2] // 2)
    if tokens is None:
        raise InvalidArgument("the paged layouts need tokens= (a paged pool's shape does not say them)")
    _, h, d = _PAGED[layout]
    pool = shape[1:]
    if h is None:
        return KVShape(shape[0], int(tokens), 1, pool[d] // 2)
    return KVShape(shape[0], int(tokens), pool[h], pool[d])


def _dtype_name(dtype):
    if dtype is None or isinstance(dtype, str):
        return dtype
    name = str(dtype)
    if name.startswith("torch."):
        return name[len("torch."):]
    try:
        import numpy as np
        return np.dtype(dtype).name
    except (ImportError, TypeError):
        return name
