#!/usr/bin/env bash
# Installs the Python package from this checkout with pip, offline, into a fresh venv that sees
# the system's numpy and torch, then imports it from elsewhere and round-trips a cache.
#   scripts/pip-check.sh [BUILD_DIR]
# With BUILD_DIR (a CMake tree configured with -DKVCODEC_BUILD_PYTHON=ON, e.g. build/) pip's build
# reuses its compiled module instead of configuring a tree of its own (setup.py,
# KVCODEC_PYTHON_BUILD_DIR). PYTHON (default /usr/bin/python3) creates the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-/usr/bin/python3}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv --system-site-packages "$venv"
if [[ -n "${1:-}" ]]; then
  export KVCODEC_PYTHON_BUILD_DIR="$(cd "$1" && pwd)"
fi
"$venv/bin/python" -m pip install -q --no-build-isolation --no-index --no-deps --disable-pip-version-check .
cd "$venv"
"$venv/bin/python" - <<'PY'
import numpy as np
import kvcodec
assert "/site-packages/kvcodec/" in kvcodec.__file__, kvcodec.__file__
x = np.random.default_rng(0).standard_normal((2, 2, 64, 2, 16)).astype(np.float16)
y = kvcodec.decode(kvcodec.encode(x, level=0))
assert (y == x).all()
print(f"pip-check: kvcodec {kvcodec.__version__} installed from {kvcodec.__file__}: round trip ok")
PY
