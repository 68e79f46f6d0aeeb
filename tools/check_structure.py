"""Check the shape of the literate code: `python tools/check_structure.py` (run by .ci/run).

Fails (exit 1) on
- an exported notebook cell over 40 lines (non-blank lines, `#|` directives not counted);
- a package function over 45 lines (the generated `_modidx.py` excluded);
- a private class whose only use is to be the base of one other class of its module (a class split across cells);
- a public function or method with two or more parameters (besides self/cls) without a docments comment on
  each parameter.
Prints the figures either way: median and largest exported cells, the five longest functions.
"""
from __future__ import annotations

import ast
import io
import json
import re
import statistics
import sys
import tokenize
from pathlib import Path

MAX_CELL, MAX_FUNC = 40, 45
ROOT = Path(__file__).resolve().parent.parent


def exported_cells(nbs: Path) -> list[tuple[int, str]]:
    "Lines of each exported code cell, with where it is"
    out = []
    for nb in sorted(nbs.glob("*.ipynb")):
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] == "code" and re.search(r"^#\|\s*export[si]?\b", src, re.M):
                n = sum(1 for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith("#|"))
                out.append((n, f"{nb.name}#{i}"))
    return sorted(out, reverse=True)


def comment_lines(src: str) -> set[int]:
    "Line numbers (1-based) that carry a comment"
    return {t.start[0] for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}


def self_documented(a: ast.arg) -> bool:
    "A CLI parameter documented by its Typer `help=`, or the Typer context"
    ann = ast.unparse(a.annotation) if a.annotation else ""
    return "help=" in ann or ann == "typer.Context"


def undocumented(fn: ast.FunctionDef, comments: set[int]) -> list[str]:
    "Parameters of a public function with two or more of them that lack a docments comment"
    args = [a for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs] if a.arg not in ("self", "cls")]
    if fn.name.startswith("_") or len(args) < 2: return []
    return [a.arg for a in args if a.lineno not in comments and (a.end_lineno or a.lineno) not in comments
            and not self_documented(a)]


def check_module(py: Path) -> tuple[list[tuple[int, str]], list[str], list[str]]:
    "Function lengths, private-base chains and undocumented parameters of one module"
    src = py.read_text()
    tree, comments = ast.parse(src), comment_lines(src)
    classes = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    bases: dict[str, list[str]] = {}
    for n in classes.values():
        for b in n.bases:
            if isinstance(b, ast.Name) and b.id in classes: bases.setdefault(b.id, []).append(n.name)
    chains = [f"{py.name}:{b}->{s[0]}" for b, s in bases.items() if b.startswith("_") and len(s) == 1]
    funcs, docs = [], []
    public = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    public += [m for c in tree.body if isinstance(c, ast.ClassDef) and not c.name.startswith("_")
               for m in c.body if isinstance(m, ast.FunctionDef)]
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            funcs.append((n.end_lineno - n.lineno + 1, f"{py.name}:{n.name}"))
    for fn in public:
        if missing := undocumented(fn, comments): docs.append(f"{py.name}:{fn.name} ({', '.join(missing)})")
    return funcs, chains, docs


def main() -> int:
    cells = exported_cells(ROOT / "nbs")
    funcs, chains, docs = [], [], []
    for py in sorted((ROOT / "wrds_sync_nb").glob("*.py")):
        if py.name.startswith("_modidx"): continue
        f, c, d = check_module(py)
        funcs += f; chains += c; docs += d
    funcs.sort(reverse=True)
    print(f"exported cells: {len(cells)}, median {statistics.median(n for n, _ in cells):g} lines; largest: "
          + ", ".join(f"{w} {n}" for n, w in cells[:5]))
    print("longest functions: " + ", ".join(f"{w} {n}" for n, w in funcs[:5]))
    bad = [f"cell {w}: {n} lines (max {MAX_CELL})" for n, w in cells if n > MAX_CELL]
    bad += [f"function {w}: {n} lines (max {MAX_FUNC})" for n, w in funcs if n > MAX_FUNC]
    bad += [f"private base class used only to split a class: {c}" for c in chains]
    bad += [f"parameters without docments: {d}" for d in docs]
    for line in bad: print("FAIL", line)
    print("structure: ok" if not bad else f"structure: {len(bad)} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
