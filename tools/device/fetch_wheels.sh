#!/usr/bin/env bash
# Run HERE (network: the package registries) before a pre-training stage on a lent GPU machine: downloads into .whl/
# (ignored by git, carried by the `device` tool) the wheels that machine's Python 3.12 lacks or has too old for this
# package: this venv's versions of transformers, huggingface_hub and their kin. torch, accelerate, peft, safetensors,
# numpy, scipy, scikit-image and pillow are the image's own (its package list: ../.library/device/KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
rm -rf .whl
pins=$(.venv/bin/python -c '
from importlib.metadata import version
names = ["transformers", "huggingface_hub", "hf-xet", "tokenizers", "datasets", "evaluate", "dill", "multiprocess",
         "fsspec", "httpx", "jinja2"]
print(" ".join(f"{name}=={version(name)}" for name in names))')
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$tag")
done
# shellcheck disable=SC2086  # one argument per pin
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl $pins
ls .whl
du -sh .whl
