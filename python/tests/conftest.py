"""Shared helpers of the kvcodec pytest suite (run by ctest's python_test, i.e. scripts/test.sh)."""
import os
import pathlib

import numpy as np
import pytest

try:
    import torch  # noqa: F811
except ImportError:  # the numpy tests still run
    torch = None

LEVEL_STEP = (0.0, 0.03, 0.06, 0.12, 0.20, 0.30, 0.45, 0.65, 0.90, 1.30)  # config.hpp kLevelStep
LAYER_FACTOR = (1.0, 1.25, 1.5)                                        # config.hpp kLayerFactor


def kv_values(layers=3, tokens=40, heads=2, dim=8, seed=0):
    """A float32 [L, 2, T, H, D] cache with per-channel offsets and scales, like real K/V."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((layers, 2, tokens, heads, dim)).astype(np.float32)
    x *= rng.uniform(0.2, 3.0, (layers, 2, 1, heads, dim)).astype(np.float32)
    x += rng.uniform(-2, 2, (layers, 2, 1, heads, dim)).astype(np.float32)
    return x


def data_dir():
    return pathlib.Path(os.environ.get("KVCODEC_DATA_DIR",
                                       pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))


def need_data(rel):
    """The shared data file `rel`: skips without it, fails under CI=true."""
    p = data_dir() / rel
    if not p.exists():
        msg = f"shared data file missing: {p}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (required under CI=true)")
        pytest.skip(msg)
    return p


def need_torch():
    if torch is None:
        if os.environ.get("CI") == "true":
            pytest.fail("torch is not importable (python3-torch is required under CI=true)")
        pytest.skip("torch is not importable")
    return torch
