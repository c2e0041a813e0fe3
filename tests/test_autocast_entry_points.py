"""Under autocast an op has one precision policy, whatever the spelling: `F.op(x)`, `x.op()`, the `nn` module and the
Keras activation of the same op give the same dtype and the same values (issue 11)."""
import numpy as np
import pytest

import neuralbook as nb
import neuralbook.functional as F
from neuralbook import keras, nn

# extra arguments for the methods that need them; every other op shared by Tensor and F is called on x alone
ARGS = {"reshape": ((-1,), {}), "transpose": ((), {}), "clip": ((-0.5, 0.5), {}), "swapaxes": ((0, 1), {}),
        "unsqueeze": ((0,), {}), "squeeze": ((), {}), "flatten": ((), {})}
POSITIVE = {"log", "sqrt"}  # need positive inputs


def _shared_ops():
    T = nb.Tensor
    names = [n for n in dir(T) if not n.startswith("_") and callable(getattr(T, n, None)) and callable(
        getattr(F, n, None))]
    assert {"softmax", "log_softmax", "logsumexp", "exp", "sum", "mean"} <= set(names), names
    return names


def _input(name, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5))
    if name in POSITIVE:
        a = np.abs(a) + 0.1
    return nb.tensor(a.astype(dtype))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("name", _shared_ops())
def test_method_and_function_agree_under_autocast(name, dtype):
    args, kw = ARGS.get(name, ((), {}))
    x = _input(name, dtype)
    with nb.amp.autocast():
        f = getattr(F, name)(x, *args, **kw)
        m = getattr(x, name)(*args, **kw)
    assert f.dtype == m.dtype, f"{name}: F.{name} gives {f.dtype}, Tensor.{name} gives {m.dtype} under autocast"
    np.testing.assert_array_equal(f.numpy(), m.numpy(), err_msg=name)


def test_precision_sensitive_ops_run_in_float32_under_autocast():
    x = _input("softmax", "float16")
    with nb.amp.autocast():
        for y in (F.softmax(x), x.softmax(), F.log_softmax(x), x.log_softmax(), x.logsumexp(axis=1)):
            assert y.dtype == np.float32


def test_matmul_spellings_agree_under_autocast():
    rng = np.random.default_rng(1)
    a = nb.tensor(rng.standard_normal((4, 6)).astype("float32"))
    b = nb.tensor(rng.standard_normal((6, 3)).astype("float32"))
    with nb.amp.autocast():
        outs = [a @ b, F.matmul(a, b), nb.matmul(a, b), b.__rmatmul__(a)]
    assert {o.dtype.name for o in outs} == {"float16"}
    for o in outs[1:]:
        np.testing.assert_array_equal(o.numpy(), outs[0].numpy())


MODULES = [("softmax", lambda: nn.Softmax(), {}), ("log_softmax", lambda: nn.LogSoftmax(), {}),
           ("relu", lambda: nn.ReLU(), {}), ("sigmoid", lambda: nn.Sigmoid(), {}), ("tanh", lambda: nn.Tanh(), {})]


@pytest.mark.parametrize("name,make,kw", MODULES, ids=[m[0] for m in MODULES])
def test_nn_modules_agree_with_functions_under_autocast(name, make, kw):
    if not all(hasattr(nn, n) for n in ("Softmax", "LogSoftmax")) and name in ("softmax", "log_softmax"):
        pytest.skip(f"nn has no module for {name}")
    x = _input(name, "float16")
    with nb.amp.autocast():
        a, b = make()(x), getattr(F, name)(x)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", ["softmax", "relu", "sigmoid", "tanh"])
def test_keras_activations_agree_with_functions_under_autocast(name):
    x = _input(name, "float16")
    with nb.amp.autocast():
        a, b = keras.activations.get(name)(x), getattr(F, name)(x)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.numpy(), b.numpy())
