#!/usr/bin/env bash
# One-command set-up + run.  `bash run.sh train`: the main job (a short digits training, prints the
# test accuracy).  `bash run.sh test`: the test suite.  `bash run.sh lint`: ruff (lint + format check).
# All create .venv and install the project
# (CPU JAX) on first use; extra arguments are passed on (to `ttt-compile train` or to pytest).
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-}"; shift || true
case "$what" in train|test|lint) ;; *) echo "usage: bash run.sh train|test|lint [args...]" >&2; exit 2;; esac
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
if [ "$what" = train ]; then
  exec .venv/bin/ttt-compile train digits_tiny --workdir runs/digits_tiny "$@"
fi
if [ "$what" = lint ]; then
  .venv/bin/ruff check . "$@"
  exec .venv/bin/ruff format --check .
fi
exec .venv/bin/python -m pytest "$@"
