"""Convolution and pooling (chapter 12): forward and backward against PyTorch over many random geometries, float64
gradient checks (first and second order), the columns built in bands of output rows (same numbers, bounded memory),
layouts, dtypes, layers and the error messages for bad input."""
import math
import tracemalloc
import weakref

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import conv as conv_module
from neuralbook import nn
from neuralbook.conv import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    Conv2d,
    ConvTranspose2d,
    MaxPool2d,
    adaptive_avg_pool2d,
    avg_pool2d,
    col2im,
    conv2d,
    conv_transpose2d,
    im2col,
    max_pool2d,
)
from tests.helpers import compare_with_torch, torch

tF = torch.nn.functional if torch is not None else None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the oracle")


# ------------------------------------------------------------------ random geometries
def conv_case(seed):
    "A random (but always valid) conv2d problem: arrays and PyTorch-style keyword arguments."
    rng = np.random.default_rng(seed)
    g = int(rng.choice([1, 1, 2, 3]))
    C, K = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    sh, sw = (int(v) for v in rng.integers(1, 3, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2))
    ph, pw = (int(v) for v in rng.integers(0, 3, 2))
    H = int(rng.integers(1, 7)) + dh * (kh - 1)
    W = int(rng.integers(1, 7)) + dw * (kw - 1)
    x = rng.standard_normal((int(rng.integers(1, 4)), C, H, W))
    w = rng.standard_normal((K, C // g, kh, kw))
    b = rng.standard_normal(K)
    return x, w, b, {"stride": (sh, sw), "padding": (ph, pw), "dilation": (dh, dw), "groups": g}, rng


@needs_torch
@pytest.mark.parametrize("seed", range(60))
def test_conv2d_matches_torch(seed):
    x, w, b, kw, _ = conv_case(seed)
    compare_with_torch(lambda x, w, b: conv2d(x, w, b, **kw), lambda x, w, b: tF.conv2d(x, w, b, **kw), x, w, b,
                       atol=1e-8, rtol=1e-8)


@needs_torch
@pytest.mark.parametrize("seed", range(60))
def test_conv_transpose2d_matches_torch(seed):
    x, _, _, kw, rng = conv_case(seed)
    g = kw["groups"]
    kh, kwid = (int(v) for v in rng.integers(1, 4, 2))
    w = rng.standard_normal((x.shape[1], g * int(rng.integers(1, 3)), kh, kwid))
    (sh, sw), (dh, dw) = kw["stride"], kw["dilation"]
    op = (int(rng.integers(0, sh)), int(rng.integers(0, sw)))
    ph, pw = (min(p, (d * (k - 1)) // 2) for p, d, k in zip(kw["padding"], (dh, dw), (kh, kwid)))
    kt = {"stride": (sh, sw), "padding": (ph, pw), "output_padding": op, "groups": g, "dilation": (dh, dw)}
    b = rng.standard_normal(w.shape[1] * g)
    compare_with_torch(lambda x, w, b: conv_transpose2d(x, w, b, **kt), lambda x, w, b: tF.conv_transpose2d(x, w, b, **kt),
                       x, w, b, atol=1e-8, rtol=1e-8)


@needs_torch
@pytest.mark.parametrize("seed", range(60))
def test_pools_match_torch(seed):
    rng = np.random.default_rng(1000 + seed)
    k, s, d = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
    p = int(rng.integers(0, k // 2 + 1))
    ceil = bool(rng.integers(0, 2))
    H, W = (int(v) + d * (k - 1) for v in rng.integers(1, 8, 2))
    x = np.round(rng.standard_normal((2, 3, H, W)) * 2) / 2          # many ties: the first maximum must win
    compare_with_torch(lambda x: max_pool2d(x, k, s, p, d, ceil), lambda x: tF.max_pool2d(x, k, s, p, d, ceil), x,
                       atol=1e-8, rtol=1e-8)
    cip = bool(rng.integers(0, 2))
    dov = None if rng.integers(0, 4) else 3
    compare_with_torch(lambda x: avg_pool2d(x, k, s, p, ceil, cip, dov), lambda x: tF.avg_pool2d(x, k, s, p, ceil, cip, dov),
                       x, atol=1e-8, rtol=1e-8)
    out = (int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1)))
    compare_with_torch(lambda x: adaptive_avg_pool2d(x, out), lambda x: tF.adaptive_avg_pool2d(x, out), x,
                       atol=1e-8, rtol=1e-8)


@needs_torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("k,dilation", [((2, 2), 1), ((3, 4), 1), ((3, 3), 2), ((1, 2), (1, 3))])
def test_padding_same_and_valid(k, dilation):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3) + k)
    for mode in ("same", "valid"):
        compare_with_torch(lambda x, w, mode=mode: conv2d(x, w, padding=mode, dilation=dilation),
                           lambda x, w, mode=mode: tF.conv2d(x, w, padding=mode, dilation=dilation), x, w,
                           atol=1e-8, rtol=1e-8)
    assert conv2d(x, w, padding="same", dilation=dilation).shape == (2, 4, 7, 6)


@needs_torch
@pytest.mark.parametrize("size", [1, (2, None), (3, 2), (7, 6)])
def test_adaptive_sizes(size):
    x = np.random.default_rng(1).standard_normal((2, 2, 7, 6))
    compare_with_torch(lambda x: adaptive_avg_pool2d(x, size), lambda x: tF.adaptive_avg_pool2d(x, size), x, atol=1e-8)


@needs_torch
@pytest.mark.parametrize("band_bytes", [None, 1])
def test_double_backward_matches_torch(band_bytes, monkeypatch):
    "Second derivatives through conv2d, conv_transpose2d and max_pool2d equal PyTorch's (also one row per band)."
    if band_bytes: monkeypatch.setattr(conv_module, "_BAND_BYTES", band_bytes)
    rng = np.random.default_rng(3)
    x, w, v = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((6, 2, 3, 2)), rng.standard_normal((2, 6, 3, 5))
    wt = rng.standard_normal((4, 3, 2, 2))

    def f(F, x, w, wt):
        y = F["conv"](x, w, stride=(2, 1), padding=1, groups=2, dilation=(1, 2))
        z = F["convt"](F["pool"](x, 2, 1), wt, stride=2, padding=1, output_padding=1, groups=2)
        return (y * y * F["t"](v)).sum() + (z * z * z).sum()

    ours = {"conv": conv2d, "convt": conv_transpose2d, "pool": max_pool2d, "t": nb.tensor}
    theirs = {"conv": tF.conv2d, "convt": tF.conv_transpose2d, "pool": tF.max_pool2d, "t": torch.tensor}
    a = [nb.tensor(t, requires_grad=True) for t in (x, w, wt)]
    ta = [torch.tensor(t, requires_grad=True) for t in (x, w, wt)]
    ga = nb.grad(f(ours, *a), a, create_graph=True)
    tga = torch.autograd.grad(f(theirs, *ta), ta, create_graph=True)
    for g, tg in zip(ga, tga): np.testing.assert_allclose(g.numpy(), tg.detach().numpy(), atol=1e-8)
    s = sum(((g * g).sum() for g in ga), nb.tensor(0.0, dtype="float64"))
    ts = sum((g * g).sum() for g in tga)
    gg = nb.grad(s, a)
    tgg = torch.autograd.grad(ts, ta)
    for g, tg in zip(gg, tgg): np.testing.assert_allclose(g.numpy(), tg.numpy(), atol=1e-7, rtol=1e-7)


# ------------------------------------------------------------------ columns in bands of output rows
@pytest.fixture(params=[1, 300], ids=["one-row-bands", "few-row-bands"])
def small_bands(request, monkeypatch):
    "A column budget so small that every convolution is split into bands (1 byte: one output row per band)."
    monkeypatch.setattr(conv_module, "_BAND_BYTES", request.param)
    return request.param


@needs_torch
@pytest.mark.parametrize("seed", range(0, 60, 3))
def test_banded_conv2d_and_transpose_match_torch(seed, small_bands):
    x, w, b, kw, rng = conv_case(seed)
    compare_with_torch(lambda x, w, b: conv2d(x, w, b, **kw), lambda x, w, b: tF.conv2d(x, w, b, **kw), x, w, b,
                       atol=1e-8, rtol=1e-8)
    g, (sh, sw) = kw["groups"], kw["stride"]
    wt = rng.standard_normal((x.shape[1], g, 2, 3))
    kt = {"stride": (sh, sw), "padding": (1, 1), "output_padding": (sh - 1, 0), "groups": g, "dilation": (1, 1)}
    compare_with_torch(lambda x, w: conv_transpose2d(x, w, **kt), lambda x, w: tF.conv_transpose2d(x, w, **kt), x, wt,
                       atol=1e-8, rtol=1e-8)


@needs_torch
@pytest.mark.parametrize("kw", [{"padding": 3}, {"padding": (3, 0), "stride": 2}, {"padding": 2, "dilation": 2},
                                {"padding": (0, 1), "stride": (3, 1)}])
def test_bands_that_lie_in_the_padding(kw, small_bands):
    "Output rows that read nothing but padding (padding wider than the kernel), and bands cut short by the stride."
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((2, 3, 7, 5)), rng.standard_normal((4, 3, 1, 2))
    compare_with_torch(lambda x, w: conv2d(x, w, **kw), lambda x, w: tF.conv2d(x, w, **kw), x, w, atol=1e-8, rtol=1e-8)


def test_band_columns_are_the_column_blocks_of_im2col(small_bands):
    "Concatenated along the column axis, the bands' columns are exactly im2col's (zeros of the padding included)."
    rng = np.random.default_rng(9)
    for x, args in ((rng.standard_normal((2, 3, 9, 7)), ((3, 2), (2, 1), (2, 1, 0, 1), (2, 1))),
                    (rng.standard_normal((1, 2, 4, 4)), ((1, 1), (1, 1), (3, 2, 1, 1), (1, 1))),
                    (rng.standard_normal((3, 1, 8, 6)), ((2, 2), (3, 2), (0, 0, 0, 0), (1, 1)))):
        cols = im2col(x, *args)
        OH, OW = cols.shape[3:5]
        bands = conv_module._bands(np, x.shape[1], args[0], (OH, OW), x.shape[0], x.itemsize)
        assert len(bands) > 1 and bands[0][0] == 0 and bands[-1][1] == OH
        parts = [conv_module._band_cols(x, band, *args, OH) for band in bands]
        np.testing.assert_array_equal(np.concatenate(parts, axis=3), cols)


def test_conv_step_never_holds_all_columns():
    "LeNet's second layer (64 × 8 × 14 × 14, 3×3, padding 1): its 3.6 MB of columns never exist at once."
    rng = np.random.default_rng(10)
    x = nb.tensor(rng.standard_normal((64, 8, 14, 14)).astype(np.float32), requires_grad=True)
    w = nb.tensor(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), requires_grad=True)
    gy = rng.standard_normal((64, 16, 14, 14)).astype(np.float32)
    cols_bytes = 8 * 9 * 14 * 14 * 64 * 4
    tracemalloc.start()
    try:
        y = conv2d(x, w, padding=1)
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        y.backward(gy)
        backward_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # forward: its output (0.8 MB) and one band of columns (1 MB); backward: the output gradient as a matrix
    # (0.8 MB), the padded input gradient (0.5 MB) and one band (1 MB). All columns at once would be 3.6 MB more.
    assert forward_peak < 0.6 * cols_bytes, forward_peak
    assert backward_peak < 0.75 * cols_bytes, backward_peak
    ref = tF.conv2d(torch.tensor(x.numpy(), requires_grad=True), torch.tensor(w.numpy()), padding=1) if torch else None
    if ref is not None: np.testing.assert_allclose(y.numpy(), ref.detach().numpy(), atol=1e-4)


def test_max_pool2d_frees_its_input_after_its_backward():
    "The pooled activation is freed as soon as max_pool2d's backward has run, not when the whole graph goes."
    x = nb.tensor(np.random.default_rng(11).standard_normal((2, 8, 32, 32)), requires_grad=True)
    h = x * 2.0
    alive = weakref.ref(h.data)
    loss = (max_pool2d(h, 2) ** 2).sum()
    del h
    assert alive() is not None                       # still needed: backward compares it with the maxima
    loss.backward()
    assert alive() is None                           # gone, though `loss` still holds the graph
    pooled = np.maximum.reduce([(2 * x.numpy())[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)])
    expected = np.zeros(x.shape)
    for i in (0, 1):                                 # the first maximum (row-major) of each window gets 2 · 2y
        for j in (0, 1):
            first = (2 * x.numpy())[:, :, i::2, j::2] == pooled
            expected[:, :, i::2, j::2] = np.where(first, 2 * 2 * pooled, 0)
    np.testing.assert_allclose(x.grad.numpy(), expected)


@needs_torch
def test_max_pool2d_double_backward_on_a_freed_input():
    "create_graph through max_pool2d of a large intermediate (its input tensor is a stub): PyTorch's numbers."
    x = np.random.default_rng(12).standard_normal((2, 4, 40, 40))
    a, ta = nb.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    (g,) = nb.grad((max_pool2d(a * 1.5, 2) ** 3).sum(), [a], create_graph=True)
    (tg,) = torch.autograd.grad((tF.max_pool2d(ta * 1.5, 2) ** 3).sum(), [ta], create_graph=True)
    np.testing.assert_allclose(g.numpy(), tg.detach().numpy(), atol=1e-10)
    (gg,) = nb.grad((g * g).sum(), [a])
    (tgg,) = torch.autograd.grad((tg * tg).sum(), [ta])
    np.testing.assert_allclose(gg.numpy(), tgg.numpy(), atol=1e-8)


# ------------------------------------------------------------------ numerical gradients
@pytest.mark.parametrize("kw", [{}, {"stride": 2, "padding": 1}, {"stride": (1, 2), "dilation": (2, 1), "groups": 2},
                                {"padding": "same", "dilation": 2}])
def test_conv2d_gradcheck(kw):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 4, 5, 5)), rng.standard_normal((4, 4 // kw.get("groups", 1), 3, 2)), rng.standard_normal(4)
    assert nb.gradcheck(lambda x, w, b: conv2d(x, w, b, **kw), x, w, b)
    assert nb.gradgradcheck(lambda x, w: conv2d(x, w, **kw), x[:1], w)


def test_banded_gradcheck(small_bands):
    rng = np.random.default_rng(13)
    x, w, b = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((4, 2, 3, 2)), rng.standard_normal(4)
    kw = {"stride": (2, 1), "padding": (2, 1), "dilation": (1, 2), "groups": 2}
    assert nb.gradcheck(lambda x, w, b: conv2d(x, w, b, **kw), x, w, b)
    assert nb.gradgradcheck(lambda x, w: conv2d(x, w, **kw), x[:1], w)
    wt = rng.standard_normal((4, 3, 3, 2))
    assert nb.gradcheck(lambda x, w: conv_transpose2d(x, w, stride=2, padding=1, output_padding=1, groups=2), x[:, :, :3],
                        wt)
    assert nb.gradgradcheck(lambda x, w: conv_transpose2d(x, w, stride=2, groups=2), x[:1, :, :3, :3], wt)


def test_conv_transpose2d_and_pools_gradcheck():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal((4, 3, 3, 2))
    assert nb.gradcheck(lambda x, w, b: conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2,
                                                         dilation=(1, 2)), x, w, rng.standard_normal(6))
    assert nb.gradgradcheck(lambda x, w: conv_transpose2d(x, w, stride=2, groups=2), x[:1], w)
    xp = rng.standard_normal((2, 2, 6, 5))
    for f in (lambda x: max_pool2d(x, 3, 2, padding=1, ceil_mode=True), lambda x: max_pool2d(x, 2, 1, dilation=2),
              lambda x: avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False),
              lambda x: adaptive_avg_pool2d(x, (4, 3))):
        assert nb.gradcheck(f, xp)
    assert nb.gradgradcheck(lambda x: max_pool2d(x, 2, 1) ** 2, xp[:1])
    assert nb.gradgradcheck(lambda x: avg_pool2d(x, 3, 2, padding=1) ** 2, xp[:1])


def test_im2col_col2im_are_adjoint():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 7, 8))
    args = ((3, 2), (2, 3), (1, 0, 2, 1), (2, 1))
    cols = im2col(x, *args)
    assert cols.flags.c_contiguous and cols.shape[:3] == (2, 3, 2) and cols.shape[-1] == 3
    z = rng.standard_normal(cols.shape)
    assert np.isclose((cols * z).sum(), (x * col2im(z, x.shape, *args)).sum())


# ------------------------------------------------------------------ layouts and dtypes
def test_any_memory_layout_gives_the_same_result():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((3, 4, 9, 8)), rng.standard_normal((5, 4, 3, 3))
    ref = conv2d(np.ascontiguousarray(x), w, stride=2, padding=1)
    for xv in (np.asfortranarray(x), np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2),
               np.repeat(x, 2, axis=3)[..., ::2]):
        np.testing.assert_allclose(conv2d(xv, w, stride=2, padding=1), ref, atol=1e-12)
        np.testing.assert_allclose(max_pool2d(xv, 2), max_pool2d(np.ascontiguousarray(x), 2))


def test_float32_stays_float32():
    rng = np.random.default_rng(5)
    x = nb.tensor(rng.standard_normal((2, 2, 6, 6)), dtype="float32", requires_grad=True)
    w = nb.tensor(rng.standard_normal((4, 2, 3, 3)), dtype="float32", requires_grad=True)
    b = nb.tensor(rng.standard_normal(4), dtype="float32", requires_grad=True)
    wt = nb.tensor(rng.standard_normal((4, 2, 2, 2)), dtype="float32", requires_grad=True)
    h = conv2d(x, w, b, padding=1)
    outs = [h, max_pool2d(h, 2), avg_pool2d(h, 2), adaptive_avg_pool2d(h, (3, 2)), adaptive_avg_pool2d(h, 1),
            conv_transpose2d(h, wt, stride=2)]
    sum((o * o).sum() for o in outs).backward()
    assert {o.dtype for o in outs} == {np.dtype(np.float32)}
    assert {t.grad.dtype for t in (x, w, b, wt)} == {np.dtype(np.float32)}


def test_raw_arrays_in_raw_arrays_out():
    x = np.ones((1, 1, 4, 4))
    for y in (conv2d(x, np.ones((1, 1, 2, 2))), max_pool2d(x, 2), avg_pool2d(x, 2), adaptive_avg_pool2d(x, 3)):
        assert isinstance(y, np.ndarray)


# ------------------------------------------------------------------ layers
@needs_torch
def test_layers_match_torch_modules():
    nb.manual_seed(0)
    pairs = [(Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2), torch.nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, groups=2)),
             (Conv2d(4, 2, 3, padding="same", bias=False, dilation=2), torch.nn.Conv2d(4, 2, 3, padding="same", bias=False, dilation=2)),
             (ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), torch.nn.ConvTranspose2d(4, 3, 3, 2, 1, 1)),
             (MaxPool2d(3, 2, padding=1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)),
             (AvgPool2d(2), torch.nn.AvgPool2d(2)), (AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1)),
             (AdaptiveAvgPool2d((3, 2)), torch.nn.AdaptiveAvgPool2d((3, 2)))]
    x = np.random.default_rng(6).standard_normal((2, 4, 7, 6)).astype(np.float32)
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
        ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
        np.testing.assert_allclose(ours(nb.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), atol=1e-5)


def test_conv_layer_init_like_pytorch():
    nb.manual_seed(0)
    m = Conv2d(6, 32, 5, groups=2)
    bound = 1 / math.sqrt(3 * 25)                      # kaiming_uniform(a=√5) → U(±1/√fan_in), fan_in = C/groups·kh·kw
    w = m.weight.numpy()
    assert m.weight.shape == (32, 3, 5, 5) and m.weight.dtype == np.float32 and m.weight.requires_grad
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound and abs(w.std() - bound / math.sqrt(3)) < 0.01
    assert np.abs(m.bias.numpy()).max() <= bound
    t = ConvTranspose2d(6, 4, 3, groups=2)
    assert t.weight.shape == (6, 2, 3, 3) and np.abs(t.bias.numpy()).max() <= 1 / math.sqrt(2 * 9)
    assert [n for n, _ in nn.Sequential(m, MaxPool2d(2), t).named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert Conv2d(1, 2, 3, dtype="float64").weight.dtype == np.float64


def test_lenet_trains():
    "A LeNet step on random data decreases the loss (the whole stack: conv, ReLU, pool, flatten, linear)."
    from neuralbook import optim
    from neuralbook.losses import cross_entropy
    nb.manual_seed(0)
    model = nn.Sequential(Conv2d(1, 4, 3, padding=1), nn.ReLU(), MaxPool2d(2), Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                          AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 16)
    X[np.arange(16), 0, y, y] += 4.0                  # a learnable signal
    opt = optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        loss = cross_entropy(model(nb.tensor(X)), y)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------ bad input
def test_bad_input_messages():
    x = np.zeros((1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: kernel 5×5 \(dilated 5×5\) is larger than the padded input 3×3"):
        conv2d(x, np.zeros((4, 2, 5, 5)))
    with pytest.raises(ValueError, match=r"conv2d: kernel 3×3 \(dilated 5×5\) is larger than the padded input 5×3 \(input 3×3, padding \(1, 1, 0, 0\)\)"):
        conv2d(x, np.zeros((4, 2, 3, 3)), padding=(1, 0), dilation=2)
    with pytest.raises(ValueError, match=r"conv2d: the input \(1, 2, 3, 3\) has 2 channels but the weight \(4, 3, 1, 1\) expects 3"):
        conv2d(x, np.zeros((4, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"conv2d: expected a 4-D input \(N, C, H, W\), got shape \(2, 3, 3\); add the batch"):
        conv2d(x[0], np.zeros((4, 2, 1, 1)))
    with pytest.raises(ValueError, match=r"conv2d: expected a 4-D weight"):
        conv2d(x, np.zeros((4, 2, 1)))
    with pytest.raises(ValueError, match=r"conv2d: groups=2 must divide both the input channels \(2\) and the output channels \(3\)"):
        conv2d(x, np.zeros((3, 1, 1, 1)), groups=2)
    with pytest.raises(ValueError, match=r"conv2d: groups=3 must divide both the input channels \(2\)"):
        conv2d(x, np.zeros((3, 1, 1, 1)), groups=3)
    with pytest.raises(ValueError, match=r"conv2d: bias must have shape \(4,\)"):
        conv2d(x, np.zeros((4, 2, 1, 1)), np.zeros(3))
    with pytest.raises(TypeError, match=r"conv2d: input \(float32\) and weight \(float64\) must have the same"):
        conv2d(x.astype(np.float32), np.zeros((4, 2, 1, 1)))
    with pytest.raises(ValueError, match=r"conv2d: stride must be an int >= 1"):
        conv2d(x, np.zeros((4, 2, 1, 1)), stride=0)
    with pytest.raises(ValueError, match=r"conv2d: padding='same' needs stride 1"):
        conv2d(x, np.zeros((4, 2, 1, 1)), stride=2, padding="same")
    with pytest.raises(ValueError, match=r"conv2d: padding must be an int, a pair, 'valid' or 'same'"):
        conv2d(x, np.zeros((4, 2, 1, 1)), padding="full")
    with pytest.raises(ValueError, match=r"conv_transpose2d: output_padding \(1, 1\) must be smaller than the stride"):
        conv_transpose2d(x, np.zeros((2, 1, 2, 2)), output_padding=1)
    with pytest.raises(ValueError, match=r"conv_transpose2d: the input \(1, 2, 3, 3\) has 2 channels but the weight \(3, 1, 2, 2\) expects 3"):
        conv_transpose2d(x, np.zeros((3, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"max_pool2d: kernel 4×4 \(dilated 4×4\) is larger than the padded input 3×3"):
        max_pool2d(x, 4)
    with pytest.raises(ValueError, match=r"max_pool2d: padding \(2, 2\) must be at most half the kernel size \(3, 3\)"):
        max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match=r"avg_pool2d: expected a 4-D input \(N, C, H, W\), got shape \(3, 3\)"):
        avg_pool2d(x[0, 0], 2)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: output_size must be positive"):
        adaptive_avg_pool2d(x, 0)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 8, kernel_size=\(3, 3\), stride=\(1, 1\)\): the input \(1, 2, 3, 3\) "
                                         r"has 2 channels, expected in_channels=3"):
        Conv2d(3, 8, 3)(nb.tensor(x))
    with pytest.raises(ValueError, match=r"Conv2d: in_channels \(3\) and out_channels \(8\) must be positive and divisible by groups \(2\)"):
        Conv2d(3, 8, 3, groups=2)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    "The NumPy kernels run unchanged on CuPy arrays (until the GPU chapter registers fused twins)."
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 4, 9, 8)).astype(np.float32), rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    for dev in ("cpu", "cuda"):
        xt, wt = nb.tensor(x, device=dev, requires_grad=True), nb.tensor(w, device=dev, requires_grad=True)
        y = max_pool2d(conv2d(xt, wt, stride=1, padding=1, groups=2), 2) + avg_pool2d(conv2d(xt, wt, padding=1, groups=2), 2)
        (y * y).sum().backward()
        if dev == "cpu": ref = (y.numpy(), xt.grad.numpy(), wt.grad.numpy())
    for a, r in zip((y.numpy(), xt.grad.numpy(), wt.grad.numpy()), ref):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ 1-D (chapter 12a): wrappers over the 2-D path
from neuralbook.conv1d import (AdaptiveAvgPool1d, AvgPool1d, Conv1d, MaxPool1d, adaptive_avg_pool1d, avg_pool1d,
                               conv1d, max_pool1d)


def conv1d_case(seed):
    rng = np.random.default_rng(5000 + seed)
    g = int(rng.choice([1, 1, 2, 3]))
    C, K, k = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3)), int(rng.integers(1, 5))
    s, d, p = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(0, 3))
    L = int(rng.integers(1, 9)) + d * (k - 1)
    x, w, b = rng.standard_normal((int(rng.integers(1, 4)), C, L)), rng.standard_normal((K, C // g, k)), rng.standard_normal(K)
    return x, w, b, {"stride": s, "padding": p, "dilation": d, "groups": g}, rng


@needs_torch
@pytest.mark.parametrize("seed", range(30))
def test_conv1d_and_pools_1d_match_torch(seed):
    x, w, b, kw, rng = conv1d_case(seed)
    compare_with_torch(lambda x, w, b: conv1d(x, w, b, **kw), lambda x, w, b: tF.conv1d(x, w, b, **kw), x, w, b,
                       atol=1e-6, rtol=1e-6)
    xp = np.round(rng.standard_normal((2, 3, int(rng.integers(4, 12)))) * 2) / 2    # ties: the first maximum wins
    k, s, d = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
    p, ceil = int(rng.integers(0, k // 2 + 1)), bool(rng.integers(0, 2))
    if d * (k - 1) + 1 > xp.shape[2] + 2 * p: d = 1
    compare_with_torch(lambda x: max_pool1d(x, k, s, p, d, ceil), lambda x: tF.max_pool1d(x, k, s, p, d, ceil), xp,
                       atol=1e-6, rtol=1e-6)
    cip = bool(rng.integers(0, 2))
    compare_with_torch(lambda x: avg_pool1d(x, k, s, p, ceil, cip), lambda x: tF.avg_pool1d(x, k, s, p, ceil, cip), xp,
                       atol=1e-6, rtol=1e-6)
    m = int(rng.integers(1, xp.shape[2] + 1))
    compare_with_torch(lambda x: adaptive_avg_pool1d(x, m), lambda x: tF.adaptive_avg_pool1d(x, m), xp, atol=1e-6)


@needs_torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("k,d", [(2, 1), (3, 1), (4, 2), (3, 3)])
def test_conv1d_same_and_valid(k, d):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 9)), rng.standard_normal((4, 3, k))
    for mode in ("same", "valid", (1,)):
        compare_with_torch(lambda x, w, mode=mode: conv1d(x, w, padding=mode, dilation=(d,)),
                           lambda x, w, mode=mode: tF.conv1d(x, w, padding=mode, dilation=d), x, w, atol=1e-6, rtol=1e-6)


def test_conv1d_and_pools_1d_gradcheck():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 4, 7)), rng.standard_normal((6, 2, 3)), rng.standard_normal(6)
    assert nb.gradcheck(lambda x, w, b: conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2), x, w, b)
    assert nb.gradgradcheck(lambda x, w: conv1d(x, w, padding="same", groups=2), x[:1], w)
    for f in (lambda x: max_pool1d(x, 3, 2, padding=1, ceil_mode=True), lambda x: avg_pool1d(x, 3, 2, 1, True, False),
              lambda x: adaptive_avg_pool1d(x, 3), lambda x: adaptive_avg_pool1d(x, 1)):
        assert nb.gradcheck(f, x)


@needs_torch
def test_1d_layers_match_torch_modules():
    nb.manual_seed(0)
    pairs = [(Conv1d(4, 6, 3, stride=2, padding=1, groups=2), torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2)),
             (Conv1d(4, 2, 3, padding="same", bias=False, dilation=2), torch.nn.Conv1d(4, 2, 3, padding="same", bias=False, dilation=2)),
             (MaxPool1d(3, 2, padding=1, ceil_mode=True), torch.nn.MaxPool1d(3, 2, padding=1, ceil_mode=True)),
             (AvgPool1d(2), torch.nn.AvgPool1d(2)), (AdaptiveAvgPool1d(1), torch.nn.AdaptiveAvgPool1d(1)),
             (AdaptiveAvgPool1d(4), torch.nn.AdaptiveAvgPool1d(4))]
    x = np.random.default_rng(6).standard_normal((2, 4, 11)).astype(np.float32)
    for ours, theirs in pairs:
        if isinstance(ours, Conv1d): assert repr(ours) == repr(theirs)
        ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
        tx = torch.tensor(x, requires_grad=True)
        ox = nb.tensor(x, requires_grad=True)
        y, ty = ours(ox), theirs(tx)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-6)
        y.sum().backward(); ty.sum().backward()
        np.testing.assert_allclose(ox.grad.numpy(), tx.grad.numpy(), atol=1e-6)
        for (n, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
            np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), atol=1e-5, err_msg=n)
    m = Conv1d(6, 8, 5, groups=2)
    bound = 1 / math.sqrt(3 * 5)
    assert m.weight.shape == (8, 3, 5) and m.weight.dtype == np.float32
    assert bound * 0.9 < np.abs(m.weight.numpy()).max() <= bound and np.abs(m.bias.numpy()).max() <= bound
    assert isinstance(conv1d(x.astype(np.float64), np.ones((1, 4, 2))), np.ndarray)


def test_1d_bad_input_messages():
    x = np.zeros((1, 2, 5))
    with pytest.raises(ValueError, match=r"conv1d: expected a 3-D input \(N, C, L\), got shape \(2, 5\); add the batch"):
        conv1d(x[0], np.zeros((4, 2, 1)))
    with pytest.raises(ValueError, match=r"conv1d: expected a 3-D weight \(out_channels, in_channels/groups, k\)"):
        conv1d(x, np.zeros((4, 2, 1, 1)))
    with pytest.raises(ValueError, match=r"conv1d: the input \(1, 2, 5\) has 2 channels but the weight \(4, 3, 1\) expects 3"):
        conv1d(x, np.zeros((4, 3, 1)))
    with pytest.raises(ValueError, match=r"conv1d: kernel 7 \(dilated 7\) is longer than the padded input \(length 5"):
        conv1d(x, np.zeros((4, 2, 7)))
    with pytest.raises(ValueError, match=r"conv1d: padding='same' needs stride 1, got stride 2"):
        conv1d(x, np.zeros((4, 2, 3)), stride=2, padding="same")
    with pytest.raises(ValueError, match=r"conv1d: bias must have shape \(4,\)"):
        conv1d(x, np.zeros((4, 2, 1)), np.zeros(3))
    with pytest.raises(TypeError, match=r"conv1d: input \(float32\) and weight \(float64\)"):
        conv1d(x.astype(np.float32), np.zeros((4, 2, 1)))
    with pytest.raises(ValueError, match=r"conv1d: stride must be an int >= 1"):
        conv1d(x, np.zeros((4, 2, 1)), stride=0)
    with pytest.raises(ValueError, match=r"max_pool1d: kernel 7 \(dilated 7\) is longer than the padded input"):
        max_pool1d(x, 7)
    with pytest.raises(ValueError, match=r"avg_pool1d: padding 2 must be at most half the kernel size 3"):
        avg_pool1d(x, 3, padding=2)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool1d: expected a 3-D input"):
        adaptive_avg_pool1d(np.zeros((1, 2, 3, 3)), 1)
    with pytest.raises(ValueError, match=r"Conv1d\(3, 8, kernel_size=\(3,\), stride=\(1,\)\): the input \(1, 2, 5\) has 2 "
                                         r"channels, expected in_channels=3"):
        Conv1d(3, 8, 3)(nb.tensor(x))
    with pytest.raises(ValueError, match=r"Conv1d: in_channels \(3\) and out_channels \(8\) must be positive"):
        Conv1d(3, 8, 3, groups=2)


# ------------------------------------------------------------------ Winograd F(4×4, 3×3) (chapter 12b)
from neuralbook import conv_fast


def test_winograd_default_scratch_reuse_and_off_switch(monkeypatch):
    "On by default; the work buffers are reused from call to call (and per thread); WINOGRAD = False turns it off."
    import threading
    assert conv_fast.WINOGRAD is True
    rng = np.random.default_rng(11)
    x, w, b = rng.standard_normal((9, 16, 10, 7)), rng.standard_normal((16, 16, 3, 3)), rng.standard_normal(16)
    y1 = conv_fast.winograd_forward(x, w, b, (1, 1, 1, 1))
    buf = conv_fast._LOCAL.buf
    y2 = conv_fast.winograd_forward(x, w, b, (1, 1, 1, 1))
    assert conv_fast._LOCAL.buf is buf and np.array_equal(y1, y2) and not np.shares_memory(y1, buf)
    other = []
    t = threading.Thread(target=lambda: other.append((conv_fast.winograd_forward(x, w, b, (1, 1, 1, 1)),
                                                      conv_fast._LOCAL.buf)))
    t.start(); t.join()
    assert other[0][1] is not buf and np.array_equal(other[0][0], y1)
    monkeypatch.setattr(conv_fast, "WINOGRAD", False)
    assert not conv_fast._winograd_applies(x, w, (1, 1), (1, 1), 1)


def wino_case(seed):
    rng = np.random.default_rng(7000 + seed)
    C, K = int(rng.choice([16, 17, 24])), int(rng.choice([16, 20]))
    H, W = (int(v) for v in rng.integers(1, 9, 2))
    pad = ["same", "valid", 0, 1, (1, 0), (0, 1), 1, 1][int(rng.integers(0, 8))]
    ph, pw = (1, 1) if pad == "same" else (0, 0) if pad == "valid" else (pad, pad) if isinstance(pad, int) else pad
    H, W = max(H, 3 - 2 * ph), max(W, 3 - 2 * pw)
    x = rng.standard_normal((int(rng.integers(1, 4)), C, H, W))
    return x, rng.standard_normal((K, C, 3, 3)), rng.standard_normal(K), pad


@needs_torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("seed", range(16))
def test_winograd_matches_torch(seed):
    x, w, b, pad = wino_case(seed)
    assert conv_module.FAST["conv2d"] is conv_fast.FastConv2dFn
    assert conv_fast._winograd_applies(x, w, (1, 1), (1, 1), 1)
    compare_with_torch(lambda x, w, b: conv2d(x, w, b, padding=pad), lambda x, w, b: tF.conv2d(x, w, b, padding=pad),
                       x, w, b, atol=1e-8, rtol=1e-8)


@needs_torch
def test_winograd_in_bands_and_batch_slices(monkeypatch):
    "One tile row per band and the batch cut in slices of 8 (the budget at 1 byte): the same numbers."
    monkeypatch.setattr(conv_fast, "_WINO_BYTES", 1)
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((10, 16, 7, 6)), rng.standard_normal((16, 16, 3, 3)), rng.standard_normal(16)
    assert len(conv_fast._bands(16, 3, 3, 10, 6, 8)[2]) == 3 * 2
    for pad in (0, 1):
        compare_with_torch(lambda x, w, b: conv2d(x, w, b, padding=pad), lambda x, w, b: tF.conv2d(x, w, b, padding=pad),
                           x, w, b, atol=1e-8, rtol=1e-8)


@needs_torch
def test_winograd_float32_layouts_and_double_backward():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((4, 32, 9, 8)).astype(np.float32), (0.1 * rng.standard_normal((16, 32, 3, 3))).astype(np.float32)
    ref = tF.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy()
    for xv in (x, np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2), np.asfortranarray(x)):
        y = conv2d(xv, w, padding=1)
        assert y.dtype == np.float32 and y.shape == ref.shape
        # F(4×4, 3×3) in float32: errors of about 1e-5 of the output's scale (chapter 12b)
        np.testing.assert_allclose(y, ref, atol=2e-5 * np.abs(ref).max(), rtol=1e-5)
    x64, w64 = rng.standard_normal((1, 16, 4, 4)), rng.standard_normal((16, 16, 3, 3))
    a, ta = [nb.tensor(t, requires_grad=True) for t in (x64, w64)], [torch.tensor(t, requires_grad=True) for t in (x64, w64)]
    ga = nb.grad((conv2d(a[0], a[1], padding=1) ** 2).sum(), a, create_graph=True)
    tga = torch.autograd.grad((tF.conv2d(ta[0], ta[1], padding=1) ** 2).sum(), ta, create_graph=True)
    gg = nb.grad(sum(((g * g).sum() for g in ga), nb.tensor(0.0, dtype="float64")), a)
    tgg = torch.autograd.grad(sum((g * g).sum() for g in tga), ta)
    for g, tg in zip(list(ga) + list(gg), list(tga) + list(tgg)):
        np.testing.assert_allclose(g.numpy(), tg.detach().numpy(), rtol=1e-9, atol=1e-9 * np.abs(tg.detach().numpy()).max())


def test_winograd_gradcheck_and_fallbacks():
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((1, 16, 4, 3)), 0.1 * rng.standard_normal((16, 16, 3, 3)), rng.standard_normal(16)
    assert nb.gradcheck(lambda x, w, b: conv2d(x, w, b, padding=1), x, w, b)
    ok = conv_fast._winograd_applies
    assert not ok(x[:, :8], w[:, :8], (1, 1), (1, 1), 1)                     # too few channels: im2col
    assert not ok(x, w, (2, 2), (1, 1), 1) and not ok(x, w, (1, 1), (2, 2), 1) and not ok(x, w[:, :8], (1, 1), (1, 1), 2)
    assert not ok(x.astype(np.float16), w.astype(np.float16), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(conv2d(x, w, b, stride=2, padding=1),
                               conv_module.Conv2dFn((2, 2), (1, 1, 1, 1), (1, 1), 1).forward(x, w, b), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_winograd_band_threads_give_the_same_result(monkeypatch, dtype):
    "The batch split over band threads (forced to 3, BLAS at one thread each): the values of one thread."
    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((7, 16, 9, 10)).astype(dtype), rng.standard_normal((24, 16, 3, 3)).astype(dtype)
    b, gy = rng.standard_normal(24).astype(dtype), rng.standard_normal((7, 24, 9, 10)).astype(dtype)
    one = conv_fast.winograd_forward(x, w, b, (1, 1, 1, 1)), conv_fast.winograd_backward(x, w, gy, (1, 1, 1, 1))
    conv_fast._band_threads()                                      # the BLAS controller exists before threads use it
    calls = []
    real = conv_fast._in_threads
    monkeypatch.setattr(conv_fast, "_band_threads", lambda: 3)
    monkeypatch.setattr(conv_fast, "_in_threads", lambda run, N: calls.append(N) or real(run, N))
    three = conv_fast.winograd_forward(x, w, b, (1, 1, 1, 1)), conv_fast.winograd_backward(x, w, gy, (1, 1, 1, 1))
    assert calls == [7, 7]
    # other band sizes change BLAS's blocking, and Ū is summed over 3 slices: equal to rounding, of the scale
    scale = 1e-12 if dtype == np.float64 else 2e-5
    for a, b_ in zip((three[0], *three[1]), (one[0], *one[1])):
        np.testing.assert_allclose(a, b_, rtol=0, atol=scale * np.abs(b_).max())
    for need in ((True, False), (False, True)):
        gx, gw = conv_fast.winograd_backward(x, w, gy, (1, 1, 1, 1), *need)
        assert (gx is None) == (not need[0]) and (gw is None) == (not need[1])


def test_winograd_band_threads_rule(monkeypatch):
    "Band threads only when every BLAS's idle threads sleep at once (OPENBLAS_THREAD_TIMEOUT ≤ 16), else 1."
    class Lib:
        def __init__(self, n, timeout):
            self.num_threads = n
            self.dynlib = type("Dyn", (), {} if timeout is None else {"openblas_thread_timeout": lambda s: timeout})()
    class Ctl:
        def __init__(self, libs): self.lib_controllers = libs
    for libs, want in (([Lib(4, 0)], 1), ([Lib(4, 4)], 4), ([Lib(4, 16)], 4), ([Lib(4, 17)], 1), ([Lib(2, 4)], 2),
                       ([Lib(2, 4), Lib(8, 0)], 1), ([Lib(2, 4), Lib(3, 8)], 3), ([Lib(4, None)], 1), ([], 1)):
        monkeypatch.setattr(conv_fast, "_BLAS", Ctl(libs))
        assert conv_fast._band_threads() == want, (libs, want)
    splits = []
    monkeypatch.setattr(conv_fast, "_BLAS", Ctl([Lib(1, 4)]))
    assert conv_fast._in_threads(lambda s0, s1: splits.append((s0, s1)) or s1 - s0, 5) == [5] and splits == [(0, 5)]
