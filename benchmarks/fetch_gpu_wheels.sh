#!/usr/bin/env bash
# Wheels of the dependencies a bare GPU machine lacks, for benchmarks/gpu_session.sh there: run here (where the
# package index is reachable); they land in .whl/ (git-ignored, about 8 MB). The machine's image already holds
# torch, torchvision, numpy, pillow, opencv, scipy, matplotlib, rich, pyyaml, safetensors and tensorboard, and a
# Python 3.12; our pins for the rest come from pyproject.toml, and their own undeclared needs are pinned here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
pins=$(python3 - <<'EOF'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
wanted = ("timm", "mmengine", "mmsegmentation", "mmcv-lite", "ftfy", "faster-coco-eval", "pycocotools", "submitit",
          "simplejpeg")
print(" ".join(d.split("#")[0].strip() for d in deps if d.split("==")[0] in wanted))
EOF
)
extra="addict==2.4.0 yapf==0.43.0 platformdirs==4.14.9 termcolor==3.3.0 prettytable==3.18.0 wcwidth==0.9.4"
mkdir -p .whl
# shellcheck disable=SC2086  # one argument per pin
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl $pins $extra
ls .whl
