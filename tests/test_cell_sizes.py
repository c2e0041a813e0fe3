"""Issues 12 and 19: a chapter teaches in small steps. No code cell in the book over 60 lines (exported or not), Part I
(the learner's first path) with a median code cell of at most 15 lines, and no generated library module over 600
lines. The part modules of `neuralbook.exercises` (the checkers of every "Your turn", one import path per part) are
book material, not library code, and are measured by their cells instead."""
import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
MAX_CELL, MAX_PART1_MEDIAN, MAX_MODULE = 60, 15, 600


def _notebooks():
    return sorted(p for p in NBS.rglob("*.ipynb") if "_src" not in p.parts and ".ipynb_checkpoints" not in p.parts)


def _code_cell_sizes(path):
    return [len("".join(c["source"]).splitlines())
            for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def _module_sizes():
    pkg = ROOT / "neuralbook"
    return {str(p.relative_to(pkg)): len(p.read_text(encoding="utf-8").splitlines())
            for p in sorted(pkg.rglob("*.py")) if p.name != "_modidx.py" and "exercises" not in p.parts}


def test_the_book_is_found():
    parts = {p.parent.name for p in _notebooks()} - {"nbs"}
    assert {"1_learning", "2_architectures", "3_large_models", "4_engineering"} <= parts, parts


def test_no_code_cell_over_60_lines():
    too_big = {str(p.relative_to(NBS)): big for p in _notebooks() if (big := [n for n in _code_cell_sizes(p) if n > MAX_CELL])}
    assert not too_big, (f"code cells over {MAX_CELL} lines (notebook: their sizes): {too_big}; split them into cells of "
                         f"one idea each, each followed by its demo")


def test_part_one_cells_are_short():
    wide = {p.name: statistics.median(s) for p in sorted((NBS / "1_learning").glob("*.ipynb"))
            if (s := _code_cell_sizes(p)) and statistics.median(s) > MAX_PART1_MEDIAN}
    assert not wide, f"Part I chapters whose median code cell is over {MAX_PART1_MEDIAN} lines: {wide}"


def test_no_module_over_600_lines():
    too_big = {n: k for n, k in _module_sizes().items() if k > MAX_MODULE}
    assert not too_big, (f"modules over {MAX_MODULE} lines: {too_big}; split the chapter's module into smaller ones "
                         f"(nbdev: one `#| default_exp` per notebook)")


@pytest.mark.parametrize("size, ok", [(60, True), (61, False)])
def test_the_limit_is_what_it_says(size, ok, tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["x = 1\n"] * size, "metadata": {}, "outputs": []}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert (max(_code_cell_sizes(tmp_path / "x.ipynb")) <= MAX_CELL) == ok
