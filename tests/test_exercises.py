"""Issue 19 item 6: every chapter's Your-turn stub is skipped under test and imports a checker that exists and calls
it; checker names are unique across the book; and no checker accepts a wrong answer (here: a stub that returns None
— most say what is wrong in an AssertionError, some fail on using None). That every solution passes its checker is
what the solutions notebooks show under nbval."""
import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["learning", "architectures", "large_models", "engineering", "keras"]


def _stubs():
    for p in sorted((ROOT / "nbs").glob("[0-9]_*/*.ipynb")):
        for c in json.loads(p.read_text(encoding="utf-8"))["cells"]:
            src = "".join(c["source"])
            m = re.search(r"from neuralbook\.exercises\.(\w+) import (\w+)", src)
            if c["cell_type"] == "code" and m:
                yield p.name, src, m.group(1), m.group(2)


@pytest.mark.parametrize("nb,src,mod,name", list(_stubs()), ids=lambda v: v if isinstance(v, str) and v.endswith(".ipynb") else "")
def test_stub_imports_an_existing_checker_and_is_skipped(nb, src, mod, name):
    assert re.search(r"^#\|\s*eval:\s*false", src, re.M), f"{nb}: the stub calling {name} must be tagged #| eval: false"
    assert hasattr(importlib.import_module(f"neuralbook.exercises.{mod}"), name), f"{nb}: {mod}.{name} does not exist"
    assert re.search(rf"^{name}\(", src, re.M), f"{nb}: the stub imports {name} but does not call it"


def _checkers():
    for part in PARTS:
        try:
            mod = importlib.import_module(f"neuralbook.exercises.{part}")
        except ModuleNotFoundError:
            continue
        for name in [n for n in mod.__all__ if n.startswith("check_")]:
            yield f"{part}.{name}", getattr(mod, name)


@pytest.mark.parametrize("name,check", list(_checkers()), ids=lambda v: v if isinstance(v, str) else "")
def test_checker_rejects_a_stub_with_an_assertion(name, check):
    with pytest.raises(Exception):     # AssertionError with a message, or the TypeError of using None
        check(lambda *args, **kwargs: None)


def test_checker_names_are_unique():
    names = [n.split(".")[1] for n, _ in _checkers()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
