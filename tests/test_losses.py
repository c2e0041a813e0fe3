"""Losses: every function and option against torch.nn.functional in float64 (forward and backward, targets
included), float64 gradcheck and double backward, extreme logits, float32 staying float32, bad input, modules."""
import itertools

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import losses as L
from neuralbook.backend import KERNELS
from tests.helpers import compare_with_torch, torch

tF = torch.nn.functional if torch is not None else None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the oracle here")
TOL = {"atol": 1e-10, "rtol": 1e-10}
REDUCTIONS = ("none", "mean", "sum")


def rng(seed=0):
    return np.random.default_rng(seed)


def tt(a):
    "A constant (weight, pos_weight) for PyTorch."
    return None if a is None else torch.tensor(a)


def labels(shape, C, seed=0, ignore=False):
    t = rng(seed).integers(0, C, size=shape)
    if ignore and t.size > 1: t.reshape(-1)[1] = -100
    return t


# ---------------------------------------------------------------- regression losses
REGRESSION = [
    ("mse", L.mse_loss, lambda: tF.mse_loss, {}),
    ("l1", L.l1_loss, lambda: tF.l1_loss, {}),
    ("huber_0.5", L.huber_loss, lambda: tF.huber_loss, {"delta": 0.5}),
    ("huber_2", L.huber_loss, lambda: tF.huber_loss, {"delta": 2.0}),
    ("smooth_l1_0.7", L.smooth_l1_loss, lambda: tF.smooth_l1_loss, {"beta": 0.7}),
    ("smooth_l1_0", L.smooth_l1_loss, lambda: tF.smooth_l1_loss, {"beta": 0.0}),
]


@needs_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,fn,tfn,kw", REGRESSION, ids=[r[0] for r in REGRESSION])
@pytest.mark.parametrize("shape", [(7,), (3, 4), ()])
def test_regression_vs_torch(name, fn, tfn, kw, reduction, shape):
    x = rng(1).normal(0, 2, shape)
    y = rng(2).normal(0, 2, shape)   # both x and y require grad: the target gets its gradient too
    compare_with_torch(lambda a, b: fn(a, b, reduction=reduction, **kw),
                       lambda a, b: tfn()(a, b, reduction=reduction, **kw), x, y, **TOL)


@needs_torch
@pytest.mark.parametrize("name,fn,tfn,kw", REGRESSION, ids=[r[0] for r in REGRESSION])
def test_regression_kinks_vs_torch(name, fn, tfn, kw):
    "Residuals exactly 0 and exactly ±delta: the same one-sided choices as PyTorch."
    d = kw.get("delta", kw.get("beta", 1.0)) or 1.0
    x = np.array([0.0, d, -d, 1.5, 3 * d])
    y = np.array([0.0, 0.0, 0.0, 1.5, 0.0])
    compare_with_torch(lambda a, b: fn(a, b, reduction="sum", **kw),
                       lambda a, b: tfn()(a, b, reduction="sum", **kw), x, y, **TOL)


@pytest.mark.parametrize("name,fn,tfn,kw", REGRESSION, ids=[r[0] for r in REGRESSION])
def test_regression_gradcheck(name, fn, tfn, kw):
    x = rng(3).normal(0, 2, (3, 2))
    y = x + rng(4).choice([-1.0, 1.0], (3, 2)) * rng(5).uniform(0.1, 3.0, (3, 2))  # away from kinks
    assert nb.gradcheck(lambda a, b: fn(a, b, **kw), x, y)
    if name.startswith(("mse", "huber", "smooth_l1_0.7")):
        assert nb.gradgradcheck(lambda a, b: fn(a, b, reduction="sum", **kw), x, y)


# ---------------------------------------------------------------- cross-entropy with integer labels
CE_SHAPES = [(6, 4), (4,), (3, 4, 5), (2, 3, 2, 3)]


def _ce_case(shape, weight, ignore):
    C = shape[1] if len(shape) > 1 else shape[0]
    batch = shape[:1] + shape[2:] if len(shape) > 1 else ()
    x = rng(7).normal(0, 3, shape)
    t = labels(batch, C, seed=8, ignore=ignore)
    w = rng(9).uniform(0.3, 2.0, C) if weight else None
    return x, t, w


@needs_torch
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight,ignore,smoothing", list(itertools.product([False, True], [False, True], [0.0, 0.25])))
def test_cross_entropy_labels_vs_torch(shape, reduction, weight, ignore, smoothing):
    x, t, w = _ce_case(shape, weight, ignore)
    compare_with_torch(
        lambda a, b: L.cross_entropy(a, b, weight=w, reduction=reduction, label_smoothing=smoothing),
        lambda a, b: tF.cross_entropy(a, b, weight=tt(w), reduction=reduction, label_smoothing=smoothing),
        x, t, **TOL)


@needs_torch
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight,smoothing", list(itertools.product([False, True], [0.0, 0.3])))
def test_cross_entropy_probabilities_vs_torch(shape, reduction, weight, smoothing):
    "Soft targets of the input's shape; the target requires grad too."
    x, _, w = _ce_case(shape, weight, False)
    axis = 1 if len(shape) > 1 else 0
    q = rng(10).uniform(0, 1, shape)
    q /= q.sum(axis=axis, keepdims=True)
    compare_with_torch(
        lambda a, b: L.cross_entropy(a, b, weight=w, reduction=reduction, label_smoothing=smoothing),
        lambda a, b: tF.cross_entropy(a, b, weight=tt(w), reduction=reduction, label_smoothing=smoothing),
        x, q, **TOL)


@needs_torch
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_extreme_logits(dtype, tol, smoothing):
    "Logits of ±1e4: finite loss and gradient, equal to PyTorch's, in float64 and float32."
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [5e3, 1e4, -1e4], [1e4, 1e4, 1e4]], dtype)
    t = np.array([1, 2, 0, 1])
    w = np.array([1.0, 2.0, 0.5], dtype)
    xn = nb.tensor(x, requires_grad=True)
    y = L.cross_entropy(xn, t, weight=w, label_smoothing=smoothing)
    y.backward()
    assert np.isfinite(y.item()) and np.isfinite(xn.grad.numpy()).all()
    assert y.dtype == dtype and xn.grad.dtype == dtype
    xt = torch.tensor(x, requires_grad=True)
    yt = tF.cross_entropy(xt, torch.tensor(t), weight=torch.tensor(w), label_smoothing=smoothing)
    yt.backward()
    np.testing.assert_allclose(y.item(), yt.item(), rtol=tol)
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)
    # probabilities too
    q = np.full(x.shape, 1 / 3, dtype)
    assert np.isfinite(L.cross_entropy(nb.tensor(x), q).item())


@needs_torch
def test_cross_entropy_all_ignored_is_nan_like_torch():
    x, t = rng().normal(size=(3, 4)), np.full(3, -100)
    y = L.cross_entropy(nb.tensor(x), t)
    assert np.isnan(y.item()) and np.isnan(tF.cross_entropy(torch.tensor(x), torch.tensor(t)).item())
    assert L.cross_entropy(nb.tensor(x), t, reduction="sum").item() == 0.0


@needs_torch
def test_cross_entropy_custom_ignore_index():
    x, t = rng().normal(size=(5, 3)), np.array([0, 2, 1, 2, 2])
    compare_with_torch(lambda a, b: L.cross_entropy(a, b, ignore_index=2),
                       lambda a, b: tF.cross_entropy(a, b, ignore_index=2), x, t, **TOL)


GRAD_CASES = [((4, 3), False, False, 0.0, "mean"), ((4, 3), True, True, 0.2, "mean"),
              ((2, 3, 2), True, True, 0.1, "sum"), ((3,), True, False, 0.3, "none"), ((3, 4), False, True, 0.0, "none")]


@pytest.mark.parametrize("shape,weight,ignore,smoothing,reduction", GRAD_CASES, ids=str)
def test_cross_entropy_gradcheck_and_double_backward(shape, weight, ignore, smoothing, reduction):
    x, t, w = _ce_case(shape, weight, ignore)
    f = lambda a: L.cross_entropy(a, t, weight=w, reduction=reduction, label_smoothing=smoothing)
    assert nb.gradcheck(f, x)
    assert nb.gradgradcheck(f, x)


def test_cross_entropy_probabilities_gradcheck():
    x = rng(1).normal(size=(3, 4))
    q = rng(2).dirichlet(np.ones(4), 3)
    w = np.array([1.0, 2.0, 0.5, 1.5])
    f = lambda a, b: L.cross_entropy(a, b, weight=w, label_smoothing=0.1)
    assert nb.gradcheck(f, x, q)
    assert nb.gradgradcheck(f, x, q)


def test_cross_entropy_hessian_is_diag_p_minus_ppT():
    "Exercise 2 of the chapter: the second derivative of one row's loss is diag(p) − p pᵀ."
    z = nb.tensor(rng().normal(size=(1, 4)), requires_grad=True)
    (g,) = nb.grad(L.cross_entropy(z, np.array([2]), reduction="sum"), [z], create_graph=True)
    H = np.stack([nb.grad(g[0, k], [z], retain_graph=True)[0].numpy()[0] for k in range(4)])
    p = nb.functional.softmax(z.data, axis=1)[0]
    np.testing.assert_allclose(H, np.diag(p) - np.outer(p, p), atol=1e-12)


def test_fused_backward_tensor_and_array_paths_agree():
    x, t, w = _ce_case((5, 4), True, True)
    a = nb.tensor(x, requires_grad=True)
    L.cross_entropy(a, t, weight=w, label_smoothing=0.2).backward()
    b = nb.tensor(x, requires_grad=True)
    (gb,) = nb.grad(L.cross_entropy(b, t, weight=w, label_smoothing=0.2), [b], create_graph=True)
    assert gb.creator is not None    # recorded: the tensor path ran
    np.testing.assert_allclose(a.grad.numpy(), gb.numpy(), atol=1e-15)


def test_fused_is_one_node_and_kernels_are_registered():
    x = nb.tensor(rng().normal(size=(4, 3)), requires_grad=True)
    y = L.cross_entropy(x, np.array([0, 1, 2, 0]))
    assert isinstance(y.creator, L.SoftmaxCrossEntropy) and y.creator.inputs[0] is x
    for name in ("softmax_cross_entropy_fwd", "softmax_cross_entropy_bwd"):
        assert KERNELS[name] is getattr(L, name)
    # raw arrays in, raw arrays out
    loss, p = L.softmax_cross_entropy_fwd(x.data, np.array([0, 1, 2, 0]), None, -100, 0.0)
    assert loss.shape == (4,) and p.shape == (4, 3)
    out = L.cross_entropy(x.data, np.array([0, 1, 2, 0]))
    assert not isinstance(out, nb.Tensor) and np.ndim(out) == 0 and np.isclose(out, y.item())


def test_fused_frees_its_buffer():
    x = nb.tensor(rng().normal(size=(4, 3)), requires_grad=True)
    y = L.cross_entropy(x, np.array([0, 1, 2, 0]))
    fn = y.creator
    y.backward()
    assert fn.p is None
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


# ---------------------------------------------------------------- nll
@needs_torch
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight,ignore", list(itertools.product([False, True], [False, True])))
def test_nll_vs_torch(shape, reduction, weight, ignore):
    x, t, w = _ce_case(shape, weight, ignore)
    compare_with_torch(lambda a, b: L.nll_loss(a, b, weight=w, reduction=reduction),
                       lambda a, b: tF.nll_loss(a, b, weight=tt(w), reduction=reduction), x, t, **TOL)


def test_nll_gradcheck_and_equals_cross_entropy():
    x, t, w = _ce_case((2, 3, 2), True, True)
    f = lambda a: L.nll_loss(nb.functional.log_softmax(a, axis=1), t, weight=w)
    assert nb.gradcheck(f, x) and nb.gradgradcheck(f, x)
    np.testing.assert_allclose(f(nb.tensor(x)).item(), L.cross_entropy(nb.tensor(x), t, weight=w).item(), rtol=1e-12)


# ---------------------------------------------------------------- binary cross-entropy
def _bce_case(shape=(4, 3), seed=0):
    p = rng(seed).uniform(0.05, 0.95, shape)
    t = rng(seed + 1).uniform(0, 1, shape)
    return p, t


@needs_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [None, "full", "column"])
def test_bce_vs_torch(reduction, weight):
    p, t = _bce_case()
    w = {None: None, "full": rng(5).uniform(0.5, 2, (4, 3)), "column": rng(5).uniform(0.5, 2, 3)}[weight]
    compare_with_torch(lambda a, b: L.binary_cross_entropy(a, b, weight=w, reduction=reduction),
                       lambda a, b: tF.binary_cross_entropy(a, b, weight=tt(w), reduction=reduction), p, t, **TOL)


@needs_torch
def test_bce_clamps_like_torch():
    "p exactly 0 or 1: the logs are clamped at −100 and p(1 − p) at 1e-12, as in PyTorch."
    p = np.array([0.0, 0.0, 1.0, 1.0, 1e-30, 0.5])
    t = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.5])
    compare_with_torch(lambda a: L.binary_cross_entropy(a, t, reduction="none"),
                       lambda a: tF.binary_cross_entropy(a, torch.tensor(t), reduction="none"), p, **TOL)
    # the target's gradient log(1 − p) − log p is clamped the same way: finite where PyTorch's is ±inf
    tn = nb.tensor(t, requires_grad=True)
    L.binary_cross_entropy(nb.tensor(p), tn, reduction="sum").backward()
    np.testing.assert_allclose(tn.grad.numpy()[:4], [100.0, 100.0, -100.0, -100.0])


def test_bce_gradcheck():
    p, t = _bce_case((3, 2))
    assert nb.gradcheck(lambda a, b: L.binary_cross_entropy(a, b, weight=np.array([1.0, 2.0])), p, t)
    assert nb.gradgradcheck(lambda a, b: L.binary_cross_entropy(a, b, reduction="sum"), p, t)


@needs_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight,pos_weight", list(itertools.product([None, "full", "column"], [None, "column"])))
def test_bce_with_logits_vs_torch(reduction, weight, pos_weight):
    x = rng(2).normal(0, 4, (5, 3))
    x[0] = [1e4, -1e4, 0.0]
    t = rng(3).uniform(0, 1, (5, 3))
    w = {None: None, "full": rng(4).uniform(0.5, 2, (5, 3)), "column": rng(4).uniform(0.5, 2, 3)}[weight]
    pw = None if pos_weight is None else rng(6).uniform(0.5, 3, 3)
    compare_with_torch(
        lambda a, b: L.binary_cross_entropy_with_logits(a, b, weight=w, reduction=reduction, pos_weight=pw),
        lambda a, b: tF.binary_cross_entropy_with_logits(a, b, weight=tt(w), reduction=reduction, pos_weight=tt(pw)),
        x, t, **TOL)


def test_bce_with_logits_gradient_is_sigmoid_minus_target_and_float32():
    x = np.array([-1e4, -30.0, -2.0, 0.0, 3.0, 30.0, 1e4], np.float32)
    t = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])    # float64 target: the loss stays float32
    xn = nb.tensor(x, requires_grad=True)
    y = L.binary_cross_entropy_with_logits(xn, t, reduction="sum")
    y.backward()
    assert y.dtype == np.float32 and xn.grad.dtype == np.float32
    assert np.isfinite(y.item())
    np.testing.assert_allclose(xn.grad.numpy(), nb.functional.sigmoid(x.astype(np.float64)) - t, atol=1e-6)


def test_bce_with_logits_gradcheck():
    x, t = rng(1).normal(0, 2, (3, 2)), rng(2).uniform(0, 1, (3, 2))
    f = lambda a, b, c: L.binary_cross_entropy_with_logits(a, b, weight=np.array([1.0, 0.5]), pos_weight=c)
    pw = np.array([2.0, 0.7])
    assert nb.gradcheck(f, x, t, pw)
    assert nb.gradgradcheck(f, x, t, pw)


# ---------------------------------------------------------------- KL divergence
@needs_torch
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("reduction", ("none", "mean", "batchmean", "sum"))
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_vs_torch(reduction, log_target):
    logp = nb.functional.log_softmax(rng(1).normal(size=(4, 5)), axis=1)
    q = rng(2).dirichlet(np.ones(5), 4)
    target = np.log(q) if log_target else q
    compare_with_torch(lambda a, b: L.kl_div(a, b, reduction=reduction, log_target=log_target),
                       lambda a, b: tF.kl_div(a, b, reduction=reduction, log_target=log_target), logp, target, **TOL)


@needs_torch
def test_kl_div_zero_target_entries():
    logp = nb.functional.log_softmax(rng(1).normal(size=(2, 3)), axis=1)
    q = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    x = nb.tensor(logp, requires_grad=True)
    y = L.kl_div(x, q, reduction="batchmean")
    y.backward()
    xt = torch.tensor(logp, requires_grad=True)
    yt = tF.kl_div(xt, torch.tensor(q), reduction="batchmean")
    yt.backward()
    np.testing.assert_allclose(y.item(), yt.item(), **TOL)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), **TOL)


def test_kl_div_gradcheck():
    logp = rng(1).normal(size=(2, 3))
    q = rng(2).dirichlet(np.ones(3), 2)
    for log_target in (False, True):
        tgt = np.log(q) if log_target else q
        f = lambda a, b, lt=log_target: L.kl_div(a, b, reduction="batchmean", log_target=lt)
        assert nb.gradcheck(f, logp, tgt)
        assert nb.gradgradcheck(f, logp, tgt)


# ---------------------------------------------------------------- dtype
FLOAT32_CASES = [
    ("mse", lambda x: L.mse_loss(x, np.zeros(x.shape))),
    ("l1", lambda x: L.l1_loss(x, np.zeros(x.shape))),
    ("huber", lambda x: L.huber_loss(x, np.zeros(x.shape), delta=0.5)),
    ("smooth_l1", lambda x: L.smooth_l1_loss(x, np.zeros(x.shape), beta=0.5)),
    ("ce_labels", lambda x: L.cross_entropy(x, np.array([0, 2]), weight=np.ones(3), label_smoothing=0.1)),
    ("ce_probs", lambda x: L.cross_entropy(x, np.full((2, 3), 1 / 3), weight=np.ones(3), label_smoothing=0.1)),
    ("nll", lambda x: L.nll_loss(x, np.array([0, 2]), weight=np.ones(3))),
    ("bce", lambda x: L.binary_cross_entropy(nb.functional.sigmoid(x), np.ones(x.shape), weight=np.ones(3))),
    ("bce_logits", lambda x: L.binary_cross_entropy_with_logits(x, np.ones(x.shape), pos_weight=np.ones(3))),
    ("kl", lambda x: L.kl_div(x, np.full((2, 3), 1 / 3), reduction="batchmean")),
]


@pytest.mark.parametrize("name,f", FLOAT32_CASES, ids=[c[0] for c in FLOAT32_CASES])
def test_float32_stays_float32(name, f):
    x = nb.tensor(np.array([[0.1, -0.4, 0.3], [2.0, 0.5, -1.0]], np.float32), requires_grad=True)
    y = f(x)
    y.backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32


# ---------------------------------------------------------------- bad input
def test_label_out_of_range_names_label_and_classes():
    x = nb.tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"cross_entropy: target label 7 is out of range for 3 classes"):
        L.cross_entropy(x, np.array([0, 7]))
    with pytest.raises(ValueError, match=r"target label -1 is out of range for 3 classes"):
        L.cross_entropy(x, np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"nll_loss: target label 3 is out of range for 3 classes"):
        L.nll_loss(x, np.array([3, 0]))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"mse_loss: input of shape \(4, 1\) and target of shape \(4,\) differ"):
        L.mse_loss(nb.tensor(np.zeros((4, 1))), np.zeros(4))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: input of shape \(3,\) and target of "
                                         r"shape \(2,\)"):
        L.binary_cross_entropy_with_logits(nb.tensor(np.zeros(3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"cross_entropy: input of shape \(4, 3\) needs integer labels of shape "
                                         r"\(4,\).*got target of shape \(5,\)"):
        L.cross_entropy(nb.tensor(np.zeros((4, 3))), np.zeros(5, int))
    with pytest.raises(ValueError, match=r"cross_entropy: input of shape \(4, 3\) needs a target.*got shape \(4, 2\)"):
        L.cross_entropy(nb.tensor(np.zeros((4, 3))), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"kl_div: input of shape \(2, 3\) and target of shape \(3, 2\)"):
        L.kl_div(nb.tensor(np.zeros((2, 3))), np.zeros((3, 2)))


def test_wrong_dtypes():
    x = nb.tensor(np.zeros((4, 3)))
    # integral float labels (as read from a CSV) are labels; non-integral ones are refused (issue 21)
    assert L.nll_loss(x, np.zeros(4)).item() == L.nll_loss(x, np.zeros(4, np.int64)).item()
    assert L.cross_entropy(x, np.array([0.0, 1.0, 2.0, 1.0])).item() == L.cross_entropy(x, np.array([0, 1, 2, 1])).item()
    with pytest.raises(ValueError, match=r"nll_loss: target value 0.5 is not a class label: sparse labels are integers"):
        L.nll_loss(x, np.array([0.0, 0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"cross_entropy: target value 1.5 is not a class label.*np.rint\(target\)"
                                         r".*class probabilities of the input's shape \(4, 3\)"):
        L.cross_entropy(x, np.array([0.0, 1.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"cross_entropy: target value nan is not a class label"):
        L.cross_entropy(x, np.array([0.0, np.nan, 1.0, 2.0]))
    with pytest.raises(TypeError, match=r"nll_loss: target must hold integer class labels, got dtype bool"):
        L.nll_loss(x, np.zeros(4, bool))
    with pytest.raises(TypeError, match=r"mse_loss: input must be floating point, got int64"):
        L.mse_loss(np.zeros(3, np.int64), np.zeros(3))


def test_bad_options():
    x = nb.tensor(np.zeros((4, 3)))
    t = np.zeros(4, int)
    with pytest.raises(ValueError, match=r"cross_entropy: reduction must be one of 'none', 'mean', 'sum', got 'avg'"):
        L.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match=r"'batchmean'"):
        L.kl_div(x, np.zeros((4, 3)), reduction="avg")
    with pytest.raises(ValueError, match=r"weight must have one entry per class, shape \(3,\), got \(4,\)"):
        L.cross_entropy(x, t, weight=np.ones(4))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        L.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"huber_loss: delta \(beta\) must be positive, got -1"):
        L.huber_loss(x, np.zeros((4, 3)), delta=-1)
    with pytest.raises(ValueError, match=r"binary_cross_entropy: input must be probabilities in \[0, 1\], got values "
                                         r"in \[-0.5, 2.0\]; for raw scores \(logits\) use"):
        L.binary_cross_entropy(nb.tensor(np.array([-0.5, 2.0])), np.zeros(2))
    with pytest.raises(ValueError, match=r"binary_cross_entropy: target must be probabilities in \[0, 1\]"):
        L.binary_cross_entropy(nb.tensor(np.array([0.5, 0.5])), np.array([0.0, 3.0]))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\) does not broadcast to the input's shape "
                                         r"\(4, 3\)"):
        L.binary_cross_entropy_with_logits(x, np.zeros((4, 3)), pos_weight=np.ones(4))
    with pytest.raises(ValueError, match=r"cross_entropy: input must have a class axis"):
        L.cross_entropy(nb.tensor(np.float64(1.0)), np.array(0))


# ---------------------------------------------------------------- modules
MODULES = [
    (L.MSELoss(), L.mse_loss, {}, "reg"),
    (L.L1Loss(reduction="sum"), L.l1_loss, {"reduction": "sum"}, "reg"),
    (L.HuberLoss(delta=0.5), L.huber_loss, {"delta": 0.5}, "reg"),
    (L.SmoothL1Loss(beta=0.5), L.smooth_l1_loss, {"beta": 0.5}, "reg"),
    (L.CrossEntropyLoss(weight=np.array([1.0, 2.0, 0.5]), label_smoothing=0.1, ignore_index=1), L.cross_entropy,
     {"weight": np.array([1.0, 2.0, 0.5]), "label_smoothing": 0.1, "ignore_index": 1}, "cls"),
    (L.NLLLoss(weight=np.array([1.0, 2.0, 0.5])), L.nll_loss, {"weight": np.array([1.0, 2.0, 0.5])}, "cls"),
    (L.BCELoss(weight=np.array([1.0, 2.0, 0.5])), L.binary_cross_entropy,
     {"weight": np.array([1.0, 2.0, 0.5])}, "prob"),
    (L.BCEWithLogitsLoss(pos_weight=np.array([1.0, 2.0, 0.5])), L.binary_cross_entropy_with_logits,
     {"pos_weight": np.array([1.0, 2.0, 0.5])}, "reg"),
    (L.KLDivLoss(reduction="batchmean", log_target=True), L.kl_div,
     {"reduction": "batchmean", "log_target": True}, "reg"),
]


@pytest.mark.parametrize("module,fn,kw,kind", MODULES, ids=[type(m[0]).__name__ for m in MODULES])
def test_modules_match_functions(module, fn, kw, kind):
    assert isinstance(module, nb.nn.Module)
    x = rng(1).uniform(0.1, 0.9, (4, 3))
    t = {"reg": rng(2).normal(size=(4, 3)), "prob": rng(2).uniform(0, 1, (4, 3)), "cls": np.array([0, 1, 2, 2])}[kind]
    np.testing.assert_allclose(module(nb.tensor(x), t).numpy(), fn(nb.tensor(x), t, **kw).numpy(), rtol=1e-15)


def test_module_weight_is_a_buffer():
    m = L.CrossEntropyLoss(weight=np.array([1.0, 2.0]))
    assert list(m.state_dict()) == ["weight"] and isinstance(m.weight, nb.Tensor)
    assert "reduction='mean'" in repr(m) and "label_smoothing=0.0" in repr(m)
    assert list(L.BCEWithLogitsLoss().state_dict()) == []
