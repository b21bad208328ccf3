#!/usr/bin/env bash
# Sets up and builds kvcodec (scripts/setup.sh), then runs `kvcodec demo` with this script's
# arguments (e.g. scripts/demo.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec build/tools/kvcodec/kvcodec demo "$@"
