#!/usr/bin/env bash
# Regenerate requirements/lock.txt, the exact versions scripts/setup.sh installs, from
# requirements/lock.in (the package, its dev extra, and the torch pair we hold) and pyproject.toml.
# uv only resolves here; pip installs (so this machine's local torch files and caps still apply).
#   bash scripts/lock.sh                 # re-resolve everything within pyproject's ranges
#   bash scripts/lock.sh --upgrade-package transformers   # move one package, keep the rest
# To move the torch stack, edit the pins in requirements/lock.in (pairs that work: pyproject.toml),
# run this, then `python benchmarks/newest_torch.py` style checks and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || python3 -m pip install -q uv
uv pip compile requirements/lock.in -o requirements/lock.txt \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --no-emit-package hf_speech_cl --custom-compile-command "bash scripts/lock.sh" "$@"
