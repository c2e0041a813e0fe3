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


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu), "emulated"])
def cp(request):
    """The device a test runs on: a real GPU through CuPy (marked `gpu`, so skipped without one and selected by
    `-m gpu`), or chapter 32's emulated GPU, which runs the same CUDA sources on the CPU with grids of at most 3
    blocks, so that every grid-stride loop wraps around (needs a C++ compiler; small shapes only)."""
    if request.param == "cuda":
        yield pytest.importorskip("cupy")
        return
    from neuralbook import cuda_emu
    if cuda_emu.compiler() is None:
        if os.environ.get("CI"): pytest.fail("the emulated GPU tests must run in CI: no C++ compiler found")
        pytest.skip("no C++ compiler for the emulated GPU")
    with cuda_emu.emulated_gpu(max_blocks=3) as fake:
        yield fake
