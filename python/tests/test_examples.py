"""The Python examples (examples/python/) run and show what they claim."""
import importlib.util
import pathlib

import numpy as np

from conftest import kv_values, need_data, need_torch

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_forward_reproduces_the_stories260k_reference():
    """The example's PyTorch forward and paged cache are right: greedy ids from BOS equal the
    reference ones (../shared/data/reference), with a float32 cache as the reference used."""
    torch = need_torch()
    ex = load("paged_llama")
    model = ex.Llama(need_data("models/stories260K.bin"))
    ref = need_data("reference/stories260K_greedy_ref.txt").read_text().splitlines()
    ids = [int(v) for v in ref[2].split()]
    cache = ex.PagedCache(model, 40, dtype=torch.float32)
    assert ex.greedy(model, cache, 1, 0, 48) == ids[:48]


def test_paged_workflow_level0_matches_and_default_level_keeps_perplexity():
    need_torch()
    ex = load("paged_llama")
    r = ex.run(need_data("models/kvc-bytes-a.bin"), need_data("text/techdocs_valid.txt"), context=200, generate=24,
               evaluate=120, verbose=False)
    assert r["tokens_match"]
    assert r["bits_l4"] < r["bits_l0"] / 2
    assert abs(r["ppl_change_pct"]) < 5.0


def test_lmcache_objects_measure():
    ex = load("lmcache_objects")
    kv = kv_values(layers=2, tokens=300, heads=2, dim=16).astype(np.float16)
    r = ex.measure(kv, 0, 256)  # asserts the lossless round trip of every object itself
    assert r["objects"] == 2 and r["object_bpe"] >= r["context_bpe"] * 0.99 and r["bound_over_raw"] >= 1
