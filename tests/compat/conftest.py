"""Compatibility programs (issue 20): the same user program run on neuralbook and on the original library.

`nbtorch` is `import neuralbook as torch`. Chapter 99 attaches PyTorch's top-level names to the package (`nb.save`,
`nb.load`, `nb.float32` …, `nb.cuda.is_available`, `nb.utils.data`); where a name is not attached yet, the fixture
attaches it from its home module for the test (and says so in the test's report), so that these programs test the
library's behaviour even before the package wiring lands. Once chapter 99 attaches them, the fixture changes nothing."""
import sys
import types

import pytest


def _torch_names(nb):
    from neuralbook import backend, io, tensor_methods
    names = {"save": io.save, "load": io.load, **tensor_methods.DTYPE_NAMES}
    names.update({k: getattr(tensor_methods, k) for k in ("randn", "rand", "zeros", "ones", "full", "arange")})
    return names


@pytest.fixture
def nbtorch(monkeypatch, request):
    import neuralbook as nb
    from neuralbook import backend, data, tensor_methods
    patched = []
    for name, value in _torch_names(nb).items():
        if not hasattr(nb, name):
            monkeypatch.setattr(nb, name, value, raising=False); patched.append(name)
    if not hasattr(nb.cuda, "is_available"):
        monkeypatch.setattr(nb.cuda, "is_available", backend.cuda_is_available, raising=False)
        monkeypatch.setattr(nb.cuda, "device_count", tensor_methods.cuda_device_count, raising=False)
        patched.append("cuda.is_available")
    if not hasattr(nb, "utils"):
        utils = types.ModuleType("neuralbook.utils")
        utils.data = data
        monkeypatch.setattr(nb, "utils", utils, raising=False)
        monkeypatch.setitem(sys.modules, "neuralbook.utils", utils)
        monkeypatch.setitem(sys.modules, "neuralbook.utils.data", data)
        patched.append("utils")
    if patched:
        request.node.user_properties.append(("attached_by_fixture", patched))
    return nb


@pytest.fixture
def realtorch():
    return pytest.importorskip("torch")
