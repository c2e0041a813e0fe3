"""Batch and layer normalisation (chapter 13): training statistics, running-statistics updates and evaluation
mode against PyTorch (1-d and 2-d), layer norm, float64 gradient checks, dtypes, layers and bad input."""
import numpy as np
import pytest

import neuralbook as nb
from neuralbook.norm import BatchNorm1d, BatchNorm2d, LayerNorm, batch_norm, batchnorm_stats, layer_norm
from tests.helpers import compare_with_torch, torch

tF = torch.nn.functional if torch is not None else None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the oracle")
SHAPES = [(6, 3), (5, 3, 4), (4, 3, 5, 2)]


@needs_torch
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_and_running_stats(shape, affine):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape)
    wb = [rng.standard_normal(3), rng.standard_normal(3)] if affine else []
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    trm, trv = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    compare_with_torch(lambda x, *wb: batch_norm(x, rm, rv, *wb, training=True, momentum=0.3, eps=1e-3),
                       lambda x, *wb: tF.batch_norm(x, trm, trv, *wb, training=True, momentum=0.3, eps=1e-3),
                       x, *wb, atol=1e-8, rtol=1e-8)
    np.testing.assert_allclose(rm, trm.numpy(), atol=1e-12)     # updated in place, with the unbiased variance
    np.testing.assert_allclose(rv, trv.numpy(), atol=1e-12)
    compare_with_torch(lambda x, *wb: batch_norm(x, rm, rv, *wb, training=False),
                       lambda x, *wb: tF.batch_norm(x, trm, trv, *wb, training=False), x, *wb, atol=1e-8, rtol=1e-8)
    compare_with_torch(lambda x: batch_norm(x, None, None, training=True), lambda x: tF.batch_norm(x, None, None, training=True),
                       x, atol=1e-8, rtol=1e-8)


@needs_torch
@pytest.mark.parametrize("ns", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(ns, affine):
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(2, 3, 4)[-len(ns):] if len(ns) == 3 else (5,) + (2, 3, 4)[-len(ns):])
    wb = [rng.standard_normal(ns), rng.standard_normal(ns)] if affine else []
    compare_with_torch(lambda x, *wb: layer_norm(x, ns, *wb, eps=1e-4), lambda x, *wb: tF.layer_norm(x, ns, *wb, eps=1e-4),
                       x, *wb, atol=1e-8, rtol=1e-8)


@needs_torch
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("cls,tcls,shape", [(BatchNorm1d, "BatchNorm1d", (8, 4)), (BatchNorm1d, "BatchNorm1d", (8, 4, 3)),
                                            (BatchNorm2d, "BatchNorm2d", (8, 4, 3, 2))])
def test_batchnorm_modules_match_torch(cls, tcls, shape, momentum):
    rng = np.random.default_rng(2)
    ours, theirs = cls(4, momentum=momentum), getattr(torch.nn, tcls)(4, momentum=momentum)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for step in range(3):
        x = rng.normal(step, 1 + step, size=shape).astype(np.float32)
        np.testing.assert_allclose(ours(nb.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), atol=1e-5)
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), atol=1e-6, err_msg=k)
    ours.eval(); theirs.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(ours(nb.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), atol=1e-5)
    assert int(ours.num_batches_tracked.item()) == 3


@needs_torch
def test_batchnorm_without_running_stats_and_layernorm_module():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 2, 2)).astype(np.float32)
    ours, theirs = BatchNorm2d(3, track_running_stats=False, affine=False), torch.nn.BatchNorm2d(3, track_running_stats=False, affine=False)
    ours.eval(); theirs.eval()                         # no running statistics: batch statistics even in eval mode
    np.testing.assert_allclose(ours(nb.tensor(x)).numpy(), theirs(torch.tensor(x)).numpy(), atol=1e-5)
    assert ours.running_mean is None and list(ours.state_dict()) == []
    ln, tln = LayerNorm((2, 2)), torch.nn.LayerNorm((2, 2))
    assert repr(ln) == repr(tln) and [n for n, _ in ln.named_parameters()] == ["weight", "bias"]
    np.testing.assert_allclose(ln(nb.tensor(x)).numpy(), tln(torch.tensor(x)).detach().numpy(), atol=1e-5)
    assert LayerNorm(4, bias=False).bias is None and LayerNorm(4, elementwise_affine=False).weight is None
    assert list(BatchNorm2d(3, bias=False).state_dict()) == list(torch.nn.BatchNorm2d(3, bias=False).state_dict())
    assert repr(BatchNorm2d(3, affine=False)) == repr(torch.nn.BatchNorm2d(3, affine=False))


def test_gradcheck_first_and_second_order():
    rng = np.random.default_rng(4)
    x, w, b = rng.normal(1, 2, (4, 3, 2, 2)), rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    assert nb.gradcheck(lambda x, w, b: batch_norm(x, None, None, w, b, training=True), x, w, b)
    assert nb.gradcheck(lambda x, w, b: batch_norm(x, rm, rv, w, b, training=False), x, w, b)
    assert nb.gradcheck(lambda x: batch_norm(x, None, None, training=True), x[:, :, 0, 0])
    assert nb.gradgradcheck(lambda x, w, b: batch_norm(x, None, None, w, b, training=True), x[:3, :, :1], w, b)
    assert nb.gradcheck(lambda x, w, b: layer_norm(x, (2, 2), w, b), x, w[:2].repeat(2).reshape(2, 2), b[:2].repeat(2).reshape(2, 2))
    assert nb.gradgradcheck(lambda x, w: layer_norm(x, 4, w), x.reshape(12, 4)[:3], rng.standard_normal(4))


def test_stats_kernel_and_float32():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((64, 3, 4, 4)) * 0.1 + 1000.0).astype(np.float32)   # large mean, small spread
    mean, var = batchnorm_stats(x, (0, 2, 3))
    assert mean.shape == var.shape == (1, 3, 1, 1) and mean.dtype == var.dtype == np.float32
    np.testing.assert_allclose(var.ravel(), x.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-3)
    m = BatchNorm2d(3)
    xt = nb.tensor(x, requires_grad=True)
    y = m(xt)
    (y * y).sum().backward()
    assert y.dtype == xt.grad.dtype == m.weight.grad.dtype == m.running_mean.dtype == np.float32
    assert LayerNorm(4)(nb.tensor(x[..., 0])).dtype == np.float32
    assert BatchNorm1d(3, dtype="float64").weight.dtype == np.float64


def test_train_and_eval_modes_differ():
    m = BatchNorm1d(2)
    x = nb.tensor(np.array([[0.0, 10.0], [2.0, 30.0]], np.float32))
    np.testing.assert_allclose(m(x).numpy(), [[-1, -1], [1, 1]], atol=1e-3)
    m.eval()
    np.testing.assert_allclose(m.running_mean.numpy(), [0.1, 2.0], atol=1e-6)
    y = m(x).numpy()                                   # running statistics: (x − 0.1·μ) / √(0.9 + 0.1·σ²_unbiased)
    np.testing.assert_allclose(y[:, 0], (np.array([0, 2]) - 0.1) / np.sqrt(0.9 + 0.2 + 1e-5), rtol=1e-5)


def test_bad_input_messages():
    x = nb.tensor(np.zeros((4, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(5\): the input \(4, 3, 2, 2\) has 3 channels \(axis 1\), expected num_features=5"):
        BatchNorm2d(5)(x)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): expected a 4-D input, got shape \(4, 3\)"):
        BatchNorm2d(3)(nb.tensor(np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): expected a 2-D or 3-D input, got shape \(4, 3, 2, 2\)"):
        BatchNorm1d(3)(x)
    with pytest.raises(ValueError, match=r"batch_norm: expected more than 1 value per channel when training, got input of shape \(1, 3\)"):
        BatchNorm1d(3)(nb.tensor(np.zeros((1, 3), np.float32)))
    with pytest.raises(ValueError, match=r"batch_norm: weight must have shape \(3,\), got \(4,\)"):
        batch_norm(x, None, None, np.ones(4, np.float32), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: evaluation \(training=False\) needs running_mean and running_var"):
        batch_norm(x, None, None)
    with pytest.raises(ValueError, match=r"batch_norm: expected an input \(N, C, \*\) with at least 2 axes, got shape \(3,\)"):
        batch_norm(np.zeros(3), None, None, training=True)
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(3,\) must equal the last axes of the input, got shape \(4, 3, 2, 2\)"):
        LayerNorm(3)(x)
    with pytest.raises(ValueError, match=r"layer_norm: weight must have shape \(2, 2\), got \(4,\)"):
        layer_norm(x, (2, 2), np.ones(4, np.float32))


@pytest.mark.gpu
def test_gpu_matches_cpu():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3, 4, 4)).astype(np.float32)
    res = {}
    for dev in ("cpu", "cuda"):
        m = BatchNorm2d(3).to(dev)
        xt = nb.tensor(x, device=dev, requires_grad=True)
        y = layer_norm(m(xt), (4, 4))
        (y * y * y).sum().backward()
        res[dev] = (y.numpy(), xt.grad.numpy(), m.running_var.numpy())
    for a, b in zip(res["cuda"], res["cpu"]): np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
