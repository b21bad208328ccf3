"""What LMCache's object granularity costs: bits per element when every 256-token object is its own
kvcodec frame (kvcodec.lmcache's serde) next to one frame for the whole context.

    kvcodec kv-dump --model M --tokenizer T --text FILE --dtype f16 -o kv.npy
    python3 examples/python/lmcache_objects.py kv.npy [--levels 0,4,8] [--object-tokens 256]

kv.npy holds [layers, 2, tokens, kv_heads, head_dim] (kv-dump's layout). Each object is cut to
LMCache's KV_2LTD [2, layers, object_tokens, kv_heads * head_dim], serialized through the serde
into a buffer of estimate_serialized_size bytes, deserialized and checked.
"""
import argparse

import numpy as np

import kvcodec
from kvcodec.lmcache import KVCodecDeserializer, KVCodecSerializer


def objects(kv, n):
    """KV_2LTD objects of n tokens (the last one may be shorter)."""
    L, _, T, H, D = kv.shape
    for t in range(0, T, n):
        part = kv[:, :, t:t + n]
        yield np.ascontiguousarray(part.transpose(1, 0, 2, 3, 4).reshape(2, L, part.shape[2], H * D))


def measure(kv, level, object_tokens):
    L, _, T, H, D = kv.shape
    whole = kvcodec.encode(kv, level=level, chunk_tokens=object_tokens)
    ser, des = KVCodecSerializer(level=level, kv_heads=H, chunk_tokens=object_tokens), KVCodecDeserializer()
    sizes, heads, bounds = [], [], []
    for obj in objects(kv, object_tokens):
        bound = ser.estimate_serialized_size(obj.shape, obj.dtype)
        buf = np.empty(bound, np.uint8)
        n = ser.serialize(obj, buf)
        out = np.empty_like(obj)
        des.deserialize(buf[:n], out)
        if level == 0:
            assert (out.view(np.uint8) == obj.view(np.uint8)).all()
        sizes.append(n)
        heads.append(kvcodec.frame_info(buf[:n], verify=False)["head_bytes"])
        bounds.append(bound / obj.nbytes)
    elements = kv.size
    return {"level": level, "context_bpe": 8 * len(whole) / elements, "object_bpe": 8 * sum(sizes) / elements,
            "objects": len(sizes), "head_share": sum(heads) / sum(sizes), "mean_head": sum(heads) / len(heads),
            "bound_over_raw": max(bounds)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kv", help=".npy cache [layers, 2, tokens, kv_heads, head_dim] (f16 or f32)")
    p.add_argument("--levels", default="0,4,8")
    p.add_argument("--object-tokens", type=int, default=256)
    a = p.parse_args()
    kv = np.load(a.kv)
    print(f"cache {a.kv}: {kv.dtype} {kv.shape}, objects of {a.object_tokens} tokens")
    print(f"{'level':>5} {'context b/elem':>15} {'per-object b/elem':>18} {'overhead':>9} {'objects':>8} "
          f"{'heads/object bytes':>19} {'head share':>10} {'estimate/raw':>13}")
    for level in (int(v) for v in a.levels.split(",")):
        r = measure(kv, level, a.object_tokens)
        print(f"{r['level']:>5} {r['context_bpe']:>15.4f} {r['object_bpe']:>18.4f} "
              f"{100 * (r['object_bpe'] / r['context_bpe'] - 1):>8.2f}% {r['objects']:>8} {r['mean_head']:>19.0f} "
              f"{100 * r['head_share']:>9.2f}% {r['bound_over_raw']:>13.3f}")


if __name__ == "__main__":
    main()
