"""kvcodec's Python API: round trips in every layout and dtype, the error bound, in-place decode."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import kvcodec
from conftest import LAYER_FACTOR, LEVEL_STEP, kv_values, need_torch, torch
from layouts import empty_like_layout, from_layout, to_layout

sys.dont_write_bytecode = True
LAYOUTS = ["contiguous", "lmcache", "hf", "per_layer", "vllm", "vllm_hnd", "flashinfer", "flashinfer_hnd",
           "paged_split", "paged_split_hnd", "vllm+slots", "paged_split+slots"]
MLA_LAYOUTS = ["mla", "mla_paged", "mla_paged+slots"]


def as_bits(x, dtype):
    """The cache x (float32 numpy) in `dtype`, as numpy: float32/float16, or uint16/uint8 bits."""
    if dtype == "f32":
        return x.astype(np.float32)
    if dtype == "f16":
        return x.astype(np.float16)
    if dtype == "bf16":
        return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # truncation is a valid bf16
    # f8e4m3: arbitrary bytes except the NaN codes, so lossy levels get finite inputs
    bits = np.random.default_rng(3).integers(0, 256, x.shape, dtype=np.uint8)
    return np.where((bits & 0x7F) == 0x7F, 0x3C, bits).astype(np.uint8)


def addressing(extra):
    """The block table or slot mapping of a paged layout's extra arguments, for decode_into."""
    return {k: extra[k] for k in ("block_table", "slot_mapping") if k in extra}


@pytest.mark.parametrize("layout", LAYOUTS + MLA_LAYOUTS)
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "f8e4m3"])
def test_lossless_round_trip_every_layout_and_dtype(layout, dtype):
    heads = 1 if layout.startswith("mla") else 2
    x = as_bits(kv_values(heads=heads), dtype)
    kv, extra = to_layout(x, layout)
    hint = None if dtype in ("f32", "f16") else dtype
    base = layout.split("+")[0]
    frame = kvcodec.encode(kv, level=0, layout=base, dtype=hint, **extra)
    # The frame depends only on the logical values: every layout gives the same bytes.
    assert frame == kvcodec.encode(x, level=0, dtype=hint)
    dst = empty_like_layout(kv, base)
    kvcodec.decode_into(frame, dst, layout=base, **addressing(extra))
    table = extra.get("block_table")
    if table is None and "slot_mapping" in extra:
        table = extra["slot_mapping"][::4] // 4
    np.testing.assert_array_equal(from_layout(dst, layout, x.shape, table), x)
    info = kvcodec.frame_info(frame)
    assert (info["dtype"], info["layers"], info["tokens"], info["kv_heads"], info["head_dim"]) == \
        (dtype, 3, 40, heads, 8)


def test_decode_returns_numpy_for_f32_f16_and_bits_for_bf16_without_torch():
    x = kv_values()
    for dt in (np.float32, np.float16):
        y = kvcodec.decode(kvcodec.encode(x.astype(dt), level=0))
        assert isinstance(y, np.ndarray) and y.dtype == dt
        np.testing.assert_array_equal(y, x.astype(dt))
    bits = as_bits(x, "bf16")
    y = kvcodec.decode(kvcodec.encode(bits, level=0, dtype="bf16"), backend="numpy")
    assert y.dtype == np.uint16
    np.testing.assert_array_equal(y, bits)


def test_torch_tensors_bf16_and_f8_bits():
    t = need_torch()
    x = t.from_numpy(kv_values())
    for dt in (t.float32, t.float16, t.bfloat16):
        src = x.to(dt)
        frame = kvcodec.encode(src, level=0)
        y = kvcodec.decode(frame, backend="torch")
        assert y.dtype == dt and t.equal(y, src)
    assert kvcodec.decode(kvcodec.encode(x.bfloat16(), level=0)).dtype == t.bfloat16  # auto: torch for bf16
    bits = t.from_numpy(as_bits(kv_values(), "f8e4m3"))
    frame = kvcodec.encode(bits, level=0, dtype="f8e4m3")
    y = kvcodec.decode(frame)
    f8 = getattr(t, "float8_e4m3fn", None)
    assert y.dtype == (f8 or t.uint8)
    assert t.equal(y.view(t.uint8) if f8 else y, bits)
    if f8 is not None:  # a native float8 tensor needs no dtype=
        assert kvcodec.encode(bits.view(f8), level=0) == frame
    # requires_grad tensors are read without their graph
    g = x.clone().requires_grad_(True)
    assert kvcodec.encode(g, level=0) == kvcodec.encode(x, level=0)


def error_bound(x, y, level):
    """Per-element bound of docs/format.md section 7 (StepMode layer, the default)."""
    L = x.shape[0]
    x64 = x.astype(np.float64)
    bound = np.empty_like(x64)
    for l in range(L):
        for kv in range(2):
            t = x64[l, kv].reshape(x.shape[2], -1)
            scale = np.sqrt(np.mean((t - t.mean(axis=0)) ** 2))
            step = LEVEL_STEP[level] * LAYER_FACTOR[min(2, l * 3 // L)] * scale
            bound[l, kv] = step / 2
    ulp = np.spacing(np.abs(y).astype(y.dtype)).astype(np.float64)
    return bound * (1 + 1e-5) + ulp / 2 + 1e-30


@pytest.mark.parametrize("level", [1, 4, 9])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_lossy_levels_stay_within_the_documented_bound(level, dtype):
    x = kv_values(layers=4, tokens=64).astype(dtype)
    frame = kvcodec.encode(x, level=level)
    y = kvcodec.decode(frame)
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert (err <= error_bound(x, y, level)).all()
    assert err.max() > 0  # lossy levels do lose something
    assert len(frame) <= kvcodec.max_encoded_size(x.shape, x.dtype, level=level)


def test_decode_into_writes_the_callers_memory():
    x = kv_values()
    frame = kvcodec.encode(x, level=0)
    dst = np.zeros_like(x)
    alias = dst[1]  # a view sharing dst's memory, taken before the call
    ptr = dst.__array_interface__["data"][0]
    kvcodec.decode_into(frame, dst)
    assert dst.__array_interface__["data"][0] == ptr
    np.testing.assert_array_equal(alias, x[1])
    if torch is not None:
        td = torch.zeros(x.shape)
        before, view = td.data_ptr(), td[2, 1]
        kvcodec.decode_into(frame, td)
        assert td.data_ptr() == before
        assert torch.equal(view, torch.from_numpy(x[2, 1]))


def test_partial_decode_leaves_the_rest_untouched():
    x = kv_values(tokens=40)
    frame = kvcodec.encode(x, level=0, chunk_tokens=16)
    dst = np.full_like(x, 7.0)
    kvcodec.decode_into(frame, dst, chunks=(1, 2), layers=(1, 3))
    np.testing.assert_array_equal(dst[1:3, :, 16:32], x[1:3, :, 16:32])
    assert (dst[0] == 7).all() and (dst[:, :, :16] == 7).all() and (dst[:, :, 32:] == 7).all()


def test_encode_into_and_max_encoded_size():
    x = kv_values()
    frame = kvcodec.encode(x, level=4)
    bound = kvcodec.max_encoded_size(x.shape, "f32", level=4)
    assert len(frame) <= bound
    out = bytearray(bound)
    n = kvcodec.encode_into(x, out, level=4)
    assert bytes(out[:n]) == frame
    out_np = np.zeros(bound, np.uint8)
    assert kvcodec.encode_into(x, out_np, level=4) == n
    # the same bound from every layout's shape form
    L, _, T, H, D = x.shape
    forms = [((2, L, T, H * D), "lmcache", {"kv_heads": H}), ((L, 1, H, T, D), "hf", {}),
             ((L, T, H, D), "per_layer", {}), ((L, 2, 20, 4, H, D), "vllm", {"tokens": T}),
             (kvcodec.KVShape(L, T, H, D), "contiguous", {})]
    for shape, layout, kw in forms:
        assert kvcodec.max_encoded_size(shape, np.float32, level=4, layout=layout, **kw) == bound


def test_encode_into_never_writes_past_a_short_buffer():
    x = kv_values()
    n = len(kvcodec.encode(x, level=0))
    backing = bytearray(b"\xAB" * (n + 64))
    with pytest.raises(kvcodec.BufferTooSmall) as e:
        kvcodec.encode_into(x, memoryview(backing)[:n // 2], level=0)
    assert e.value.code == 4 and e.value.code_name == "buffer_too_small"
    assert backing[n // 2:] == b"\xAB" * (len(backing) - n // 2)


def test_frame_info_has_the_fields_of_inspect_json(tmp_path):
    x = kv_values()
    frame = kvcodec.encode(x, level=3, chunk_tokens=16)
    info = kvcodec.frame_info(frame)
    assert info["checksum_ok"] is True and info["chunks"] == 3 and len(info["chunk_list"]) == 3
    assert info["frame_bytes"] == len(frame) and info["level"] == 3
    head = frame[:info["head_bytes"]]
    assert kvcodec.frame_info(head)["checksum_ok"] is None
    cli = os.environ.get("KVCODEC_CLI")
    if not cli:
        pytest.skip("KVCODEC_CLI not set: not compared with `kvcodec inspect --json`")
    path = tmp_path / "f.kvc"
    path.write_bytes(frame)
    ref = json.loads(subprocess.run([cli, "inspect", str(path), "--json"], check=True, capture_output=True,
                                    text=True).stdout)
    assert set(ref) == set(info)
    for k, v in ref.items():
        assert info[k] == (pytest.approx(v) if isinstance(v, float) else v), k


@pytest.mark.parametrize("call", ["encode", "decode_into"])
def test_calls_release_the_gil(call):
    """Another Python thread runs while kvcodec works: with the GIL held it could not, since no
    thread switch is forced (huge switch interval) and the counter's loop only yields in sleep(0)."""
    import threading
    import time
    x = kv_values(layers=8, tokens=2048, heads=4, dim=32)  # 16 MB
    frame = kvcodec.encode(x, level=4, threads=1)
    dst = np.empty_like(x)
    state = {"count": 0, "stop": False}

    def spin():
        while not state["stop"]:
            state["count"] += 1
            time.sleep(0)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    worker = threading.Thread(target=spin)
    try:
        worker.start()
        before = state["count"]
        if call == "encode":
            kvcodec.encode(x, level=4, threads=1)
        else:
            kvcodec.decode_into(frame, dst, threads=1)
        during = state["count"] - before
    finally:
        state["stop"] = True
        sys.setswitchinterval(old)
        worker.join()
    assert during > 0


def test_hf_dynamic_cache_like_objects():
    x = kv_values()
    kv, _ = to_layout(x, "hf")

    class LegacyCache:  # what transformers' DynamicCache offers
        def to_legacy_cache(self):
            return tuple(kv)

    assert kvcodec.encode(LegacyCache(), layout="hf", level=0) == kvcodec.encode(x, level=0)

    class ListsCache:  # DynamicCache's key_cache / value_cache lists
        key_cache = [k for k, _ in kv]
        value_cache = [np.zeros_like(v) for _, v in kv]

    dst = ListsCache()
    kvcodec.decode_into(kvcodec.encode(x, level=0), dst, layout="hf")
    np.testing.assert_array_equal(from_layout(list(zip(dst.key_cache, dst.value_cache)), "hf", x.shape), x)


def test_paged_single_tensor_with_layer_dimension():
    x = kv_values()
    kv, extra = to_layout(x, "vllm")
    pool = np.stack(kv)  # [L, 2, blocks, block, H, D]
    frame = kvcodec.encode(pool, layout="vllm", level=0, **extra)
    assert frame == kvcodec.encode(x, level=0)
    dst = np.zeros_like(pool)
    kvcodec.decode_into(frame, dst, layout="vllm", block_table=list(extra["block_table"]))
    np.testing.assert_array_equal(from_layout(list(dst), "vllm", x.shape, extra["block_table"]), x)


@pytest.mark.parametrize("layout", ["contiguous", "lmcache", "hf", "per_layer", "vllm", "flashinfer_hnd",
                                    "paged_split"])
def test_torch_bf16_in_every_layout(layout):
    """The same cache as torch bfloat16 tensors (DLPack) and as numpy uint16 bits gives the same
    frame, and decodes into torch tensors of every layout."""
    t = need_torch()
    bits = as_bits(kv_values(), "bf16")
    kv, extra = to_layout(bits, layout)

    def to_torch(obj):
        if isinstance(obj, np.ndarray):
            return t.from_numpy(obj.view(np.int16)).view(t.bfloat16)
        return [to_torch(o) for o in obj] if isinstance(obj, list) else tuple(to_torch(o) for o in obj)

    tkv = to_torch(kv)
    extra_t = dict(extra)
    if "block_table" in extra:
        extra_t["block_table"] = t.from_numpy(extra["block_table"].astype(np.int64))
    frame = kvcodec.encode(tkv, level=0, layout=layout, **extra_t)
    assert frame == kvcodec.encode(bits, level=0, dtype="bf16")
    dst = to_torch(empty_like_layout(kv, layout))
    kvcodec.decode_into(frame, dst, layout=layout, block_table=extra_t.get("block_table"))

    def to_bits(obj):
        if isinstance(obj, (list, tuple)):
            return [to_bits(o) for o in obj]
        return obj.view(t.int16).numpy().view(np.uint16)

    got = to_bits(dst)
    got = got if layout not in ("hf", "per_layer") else [tuple(p) for p in got]
    np.testing.assert_array_equal(from_layout(got, layout, bits.shape, extra.get("block_table")), bits)
