"""Write the pages generated from the code: runbooks/alerts.qmd (from events.ALERTS) and the dataset tables of
README.md and docs/wrds-data.qmd (from datasets.BUILTIN_DATASETS, between the `datasets:start/end` markers).

`python tools/gen_docs.py` writes them; `python tools/gen_docs.py --check` (run by .ci/run) exits 1 and names
every page that differs from what the code generates.
"""
import re
import sys
from pathlib import Path

from wrds_sync_nb.datasets import BUILTIN_DATASETS, datasets_markdown
from wrds_sync_nb.events import alerts_markdown

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- datasets:start[^>]*-->\n).*?(<!-- datasets:end -->)", re.S)


def with_datasets(text: str) -> str:
    "`text` with its datasets block regenerated"
    if not BLOCK.search(text): raise SystemExit("no <!-- datasets:start --> ... <!-- datasets:end --> block")
    return BLOCK.sub(lambda m: m[1] + datasets_markdown(BUILTIN_DATASETS) + m[2], text)


def pages() -> dict[Path, str]:
    "Every generated page and the content the code gives it"
    out = {ROOT / "runbooks" / "alerts.qmd": alerts_markdown()}
    for rel in ("README.md", "docs/wrds-data.qmd"):
        out[ROOT / rel] = with_datasets((ROOT / rel).read_text())
    return out


def main(check: bool) -> int:
    stale = [p for p, text in pages().items() if not p.exists() or p.read_text() != text]
    if check:
        for p in stale: print(f"{p.relative_to(ROOT)} differs from what the code generates: run python tools/gen_docs.py")
        return 1 if stale else 0
    for p, text in pages().items(): p.write_text(text)
    print(f"wrote {len(pages())} pages ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
