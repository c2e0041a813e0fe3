"""Chapter 15: transposed convolution — F.conv_transpose2d / nn.ConvTranspose2d (chapter 12's op) checked as the
adjoint of conv2d, against PyTorch over strides, paddings and output_padding, gradcheck, double backward, the emulated
GPU, bad input; and the output-size helpers of neuralbook.conv_transpose."""
import itertools

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.conv import ConvTranspose2d, conv2d, conv_transpose2d
from neuralbook.conv_transpose import conv_transpose_output_size, output_padding_for

try:
    import torch
    import torch.nn.functional as tF
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the oracle")

GRID = [(s, p, o) for s, p, o in itertools.product((1, 2, 3), (0, 1, 2), (0, 1, 2)) if o < s]


def _case(seed, k=3, cin=3, cout=2, hw=(4, 5)):
    r = np.random.default_rng(seed)
    return r.standard_normal((2, cin) + hw), r.standard_normal((cin, cout, k, k)), r.standard_normal(cout)


@needs_torch
@pytest.mark.parametrize("s,p,o", GRID)
def test_forward_and_backward_match_torch(s, p, o):
    x, w, b = _case(s * 100 + p * 10 + o)
    kw = dict(stride=s, padding=p, output_padding=o)
    ours = [nb.tensor(a, requires_grad=True) for a in (x, w, b)]
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y, ty = conv_transpose2d(*ours, **kw), tF.conv_transpose2d(*theirs, **kw)
    assert y.shape == tuple(ty.shape) == (2, 2) + conv_transpose_output_size((4, 5), 3, s, p, o)
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-6, atol=1e-6)
    v = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(v); ty.backward(torch.tensor(v))
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.data, t.grad.numpy(), rtol=1e-6, atol=1e-6)


@needs_torch
@pytest.mark.parametrize("dilation,groups", [(2, 1), (1, 3), (2, 3)])
def test_dilation_and_groups_match_torch(dilation, groups):
    r = np.random.default_rng(7)
    x, w = r.standard_normal((2, 6, 4, 4)), r.standard_normal((6, 2, 3, 3))
    kw = dict(stride=2, padding=1, output_padding=1, dilation=dilation, groups=groups)
    np.testing.assert_allclose(conv_transpose2d(x, w, **kw), tF.conv_transpose2d(torch.tensor(x), torch.tensor(w), **kw),
                               rtol=1e-6, atol=1e-6)


@needs_torch
def test_layer_layout_and_init_match_torch():
    nb.manual_seed(0)
    m = ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    t = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    assert m.weight.shape == tuple(t.weight.shape) == (8, 4, 3, 3) and m.bias.shape == (4,)
    bound = 1 / np.sqrt(4 * 9)   # PyTorch: fan-in from the weight's second axis (out_channels / groups)·k·k
    assert np.abs(m.weight.data).max() <= bound and np.abs(m.bias.data).max() <= bound
    assert np.abs(m.weight.data).max() > 0.8 * bound
    x = np.random.default_rng(0).standard_normal((1, 8, 5, 5)).astype(np.float32)
    with torch.no_grad():
        t.weight.copy_(torch.tensor(m.weight.data)); t.bias.copy_(torch.tensor(m.bias.data))
        np.testing.assert_allclose(m(x).data, t(torch.tensor(x)).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s,p,o", [(1, 0, 0), (2, 1, 1), (3, 2, 1)])
def test_gradcheck_and_adjoint(s, p, o):
    x, w, b = _case(3, k=3, cin=2, cout=2, hw=(3, 3))
    assert nb.gradcheck(lambda x, w, b: conv_transpose2d(x, w, b, stride=s, padding=p, output_padding=o), x, w, b)
    y = conv_transpose2d(x, w, stride=s, padding=p, output_padding=o)
    z = np.random.default_rng(4).standard_normal(y.shape)
    # <convT(x), z> == <x, conv(z)>: the two are adjoint
    assert np.isclose((y * z).sum(), (x * conv2d(z, w, stride=s, padding=p)).sum())


def test_double_backward():
    x, w, _ = _case(5, cin=2, cout=2, hw=(3, 3))
    xt, wt = nb.tensor(x, requires_grad=True), nb.tensor(w, requires_grad=True)
    y = conv_transpose2d(xt, wt, stride=2, padding=1)
    (gx,) = nb.autograd.grad((y ** 2).sum(), [xt], create_graph=True)
    (gx ** 2).sum().backward()
    assert wt.grad is not None and np.isfinite(wt.grad.data).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_gpu_matches_cpu(cp, dtype):
    x, w, b = (a.astype(dtype) for a in _case(9, cin=3, cout=2, hw=(4, 4)))
    out = {}
    for device in ("cpu", "cuda"):
        ins = [nb.tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
        y = conv_transpose2d(*ins, stride=2, padding=1, output_padding=1)
        y.backward(nb.tensor(np.ones(y.shape, dtype), device=device))
        out[device] = [y.numpy()] + [t.grad.numpy() for t in ins]
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for a, c in zip(out["cuda"], out["cpu"]):
        np.testing.assert_allclose(a, c, **tol)


def test_bad_input():
    x, w = np.zeros((1, 3, 4, 4)), np.zeros((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv_transpose2d: the input \(1, 3, 4, 4\) has 3 channels but the weight "
                                         r"\(2, 2, 3, 3\) expects 2"):
        conv_transpose2d(x, w)
    with pytest.raises(ValueError, match=r"conv_transpose2d: output_padding \(2, 2\) must be smaller than the stride \(2, 2\)"):
        conv_transpose2d(np.zeros((1, 2, 4, 4)), w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"conv_transpose2d: output_padding \(1, 1\) must be smaller than the stride \(1, 1\)"):
        conv_transpose2d(np.zeros((1, 2, 4, 4)), w, output_padding=1)
    with pytest.raises(ValueError, match=r"ConvTranspose2d\(.*\): the input \(1, 5, 4, 4\) has 5 channels, expected in_channels=2"):
        ConvTranspose2d(2, 3, 3)(np.zeros((1, 5, 4, 4), np.float32))


def test_output_size_helpers():
    assert conv_transpose_output_size(4, 3, 2, 1) == (7, 7)
    assert conv_transpose_output_size((4, 5), (3, 4), (2, 3), (1, 0), (1, 2), (1, 2)) == (8, 21)
    for H in range(5, 12):
        down = conv2d(np.zeros((1, 1, H, H)), np.zeros((1, 1, 3, 3)), stride=3, padding=1)
        op = output_padding_for(down.shape[2:], (H, H), 3, 3, 1)
        assert conv_transpose2d(down, np.zeros((1, 1, 3, 3)), stride=3, padding=1, output_padding=op).shape[2:] == (H, H)
    with pytest.raises(ValueError, match=r"output_padding_for: .* can produce heights and widths 7…8 and 7…8, not \(10, 10\)"):
        output_padding_for(4, 10, 3, 2, 1)
    with pytest.raises(ValueError, match=r"conv_transpose_output_size: stride must be an int >= 1"):
        conv_transpose_output_size(4, 3, 0)
