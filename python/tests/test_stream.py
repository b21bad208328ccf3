"""Streaming from Python: stores (mem:, file:, redis://), put / load / manifest / remove, and the
server with the controller-driven fetch."""
import os

import numpy as np
import pytest

import kvcodec
from conftest import kv_values, need_torch
from layouts import empty_like_layout, from_layout, to_layout

pytestmark = pytest.mark.skipif(not kvcodec.HAS_STREAM, reason="built without the streaming library")


def test_put_load_manifest_remove(tmp_path):
    x = kv_values(tokens=300).astype(np.float16)
    store = kvcodec.Store(f"file:{tmp_path}")
    m = kvcodec.put(store, "doc-1", x, levels=[0, 4], chunk_tokens=128, text_tokens=range(300))
    assert [lv["level"] for lv in m["levels"]] == [0, 4] and m["chunks"] == 3 and m["has_text"]
    assert kvcodec.manifest(store, "doc-1") == m
    dst = np.zeros_like(x)
    kvcodec.load(store, "doc-1", dst)  # default: the lowest level, lossless here
    np.testing.assert_array_equal(dst, x)
    lossy = np.zeros_like(x)
    kvcodec.load(store, "doc-1", lossy, level=4)
    assert 0 < np.abs(lossy.astype(np.float32) - x).max() < 1.0
    with pytest.raises(kvcodec.NotFound, match="no level 6"):
        kvcodec.load(store, "doc-1", dst, level=6)
    kvcodec.remove(store, "doc-1")
    with pytest.raises(kvcodec.NotFound):
        kvcodec.manifest(store, "doc-1")


def test_load_into_a_paged_cache_and_detect_a_corrupt_chunk(tmp_path):
    x = kv_values()
    kv, extra = to_layout(x, "vllm")
    store = kvcodec.Store(f"file:{tmp_path}")
    kvcodec.put(store, "paged", kv, levels=[0], chunk_tokens=16, layout="vllm", **extra)
    dst = empty_like_layout(kv, "vllm")
    kvcodec.load(store, "paged", dst, layout="vllm", block_table=extra["block_table"])
    np.testing.assert_array_equal(from_layout(dst, "vllm", x.shape, extra["block_table"]), x)
    key = "kvc:{paged}:L0:C1"
    body = bytearray(store.get(key))
    body[5] ^= 0x40
    store.put(key, bytes(body))
    with pytest.raises(kvcodec.ChecksumMismatch):
        kvcodec.load(store, "paged", np.zeros_like(x))


def test_raw_store_calls_and_bad_uris():
    store = kvcodec.Store("mem:")
    assert store.uri == "mem:"
    store.put("k", b"value")
    assert store.get("k") == b"value" and store.exists("k")
    store.remove("k")
    assert not store.exists("k")
    with pytest.raises(kvcodec.NotFound):
        store.get("k")
    with pytest.raises(kvcodec.InvalidArgument):
        kvcodec.Store("s3://bucket")
    with pytest.raises(kvcodec.InvalidArgument, match="context id"):
        kvcodec.put(store, "bad id!", kv_values())


def test_fetch_from_a_server_into_numpy_and_torch():
    x = kv_values(tokens=200)
    store = kvcodec.Store("mem:")
    kvcodec.put(store, "f32", x, levels=[0, 4], chunk_tokens=64)
    with kvcodec.Server(store) as server:
        dst = np.zeros_like(x)
        kv, report = kvcodec.fetch("127.0.0.1", server.port, "f32", dst, slo_s=10.0)
        assert kv is dst and report["complete"] and len(report["chunks"]) == 4
        np.testing.assert_array_equal(dst, x)  # an ample SLO on loopback: every chunk lossless
        fresh, _ = kvcodec.fetch("127.0.0.1", server.port, "f32", slo_s=10.0)
        np.testing.assert_array_equal(fresh, x)
        with pytest.raises(kvcodec.NotFound) as e:
            kvcodec.fetch("127.0.0.1", server.port, "missing")
        assert e.value.report["complete"] is False
        assert server.stats()["requests"] >= 8
    torch = need_torch()
    t = torch.from_numpy(x).bfloat16()
    kvcodec.put(store, "bf16", t, levels=[0])
    with kvcodec.Server(store) as server:
        kv, report = kvcodec.fetch("127.0.0.1", server.port, "bf16")
        assert kv.dtype == torch.bfloat16 and torch.equal(kv, t)


def test_redis_store():
    url = os.environ.get("KVCODEC_REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("KVCODEC_REDIS_URL not set under CI=true (scripts/test.sh starts a redis-server)")
        pytest.skip("KVCODEC_REDIS_URL not set (scripts/test.sh starts a redis-server)")
    x = kv_values()
    store = kvcodec.Store(url)
    kvcodec.put(store, "pytest-redis", x, levels=[0])
    dst = np.zeros_like(x)
    kvcodec.load(store, "pytest-redis", dst)
    kvcodec.remove(store, "pytest-redis")
    np.testing.assert_array_equal(dst, x)
