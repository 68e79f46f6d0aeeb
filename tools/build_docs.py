"""Stage the docs site for Quarto: process the notebooks with nbdev (into _proc/) and copy them to api/.

The site itself is configured by the top-level _quarto.yml, which renders api/ (the literate modules),
runbooks/ and docs/. Quarto is not needed to run this script; `quarto render` is the step after it.
"""
import shutil
from pathlib import Path

from nbdev.serve import proc_nbs

root = Path(__file__).resolve().parent.parent
cache = Path(proc_nbs(force=True))
api = root / "api"
shutil.rmtree(api, ignore_errors=True)
api.mkdir()
for nb in sorted(cache.glob("*.ipynb")):
    shutil.copy2(nb, api / nb.name)
print(f"staged {len(list(api.glob('*.ipynb')))} notebooks in {api}")
