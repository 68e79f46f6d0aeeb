"""Check the shape of the literate code: `python tools/check_structure.py` (run by .ci/run).

Fails (exit 1) on
- an exported notebook cell over 30 lines (non-blank lines, `#|` directives not counted), or a median exported
  cell over 12 lines;
- a notebook code line over 110 characters;
- a package function over 40 lines (the generated `_modidx.py` excluded);
- a notebook holding more than 12% of the package's exported lines;
- a private class whose only use is to be the base of one other class of its module (a class split across cells);
- a public function or method with two or more parameters (besides self/cls) without a docments comment on
  each parameter;
- a demonstration cell that imports and also runs code: nbdev's docs pipeline runs every cell holding an import
  on its own, without the demonstrations before it (keep imports in the notebook's import cell).
- under 60% of exported cells followed by a demonstration (the next code cell is neither exported nor hidden),
  or under 0.35 demonstration lines per exported line (hidden cells do not count: a reader never sees them).
Prints the figures either way: median and largest exported cells, the five longest functions, the rhythm
figures above, and the largest notebooks.
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

MAX_CELL, MAX_FUNC, MAX_MEDIAN, MAX_LINE, MAX_SHARE = 30, 40, 12, 110, 0.12
MIN_SHOWN, MIN_DEMO_RATIO = 0.60, 0.35
ROOT = Path(__file__).resolve().parent.parent


EXPORT_RE = re.compile(r"^#\|\s*export[si]?\b", re.M)
HIDE_RE = re.compile(r"^#\|\s*hide\b", re.M)


def counted(src: str) -> int:
    "Non-blank lines that are not `#|` directives"
    return sum(1 for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith("#|"))


def exported_cells(nbs: Path) -> list[tuple[int, str]]:
    "Lines of each exported code cell, with where it is"
    out = []
    for nb in sorted(nbs.glob("*.ipynb")):
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] == "code" and EXPORT_RE.search(src): out.append((counted(src), f"{nb.name}#{i}"))
    return sorted(out, reverse=True)


def shown(src: str) -> bool:
    "A demonstration a reader sees: not hidden (test imports, fixtures' plumbing), not the export call"
    return HIDE_RE.search(src) is None and "nbdev_export" not in src


def rhythm(nbs: Path) -> tuple[float, float, dict[str, int], list[str]]:
    "Demonstrated share of exported cells, demonstration lines per exported line, lines per notebook, long lines"
    followed = exported = demo = 0
    per_nb: dict[str, int] = {}
    long: list[str] = []
    for nb in sorted(nbs.glob("*.ipynb")):
        code = ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        for i, src in enumerate(code):
            long += [f"{nb.name}: {ln[:60]}..." for ln in src.splitlines() if len(ln) > MAX_LINE]
            if EXPORT_RE.search(src):
                exported += 1
                per_nb[nb.name] = per_nb.get(nb.name, 0) + counted(src)
                nxt = code[i + 1] if i + 1 < len(code) else ""
                followed += bool(counted(nxt)) and not EXPORT_RE.search(nxt) and shown(nxt)
            elif shown(src) and "default_exp" not in src: demo += counted(src)
    return followed / max(exported, 1), demo / max(sum(per_nb.values()), 1), per_nb, long


def imports_and_runs(nbs: Path) -> list[str]:
    "Non-exported cells holding an import and top-level statements other than imports and definitions"
    out = []
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    for nb in sorted(nbs.glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        if not any(EXPORT_RE.search("".join(c["source"])) for c in cells): continue   # no docs to execute
        for i, c in enumerate(cells):
            src = "".join(c["source"])
            if c["cell_type"] != "code" or EXPORT_RE.search(src) or "nbdev_export()" in src: continue
            if re.search(r"^#\|\s*eval:\s*false", src, re.M): continue
            tree = ast.parse("\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))))
            imports = any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(tree))
            if imports and any(not isinstance(n, keep) for n in tree.body): out.append(f"{nb.name}#{i}")
    return out


def comment_lines(src: str) -> set[int]:
    "Line numbers (1-based) that carry a comment"
    return {t.start[0] for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}


def self_documented(a: ast.arg, aliases: set[str]) -> bool:
    "A CLI parameter documented by its Typer `help=` (in place, or in a module-level alias), or the Typer context"
    ann = ast.unparse(a.annotation) if a.annotation else ""
    return "help=" in ann or ann == "typer.Context" or ann in aliases


def undocumented(fn: ast.FunctionDef, comments: set[int], aliases: set[str]) -> list[str]:
    "Parameters of a public function with two or more of them that lack a docments comment"
    args = [a for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs] if a.arg not in ("self", "cls")]
    if fn.name.startswith("_") or len(args) < 2: return []
    return [a.arg for a in args if a.lineno not in comments and (a.end_lineno or a.lineno) not in comments
            and not self_documented(a, aliases)]


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
    aliases = {t.id for n in tree.body if isinstance(n, ast.Assign) and "help=" in ast.unparse(n.value)
               for t in n.targets if isinstance(t, ast.Name)}
    public = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    public += [m for c in tree.body if isinstance(c, ast.ClassDef) and not c.name.startswith("_")
               for m in c.body if isinstance(m, ast.FunctionDef)]
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            funcs.append((n.end_lineno - n.lineno + 1, f"{py.name}:{n.name}"))
    for fn in public:
        if missing := undocumented(fn, comments, aliases): docs.append(f"{py.name}:{fn.name} ({', '.join(missing)})")
    return funcs, chains, docs


def main() -> int:
    cells = exported_cells(ROOT / "nbs")
    funcs, chains, docs = [], [], []
    for py in sorted((ROOT / "wrds_sync_nb").glob("*.py")):
        if py.name.startswith("_modidx"): continue
        f, c, d = check_module(py)
        funcs += f
        chains += c
        docs += d
    funcs.sort(reverse=True)
    median = statistics.median(n for n, _ in cells)
    print(f"exported cells: {len(cells)}, median {median:g} lines; largest: "
          + ", ".join(f"{w} {n}" for n, w in cells[:5]))
    shown, ratio, per_nb, long = rhythm(ROOT / "nbs")
    total = sum(per_nb.values())
    top = sorted(per_nb.items(), key=lambda kv: -kv[1])
    print(f"followed by a demonstration: {shown:.0%} of exported cells (min 60%); demonstration lines per "
          f"exported line: {ratio:.2f} (min 0.35)")
    print("largest notebooks: " + ", ".join(f"{k} {v / total:.0%}" for k, v in top[:3]))
    print("longest functions: " + ", ".join(f"{w} {n}" for n, w in funcs[:5]))
    bad = [f"cell {w}: {n} lines (max {MAX_CELL})" for n, w in cells if n > MAX_CELL]
    bad += [f"function {w}: {n} lines (max {MAX_FUNC})" for n, w in funcs if n > MAX_FUNC]
    bad += [f"median exported cell {median:g} lines (max {MAX_MEDIAN})"] if median > MAX_MEDIAN else []
    bad += [f"line over {MAX_LINE} characters in {w}" for w in long]
    if shown < MIN_SHOWN: bad.append(f"{shown:.0%} of exported cells followed by a demonstration (min {MIN_SHOWN:.0%})")
    if ratio < MIN_DEMO_RATIO: bad.append(f"{ratio:.3f} demonstration lines per exported line (min {MIN_DEMO_RATIO})")
    bad += [f"notebook {k} holds {v / total:.0%} of the exported lines (max {MAX_SHARE:.0%})"
            for k, v in top if v > MAX_SHARE * total]
    bad += [f"private base class used only to split a class: {c}" for c in chains]
    bad += [f"parameters without docments: {d}" for d in docs]
    bad += [f"cell imports and runs code (the docs pipeline runs it alone): {w}"
            for w in imports_and_runs(ROOT / "nbs")]
    for line in bad: print("FAIL", line)
    print("structure: ok" if not bad else f"structure: {len(bad)} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
