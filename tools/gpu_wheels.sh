#!/usr/bin/env bash
# Download, here, the wheels tools/bench_gpu.sh installs on a GPU machine that has no network.
# The lent H200 image (Python 3.12) has torch, timm, accelerate, einops, safetensors, pyyaml
# and tqdm, but not PyAV (the tests' synthetic videos, and the FFmpeg torchcodec borrows from
# it: tools/ffmpeg_from_pyav.py), torchcodec (GPU decoding) or decord. Wheels go to .whl/
# (keep it out of git: echo /.whl/ >> .git/info/exclude), about 45 MB for the default three;
# the device tool carries at most 64 MiB with the working tree, so decord is left out.
# torchcodec comes twice: 0.17.0 (no NVIDIA NPP needed) and 0.11.1 (built for torch 2.11, the
# image's torch, but linked to NPP); the GPU script's decode stage uses the first that imports.
# PyAV is pinned to 18.1.0: its bundled FFmpeg 8 is one both torchcodecs load (PyAV 19 bundles
# FFmpeg 9, which 0.11 has no build for).
#   tools/gpu_wheels.sh            # av, psutil (tools/bench_data.py), the two torchcodecs
#   tools/gpu_wheels.sh av decord  # only the named packages
set -euo pipefail
cd "$(dirname "$0")/.."
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(av==18.1.0 psutil torchcodec==0.17.0 torchcodec==0.11.1)
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
mkdir -p .whl
for package in "${packages[@]}"; do  # one at a time: two versions of one package in one call are refused
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl "$package"
done
ls -la .whl
