"""Chapter 08: penalties, dropout, early stopping, batch augmentation."""

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.nn import Linear, ReLU, Sequential
from neuralbook.regularization import (L1, L1L2, L2, Compose, Dropout, DropoutFunction, EarlyStopper, GaussianNoise,
                                       Normalize, RandomCrop, RandomFlip, RandomHorizontalFlip, RandomShift, dropout,
                                       l1_penalty, l2_penalty, sum_of_squares)


def _net(seed=0, dtype=np.float64):
    nb.manual_seed(seed)
    return Sequential(Linear(3, 5), ReLU(), Linear(5, 2)).to(dtype=dtype)


# ---------------------------------------------------------------- penalties
def test_penalty_values_and_grads_skip_biases_for_modules():
    net = _net()
    W1, b1, W2, b2 = net.parameters()
    p2 = l2_penalty(net, 0.3)
    np.testing.assert_allclose(p2.item(), 0.3 * ((W1.data ** 2).sum() + (W2.data ** 2).sum()), rtol=1e-12)
    p2.backward()
    np.testing.assert_allclose(W1.grad.data, 0.6 * W1.data, rtol=1e-12)
    assert b1.grad is None and b2.grad is None
    net.zero_grad()
    p1 = l1_penalty(net, 0.2)
    np.testing.assert_allclose(p1.item(), 0.2 * (np.abs(W1.data).sum() + np.abs(W2.data).sum()), rtol=1e-12)
    p1.backward()
    np.testing.assert_allclose(W2.grad.data, 0.2 * np.sign(W2.data))


def test_penalty_skip_1d_switch_and_explicit_params():
    net = _net()
    params = list(net.parameters())
    total = sum(float((p.data ** 2).sum()) for p in params)
    assert l2_penalty(net, 1.0, skip_1d=False).item() == pytest.approx(total)
    assert l2_penalty(params, 1.0).item() == pytest.approx(total)                 # explicit: everything
    assert l2_penalty(iter(params), 1.0, skip_1d=True).item() == pytest.approx(l2_penalty(net, 1.0).item())
    assert l2_penalty(params[1], 2.0).item() == pytest.approx(2 * float((params[1].data ** 2).sum()))


def test_penalty_zero_weight_and_empty_are_constant_zero():
    net = _net(dtype=np.float32)
    for z in (l2_penalty(net, 0.0), l1_penalty([], 0.5), l2_penalty(Sequential(ReLU()), 1.0)):
        assert z.item() == 0.0 and not z.requires_grad
    assert l2_penalty(net, 0.0).dtype == np.float32


def test_penalty_float32_and_bad_input():
    net = _net(dtype=np.float32)
    assert l2_penalty(net, 0.1).dtype == np.float32 and l1_penalty(net, 0.1).dtype == np.float32
    with pytest.raises(ValueError, match=r"l2_penalty: the weight must be a finite number >= 0, got -1"):
        l2_penalty(net, -1)
    with pytest.raises(ValueError, match="l1_penalty: the weight"):
        l1_penalty(net, float("nan"))
    with pytest.raises(TypeError, match=r"l2_penalty: .* item 0 is ndarray; pass model.parameters\(\)"):
        l2_penalty([np.ones(3)], 0.1)
    with pytest.raises(ValueError, match="L2: the weight"):
        L2(-0.1)


def test_sum_of_squares_gradcheck_and_double_backward():
    x = np.random.default_rng(0).standard_normal((3, 4))
    assert nb.gradcheck(sum_of_squares, x)
    assert nb.gradgradcheck(sum_of_squares, x)
    t = np.random.default_rng(1).standard_normal((2, 3))
    assert nb.gradcheck(lambda a: l1_penalty(a, 0.7) + l2_penalty(a, 0.3) * l2_penalty(a, 0.1), t)


def test_regularizer_classes():
    w = nb.tensor(np.array([[1.0, -2.0], [0.5, 0.0]]), requires_grad=True)
    assert L1(0.1)(w).item() == pytest.approx(0.35)
    assert L2(0.1)(w).item() == pytest.approx(0.525)
    assert L1L2(0.1, 0.1)(w).item() == pytest.approx(0.875)
    assert L1L2()(w).item() == 0.0
    b = nb.tensor(np.array([1.0, 2.0]), requires_grad=True)     # a bias given to a regulariser is penalised
    assert L2(1.0)(b).item() == pytest.approx(5.0)
    r = L1L2(l1=0.01, l2=0.02)
    assert r.get_config() == {"l1": 0.01, "l2": 0.02}
    assert repr(L1L2.from_config(r.get_config())) == "L1L2(l1=0.01, l2=0.02)"
    assert L1().l1 == 0.01 and L2().l2 == 0.01


def test_penalty_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3))
    t = torch.tensor(a, requires_grad=True)
    (0.3 * (t ** 2).sum() + 0.2 * t.abs().sum()).backward()
    x = nb.tensor(a, requires_grad=True)
    y = l2_penalty(x, 0.3) + l1_penalty(x, 0.2)
    y.backward()
    np.testing.assert_allclose(y.item(), (0.3 * (t ** 2).sum() + 0.2 * t.abs().sum()).item(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.data, t.grad.numpy(), rtol=1e-12)


def test_sgd_weight_decay_equals_l2_penalty_against_torch():
    """torch SGD(weight_decay=λ) on L  ==  plain gradient descent on L + l2_penalty(λ/2), step by step."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    net = _net()
    tnet = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)).double()
    with torch.no_grad():
        for tp, p in zip(tnet.parameters(), net.parameters()): tp.copy_(torch.tensor(p.data))
    lr, lam = 0.1, 0.05
    opt = torch.optim.SGD(tnet.parameters(), lr=lr, weight_decay=lam)
    for _ in range(20):
        opt.zero_grad()
        ((tnet(torch.tensor(X)) - torch.tensor(Y)) ** 2).mean().backward()
        opt.step()
        net.zero_grad()
        loss = ((net(nb.tensor(X)) - Y) ** 2).mean() + l2_penalty(net, lam / 2, skip_1d=False)
        loss.backward()
        for p in net.parameters(): p.data -= lr * p.grad.data
    for tp, p in zip(tnet.parameters(), net.parameters()):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_sgd_weight_decay_equals_l2_penalty_with_nb_optim():
    optim = pytest.importorskip("neuralbook.optim")
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    a, b = _net(), _net()
    opt_a = optim.SGD(a.parameters(), lr=0.1, weight_decay=0.05)
    opt_b = optim.SGD(b.parameters(), lr=0.1)
    for _ in range(20):
        for net, opt, pen in ((a, opt_a, 0.0), (b, opt_b, 0.025)):
            opt.zero_grad()
            (((net(nb.tensor(X)) - Y) ** 2).mean() + l2_penalty(net, pen, skip_1d=False)).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- dropout
def test_dropout_mean_preserved_and_keep_rate():
    x = np.full(1_000_000, 3.0)
    for p in (0.2, 0.5, 0.8):
        y = dropout(x, p, generator=nb.Generator(11))
        sd = 3.0 * np.sqrt(p / (1 - p) / x.size)   # std of the mean of y
        assert abs(y.mean() - 3.0) < 5 * sd
        assert abs((y == 0).mean() - p) < 5 * np.sqrt(p * (1 - p) / x.size)
        assert set(np.unique(y)) == {0.0, 3.0 / (1 - p)}


def test_dropout_same_seed_same_mask_and_matches_counter_stream():
    x = nb.tensor(np.ones((4, 6), np.float32))
    a = dropout(x, 0.3, generator=nb.Generator(5)).numpy()
    b = dropout(x, 0.3, generator=nb.Generator(5)).numpy()
    np.testing.assert_array_equal(a, b)
    u = nb.Generator(5).counter_uniform((4, 6), dtype=np.float32)
    np.testing.assert_array_equal(a != 0, u >= 0.3)
    g = nb.Generator(5)
    first, second = dropout(x, 0.3, generator=g).numpy(), dropout(x, 0.3, generator=g).numpy()
    assert not np.array_equal(first, second)              # the stream advances
    nb.manual_seed(9); c = dropout(x, 0.3).numpy()
    nb.manual_seed(9); d = dropout(x, 0.3).numpy()
    np.testing.assert_array_equal(c, d)                   # default generator follows nb.manual_seed
    # the mask depends on the seed and the shape only, not on the dtype
    np.testing.assert_array_equal(dropout(np.ones((4, 6)), 0.3, generator=nb.Generator(5)) != 0, a != 0)


def test_dropout_identity_cases():
    x = nb.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    m = Dropout(0.5)
    m.eval()
    assert m(x) is x
    m.train()
    assert m(x) is not x
    assert repr(m) == "Dropout(p=0.5)"


def test_dropout_p1_gives_zeros_and_zero_grad_without_nan():
    x = nb.tensor(np.array([1.0, np.inf, -2.0]), requires_grad=True)
    with np.errstate(all="raise"):
        y = dropout(x, 1.0)
        y.sum().backward()
    np.testing.assert_array_equal(y.data, 0.0)
    np.testing.assert_array_equal(x.grad.data, 0.0)


def test_dropout_gradient_is_the_scaled_mask():
    p = 0.4
    x = nb.tensor(np.random.default_rng(0).standard_normal((5, 7)), requires_grad=True)
    y = dropout(x, p, generator=nb.Generator(2))
    y.backward(np.ones((5, 7)))
    mask = nb.Generator(2).counter_uniform((5, 7), dtype=np.float32) >= p
    np.testing.assert_allclose(x.grad.data, mask / (1 - p))
    np.testing.assert_allclose(y.data, x.data * mask / (1 - p))


def test_dropout_gradcheck_and_double_backward():
    x = np.random.default_rng(3).standard_normal((3, 4))
    fn = lambda t: dropout(t, 0.3, generator=nb.Generator(7)) * t   # a fresh generator per call: the same mask
    assert nb.gradcheck(fn, x)
    assert nb.gradgradcheck(fn, x)


def test_dropout_module_in_a_network_uses_training_flag():
    nb.manual_seed(0)
    net = Sequential(Linear(4, 8), ReLU(), Dropout(0.5), Linear(8, 2))
    x = nb.tensor(np.ones((3, 4), np.float32))
    net.eval()
    e1, e2 = net(x).numpy(), net(x).numpy()
    np.testing.assert_array_equal(e1, e2)
    net.train()
    assert not np.array_equal(net(x).numpy(), e1)


def test_dropout_dtype_and_raw_arrays():
    x32 = nb.tensor(np.ones((3, 3), np.float32), requires_grad=True)
    y = dropout(x32, 0.5)
    y.sum().backward()
    assert y.dtype == np.float32 and x32.grad.dtype == np.float32
    raw = dropout(np.ones(4, np.float32), 0.5)
    assert isinstance(raw, np.ndarray) and raw.dtype == np.float32


def test_dropout_releases_mask_after_backward():
    x = nb.tensor(np.ones((2, 2)), requires_grad=True)
    y = dropout(x, 0.5)
    fn = y.creator
    assert isinstance(fn, DropoutFunction) and fn.keep is not None and fn.u is None
    y.sum().backward()
    assert fn.keep is None
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", True])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match="dropout: the drop probability p must be a number in \\[0, 1\\]"):
        dropout(np.ones(3), p)
    with pytest.raises(ValueError, match="Dropout: the drop probability"):
        Dropout(p)


def test_dropout_bad_input():
    with pytest.raises(TypeError, match="dropout: needs a floating-point input, got int64"):
        dropout(np.arange(3), 0.5)
    with pytest.raises(TypeError, match="dropout: expected a tensor or an array, got list"):
        dropout([1.0, 2.0], 0.5)


@pytest.mark.gpu
def test_dropout_same_mask_on_gpu():
    cp = pytest.importorskip("cupy")
    x = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    yc = dropout(x, 0.3, generator=nb.Generator(4))
    xg = nb.tensor(x, device="cuda", requires_grad=True)
    yg = dropout(xg, 0.3, generator=nb.Generator(4))
    np.testing.assert_array_equal(yg.numpy() != 0, yc != 0)
    np.testing.assert_allclose(yg.numpy(), yc, rtol=1e-6)
    yg.sum().backward()
    assert isinstance(xg.grad.data, cp.ndarray)
    np.testing.assert_allclose(xg.grad.numpy(), (yc != 0) / 0.7, rtol=1e-6)


# ---------------------------------------------------------------- early stopping
def test_early_stopper_patience_and_best():
    s = EarlyStopper(patience=2)
    decisions = [s.step(v) for v in [3.0, 2.0, 2.5, 1.0, 1.5, 1.2]]
    assert decisions == [False, False, False, False, False, True]
    assert s.best == 1.0 and s.best_epoch == 3 and s.wait == 2 and s.stopped


def test_early_stopper_patience_zero_and_nan():
    s = EarlyStopper(patience=0)
    assert s.step(1.0) is False and s.step(0.5) is False and s.step(0.6) is True
    s = EarlyStopper(patience=2)
    assert [s.step(v) for v in [1.0, float("nan"), float("nan")]] == [False, False, True]
    assert s.best == 1.0


def test_early_stopper_min_delta_and_max_mode():
    s = EarlyStopper(patience=2, min_delta=0.1)
    out = [s.step(v) for v in [1.0, 0.95, 0.91]]
    assert out == [False, False, True] and s.best == 1.0 and s.best_epoch == 0   # 0.91 is not < 1.0 - 0.1
    s = EarlyStopper(patience=1, mode="max")
    assert [s.step(v) for v in [0.5, 0.7, 0.6]] == [False, False, True] and s.best == 0.7
    s = EarlyStopper(patience=3, mode="max", min_delta=0.05)
    s.step(0.5); s.step(0.54)
    assert s.best == 0.5 and s.wait == 1
    s.reset()
    assert s.best == -np.inf and s.wait == 0 and s.best_epoch == -1 and not s.stopped


def test_early_stopper_restore_best_copies_weights():
    net = _net(dtype=np.float32)
    w = net[0].weight
    s = EarlyStopper(patience=2, restore_best=True)
    best = None
    for epoch, v in enumerate([1.0, 0.5, 0.7, 0.8]):
        w.data += 1.0                      # in place, as an optimiser does: the snapshot must be a copy
        if v == 0.5: best = w.data.copy()
        stop = s.step(nb.tensor(v), net)
    assert stop and s.best_epoch == 1
    np.testing.assert_array_equal(w.data, best)
    w.data += 1.0
    s.restore(net)
    np.testing.assert_array_equal(w.data, best)


def test_early_stopper_errors():
    with pytest.raises(ValueError, match="EarlyStopper: patience must be an integer >= 0, got -1"):
        EarlyStopper(patience=-1)
    with pytest.raises(ValueError, match="EarlyStopper: mode must be 'min'"):
        EarlyStopper(mode="best")
    with pytest.raises(ValueError, match="EarlyStopper: min_delta must be a number >= 0"):
        EarlyStopper(min_delta=-0.1)
    with pytest.raises(ValueError, match=r"restore_best=True\).step: pass model="):
        EarlyStopper(restore_best=True).step(1.0)
    with pytest.raises(RuntimeError, match="EarlyStopper.restore: no weights were saved"):
        EarlyStopper().restore(_net())


# ---------------------------------------------------------------- augmentation
def _images(n=6, c=2, h=5, w=7, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(np.float32)


def _shift_reference(x, dy, dx):
    "Loop reference: shift image content down by dy and right by dx, zero fill."
    out = np.zeros_like(x)
    n, _, h, w = x.shape
    for k in range(n):
        for i in range(h):
            for j in range(w):
                si, sj = i - dy[k], j - dx[k]
                if 0 <= si < h and 0 <= sj < w: out[k, :, i, j] = x[k, :, si, sj]
    return out


def test_random_shift_matches_loop_reference():
    x = _images()
    s = 2
    y = RandomShift(s, generator=nb.Generator(1))(x)
    o = nb.Generator(1).np.integers(0, 2 * s + 1, size=(2, len(x)))
    np.testing.assert_array_equal(y, _shift_reference(x, s - o[0], s - o[1]))
    assert y.shape == x.shape and y.dtype == x.dtype


def test_random_shift_3d_input_and_tensor():
    x = _images(c=1)[:, 0]
    y = RandomShift(1, generator=nb.Generator(2))(x)
    y4 = RandomShift(1, generator=nb.Generator(2))(x[:, None])
    np.testing.assert_array_equal(y, y4[:, 0])
    t = RandomShift(1, generator=nb.Generator(2))(nb.tensor(x))
    assert isinstance(t, nb.Tensor) and not t.requires_grad
    np.testing.assert_array_equal(t.numpy(), y)


def test_random_flip():
    x = _images(n=200)
    y = RandomFlip(p=0.5, generator=nb.Generator(0))(x)
    flipped = np.array([np.array_equal(a, b[..., ::-1]) for a, b in zip(y, x)])
    kept = np.array([np.array_equal(a, b) for a, b in zip(y, x)])
    assert (flipped | kept).all() and 60 < flipped.sum() < 140
    np.testing.assert_array_equal(RandomFlip(p=1.0)(x), x[..., ::-1])
    np.testing.assert_array_equal(RandomFlip(horizontal=False, vertical=True, p=1.0)(x), x[..., ::-1, :])
    np.testing.assert_array_equal(RandomFlip(horizontal=True, vertical=True, p=1.0)(x), x[..., ::-1, ::-1])
    assert RandomFlip(p=0.0)(x) is x


def test_gaussian_noise():
    x = np.zeros((100, 1, 20, 20), np.float32)
    y = GaussianNoise(0.5, generator=nb.Generator(0))(x)
    assert y.dtype == np.float32 and abs(y.std() - 0.5) < 0.01 and abs(y.mean()) < 0.01
    np.testing.assert_array_equal(y, GaussianNoise(0.5, generator=nb.Generator(0))(x))
    assert GaussianNoise(0.0)(x) is x
    assert GaussianNoise(0.1)(np.zeros(3)).dtype == np.float64
    with pytest.raises(TypeError, match="GaussianNoise: needs a floating-point input, got int64"):
        GaussianNoise(0.1)(np.zeros(3, np.int64))


def test_compose_determinism_and_no_ops():
    x = _images()
    make = lambda: Compose([RandomShift(1, generator=nb.Generator(4)), RandomFlip(generator=nb.Generator(5)),
                            GaussianNoise(0.1, generator=nb.Generator(6))])
    np.testing.assert_array_equal(make()(x), make()(x))
    nb.manual_seed(3); a = Compose([RandomShift(2), RandomFlip()])(x)
    nb.manual_seed(3); b = Compose([RandomShift(2), RandomFlip()])(x)
    np.testing.assert_array_equal(a, b)
    assert Compose([RandomShift(0), RandomFlip(p=0)])(x) is x
    assert Compose([])(x) is x


def _python_calls(fn) -> int:
    "How many Python-level function calls `fn()` makes (cProfile's count): a loop over samples makes it grow with N."
    import cProfile, pstats
    prof = cProfile.Profile()
    prof.enable(); fn(); prof.disable()
    return sum(nc for _, nc, *_ in pstats.Stats(prof).stats.values())


def _assert_vectorised(make):
    "The same number of Python calls for a batch of 8 and of 512 images: no Python loop over samples (no timing)."
    small, large = (np.random.default_rng(0).random((n, 1, 28, 28)).astype(np.float32) for n in (8, 512))
    make()(small)                                              # warm up imports and caches
    assert _python_calls(lambda: make()(small)) == _python_calls(lambda: make()(large))


def test_augmentation_is_vectorised():
    _assert_vectorised(lambda: Compose([RandomShift(3, generator=nb.Generator(0)), RandomFlip(generator=nb.Generator(1)),
                                        GaussianNoise(0.1, generator=nb.Generator(2))]))


@pytest.mark.gpu
def test_augmentation_same_on_gpu():
    cp = pytest.importorskip("cupy")
    x = _images()
    make = lambda: Compose([RandomShift(2, generator=nb.Generator(1)), RandomFlip(True, True, generator=nb.Generator(2)),
                            GaussianNoise(0.1, generator=nb.Generator(3))])
    y = make()(x)
    yg = make()(cp.asarray(x))
    assert isinstance(yg, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(yg), y, rtol=1e-6)


def test_augmentation_bad_input():
    with pytest.raises(ValueError, match=r"RandomShift: expected a batch of images \(N, C, H, W\) .* got shape \(4, 64\)"):
        RandomShift(1)(np.zeros((4, 64)))
    with pytest.raises(ValueError, match="RandomShift: max_shift must be an integer >= 0"):
        RandomShift(-1)
    with pytest.raises(ValueError, match="RandomShift: max_shift must be an integer >= 0"):
        RandomShift(1.5)
    with pytest.raises(ValueError, match=r"RandomFlip: the flip probability p must be a number in \[0, 1\], got 2"):
        RandomFlip(p=2)
    with pytest.raises(ValueError, match="GaussianNoise: std must be a number >= 0"):
        GaussianNoise(-1)
    with pytest.raises(TypeError, match="RandomFlip: expected an array or a tensor, got list"):
        RandomFlip()([[1.0]])
    with pytest.raises(TypeError, match="Compose: every transform must be callable"):
        Compose([1])


def test_early_stopper_with_no_improvement_keeps_weights():
    import neuralbook as nb
    model = nb.nn.Linear(2, 1)
    before = model.weight.numpy().copy()
    stopper = EarlyStopper(patience=2, restore_best=True)
    assert not stopper.step(float("nan"), model)
    assert stopper.step(float("nan"), model)  # stops without raising, weights untouched
    np.testing.assert_array_equal(model.weight.numpy(), before)


# ---------------------------------------------------------------- the CNN recipe: crop, horizontal flip, normalise
def _crop_reference(x, size, p, oy, ox):
    "Loop reference: pad by p with zeros, cut the (h, w) window at (oy[k], ox[k]) for sample k."
    h, w = size
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)])
    return np.stack([padded[k, ..., oy[k]:oy[k] + h, ox[k]:ox[k] + w] for k in range(len(x))])


@pytest.mark.parametrize("size,p", [(5, 0), ((4, 6), 1), ((5, 7), 2), ((3, 9), 1)])
def test_random_crop_matches_loop_reference(size, p):
    x = _images()
    y = RandomCrop(size, padding=p, generator=nb.Generator(7))(x)
    h, w = (size, size) if isinstance(size, int) else size
    g = nb.Generator(7).np
    oy, ox = g.integers(0, 5 + 2 * p - h + 1, size=len(x)), g.integers(0, 7 + 2 * p - w + 1, size=len(x))
    np.testing.assert_array_equal(y, _crop_reference(x, (h, w), p, oy, ox))
    assert y.shape == (6, 2, h, w) and y.dtype == x.dtype


def test_random_crop_hand_case_and_properties():
    x = np.arange(9, dtype=np.float32).reshape(1, 3, 3)              # (N, H, W) input
    crops = {tuple(RandomCrop(3, padding=1, generator=nb.Generator(s))(x)[0].ravel()) for s in range(60)}
    assert len(crops) == 9                                          # all 3 x 3 offsets occur
    assert (0, 0, 0, 0, 0, 1, 0, 3, 4) in crops and (4, 5, 0, 7, 8, 0, 0, 0, 0) in crops
    assert RandomCrop(3)(x) is x                                     # full size, no padding: nothing to do
    filled = RandomCrop((5, 5), padding=1, fill=-1.0)(x)             # the whole padded image
    assert filled[0, 0, 0] == -1 and filled[0, 1, 1] == 0 and filled[0, 3, 3] == 8
    many = np.random.default_rng(0).random((300, 1, 6, 6)).astype(np.float32)
    out = RandomCrop(6, padding=2, generator=nb.Generator(1))(many)
    same = [np.array_equal(a, b) for a, b in zip(out, many)]
    assert 0 < sum(same) < 300 / 10                                  # 1 in 25 positions keeps the image
    t = RandomCrop(2, generator=nb.Generator(0))(nb.tensor(x))
    assert isinstance(t, nb.Tensor) and t.shape == (1, 2, 2) and not t.requires_grad


def test_random_horizontal_flip_and_seeds():
    x = _images(n=200)
    y = RandomHorizontalFlip(generator=nb.Generator(0))(x)
    np.testing.assert_array_equal(y, RandomFlip(p=0.5, generator=nb.Generator(0))(x))
    np.testing.assert_array_equal(y, RandomHorizontalFlip(generator=nb.Generator(0))(x))
    flipped = np.array([np.array_equal(a, b[..., ::-1]) for a, b in zip(y, x)])
    assert 60 < flipped.sum() < 140
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(np.array([[[1, 2, 3]]])), [[[3, 2, 1]]])
    assert RandomHorizontalFlip(0.0)(x) is x
    assert repr(RandomHorizontalFlip(0.3)) == "RandomHorizontalFlip(p=0.3)"
    nb.manual_seed(5); a = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip()])(x)
    nb.manual_seed(5); b = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip()])(x)
    np.testing.assert_array_equal(a, b)


def test_normalize():
    x = _images(n=50, c=3)
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    y = Normalize(mean, std)(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_array_equal(Normalize(0.5, 2.0)(np.array([1.5, 0.5])), [0.5, 0.0])
    np.testing.assert_allclose(Normalize([1, 2], [1, 4])(np.ones((1, 2, 1, 1))).ravel(), [0, -0.25])
    with pytest.raises(ValueError, match=r"Normalize: 3 channel values need images \(N, 3, H, W\), got shape \(2, 1, 4, 4\)"):
        Normalize([0, 0, 0], [1, 1, 1])(np.zeros((2, 1, 4, 4)))
    with pytest.raises(ValueError, match="Normalize: mean must be finite and std finite and > 0"):
        Normalize(0, 0)
    with pytest.raises(ValueError, match="Normalize: mean and std must be numbers or 1-D sequences of one length"):
        Normalize([0, 0], [1, 1, 1])
    with pytest.raises(TypeError, match="Normalize: needs a floating-point input, got uint8"):
        Normalize(0, 1)(np.zeros((1, 1, 2, 2), np.uint8))


def test_random_crop_bad_input():
    with pytest.raises(ValueError, match=r"RandomCrop: a 8×8 crop does not fit images of 5×7 padded by 1 \(7×9\)"):
        RandomCrop(8, padding=1)(_images())
    with pytest.raises(ValueError, match="RandomCrop: size must be a positive int or a pair"):
        RandomCrop((3, 0))
    with pytest.raises(ValueError, match="RandomCrop: padding must be an integer >= 0"):
        RandomCrop(3, padding=-2)
    with pytest.raises(ValueError, match=r"RandomCrop: expected a batch of images"):
        RandomCrop(3)(np.zeros((4, 64)))


def test_crop_flip_vectorised():
    _assert_vectorised(lambda: Compose([RandomCrop(28, padding=4, generator=nb.Generator(0)),
                                        RandomHorizontalFlip(generator=nb.Generator(1)), Normalize(0.3, 0.35)]))


def test_crop_flip_normalize_same_on_gpu(cp):
    "Same seed, same crops and flips on the GPU (real or emulated) as on the CPU: the offsets come from the host."
    x = _images()
    make = lambda: Compose([RandomCrop((4, 6), padding=2, generator=nb.Generator(1)),
                            RandomHorizontalFlip(generator=nb.Generator(2)), Normalize([0.5, 0.4], [0.2, 0.3])])
    y = make()(x)
    yg = make()(cp.asarray(x))
    assert isinstance(yg, cp.ndarray) and yg.shape == y.shape
    np.testing.assert_allclose(cp.asnumpy(yg), y, rtol=1e-6)
    t = make()(nb.tensor(x, device="cuda"))
    assert t.device == "cuda:0"
    np.testing.assert_allclose(t.numpy(), y, rtol=1e-6)
