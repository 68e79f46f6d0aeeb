"""Convert between notebooks in nbs/ and a plain-text cell format used for bulk editing.

The text format: cells separated by lines `#%% md` (markdown) or `#%%` (code), with no prefix on the
content. `python tools/nbpy.py to-nb SRC.txt nbs/NAME.ipynb` writes a notebook (then run nbdev-clean);
`python tools/nbpy.py to-txt nbs/NAME.ipynb OUT.txt` goes back. Notebooks stay the source of truth:
the text files are scratch and never committed.
"""
import hashlib
import json
import sys
from pathlib import Path


def to_nb(src: Path, dst: Path) -> None:
    cells, kind, buf, seen = [], None, [], set()
    def flush():
        if kind is None: return
        while buf and not buf[-1].strip(): buf.pop()
        text = "\n".join(buf)
        lines = [ln + "\n" for ln in text.split("\n")]
        if lines: lines[-1] = lines[-1][:-1]
        c = {"cell_type": "markdown" if kind == "md" else "code", "metadata": {}, "source": lines}
        if kind != "md": c.update(execution_count=None, outputs=[])
        if kind == "params": c["metadata"] = {"tags": ["parameters"]}
        # ids derived from content, so an unchanged cell keeps its id (and the exported code its cell marker)
        cid = hashlib.sha1(text.encode()).hexdigest()[:8]
        while cid in seen: cid = hashlib.sha1(cid.encode()).hexdigest()[:8]
        seen.add(cid)
        c["id"] = cid
        cells.append(c)
    for line in src.read_text().split("\n"):
        if line.startswith("#%%"):
            flush()
            buf = []
            tag = line[3:].strip()
            kind = {"md": "md", "params": "params"}.get(tag, "code")
        else:
            buf.append(line)
    flush()
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    dst.write_text(json.dumps(nb, indent=1) + "\n")

def to_txt(src: Path, dst: Path) -> None:
    out = []
    for c in json.loads(src.read_text())["cells"]:
        tags = c.get("metadata", {}).get("tags", [])
        out.append("#%% md" if c["cell_type"] == "markdown" else ("#%% params" if "parameters" in tags else "#%%"))
        out.append("".join(c["source"]))
        out.append("")
    dst.write_text("\n".join(out))

if __name__ == "__main__":
    cmd, a, b = sys.argv[1:4]
    (to_nb if cmd == "to-nb" else to_txt)(Path(a), Path(b))
