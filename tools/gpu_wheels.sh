#!/usr/bin/env bash
# Download, here, the wheels tools/bench_gpu.sh installs on a GPU machine that has no network.
# The lent H200 image (Python 3.12) has torch, timm, accelerate, einops, safetensors, pyyaml
# and tqdm, but not PyAV (the tests' synthetic videos) or decord. Wheels go to .whl/ (keep it
# out of git: echo /.whl/ >> .git/info/exclude), about 48 MB with decord.
#   tools/gpu_wheels.sh            # av and decord
#   tools/gpu_wheels.sh av         # only the named packages
set -euo pipefail
cd "$(dirname "$0")/.."
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(av decord)
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl "${packages[@]}"
ls -la .whl
