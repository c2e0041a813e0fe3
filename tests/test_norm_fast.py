"""Chapter 13's matrix-view batch norm: batch-innermost and NCHW layouts against PyTorch, float64 gradients, the
gradient's layout, layer norm on the fast path, and what the node keeps after forward."""
import numpy as np
import pytest

import neuralbook as nb
from neuralbook.norm import BatchNorm2d, NormalizeFn, _rows_plan, batch_norm, layer_norm
from tests.helpers import torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the oracle")


def _chwn(rng, n, c, h, w, dtype):
    return rng.normal(1.0, 2.0, (c, h, w, n)).astype(dtype).transpose(3, 0, 1, 2)   # (N, C, H, W) view


@needs_torch
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("layout", ["chwn", "nchw"])
def test_batchnorm2d_fast_path_matches_torch(dtype, tol, layout):
    rng = np.random.default_rng(0)
    x = _chwn(rng, 16, 8, 8, 8, dtype)
    if layout == "nchw": x = np.ascontiguousarray(x)
    assert _rows_plan(x, (0, 2, 3), []) is not None
    gy = rng.standard_normal(x.shape).astype(dtype)
    ours, theirs = BatchNorm2d(8, dtype=dtype), torch.nn.BatchNorm2d(8, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    w, b = rng.standard_normal(8).astype(dtype), rng.standard_normal(8).astype(dtype)
    ours.weight.data[...], ours.bias.data[...] = w, b
    with torch.no_grad(): theirs.weight.copy_(torch.tensor(w)); theirs.bias.copy_(torch.tensor(b))
    xt, tx = nb.tensor(x, requires_grad=True), torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    y, ty = ours(xt), theirs(tx)
    y.backward(nb.tensor(gy)); ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), rtol=tol, atol=tol * 100)
    np.testing.assert_allclose(ours.bias.grad.numpy(), theirs.bias.grad.numpy(), rtol=tol, atol=tol * 100)
    np.testing.assert_allclose(ours.running_var.numpy(), theirs.running_var.numpy(), rtol=tol)
    np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(), rtol=tol, atol=tol)


def test_fast_path_gradcheck_and_layouts():
    rng = np.random.default_rng(1)
    x, w, b = _chwn(rng, 4, 3, 4, 4, np.float64), rng.standard_normal(3), rng.standard_normal(3)
    f = lambda x, w, b: batch_norm(x, None, None, w, b, training=True)
    assert nb.gradcheck(f, x, w, b) and nb.gradcheck(f, np.ascontiguousarray(rng.normal(size=(3, 3, 8, 8))), w, b)
    assert nb.gradgradcheck(f, x[:3, :, :2], w, b)                      # create_graph: the general path
    assert nb.gradcheck(lambda x, w, b: layer_norm(x, 64, w, b), rng.normal(size=(2, 3, 64)),
                        rng.standard_normal(64), rng.standard_normal(64))
    # the output and the raw gradient keep x's memory layout, whatever layout ȳ comes in
    order = lambda a: np.argsort(a.strides).tolist()
    x = _chwn(rng, 8, 4, 4, 4, np.float32)
    fn = NormalizeFn((0, 2, 3), 1e-5, False, False)
    y = fn(nb.tensor(x, requires_grad=True))
    fn.xs = (x,)
    gx, = fn.backward(np.ones(x.shape, np.float32))                    # a C-ordered ȳ
    assert order(y.data) == order(x) and order(gx) == order(x)


def test_node_keeps_no_full_size_array():
    rng = np.random.default_rng(2)
    for x, axes in [(_chwn(rng, 16, 8, 8, 8, np.float32), (0, 2, 3)), (rng.normal(size=(16, 8, 8, 8)), (0, 2, 3)),
                    (rng.normal(size=(16, 8)), (0,)), (rng.normal(size=(4, 5, 64)), (2,))]:
        fn = NormalizeFn(axes, 1e-5, False, False)
        fn(nb.tensor(x, requires_grad=True))
        arrays = [v for v in vars(fn).values() if isinstance(v, np.ndarray)]
        arrays += [p for k, p in (fn.plan[3] if getattr(fn, "plan", None) else [])]
        assert max(a.size for a in arrays) <= x.size // 8, [(k, v.shape) for k, v in vars(fn).items() if hasattr(v, "shape")]


def test_float32_variance_accuracy_on_long_rows():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 4, 32, 32)) * 0.1 + 100.0).astype(np.float32).transpose(0, 1, 2, 3)
    x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)     # rows of 65,536 values
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    y = batch_norm(x, rm, rv, training=True, momentum=1.0)
    ref = x.astype(np.float64).var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(rv, ref, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(y).astype(np.float64).std(axis=(0, 2, 3)), 1.0, rtol=1e-3)
