"""Root pytest configuration.

Turns nbval on for the notebooks in `nbs/` when the plugin is installed, so that plain `pytest` checks the book,
while a machine with only pytest, NumPy and CuPy (the GPU check: `python -m pytest -m gpu tests`) still runs.
"""
from pathlib import Path


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("nbval"):
        return
    opt = config.option
    if not (opt.nbval or opt.nbval_lax):
        opt.nbval = True
    opt.nbval_current_env = True
    if opt.nbval_sanitize_with is None:
        opt.nbval_sanitize_with = str(Path(__file__).parent / "nbs" / "sanitize.cfg")
