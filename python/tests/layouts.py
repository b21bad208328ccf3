"""Converting a [L, 2, T, H, D] numpy cache into each layout kvcodec accepts, and back."""
import numpy as np

BLOCK = 4  # block size of the paged test pools


def block_table(tokens, seed=1):
    """A shuffled table of ceil(T / BLOCK) blocks out of a pool with 3 spare blocks."""
    used = -(-tokens // BLOCK)
    rng = np.random.default_rng(seed)
    return rng.permutation(used + 3)[:used].astype(np.int32), used + 3


def to_layout(x, layout):
    """(kv object, extra kwargs) holding x in `layout` (numpy arrays, copies)."""
    L, _, T, H, D = x.shape
    if layout == "contiguous":
        return x.copy(), {}
    if layout == "lmcache":
        return np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4).reshape(2, L, T, H * D)), {"kv_heads": H}
    if layout == "hf":
        return [(np.ascontiguousarray(x[l, 0].transpose(1, 0, 2)[None]),
                 np.ascontiguousarray(x[l, 1].transpose(1, 0, 2)[None])) for l in range(L)], {}
    if layout == "per_layer":
        return [(x[l, 0].copy(), x[l, 1].copy()) for l in range(L)], {}
    table, blocks = block_table(T)
    hnd = layout == "vllm_hnd"
    pool = np.zeros((L, 2, blocks, H, BLOCK, D) if hnd else (L, 2, blocks, BLOCK, H, D), x.dtype)
    for t in range(T):
        b, s = table[t // BLOCK], t % BLOCK
        if hnd:
            pool[:, :, b, :, s, :] = x[:, :, t]
        else:
            pool[:, :, b, s] = x[:, :, t]
    return [pool[l] for l in range(L)], {"block_table": table, "tokens": T}


def from_layout(kv, layout, shape, table=None):
    """The [L, 2, T, H, D] numpy cache held by kv (the inverse of to_layout)."""
    L, _, T, H, D = shape
    if layout == "contiguous":
        return np.asarray(kv)
    if layout == "lmcache":
        return np.asarray(kv).reshape(2, L, T, H, D).transpose(1, 0, 2, 3, 4)
    if layout == "hf":
        return np.stack([np.stack([np.asarray(k)[0].transpose(1, 0, 2), np.asarray(v)[0].transpose(1, 0, 2)])
                         for k, v in kv])
    if layout == "per_layer":
        return np.stack([np.stack([np.asarray(k), np.asarray(v)]) for k, v in kv])
    out = np.zeros(shape, np.asarray(kv[0]).dtype)
    for t in range(T):
        b, s = table[t // BLOCK], t % BLOCK
        for l in range(L):
            pool = np.asarray(kv[l])
            out[l, :, t] = pool[:, b, :, s, :] if layout == "vllm_hnd" else pool[:, b, s]
    return out


def empty_like_layout(kv, layout):
    """Zeroed destination of the same structure as kv."""
    if layout in ("contiguous", "lmcache"):
        return np.zeros_like(kv)
    if layout in ("hf", "per_layer"):
        return [(np.zeros_like(k), np.zeros_like(v)) for k, v in kv]
    return [np.zeros_like(p) for p in kv]
