#!/usr/bin/env bash
# Every test: all notebooks (slow cells included) with nbdev-test, then the tests/ pytest suite.
# Uses the project's .venv when there is one (README: install first).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"
nbdev-test --flags slow --n-workers 2 --timing
python -m pytest -q -p no:cacheprovider "$@"
