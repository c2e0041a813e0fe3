"""Make nbval and nbdev agree on what a notebook cell is.

* `nbdev-clean` sets every `execution_count` to None; nbval then refuses cells that have stored outputs
  ("Unrun reference cell has outputs"). We give such cells a count so that their outputs are compared.
* Cells nbdev would not run under test are skipped here too: `#| eval: false`, cells carrying a test flag
  from `tst_flags` in pyproject (`#| slow`, `#| cuda`) unless that flag is named in $NEURALBOOK_NB_FLAGS,
  and the `nbdev_export()` call that ends some notebooks.
"""
import os
import re

import pytest

_FLAGS = {"slow", "cuda"}
_ENABLED = set(os.environ.get("NEURALBOOK_NB_FLAGS", "").split())
_DIRECTIVE = re.compile(r"^\s*#\|\s*(.*?)\s*$", re.M)


def _skip_reason(source):
    for d in _DIRECTIVE.findall(source):
        words = d.replace(":", " ").split()
        if d.replace(" ", "").startswith("eval:false"):
            return "#| eval: false"
        if words and words[0] in _FLAGS and words[0] not in _ENABLED:
            return f"test flag '{words[0]}' (set NEURALBOOK_NB_FLAGS='{words[0]}' to run it)"
    if re.search(r"^\s*(import nbdev; )?nbdev\.?(doclinks\.)?nbdev_export\(", source, re.M):
        return "nbdev_export() call"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is None:
            continue
        if cell.get("execution_count") is None and cell.get("outputs"):
            cell["execution_count"] = 1
        reason = _skip_reason(cell.get("source", ""))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
