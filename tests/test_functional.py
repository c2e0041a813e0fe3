"""One table of differentiable ops drives every check: float64 gradcheck over generated shapes (broadcasting,
size-1 axes, 0-d, non-contiguous inputs), forward and backward against PyTorch, double backward where claimed,
and float32 staying float32."""
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import neuralbook as nb
import neuralbook.functional as F
from tests.helpers import compare_with_torch, torch

tF = torch.nn.functional if torch is not None else None

# ---------------------------------------------------------------- input samplers
def shapes(min_dims=0, max_dims=3):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=4)


def values(draw, shape, kind="any"):
    "float64 values away from kinks; `pos` positive, `any` signed with |x| >= 0.1."
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    mag = rng.uniform(0.1, 2.0, size=shape)
    a = np.asarray(mag if kind == "pos" else mag * rng.choice([-1.0, 1.0], size=shape))
    layout = draw(st.sampled_from(["c", "f", "strided"])) if a.ndim >= 1 else "c"
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "strided":
        a = np.repeat(a, 2, axis=-1)[..., ::2]  # a non-contiguous view with the same values
    return a


def axis_for(draw, ndim):
    return draw(st.none() | st.integers(-ndim, ndim - 1)) if ndim else None


@st.composite
def unary(draw, kind="any", min_dims=0):
    return (values(draw, draw(shapes(min_dims)), kind),), {}


@st.composite
def reduction(draw, min_dims=0):
    a = values(draw, draw(shapes(min_dims)))
    return (a,), {"axis": axis_for(draw, a.ndim), "keepdims": draw(st.booleans())}


@st.composite
def broadcast_pair(draw, kind0="any", kind1="any"):
    s = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3))
    # the factor keeps the two operands apart even when hypothesis draws the same seed twice (no ties at kinks)
    return (values(draw, s.input_shapes[0], kind0), np.asarray(1.37 * values(draw, s.input_shapes[1], kind1))), {}


@st.composite
def matmul_pair(draw):
    k, n, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["2d", "1d-left", "1d-right", "batched", "broadcast-batch"]))
    sa, sb = {"2d": ((n, k), (k, m)), "1d-left": ((k,), (k, m)), "1d-right": ((n, k), (k,)),
              "batched": ((2, n, k), (2, k, m)), "broadcast-batch": ((3, 1, n, k), (2, k, m))}[kind]
    return (values(draw, sa), values(draw, sb)), {}


@st.composite
def softmax_in(draw):
    a = values(draw, draw(shapes(1)))
    return (a,), {"axis": draw(st.integers(-a.ndim, a.ndim - 1))}


@st.composite
def linear_in(draw):
    n, i, o = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    lead = draw(st.sampled_from([(n,), (2, n), ()]))
    return (values(draw, lead + (i,)), values(draw, (o, i)), values(draw, (o,))), {}


@st.composite
def index_in(draw):
    a = values(draw, (4, 3))
    kind = draw(st.sampled_from(["slice", "int", "repeat", "mask", "mixed", "newaxis"]))
    idx = {"slice": (slice(1, None, 2), slice(None, 2)), "int": 2, "repeat": np.array([0, 2, 0, 0]),
           "mask": a > 0, "mixed": (np.array([1, 1, 3]), slice(0, 2)), "newaxis": (None, Ellipsis, 1)}[kind]
    return (a,), {"index": idx}


@st.composite
def join_in(draw):
    s = draw(shapes(1, 3))
    ax = draw(st.integers(0, len(s) - 1))
    n = draw(st.integers(1, 3))
    return tuple(values(draw, s) for _ in range(n)), {"axis": ax}


@st.composite
def where_in(draw):
    (a, b), _ = draw(broadcast_pair())
    cond = np.random.default_rng(draw(st.integers(0, 99))).random(np.broadcast_shapes(a.shape, b.shape)) > 0.5
    return (a, b), {"cond": cond}


@st.composite
def clip_in(draw):
    a = values(draw, draw(shapes()))
    lo, hi = draw(st.sampled_from([(-0.5, 0.5), (None, 0.7), (-0.3, None)]))
    return (a,), {"lo": lo, "hi": hi}


@st.composite
def shape_in(draw):
    a = values(draw, draw(shapes(1)))
    return (a,), {}


# ---------------------------------------------------------------- the table
# name: (sampler, neuralbook fn(*tensors, **kw), torch fn(*tensors, **kw) or None, double backward?)
def _t_axis(kw):
    ax = kw.get("axis")
    return {} if ax is None else {"dim": ax}


def _t_reduce(name):
    def f(x, axis=None, keepdims=False):
        if axis is None:
            out = getattr(torch, name)(x)
            return out.reshape((1,) * x.ndim) if keepdims else out
        return getattr(torch, name)(x, dim=axis, keepdim=keepdims)
    return f


def _t_var(x, axis=None, keepdims=False):
    return torch.var(x, dim=axis, keepdim=keepdims, correction=0) if axis is not None else (
        torch.var(x, correction=0).reshape((1,) * x.ndim) if keepdims else torch.var(x, correction=0))


OPS = {
    "add": (broadcast_pair(), lambda a, b: a + b, lambda a, b: a + b, True),
    "radd": (broadcast_pair(), lambda a, b: 2.0 + a, lambda a, b: 2.0 + a, True),
    "sub": (broadcast_pair(), lambda a, b: a - b, lambda a, b: a - b, True),
    "rsub": (broadcast_pair(), lambda a, b: 1.5 - b, lambda a, b: 1.5 - b, True),
    "mul": (broadcast_pair(), lambda a, b: a * b, lambda a, b: a * b, True),
    "div": (broadcast_pair(), lambda a, b: a / b, lambda a, b: a / b, True),
    "rdiv": (broadcast_pair(), lambda a, b: 2.0 / b, lambda a, b: 2.0 / b, True),
    "neg": (unary(), lambda a: -a, lambda a: -a, True),
    "pow_const": (unary("pos"), lambda a: a ** 2.5, lambda a: a ** 2.5, True),
    "pow_tensor": (broadcast_pair("pos"), lambda a, b: a ** b, lambda a, b: a ** b, True),
    "rpow": (unary(), lambda a: 2.0 ** a, lambda a: 2.0 ** a, True),
    "exp": (unary(), lambda a: a.exp(), torch.exp if torch else None, True),
    "log": (unary("pos"), lambda a: a.log(), torch.log if torch else None, True),
    "sqrt": (unary("pos"), F.sqrt, torch.sqrt if torch else None, True),
    "abs": (unary(), F.abs, torch.abs if torch else None, True),
    "erf": (unary(), F.erf, torch.erf if torch else None, True),
    "sum": (reduction(), F.sum, _t_reduce("sum"), True),
    "mean": (reduction(), F.mean, _t_reduce("mean"), True),
    "var": (reduction(), F.var, _t_var, True),
    "max": (reduction(), F.max, _t_reduce("amax"), True),
    "min": (reduction(), F.min, _t_reduce("amin"), True),
    "logsumexp": (reduction(1), F.logsumexp,
                  lambda x, axis=None, keepdims=False: torch.logsumexp(
                      x, dim=tuple(range(x.ndim)) if axis is None else axis, keepdim=keepdims), True),
    "reshape": (shape_in(), lambda a: a.reshape(-1), lambda a: a.reshape(-1), True),
    "transpose": (shape_in(), lambda a: a.T, lambda a: a.permute(*reversed(range(a.ndim))), True),
    "squeeze_unsqueeze": (shape_in(), lambda a: F.squeeze(F.unsqueeze(a, 0), 0) * 1.0,
                          lambda a: a.unsqueeze(0).squeeze(0) * 1.0, True),
    "getitem": (index_in(), lambda a, index: a[index],
                lambda a, index: a[torch.as_tensor(index) if isinstance(index, np.ndarray) else
                                   tuple(torch.as_tensor(i) if isinstance(i, np.ndarray) else i for i in index)
                                   if isinstance(index, tuple) else index], True),
    "concatenate": (join_in(), lambda *xs, axis: F.concatenate(xs, axis=axis),
                    lambda *xs, axis: torch.cat(xs, dim=axis), True),
    "stack": (join_in(), lambda *xs, axis: F.stack(xs, axis=axis), lambda *xs, axis: torch.stack(xs, dim=axis), True),
    "where": (where_in(), lambda a, b, cond: F.where(cond, a, b),
              lambda a, b, cond: torch.where(torch.as_tensor(cond), a, b), True),
    "maximum": (broadcast_pair(), F.maximum, torch.maximum if torch else None, True),
    "minimum": (broadcast_pair(), F.minimum, torch.minimum if torch else None, True),
    "clip": (clip_in(), F.clip, lambda a, lo, hi: torch.clamp(a, lo, hi), True),
    "matmul": (matmul_pair(), lambda a, b: a @ b, lambda a, b: a @ b, True),
    "linear": (linear_in(), F.linear, tF.linear if torch else None, True),
    "dense": (linear_in(), lambda x, w, b: F.dense(x, w.T, b), tF.linear if torch else None, True),
    "relu": (unary(), F.relu, torch.relu if torch else None, True),
    "leaky_relu": (unary(), lambda a: F.leaky_relu(a, 0.1), lambda a: tF.leaky_relu(a, 0.1), True),
    "elu": (unary(), lambda a: F.elu(a, 0.7), lambda a: tF.elu(a, 0.7), True),
    "gelu": (unary(), F.gelu, tF.gelu if torch else None, True),
    "gelu_tanh": (unary(), lambda a: F.gelu(a, "tanh"), lambda a: tF.gelu(a, approximate="tanh"), True),
    "sigmoid": (unary(), F.sigmoid, torch.sigmoid if torch else None, True),
    "tanh": (unary(), F.tanh, torch.tanh if torch else None, True),
    "silu": (unary(), F.silu, tF.silu if torch else None, True),
    "selu": (unary(), F.selu, tF.selu if torch else None, True),
    "softplus": (unary(), F.softplus, tF.softplus if torch else None, True),
    # (through nn.Softplus, which holds chapter 03's softplus even while chapter 99 rebinds F.softplus to losses')
    "softplus_beta": (unary(), lambda a: nb.nn.Softplus(beta=2.0)(a), lambda a: tF.softplus(a, beta=2.0), True),
    "mish": (unary(), F.mish, tF.mish if torch else None, True),
    "softmax": (softmax_in(), F.softmax, lambda a, axis: torch.softmax(a, dim=axis), True),
    "log_softmax": (softmax_in(), F.log_softmax, lambda a, axis: torch.log_softmax(a, dim=axis), True),
}


@pytest.mark.parametrize("name", list(OPS))
@given(data=st.data())
def test_gradcheck(name, data):
    sampler, fn, _, _ = OPS[name]
    arrays, kw = data.draw(sampler)
    assert nb.gradcheck(lambda *xs: fn(*xs, **kw), *arrays)


@pytest.mark.parametrize("name", list(OPS))
@given(data=st.data())
def test_matches_torch(name, data):
    if torch is None:
        pytest.skip("torch not installed")
    sampler, fn, tfn, _ = OPS[name]
    arrays, kw = data.draw(sampler)
    compare_with_torch(lambda *xs: fn(*xs, **kw), lambda *xs: tfn(*xs, **kw), *arrays)


@pytest.mark.parametrize("name", [n for n, v in OPS.items() if v[3]])
@given(data=st.data())
def test_double_backward(name, data):
    sampler, fn, _, _ = OPS[name]
    arrays, kw = data.draw(sampler)
    assert nb.gradgradcheck(lambda *xs: fn(*xs, **kw), *arrays, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", list(OPS))
def test_float32_stays_float32(name):
    sampler, fn, _, _ = OPS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays, kw = sampler.example()
    xs = [nb.tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
    y = fn(*xs, **kw)
    assert y.dtype == np.float32, f"{name}: float32 in, {y.dtype} out"
    y.sum().backward()
    for x in xs:
        assert x.grad is None or x.grad.dtype == np.float32


def test_embedding_matches_torch_and_scatters_repeats():
    W = np.random.default_rng(0).standard_normal((5, 3))
    ids = np.array([[0, 4, 0], [2, 0, 1]])
    assert nb.gradcheck(lambda w: F.embedding(ids, w), W)
    if torch is not None:
        compare_with_torch(lambda w: F.embedding(ids, w), lambda w: tF.embedding(torch.as_tensor(ids), w), W)
    with pytest.raises(IndexError, match=r"embedding: ids must be in \[0, 5\)"):
        F.embedding(np.array([5]), nb.tensor(W))


def test_getitem_repeated_indices_add_up():
    x = nb.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x[np.array([0, 0, 2, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 0.0, 1.0])


def test_max_ties_share_gradient():
    x = nb.tensor([1.0, 3.0, 3.0], requires_grad=True)
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.5, 0.5])


def test_softmax_stable_for_huge_logits():
    z = nb.tensor([[1e4, -1e4, 0.0], [1000.0, 1001.0, 1002.0]], requires_grad=True)
    y = F.log_softmax(z)
    y.sum().backward()
    assert np.isfinite(y.numpy()).all() and np.isfinite(z.grad.numpy()).all()
    assert np.isfinite(F.softmax(z).numpy()).all()
    assert np.isfinite(F.logsumexp(z, axis=1).numpy()).all()


# ---------------------------------------------------------------- bad input
def test_elementwise_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"add: shapes \(3, 4\) and \(5,\) cannot be broadcast"):
        nb.tensor(np.ones((3, 4))) + nb.tensor(np.ones(5))
    with pytest.raises(ValueError, match=r"mul: shapes \(2,\) and \(3,\)"):
        nb.tensor([1.0, 2.0]) * nb.tensor([1.0, 2.0, 3.0])


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(3, 4\) and \(5, 6\) do not align: 4 .* != 5"):
        nb.tensor(np.ones((3, 4))) @ nb.tensor(np.ones((5, 6)))
    with pytest.raises(ValueError, match=r"linear: input of shape \(2, 3\) has 3 features"):
        F.linear(nb.tensor(np.ones((2, 3))), nb.tensor(np.ones((4, 5))))


def test_reshape_and_axis_errors():
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\)"):
        nb.tensor(np.ones((2, 3))).reshape(4, 2)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        nb.tensor(np.ones((2, 3))).sum(axis=2)
    with pytest.raises(ValueError, match="squeeze: axis 0"):
        F.squeeze(nb.tensor(np.ones((2, 3))), 0)


def test_ops_accept_raw_arrays_and_return_arrays():
    a = np.arange(6.0).reshape(2, 3)
    assert isinstance(F.softmax(a), np.ndarray) and isinstance(F.sum(a, axis=0), np.ndarray)


def test_softplus_silu_selu_stable_at_extremes():
    x = nb.tensor([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    sp, si, se = F.softplus(x).numpy(), F.silu(x).numpy(), F.selu(x).numpy()
    assert np.isfinite(sp).all() and np.isfinite(si).all() and np.isfinite(se).all()
    assert sp[-1] == 1000.0 and sp[0] == 0.0 and abs(sp[2] - np.log(2.0)) < 1e-7
    assert si[-1] == 1000.0 and si[0] == 0.0
    np.testing.assert_allclose(se[0], -1.0507009873554805 * 1.6732632423543772, rtol=1e-6)
    assert F.softplus(nb.tensor(np.zeros(3, np.float32))).dtype == np.float32


def test_losses_softplus_is_the_functional_one():
    from neuralbook import losses
    x = nb.tensor(np.linspace(-4, 4, 9))
    np.testing.assert_array_equal(losses.softplus(x).numpy(), F.softplus(x).numpy())


def test_activations_module_is_reexported_by_functional():
    "chapter 03a's module: F.relu is activations.relu, and F.__all__ still lists every activation (GPU op table)."
    from neuralbook import activations
    for name in activations.__all__:
        assert getattr(F, name) is getattr(activations, name), name
        assert name in F.__all__, name


def test_gelu_float32_blocked_kernel_matches_torch_and_float64():
    "chapter 03a: float32 GELU on the CPU runs block by block (erf by A&S 7.1.26): across blocks, on a strided view"
    from neuralbook.activations import _gelu_f32
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((70, 600)) * 3).astype(np.float32)[:, ::2]           # 21,000 elements: two blocks
    g = rng.standard_normal(x.shape).astype(np.float32)
    t = nb.tensor(x, requires_grad=True)
    y = F.gelu(t)
    y.backward(nb.tensor(g))
    assert y.dtype == np.float32 and t.grad.dtype == np.float32
    x64 = x.astype(np.float64)
    from scipy.special import erf
    cdf = 0.5 * (1 + erf(x64 / np.sqrt(2)))
    np.testing.assert_allclose(y.numpy(), x64 * cdf, atol=1e-6, rtol=0)
    np.testing.assert_allclose(t.grad.numpy(), g * (cdf + x64 * np.exp(-x64 ** 2 / 2) / np.sqrt(2 * np.pi)),
                               atol=4e-6, rtol=0)
    assert np.array_equal(_gelu_f32(x, block=1000), _gelu_f32(x))                # block size does not change bits
    if torch is not None:
        tx = torch.tensor(x, requires_grad=True)
        tF.gelu(tx).backward(torch.tensor(g))
        np.testing.assert_allclose(y.numpy(), tF.gelu(torch.tensor(x)).numpy(), atol=2e-6, rtol=0)
        np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), atol=1e-5, rtol=0)
    with nb.no_grad():                                                           # float64 keeps the exact erf
        assert np.array_equal(F.gelu(nb.tensor(x64)).numpy(), x64 * (0.5 * (1.0 + erf(x64 * (1 / np.sqrt(2))))))
