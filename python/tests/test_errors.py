"""Bad input raises a kvcodec.Error subclass naming what was expected, and never writes outside
the destination."""
import numpy as np
import pytest

import kvcodec
from conftest import kv_values, need_torch
from layouts import to_layout


@pytest.fixture(scope="module")
def frame():
    return kvcodec.encode(kv_values(), level=0)


def raises(cls, *fragments):
    """pytest.raises for kvcodec error `cls` whose message contains every fragment."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(cls)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self.ctx.__exit__(*exc)
            e = self.info.value
            assert isinstance(e, kvcodec.Error) and e.code == cls.code
            for f in fragments:
                assert f in e.message, (f, e.message)
            return out
    return Check()


def test_error_classes_carry_pinned_codes():
    assert [kvcodec.error_class(c).__name__ for c in (1, 2, 4, 5, 7)] == \
        ["InvalidArgument", "CorruptData", "BufferTooSmall", "ChecksumMismatch", "Unavailable"]
    assert issubclass(kvcodec.InvalidArgument, ValueError)
    assert kvcodec.error_class(999) is kvcodec.Error


def test_wrong_dtype():
    with raises(kvcodec.InvalidArgument, "float64", "expected float32"):
        kvcodec.encode(kv_values().astype(np.float64))
    with raises(kvcodec.InvalidArgument, "raw bits", "dtype='bf16'"):
        kvcodec.encode(kv_values().view(np.uint16))
    with raises(kvcodec.InvalidArgument, "float32", "dtype='f16'"):
        kvcodec.encode(kv_values(), dtype="f16")
    with raises(kvcodec.InvalidArgument, "unknown dtype"):
        kvcodec.encode(kv_values().view(np.uint16), dtype="int4")


def test_wrong_shapes():
    with raises(kvcodec.InvalidArgument, "5-D", "[layers, 2, tokens, kv_heads, head_dim]"):
        kvcodec.encode(np.zeros((4, 5), np.float32))
    with raises(kvcodec.InvalidArgument, "dimension 1 must be 2"):
        kvcodec.encode(np.zeros((2, 3, 4, 2, 8), np.float32))
    with raises(kvcodec.InvalidArgument, "kv_heads=3 does not divide"):
        kvcodec.encode(np.zeros((2, 2, 4, 16), np.float32), layout="lmcache", kv_heads=3)
    with raises(kvcodec.InvalidArgument, "dimension 0 out of range"):
        kvcodec.encode(np.zeros((2, 2, 0, 2, 8), np.float32))
    with raises(kvcodec.InvalidArgument, "unknown layout"):
        kvcodec.encode(kv_values(), layout="nhwc")
    kv, _ = to_layout(kv_values(), "hf")
    kv[1] = (kv[1][0][:, :, :5], kv[1][1])
    with raises(kvcodec.InvalidArgument, "layer 1 key", "differs from layer 0"):
        kvcodec.encode(kv, layout="hf")


def test_non_contiguous_and_strided_inputs():
    x = kv_values()
    with raises(kvcodec.InvalidArgument, "C-contiguous"):
        kvcodec.encode(x[:, :, ::2])
    with raises(kvcodec.InvalidArgument, "C-contiguous"):
        kvcodec.encode(np.asfortranarray(x))
    t = need_torch()
    with raises(kvcodec.InvalidArgument, "C-contiguous"):
        kvcodec.encode(t.from_numpy(x).transpose(2, 3))


def test_read_only_destination_is_refused_and_left_alone(frame):
    dst = np.zeros(kv_values().shape, np.float32)
    dst.flags.writeable = False
    with raises(kvcodec.InvalidArgument, "read-only", "writable"):
        kvcodec.decode_into(frame, dst)
    assert not dst.any()
    with raises(kvcodec.InvalidArgument, "out", "read-only"):
        kvcodec.encode_into(kv_values(), b"\0" * 100000)


def test_destination_of_another_shape_or_dtype_is_untouched(frame):
    x = kv_values()
    for bad in (np.zeros((3, 2, 41, 2, 8), np.float32), np.zeros((3, 2, 40, 4, 4), np.float32)):
        with raises(kvcodec.InvalidArgument, "does not match the frame's", "(3, 2, 40, 2, 8)"):
            kvcodec.decode_into(frame, bad)
        assert not bad.any()
    with raises(kvcodec.InvalidArgument, "float16", "does not match the frame's f32"):
        kvcodec.decode_into(frame, np.zeros(x.shape, np.float16))
    with raises(kvcodec.InvalidArgument, "(2, 3, 40, 16)"):
        kvcodec.decode_into(frame, np.zeros((2, 3, 40, 15), np.float32), layout="lmcache")


def test_bad_block_tables(frame):
    x = kv_values()
    kv, extra = to_layout(x, "vllm")
    with raises(kvcodec.InvalidArgument, "block_table"):
        kvcodec.encode(kv, layout="vllm")
    with raises(kvcodec.InvalidArgument, "block table entry", "outside [0, 13)"):
        kvcodec.encode(kv, layout="vllm", block_table=[12] * 9 + [13], tokens=40)
    with raises(kvcodec.InvalidArgument, "block_table: 3 entries", "need 10"):
        kvcodec.decode_into(frame, [np.zeros_like(p) for p in kv], layout="vllm", block_table=[0, 1, 2])
    with raises(kvcodec.InvalidArgument, "int32 or int64"):
        kvcodec.encode(kv, layout="vllm", block_table=np.zeros(10, np.float32))
    pools = [np.zeros_like(p) for p in kv]
    with raises(kvcodec.InvalidArgument, "block table entry"):
        kvcodec.decode_into(frame, pools, layout="vllm", block_table=[-1] * 10)
    assert not any(p.any() for p in pools)


def test_corrupt_truncated_and_foreign_frames():
    x = kv_values()
    frame = bytearray(kvcodec.encode(x, level=4))
    dst = np.zeros_like(x)
    bad = bytearray(frame)
    bad[-10] ^= 0xFF
    with pytest.raises(kvcodec.ChecksumMismatch):
        kvcodec.decode_into(bytes(bad), dst)
    with pytest.raises((kvcodec.CorruptData, kvcodec.BufferTooSmall)):
        kvcodec.decode_into(bytes(frame[:len(frame) // 2]), dst)
    with pytest.raises(kvcodec.CorruptData):
        kvcodec.frame_info(b"not a frame at all, certainly not" * 4)
    with raises(kvcodec.InvalidArgument, "frame", "expected an array"):
        kvcodec.frame_info(12345)
    with raises(kvcodec.InvalidArgument, "1-byte"):
        kvcodec.frame_info(np.zeros(100, np.float32))


def test_bad_options():
    with raises(kvcodec.InvalidArgument, "level"):
        kvcodec.encode(kv_values(), level=10)
    with raises(kvcodec.InvalidArgument, "step_mode"):
        kvcodec.encode(kv_values(), step_mode="token")
    with raises(kvcodec.InvalidArgument, "backend"):
        kvcodec.decode(kvcodec.encode(kv_values()), backend="jax")
    with raises(kvcodec.InvalidArgument, "tokens="):
        kvcodec.max_encoded_size((3, 2, 10, 4, 2, 8), "f32", layout="vllm")
    with pytest.raises(kvcodec.Error):
        kvcodec.max_encoded_size((3, 2, 10, 2, 8), "f32", chunk_tokens=0)


def test_nan_is_kept_or_refused():
    x = kv_values()
    x[0, 0, 3, 1, 2] = np.nan
    for level in (0, 4):  # rejected (codec.hpp) or escaped exactly (docs/format.md), never garbage
        try:
            y = kvcodec.decode(kvcodec.encode(x, level=level))
        except kvcodec.InvalidArgument:
            assert level > 0
            continue
        assert np.isnan(y[0, 0, 3, 1, 2])


def test_bad_slot_mappings_and_mla_shapes(frame):
    x = kv_values()
    kv, extra = to_layout(x, "vllm+slots")
    with raises(kvcodec.InvalidArgument, "exactly one of block_table= (the context's blocks, in order) and"):
        kvcodec.encode(kv, layout="vllm", slot_mapping=extra["slot_mapping"], block_table=[0])
    with raises(kvcodec.InvalidArgument, "slot_mapping: 39 entries for 40 tokens"):
        kvcodec.decode_into(frame, [np.zeros_like(p) for p in kv], layout="vllm",
                            slot_mapping=extra["slot_mapping"][:39])
    pools = [np.zeros_like(p) for p in kv]
    with raises(kvcodec.InvalidArgument, "slot"):
        kvcodec.decode_into(frame, pools, layout="vllm", slot_mapping=np.full(40, 13 * 4, np.int64))
    assert not any(p.any() for p in pools)
    with raises(kvcodec.InvalidArgument, "(k_pool, v_pool) pair"):
        kvcodec.encode([np.zeros((4, 4, 2, 8), np.float32)], layout="paged_split", block_table=[0])
    with raises(kvcodec.InvalidArgument, "dimension 1 must be 2"):
        kvcodec.encode([np.zeros((4, 3, 4, 2, 8), np.float32)], layout="flashinfer", block_table=[0])
    with raises(kvcodec.InvalidArgument, "latent"):
        kvcodec.encode(np.zeros((2, 10, 575), np.float32), layout="mla")
    mla = np.zeros((3, 40, 16), np.float32)
    with raises(kvcodec.InvalidArgument, "not an MLA cache: kv_heads 2"):
        kvcodec.decode_into(frame, mla, layout="mla")
    assert not mla.any()
