#!/usr/bin/env python
"""Build chapters: (convert) -> execute with a real kernel -> nbdev-clean -> nbdev-export.

    python tools/build_nb.py nbs/1_learning/04_nn.ipynb    # re-execute a notebook in place
    python tools/build_nb.py nbs/_src/1_learning/04_nn.py  # jupytext percent source -> nbs/1_learning/04_nn.ipynb, then as above
    python tools/build_nb.py --all                         # every chapter in nbs/

Stored outputs are what nbval checks, so they must come from a real kernel (never `nbdev-test --save`).
Cells nbval skips (`#| eval: false`, `#| slow`, `#| cuda`) are not executed here either; their outputs are cleared.
To edit a committed chapter as text: `jupytext --to py:percent nbs/1_learning/04_nn.ipynb -o nbs/_src/1_learning/04_nn.py`
(nbs/_src is ignored).
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "nbs"))
from conftest import _skip_reason  # noqa: E402  (one definition of which cells are skipped)


def to_ipynb(path: Path) -> Path:
    if path.suffix == ".ipynb":
        return path
    src = ROOT / "nbs" / "_src"
    if path.resolve().is_relative_to(src):        # nbs/_src/PART/NAME.py -> nbs/PART/NAME.ipynb
        out = ROOT / "nbs" / path.resolve().relative_to(src).with_suffix(".ipynb")
    else:                                          # elsewhere: the chapter of that name, in whichever part it is
        found = [p for p in (ROOT / "nbs").rglob(path.stem + ".ipynb") if "_src" not in p.parts]
        out = found[0] if found else ROOT / "nbs" / (path.stem + ".ipynb")
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--update-metadata",
                    '{"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}',
                    str(path), "-o", str(out)], check=True, capture_output=True)
    return out


def execute(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if _skip_reason(cell.source):
                cell.outputs, cell.execution_count = [], None
                continue
            client.execute_cell(cell, i)
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--all", action="store_true", help="rebuild every nbs/PART/[0-9]*.ipynb and nbs/index.ipynb")
    ap.add_argument("--no-exec", action="store_true", help="convert, clean and export only")
    args = ap.parse_args()
    paths = sorted((ROOT / "nbs").glob("[0-9]_*/*.ipynb")) + [ROOT / "nbs" / "index.ipynb"] if args.all else args.paths
    built = []
    for p in paths:
        if not p.exists():
            continue
        nbp = to_ipynb(p.resolve())
        # export this notebook first so that its own module is what its kernel imports (only this one: a notebook
        # that someone else is half-way through editing must not stop the build of another)
        subprocess.run(["nbdev-export", "--path", str(nbp)], cwd=ROOT, check=True)
        if not args.no_exec:
            print(f"{nbp.name}: executed in {execute(nbp):.1f} s", flush=True)
        built.append(str(nbp))
    if built:
        subprocess.run(["nbdev-clean", "--fname", *built], cwd=ROOT, check=False) if len(built) == 1 else \
            [subprocess.run(["nbdev-clean", "--fname", b], cwd=ROOT, check=True) for b in built]
    subprocess.run(["nbdev-export"], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
