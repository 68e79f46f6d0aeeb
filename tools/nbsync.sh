#!/usr/bin/env bash
# Rebuild notebooks from scratch text files (tools/nbpy.py format) in $NBSRC, then clean and export.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${NBSRC:-/tmp/nbsrc}
for f in "$src"/*.txt; do .venv/bin/python tools/nbpy.py to-nb "$f" "nbs/$(basename "${f%.txt}").ipynb"; done
.venv/bin/nbdev-clean && .venv/bin/nbdev-export
