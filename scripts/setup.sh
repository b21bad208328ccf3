#!/usr/bin/env bash
# Installs kvcodec's build dependencies (Debian packages, only the missing ones) and builds the
# project into build/ (Release, every target). Safe to run again: it then only rebuilds what
# changed.
#
# Environment: KVCODEC_JOBS (parallel build jobs, default: all cores),
#              KVCODEC_SKIP_APT=1 (never call apt-get; for non-Debian systems).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libgtest-dev libgmock-dev libbenchmark-dev
  libzstd-dev zstd libeigen3-dev libfmt-dev libhiredis-dev redis-server
  libzfp-dev libxxhash-dev nlohmann-json3-dev libcli11-dev clang
  python3-dev python3-pybind11 pybind11-dev python3-numpy python3-torch python3-pytest
  python3-pip python3-setuptools python3-wheel python3-venv
)

install_missing_packages() {
  if [[ "${KVCODEC_SKIP_APT:-0}" == 1 ]]; then
    return
  fi
  if ! command -v dpkg-query >/dev/null; then
    echo "setup: not a Debian system; install the equivalents of: ${PACKAGES[*]}" >&2
    return
  fi
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  if (( ${#missing[@]} == 0 )); then
    return
  fi

  local sudo=()
  if (( EUID != 0 )); then
    if ! command -v sudo >/dev/null; then
      echo "setup: error: missing packages (${missing[*]}) and neither root nor sudo" >&2
      exit 1
    fi
    sudo=(sudo)
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local apt=("${sudo[@]}" apt-get -y -q -o Dpkg::Use-Pty=0)
  # Refresh the package lists once: up front when there are none (fresh containers), otherwise
  # only if installing from the existing lists fails.
  if ! compgen -G "/var/lib/apt/lists/*Packages*" >/dev/null; then
    "${apt[@]}" update
    "${apt[@]}" install --no-install-recommends "${missing[@]}"
  elif ! "${apt[@]}" install --no-install-recommends "${missing[@]}"; then
    "${apt[@]}" update
    "${apt[@]}" install --no-install-recommends "${missing[@]}"
  fi
}

build() {
  local jobs="${KVCODEC_JOBS:-$(nproc)}"
  # Keep whatever generator an existing build/ was configured with.
  local generator=()
  if [[ ! -f build/CMakeCache.txt ]]; then
    generator=(-G Ninja)
  fi
  cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DKVCODEC_BUILD_PYTHON=ON
  cmake --build build -j "$jobs"
}

install_missing_packages
build
