#!/usr/bin/env bash
# Run HERE (network: the package registries) before a pre-training stage on a lent GPU machine: downloads into .whl/
# (ignored by git, carried by the `device` tool) this venv's versions of the packages that the pre-training imports
# and that machine's Python 3.12 lacks or has too old (its list: ../.library/device/KINDS.md; transformers there was
# 5.17 in 2026-11, this package needs >= 5.18). The list is what `import sam_prompt_learner` loads here, less what
# the image has (torch, accelerate, peft, safetensors, numpy, scipy, scikit-image, pillow, tokenizers, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
rm -rf .whl
pins=$(.venv/bin/python -c '
from importlib.metadata import version
names = ["transformers", "huggingface_hub", "httpx2", "httpcore2", "truststore", "kernels", "datasets", "evaluate",
         "dill", "multiprocess", "fsspec"]
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
