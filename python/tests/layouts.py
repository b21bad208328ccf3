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
    if layout == "mla":
        assert H == 1
        return np.ascontiguousarray(np.concatenate([x[:, 0, :, 0], x[:, 1, :, 0]], axis=-1)), {}
    base, slots = layout.split("+")[0], layout.endswith("+slots")
    table, blocks = block_table(T)
    pools = [_new_pool(base, blocks, H, D, x.dtype) for _ in range(L)]
    for t in range(T):
        for l in range(L):
            for kv in range(2):
                _slot(pools[l], base, kv, table[t // BLOCK], t % BLOCK)[...] = x[l, kv, t].reshape(
                    _slot(pools[l], base, kv, 0, 0).shape)
    if slots:
        mapping = (table[np.arange(T) // BLOCK].astype(np.int64) * BLOCK + np.arange(T) % BLOCK)
        return pools, {"slot_mapping": mapping, "tokens": T}
    return pools, {"block_table": table, "tokens": T}


def _new_pool(layout, blocks, H, D, dtype):
    shapes = {"vllm": (2, blocks, BLOCK, H, D), "vllm_hnd": (2, blocks, H, BLOCK, D),
              "flashinfer": (blocks, 2, BLOCK, H, D), "flashinfer_hnd": (blocks, 2, H, BLOCK, D),
              "mla_paged": (blocks, BLOCK, 2 * D)}
    if layout.startswith("paged_split"):
        shape = (blocks, BLOCK, H, D) if layout == "paged_split" else (blocks, H, BLOCK, D)
        return (np.zeros(shape, dtype), np.zeros(shape, dtype))
    return np.zeros(shapes[layout], dtype)


def _slot(pool, layout, kv, b, s):
    """The view of one token's K or V ([H, D], or [D] for MLA) in one layer's pool."""
    if layout == "vllm":
        return pool[kv, b, s]
    if layout == "vllm_hnd":
        return pool[kv, b, :, s]
    if layout == "flashinfer":
        return pool[b, kv, s]
    if layout == "flashinfer_hnd":
        return pool[b, kv, :, s]
    if layout == "paged_split":
        return pool[kv][b, s]
    if layout == "paged_split_hnd":
        return pool[kv][b, :, s]
    D = pool.shape[-1] // 2  # mla_paged
    return pool[b, s, kv * D:(kv + 1) * D]


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
    if layout == "mla":
        D = shape[4]
        return np.stack([kv[:, :, :D], kv[:, :, D:]], axis=1)[:, :, :, None, :]
    base = layout.split("+")[0]
    first = kv[0][0] if base.startswith("paged_split") else kv[0]
    out = np.zeros(shape, first.dtype)
    for t in range(T):
        for l in range(L):
            for kv_ in range(2):
                out[l, kv_, t] = _slot(kv[l], base, kv_, table[t // BLOCK], t % BLOCK).reshape(H, D)
    return out


def empty_like_layout(kv, layout):
    """Zeroed destination of the same structure as kv."""
    if layout in ("contiguous", "lmcache", "mla"):
        return np.zeros_like(kv)
    if layout in ("hf", "per_layer") or layout.startswith("paged_split"):
        return [(np.zeros_like(k), np.zeros_like(v)) for k, v in kv]
    return [np.zeros_like(p) for p in kv]
