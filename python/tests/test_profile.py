"""Transform-coding profiles from Python: Profile.load / from_bytes, encode(..., profile=) and
decode(..., profile=) on torch tensors, equal to the C++ golden frame's decode; missing, wrong or
corrupt profiles raise."""
import pathlib

import pytest

import kvcodec

from conftest import kv_values

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "tests" / "golden" / "v4"
torch = pytest.importorskip("torch")


def golden_profile():
    return kvcodec.Profile.load(str(GOLDEN / "f16_level4_rope.kvprofile"))


def test_load_and_from_bytes_agree():
    p = golden_profile()
    data = (GOLDEN / "f16_level4_rope.kvprofile").read_bytes()
    q = kvcodec.Profile.from_bytes(data)
    assert p.digest == q.digest and len(p.digest) == 16
    assert p.size == len(data) and q.to_bytes() == data
    frame = (GOLDEN / "f16_level4_rope.kvc").read_bytes()
    info = kvcodec.frame_info(frame)
    assert info["format_version"] == 4 and info["profile_digest"] == p.digest
    assert (p.layers, p.kv_heads, p.head_dim) == (info["layers"], info["kv_heads"], info["head_dim"])


def test_golden_frame_decodes_with_the_profile_only():
    p = golden_profile()
    frame = (GOLDEN / "f16_level4_rope.kvc").read_bytes()
    out = kvcodec.decode(frame, backend="torch", profile=p)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    with pytest.raises(kvcodec.InvalidArgument, match=p.digest):
        kvcodec.decode(frame, backend="torch")
    # Chunk by chunk into the same tensor equals the whole decode.
    part = torch.zeros_like(out)
    for c in range(kvcodec.frame_info(frame)["chunks"]):
        kvcodec.decode_into(frame, part, chunks=(c, c + 1), profile=p)
    assert torch.equal(part, out)


def test_torch_round_trip_with_the_profile():
    p = golden_profile()
    frame = (GOLDEN / "f16_level4_rope.kvc").read_bytes()
    kv = kvcodec.decode(frame, backend="torch", profile=p)  # a cache of the profile's shape
    enc = kvcodec.encode(kv, level=2, chunk_tokens=16, profile=p, first_position=3)
    info = kvcodec.frame_info(enc)
    assert info["format_version"] == 4 and info["profile_digest"] == p.digest
    back = kvcodec.decode(enc, backend="torch", profile=p)
    err = (back.float() - kv.float()).norm() / kv.float().norm()
    assert 0 < err < 0.05
    buf = bytearray(kvcodec.max_encoded_size(tuple(kv.shape), "f16", level=2, chunk_tokens=16) + 64)
    n = kvcodec.encode_into(kv, buf, level=2, chunk_tokens=16, profile=p, first_position=3)
    assert bytes(buf[:n]) == enc
    with pytest.raises(kvcodec.InvalidArgument):
        kvcodec.encode(kv, level=0, profile=p)  # lossless has no transform
    # A frame coded without a profile decodes with one as without.
    plain = kvcodec.encode(kv, level=2)
    assert torch.equal(kvcodec.decode(plain, backend="torch", profile=p), kvcodec.decode(plain, backend="torch"))


def test_missing_or_corrupt_profile_raises():
    p = golden_profile()
    kv = torch.from_numpy(kv_values(layers=p.layers, tokens=20, heads=p.kv_heads, dim=p.head_dim))
    frame = kvcodec.encode(kv, level=4, profile=p)
    with pytest.raises(kvcodec.InvalidArgument, match=p.digest):
        kvcodec.decode(frame)
    assert "profile_digest" not in kvcodec.frame_info(kvcodec.encode(kv, level=4))
    data = bytearray((GOLDEN / "f16_level4_rope.kvprofile").read_bytes())
    data[len(data) // 2] ^= 1
    with pytest.raises(kvcodec.CorruptData):
        kvcodec.Profile.from_bytes(bytes(data))
    with pytest.raises(kvcodec.NotFound):
        kvcodec.Profile.load("/nonexistent/x.kvprofile")
    mismatched = kv_values(layers=p.layers + 1, tokens=8, heads=p.kv_heads, dim=p.head_dim)
    with pytest.raises(kvcodec.InvalidArgument):
        kvcodec.encode(mismatched, level=4, profile=p)


def test_put_load_fetch_with_the_profile():
    if not kvcodec.HAS_STREAM:
        pytest.skip("no streaming library")
    p = golden_profile()
    kv = torch.from_numpy(kv_values(layers=p.layers, tokens=48, heads=p.kv_heads, dim=p.head_dim)).half()
    store = kvcodec.Store("mem:")
    kvcodec.put(store, "c", kv, levels=[4], chunk_tokens=16, profile=p, first_position=7)
    loaded = torch.zeros_like(kv)
    kvcodec.load(store, "c", loaded, profile=p)
    err = (loaded.float() - kv.float()).norm() / kv.float().norm()
    assert 0 < err < 0.2
    with pytest.raises(kvcodec.InvalidArgument, match=p.digest):
        kvcodec.load(store, "c", torch.zeros_like(kv))
    with kvcodec.Server(store) as server:
        fetched, report = kvcodec.fetch("127.0.0.1", server.port, "c", torch.zeros_like(kv), slo_s=10.0, profile=p)
        assert report["complete"] and torch.equal(fetched, loaded)
        with pytest.raises(kvcodec.InvalidArgument, match=p.digest) as e:
            kvcodec.fetch("127.0.0.1", server.port, "c", slo_s=10.0)
        # Up front, from the manifest's profile digest: no chunk was requested.
        assert e.value.report["chunks"] == [] and e.value.report["failures"][-1]["chunk"] == -1
        assert kvcodec.manifest(store, "c")["levels"][0]["profile_digest"] == p.digest
