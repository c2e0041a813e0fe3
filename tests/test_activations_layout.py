"""Chapter 03a: the gradient of an elementwise activation takes the memory layout of the activation's value, for
broadcast and C-ordered ȳ, float16/32/64 and 0-d arrays, with the same values as the plain expressions."""
import numpy as np
import pytest

import neuralbook as nb
from neuralbook import activations as A

order = lambda a: np.argsort(a.strides, kind="stable").tolist()
OPS = [("ReLU", (), lambda x, y, g: g * (y > 0)),
       ("LeakyReLU", (0.1,), lambda x, y, g: g * np.where(x > 0, x.dtype.type(1), x.dtype.type(0.1))),
       ("ELU", (0.7,), lambda x, y, g: np.where(x > 0, g, g * (y + 0.7))),
       ("Sigmoid", (), lambda x, y, g: g * y * (1.0 - y)),
       ("Tanh", (), lambda x, y, g: g * (1.0 - y * y))]


def _backward(name, args, x, gy):
    f = getattr(A, name)(*args)
    y = f.forward(x)
    f.xs, f.ys = (x,), (y,)
    return y, f.backward(gy)


@pytest.mark.parametrize("name,args,ref", OPS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("kind", ["broadcast", "nchw"])
def test_gradient_follows_the_value_layout(name, args, ref, dtype, kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype).transpose(3, 0, 1, 2)     # (N, C, H, W), batch innermost
    if kind == "broadcast": gy = np.broadcast_to(rng.standard_normal((6, 3, 1, 1)).astype(dtype), x.shape)
    else: gy = rng.standard_normal(x.shape).astype(dtype)
    y, g = _backward(name, args, x, gy)
    assert g.shape == x.shape and g.dtype == dtype and order(g) == order(x)
    np.testing.assert_array_equal(g, ref(x, y, gy))


@pytest.mark.parametrize("name,args,ref", OPS)
def test_zero_d_and_autograd(name, args, ref):
    x = np.array(0.5, np.float32)
    y, g = _backward(name, args, x, np.array(2.0, np.float32))
    assert np.shape(g) == () and g.dtype == np.float32
    np.testing.assert_array_equal(g, ref(x, y, np.float32(2.0)))
    t = nb.tensor(np.float64(-0.3), requires_grad=True)
    getattr(A, name)(*args)(t).backward()
    assert t.grad.shape == ()
    assert nb.gradcheck(lambda v: getattr(A, name)(*args)(v), np.random.default_rng(1).normal(size=(3, 4)))
    assert nb.gradgradcheck(lambda v: getattr(A, name)(*args)(v), np.random.default_rng(2).normal(size=(2, 3)) + 0.1)


def test_relu_step_gradient_in_layout():
    buf = np.random.default_rng(3).normal(size=(3, 5, 5, 4)).astype(np.float32)
    xl = nb.tensor(buf.transpose(3, 0, 1, 2), requires_grad=True)
    A.relu(xl).mean(axis=(2, 3)).sum().backward()
    assert order(xl.grad.data) == order(xl.data)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("coef", [0.3, 0.01, 1.0, 2.5, -0.5, 0.0])
def test_two_branch_gradients_exact_for_any_coefficient(dtype, coef):
    "LeakyReLU and ELU backward, written as [x ≤ 0]·b + [x > 0] (no masked copies): bit-equal to the branch formula."
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 6, 7)).astype(dtype)
    x[0, 0, :3] = 0                                                        # the kink takes the lower branch
    gy = rng.standard_normal(x.shape).astype(dtype)
    y, g = _backward("LeakyReLU", (coef,), x, gy)
    np.testing.assert_array_equal(g, gy * np.where(x > 0, dtype(1), dtype(coef)))
    y, g = _backward("ELU", (coef,), x, gy)
    np.testing.assert_array_equal(g, np.where(x > 0, gy, gy * (y + dtype(coef))))


@pytest.mark.parametrize("alpha", [1.0, -0.5, 2.0])
def test_elu_and_leaky_relu_match_torch(alpha):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).standard_normal((4, 3, 5))
    for ours, theirs in ((A.elu, torch.nn.functional.elu), (A.leaky_relu, torch.nn.functional.leaky_relu)):
        t = nb.tensor(x, requires_grad=True)
        (ours(t, alpha) ** 2).sum().backward()
        tt = torch.tensor(x, requires_grad=True)
        (theirs(tt, alpha) ** 2).sum().backward()
        np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=1e-12, atol=1e-12)
