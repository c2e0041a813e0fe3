"""Shared test configuration: GPU tests skip themselves without a GPU, hypothesis profiles for CI."""
import os

import pytest

try:
    from hypothesis import settings
    settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
    settings.register_profile("dev", max_examples=25, deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # the GPU check needs only pytest, NumPy and CuPy
    pass


def _gpu_available():
    try:
        from neuralbook.backend import cuda_is_available
        return cuda_is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy (pip install 'neuralbook[gpu]')")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
