#!/usr/bin/env bash
# Wheels of what benchmarks/gpu_check.py needs beyond a bare CUDA PyTorch image (the lent H200's has torch,
# transformers, tokenizers, accelerate, numpy, httpx, pytest, hypothesis; not the server stack, TRL, datasets
# or math-verify), for Python 3.12 on x86-64, at the versions constraints.txt pins. Run here, where PyPI is
# reachable; the GPU machine has no network. Then, there, before the check (carry .whl with the tree):
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   python3 benchmarks/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
NAMES="fastapi starlette pydantic pydantic_core annotated-types annotated-doc typing-inspection opentelemetry-api
importlib-metadata uvicorn httptools trl datasets dill multiprocess math-verify latex2sympy2_extended
antlr4-python3-runtime"
rm -rf .whl && mkdir -p .whl
for name in $NAMES; do
    pattern="^$(echo "$name" | sed 's/[-_]/[-_]/g')=="
    pin=$(grep -i -E "$pattern" constraints.txt | head -1 || true)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${pin:-$name}"
done
du -sh .whl
