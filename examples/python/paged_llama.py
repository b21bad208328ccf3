"""A server's workflow end to end on a real model: prefill into a paged KV cache, compress the
cache straight out of its blocks, store it, fetch it into a fresh paged cache, go on generating.

    python3 examples/python/paged_llama.py [--model ../shared/data/models/kvc-bytes-a.bin]
        [--text ../shared/data/text/techdocs_valid.txt] [--context 512] [--generate 64] [--eval 256]
        [--store file:DIR | redis://HOST:PORT]

The model is a llama2.c checkpoint run by a small PyTorch forward (RMSNorm, RoPE, GQA, SwiGLU).
Its KV cache is vLLM-shaped: per layer a (2, num_blocks, 16, kv_heads, head_dim) fp16 pool, and
a block table listing the context's blocks in order (shuffled, as a long-running server's are).
kvcodec encodes the context from the pools (layout "vllm") and stores it with kvcodec.put in a
store (a temporary file: store, or --store redis://HOST:PORT); kvcodec.load decodes it into the
pools of a fresh cache whose table lists other blocks.

It prints, and returns: whether greedy generation from the restored cache repeats the
uncompressed run token for token at level 0 (it must: level 0 is lossless), and the perplexity
of the text that follows the context, teacher-forced, with the cache restored at the default
level against the uncompressed cache.
"""
import argparse
import math
import os
import pathlib
import struct
import tempfile

import torch

import kvcodec

BLOCK = 16
DATA = pathlib.Path(os.environ.get("KVCODEC_DATA_DIR", pathlib.Path(__file__).resolve().parents[2] / ".." / "shared"
                                   / "data"))


class Llama:
    """A llama2.c "v0" checkpoint (layout: ../shared/data/README.md) in float32."""

    def __init__(self, path):
        raw = pathlib.Path(path).read_bytes()
        dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
        self.dim, self.layers, self.heads, self.kv_heads = dim, layers, heads, kv_heads
        self.vocab, self.seq_len, self.head_dim = abs(vocab), seq_len, dim // heads
        data = torch.frombuffer(bytearray(raw[28:]), dtype=torch.float32)
        offset = 0

        def take(*shape):
            nonlocal offset
            n = math.prod(shape)
            t = data[offset:offset + n].view(*shape)
            offset += n
            return t

        hs, kvd = self.head_dim, kv_heads * self.head_dim
        self.embed = take(self.vocab, dim)
        self.rms_att, self.wq = take(layers, dim), take(layers, heads * hs, dim)
        self.wk, self.wv = take(layers, kvd, dim), take(layers, kvd, dim)
        self.wo, self.rms_ffn = take(layers, dim, heads * hs), take(layers, dim)
        self.w1, self.w2, self.w3 = take(layers, hidden, dim), take(layers, dim, hidden), take(layers, hidden, dim)
        self.rms_final = take(dim)
        take(seq_len * hs // 2)
        take(seq_len * hs // 2)  # RoPE tables, recomputed below
        self.wcls = take(self.vocab, dim) if vocab < 0 else self.embed
        self.inv_freq = 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)

    def rope(self, x, pos):
        """Rotates the interleaved pairs (2i, 2i+1) of x [n, heads, hs] at positions pos [n]."""
        angle = pos[:, None].float() * self.inv_freq[None, :]
        cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)

    def forward(self, tokens, start, cache):
        """Logits [n, vocab] of tokens at positions start.., writing their K/V into the paged cache."""
        n, hs = len(tokens), self.head_dim
        pos = torch.arange(start, start + n)
        x = self.embed[torch.tensor(tokens)]
        mask = torch.full((n, start + n), float("-inf")).triu(start + 1)
        for l in range(self.layers):
            h = rmsnorm(x, self.rms_att[l])
            q = self.rope((h @ self.wq[l].T).view(n, self.heads, hs), pos)
            k = self.rope((h @ self.wk[l].T).view(n, self.kv_heads, hs), pos)
            v = (h @ self.wv[l].T).view(n, self.kv_heads, hs)
            cache.write(l, pos, k, v)
            keys, values = cache.read(l, start + n)  # [T, kv_heads, hs] in float32
            group = self.heads // self.kv_heads
            keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
            att = torch.einsum("nhd,thd->hnt", q, keys) / math.sqrt(hs) + mask
            out = torch.einsum("hnt,thd->nhd", att.softmax(-1), values).reshape(n, -1)
            x = x + out @ self.wo[l].T
            h = rmsnorm(x, self.rms_ffn[l])
            x = x + (torch.nn.functional.silu(h @ self.w1[l].T) * (h @ self.w3[l].T)) @ self.w2[l].T
        return rmsnorm(x, self.rms_final) @ self.wcls.T


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


class PagedCache:
    """vLLM-style paged KV cache: per layer a (2, num_blocks, BLOCK, kv_heads, head_dim) pool and a
    block table of the one sequence it holds, allocated from a shuffled free list."""

    def __init__(self, model, num_blocks, dtype=torch.float16, seed=0):
        shape = (2, num_blocks, BLOCK, model.kv_heads, model.head_dim)
        self.pools = [torch.zeros(shape, dtype=dtype) for _ in range(model.layers)]
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
        self.table = []

    def reserve(self, tokens):
        while len(self.table) * BLOCK < tokens:
            self.table.append(self.free.pop())

    def block_table(self):
        return torch.tensor(self.table, dtype=torch.int32)

    def write(self, layer, pos, k, v):
        self.reserve(int(pos[-1]) + 1)
        blocks = torch.tensor(self.table)[pos // BLOCK]
        self.pools[layer][0, blocks, pos % BLOCK] = k.to(self.pools[layer].dtype)
        self.pools[layer][1, blocks, pos % BLOCK] = v.to(self.pools[layer].dtype)

    def read(self, layer, tokens):
        used = self.pools[layer][:, torch.tensor(self.table)]  # [2, blocks, BLOCK, H, D]
        kv = used.flatten(1, 2)[:, :tokens].float()
        return kv[0], kv[1]

    def clone(self):
        c = PagedCache.__new__(PagedCache)
        c.pools, c.free, c.table = [p.clone() for p in self.pools], list(self.free), list(self.table)
        return c


def greedy(model, cache, first, start, steps):
    """Greedy tokens after `first` at position `start`, extending the cache."""
    out, tok = [], first
    for i in range(steps):
        tok = int(model.forward([tok], start + i, cache)[-1].argmax())
        out.append(tok)
    return out


def perplexity(model, cache, tokens, start):
    """Teacher-forced perplexity of tokens[1:] given tokens[0] at `start` and the cached context."""
    logits = model.forward(tokens[:-1], start, cache)
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(tokens[1:]))
    return math.exp(float(nll))


def restore(model, store, key, level, num_blocks, context):
    """A fresh paged cache (other blocks) with the stored context decoded into its pools."""
    cache = PagedCache(model, num_blocks, seed=1)
    cache.reserve(context)
    if kvcodec.HAS_STREAM:  # a kvcodec store: head and chunks verified against the manifest
        kvcodec.load(store, key, cache.pools, level=level, layout="vllm", block_table=cache.block_table())
    else:  # a build without the streaming library: one frame per file
        frame = (pathlib.Path(store) / f"{key}-l{level}.kvc").read_bytes()
        kvcodec.decode_into(frame, cache.pools, layout="vllm", block_table=cache.block_table())
    return cache


def store_context(cache, store, key, levels, tokens):
    """Encodes the context straight out of the paged blocks at each level; returns bits/element."""
    args = dict(layout="vllm", block_table=cache.block_table(), tokens=len(tokens))
    if kvcodec.HAS_STREAM:
        m = kvcodec.put(store, key, cache.pools, levels=levels, text_tokens=tokens, measure=False, **args)
        return {lv["level"]: lv["bits_per_element"] for lv in m["levels"]}
    bits = {}
    for level in levels:
        frame = kvcodec.encode(cache.pools, level=level, **args)
        (pathlib.Path(store) / f"{key}-l{level}.kvc").write_bytes(frame)
        bits[level] = kvcodec.frame_info(frame)["bits_per_element"]
    return bits


def run(model_path, text_path, context=512, generate=64, evaluate=256, level=kvcodec.DEFAULT_LEVEL, store=None,
        verbose=True):
    model = Llama(model_path)
    tokens = list(pathlib.Path(text_path).read_bytes()[:context + evaluate])  # byte-level model: id = byte
    num_blocks = (model.seq_len + BLOCK - 1) // BLOCK + 8
    cache = PagedCache(model, num_blocks)
    model.forward(tokens[:context - 1], 0, cache)  # prefill: the context's K/V, all but the last token
    result = {"context": context, "level": level}
    with tempfile.TemporaryDirectory() as tmp:
        if store is None:
            store = f"file:{tmp}" if kvcodec.HAS_STREAM else tmp
        where = kvcodec.Store(store) if kvcodec.HAS_STREAM else store
        bits = store_context(cache, where, "paged-llama", sorted({0, level}), tokens[:context - 1])
        result["store"] = store
        for lvl in (0, level):
            result[f"bits_l{lvl}"] = bits[lvl]
            restored = restore(model, where, "paged-llama", lvl, num_blocks, context - 1)
            if lvl == 0:
                want = greedy(model, cache.clone(), tokens[context - 1], context - 1, generate)
                got = greedy(model, restored, tokens[context - 1], context - 1, generate)
                result["tokens_match"] = want == got
                result["generated"] = bytes(want).decode("utf-8", "replace")
            else:
                result["ppl_reference"] = perplexity(model, cache.clone(), tokens[context - 1:], context - 1)
                result["ppl_restored"] = perplexity(model, restored, tokens[context - 1:], context - 1)
        if kvcodec.HAS_STREAM:
            kvcodec.remove(where, "paged-llama")
    result["ppl_change_pct"] = 100 * (result["ppl_restored"] / result["ppl_reference"] - 1)
    if verbose:
        print(f"model {model_path}: {model.layers} layers, {model.kv_heads} kv heads x {model.head_dim}; "
              f"paged cache, blocks of {BLOCK}, context {context - 1} tokens, stored in {result['store']}")
        print(f"level 0: {result['bits_l0']:.3f} bits/element; greedy continuation of {generate} tokens from the "
              f"restored cache {'MATCHES' if result['tokens_match'] else 'DIFFERS FROM'} the uncompressed run")
        print(f"  generated: {result['generated']!r}")
        print(f"level {level}: {result[f'bits_l{level}']:.3f} bits/element; perplexity of the next {evaluate - 1} "
              f"tokens {result['ppl_reference']:.4f} -> {result['ppl_restored']:.4f} "
              f"({result['ppl_change_pct']:+.3f}%)")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DATA / "models" / "kvc-bytes-a.bin"), help="byte-level llama2.c model")
    p.add_argument("--text", default=str(DATA / "text" / "techdocs_valid.txt"))
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--generate", type=int, default=64)
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--level", type=int, default=kvcodec.DEFAULT_LEVEL)
    p.add_argument("--store", help="kvcodec store URI: file:DIR or redis://HOST:PORT "
                                   "(default: a temporary file: store)")
    a = p.parse_args()
    r = run(a.model, a.text, a.context, a.generate, a.eval, a.level, a.store)
    raise SystemExit(0 if r["tokens_match"] else 1)


if __name__ == "__main__":
    main()
