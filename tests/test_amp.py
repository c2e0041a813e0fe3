"""Chapter 33: mixed precision — autocast's dtype policy, float32 accumulation, GradScaler against PyTorch's."""
import numpy as np
import pytest

import neuralbook as nb
import neuralbook.functional as F
from neuralbook import conv, losses, norm
from neuralbook.amp import GradScaler, autocast, is_autocast_enabled
from neuralbook.autograd import AUTOCAST
from neuralbook.cuda import linear_act
from neuralbook.functional import _mm

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def t(a, grad=True):
    return nb.tensor(np.asarray(a, np.float32), requires_grad=grad)


# ----------------------------------------------------------------------------------------- the dtype policy
def test_autocast_switch_nests_and_restores():
    assert not is_autocast_enabled()
    with autocast():
        assert AUTOCAST.dtype == F16 and is_autocast_enabled()
        with autocast(enabled=False):
            assert not is_autocast_enabled()
        assert is_autocast_enabled()
    assert AUTOCAST.dtype is None
    with pytest.raises(ZeroDivisionError):
        with autocast():
            1 / 0
    assert AUTOCAST.dtype is None

    @autocast()
    def f(x): return F.linear(x, x)
    assert f(t(np.ones((2, 2)))).dtype == F16 and not is_autocast_enabled()


@pytest.mark.parametrize("dtype", ["bfloat16", np.float32, np.float64, "int8"])
def test_autocast_refuses_other_dtypes(dtype):
    with pytest.raises(TypeError, match="autocast: dtype must be float16"):
        autocast(dtype)


def test_matrix_products_run_in_float16_and_their_gradients_come_back_in_float32():
    rng = np.random.default_rng(0)
    x, W, b = t(rng.standard_normal((5, 8))), t(rng.standard_normal((3, 8))), t(rng.standard_normal(3))
    K = t(rng.standard_normal((8, 3)))
    img, k = t(rng.standard_normal((2, 3, 6, 6))), t(rng.standard_normal((4, 3, 3, 3)))
    kT = t(rng.standard_normal((3, 2, 3, 3)))
    with autocast():
        outs = {"linear": F.linear(x, W, b), "dense": F.dense(x, K, b), "matmul": F.matmul(x, K), "@": x @ K,
                "linear_act": linear_act(x, W, b, "tanh"), "conv2d": conv.conv2d(img, k, padding=1),
                "conv_transpose2d": conv.conv_transpose2d(img, kT, stride=2)}
        x64 = nb.tensor(rng.standard_normal((2, 8)), dtype="float64")
        assert F.linear(x64, W.to(dtype="float64")).dtype == np.float64        # float64 is not autocast
    for name, y in outs.items():
        assert y.dtype == F16, name
        sum(y.sum() for y in [y]).backward()
    for p in (x, W, b, K, img, k, kT):
        assert p.grad is not None and p.grad.dtype == F32


def test_precision_sensitive_ops_run_in_float32():
    rng = np.random.default_rng(1)
    x = t(rng.standard_normal((4, 3, 5, 5)))
    w = t(rng.standard_normal((3,)))
    with autocast():
        h = conv.conv2d(x, t(rng.standard_normal((3, 3, 3, 3))), padding=1)                 # float16
        assert h.dtype == F16
        for y in (F.softmax(h, axis=1), F.log_softmax(h, axis=1), F.logsumexp(h, axis=1),
                  norm.batch_norm(h, None, None, w, w, training=True), norm.layer_norm(h, (5,)),
                  losses.cross_entropy(h.reshape((4, -1)), nb.tensor([0, 1, 2, 3])),
                  losses.mse_loss(h, h.detach()), losses.binary_cross_entropy_with_logits(h, F.sigmoid(h).detach()),
                  losses.nll_loss(F.log_softmax(h.reshape((4, -1))), nb.tensor([1, 2, 3, 0]))):
            assert y.dtype == F32
        assert F.relu(h).dtype == F16                                                           # elementwise: as given


def test_float16_products_accumulate_in_float32():
    a, b = np.ones((1, 10000), np.float16), np.ones((10000, 1), np.float16)
    assert _mm(a, b)[0, 0] == 10000 and _mm(a, b).dtype == F16      # a float16 running sum would stop at 2048
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((64, 300)).astype(np.float16), rng.standard_normal((300, 32)).astype(np.float16)
    np.testing.assert_array_equal(_mm(A, B), (A.astype(np.float32) @ B.astype(np.float32)).astype(np.float16))
    assert _mm(A.astype(np.float32), B.astype(np.float32)).dtype == F32


def test_autocast_forward_and_backward_against_float32():
    rng = np.random.default_rng(3)
    nb.manual_seed(0)
    model = nb.nn.Sequential(nb.nn.Linear(20, 64), nb.nn.ReLU(), nb.nn.Linear(64, 5))
    X, y = nb.tensor(rng.standard_normal((32, 20)).astype(np.float32)), nb.tensor(rng.integers(0, 5, 32))
    loss32 = F.cross_entropy(model(X), y)
    loss32.backward()
    g32 = [p.grad.numpy().copy() for p in model.parameters()]
    model.zero_grad()
    with autocast():
        loss16 = F.cross_entropy(model(X), y)
    loss16.backward()
    assert abs(loss16.item() - loss32.item()) < 5e-3
    for p, g in zip(model.parameters(), g32):
        assert p.grad.dtype == F32
        np.testing.assert_allclose(p.grad.numpy(), g, atol=5e-3 * np.abs(g).max())


def test_autocast_matches_torch_cpu_autocast():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, W, b = rng.standard_normal((16, 32)), rng.standard_normal((8, 32)) / 6, rng.standard_normal(8)
    with autocast():
        y = F.linear(t(x, False), t(W), t(b))
    with torch.autocast("cpu", dtype=torch.float16):
        ty = torch.nn.functional.linear(*(torch.tensor(a, dtype=torch.float32) for a in (x, W, b)))
    assert ty.dtype == torch.float16 and y.dtype == F16
    np.testing.assert_allclose(y.numpy().astype(np.float64), ty.float().numpy(), rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------------------------ GradScaler
def _run_scaler(lib, steps, infs, **kw):
    "A few SGD steps with a GradScaler of `lib` ('nb' or 'torch'); gradients get an inf at steps `infs`."
    p0 = np.linspace(-1, 1, 6).astype(np.float32)
    if lib == "torch":
        import torch
        p = torch.tensor(p0, requires_grad=True)
        opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", **kw)
    else:
        p = nb.tensor(p0, requires_grad=True)
        opt = nb.optim.SGD([p], lr=0.1, momentum=0.9)
        scaler = GradScaler(**kw)
    out = []
    for s in range(steps):
        opt.zero_grad()
        loss = (p * p).sum() * 0.5 + (p * 0.3).sum()
        scaler.scale(loss).backward()
        if s in infs:
            g = p.grad
            (g if lib == "torch" else (g.data if isinstance(g, nb.Tensor) else g))[2] = float("inf")
        scaler.step(opt)
        scaler.update()
        out.append((scaler.get_scale(), np.array(p.detach().numpy(), np.float64)))
    return out, scaler.state_dict()


def test_grad_scaler_matches_torch_step_by_step():
    pytest.importorskip("torch")
    kw = dict(init_scale=2.0 ** 10, growth_factor=2.0, backoff_factor=0.25, growth_interval=3)
    ours, sd = _run_scaler("nb", 14, {2, 3, 9}, **kw)
    theirs, tsd = _run_scaler("torch", 14, {2, 3, 9}, **kw)
    for i, ((s1, p1), (s2, p2)) in enumerate(zip(ours, theirs)):
        assert s1 == s2, f"step {i}: scale {s1} vs torch {s2}"
        np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-7, err_msg=f"step {i}")
    assert sd == {k: (float(v) if k != "_growth_tracker" else int(v)) for k, v in tsd.items()}


def test_grad_scaler_skips_the_step_and_backs_off_on_overflow():
    p = nb.tensor(np.ones(3, np.float32), requires_grad=True)
    opt = nb.optim.SGD([p], lr=0.5)
    scaler = GradScaler(init_scale=8.0, growth_interval=2)
    assert scaler.scale(p.sum()).item() == 24.0
    scaler.scale((p * p).sum()).backward()
    g = p.grad.data if isinstance(p.grad, nb.Tensor) else p.grad
    g[1] = np.nan
    assert scaler.step(opt) is None                             # skipped
    scaler.update()
    np.testing.assert_array_equal(p.numpy(), np.ones(3))
    assert scaler.get_scale() == 4.0
    for expected in (4.0, 8.0, 8.0, 16.0):                      # grows after 2 good steps
        opt.zero_grad()
        scaler.scale((p * p).sum()).backward()
        scaler.unscale_(opt)                                     # gradients are true gradients after unscale_
        np.testing.assert_allclose(p.grad.numpy(), 2 * p.numpy(), rtol=1e-6)
        scaler.step(opt); scaler.update()
        assert scaler.get_scale() == expected


def test_grad_scaler_misuse_is_a_clear_error():
    p = nb.tensor(np.ones(2, np.float32), requires_grad=True)
    opt = nb.optim.SGD([p], lr=0.1)
    scaler = GradScaler()
    with pytest.raises(RuntimeError, match="no inf checks were recorded"):
        scaler.update()
    scaler.scale(p.sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    with pytest.raises(TypeError, match="expected a Tensor"):
        scaler.scale(3.0)
    q = nb.tensor(np.ones(2, np.float16), requires_grad=True)
    (q.sum() * 2).backward()
    with pytest.raises(ValueError, match="gradient of a parameter of shape \\(2,\\) is float16"):
        GradScaler().unscale_(nb.optim.SGD([q], lr=0.1))
    for kw, match in [(dict(growth_factor=1.0), "growth_factor"), (dict(backoff_factor=1.5), "backoff_factor"),
                      (dict(growth_interval=0), "growth_interval"), (dict(init_scale=0), "init_scale")]:
        with pytest.raises(ValueError, match=match):
            GradScaler(**kw)


def test_grad_scaler_disabled_is_a_no_op_and_state_round_trips():
    p = nb.tensor(np.ones(2, np.float32), requires_grad=True)
    opt = nb.optim.SGD([p], lr=0.1)
    off = GradScaler(enabled=False)
    loss = p.sum()
    assert off.scale(loss) is loss and off.get_scale() == 1.0 and off.state_dict() == {}
    loss.backward(); off.step(opt); off.update()
    np.testing.assert_allclose(p.numpy(), [0.9, 0.9])
    a = GradScaler(init_scale=256.0, growth_interval=7)
    a._growth_tracker = 3
    b = GradScaler()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() == {"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                "growth_interval": 7, "_growth_tracker": 3}
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({"scale": 1.0})


def test_mixed_precision_training_reaches_float32_accuracy():
    from neuralbook.data import DataLoader, TensorDataset, train_test_split
    from neuralbook.datasets import load_digits
    X, y = load_digits()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, seed=0, stratify=y)
    accs = {}
    for amp in (False, True):
        nb.manual_seed(0)
        model = nb.nn.Sequential(nb.nn.Linear(64, 64), nb.nn.ReLU(), nb.nn.Linear(64, 10))
        opt = nb.optim.Adam(model.parameters(), lr=3e-3)
        scaler = GradScaler(enabled=amp)
        for _ in range(8):
            for xb, yb in DataLoader(TensorDataset(Xtr, ytr), batch_size=64, shuffle=True, seed=0):
                opt.zero_grad()
                with autocast(enabled=amp):
                    loss = F.cross_entropy(model(xb), yb)
                scaler.scale(loss).backward()
                scaler.step(opt); scaler.update()
        with nb.no_grad(), autocast(enabled=amp):
            accs[amp] = float((model(nb.tensor(Xte)).numpy().argmax(1) == yte).mean())
    assert accs[True] >= 0.93 and abs(accs[True] - accs[False]) <= 0.02, accs


# ----------------------------------------------------------------------------------- the Learner callback
def _learner_and_data(cbs, seed=0):
    from neuralbook.data import DataLoader, TensorDataset
    from neuralbook.learner import Learner
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((96, 12)).astype(np.float32), rng.integers(0, 4, 96)
    nb.manual_seed(seed)
    model = nb.nn.Sequential(nb.nn.Linear(12, 32), nb.nn.ReLU(), nb.nn.Linear(32, 4))
    dl = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True, seed=0)
    return Learner(model, F.cross_entropy, lambda ps: nb.optim.Adam(ps, lr=1e-2), dl, callbacks=cbs), X, y


def test_mixed_precision_callback_equals_the_hand_written_loop():
    from neuralbook.amp import MixedPrecision
    from neuralbook.data import DataLoader, TensorDataset
    learn, X, y = _learner_and_data([MixedPrecision(init_scale=2.0 ** 8, growth_interval=2)])
    learn.fit(3)
    # the same steps written out
    nb.manual_seed(0)
    model = nb.nn.Sequential(nb.nn.Linear(12, 32), nb.nn.ReLU(), nb.nn.Linear(32, 4))
    opt = nb.optim.Adam(model.parameters(), lr=1e-2)
    scaler = GradScaler(init_scale=2.0 ** 8, growth_interval=2)
    losses_, dl = [], DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True, seed=0)
    for _ in range(3):
        for xb, yb in dl:
            with autocast():
                loss = F.cross_entropy(model(xb), yb)
            losses_.append(loss.item())
            scaler.scale(loss).backward()
            scaler.step(opt); scaler.update(); opt.zero_grad()
    np.testing.assert_array_equal(learn.recorder.losses, losses_)        # recorded unscaled, bit for bit
    assert learn.mixed_precision.scaler.get_scale() == scaler.get_scale() == 2.0 ** 8 * 2 ** 4
    for p, q in zip(learn.model.parameters(), model.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
        assert p.dtype == np.float32
    assert not is_autocast_enabled()


def test_mixed_precision_callback_skips_an_overflowing_step():
    from neuralbook.amp import MixedPrecision
    from neuralbook.learner import Callback

    class Overflow(Callback):
        order = -20                                   # before MixedPrecision's before_step
        def after_backward(self):
            if self.learn.iter == 1:                   # the second batch (train_iter stays put on a skip)
                p = next(iter(self.learn.model.parameters()))
                (p.grad.data if isinstance(p.grad, nb.Tensor) else p.grad)[0, 0] = np.inf
                self.before = [q.numpy().copy() for q in self.learn.model.parameters()]

    class Watch(Callback):
        def after_step(self):
            if hasattr(self.learn.overflow, "before") and not hasattr(self, "checked"):
                self.checked = True
                for q, b in zip(self.learn.model.parameters(), self.learn.overflow.before):
                    np.testing.assert_array_equal(q.numpy(), b)          # the step was skipped

    mp = MixedPrecision(init_scale=1024.0)
    learn, _, _ = _learner_and_data([Overflow(), mp, Watch()])
    learn.fit(1)
    assert learn.watch.checked and mp.scaler.get_scale() == 512.0
    assert all(np.isfinite(q.numpy()).all() for q in learn.model.parameters())


# ------------------------------------------------------------------------------------------- Keras policy
def test_keras_policy_api():
    from neuralbook import keras
    P = keras.mixed_precision.Policy
    assert (P("mixed_float16").compute_dtype, P("mixed_float16").variable_dtype) == ("float16", "float32")
    assert P("float32").compute_dtype == "float32" and repr(P("float32")) == '<DTypePolicy "float32">'
    for bad in ("mixed_bfloat16", "float16", "fp16"):
        with pytest.raises(ValueError, match=f"{bad!r} is not supported; use 'float32' or 'mixed_float16'"):
            P(bad)
    assert keras.mixed_precision.global_policy().name == "float32"
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        assert keras.mixed_precision.global_policy() == P("mixed_float16")
    finally:
        keras.mixed_precision.set_global_policy(None)
    assert keras.mixed_precision.global_policy().name == "float32"


def _keras_run(policy, epochs=3):
    from neuralbook import keras
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((160, 10)).astype(np.float32), rng.integers(0, 3, 160)
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3)])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    h1 = model.fit(X, y, epochs=epochs, batch_size=32, verbose=0).history
    h2 = model.fit(X, y, epochs=1, batch_size=32, verbose=0).history
    return model, h1, h2, model.evaluate(X, y, verbose=0, return_dict=True), model.predict(X[:4], verbose=0)


def test_keras_mixed_float16_trains_like_float32():
    m32, h32, _, e32, p32 = _keras_run("float32")
    m16, h16, _, e16, p16 = _keras_run("mixed_float16")
    assert m16._policy.name == "mixed_float16" and m32._policy.name == "float32"
    np.testing.assert_allclose(h16["loss"], h32["loss"], atol=5e-3)
    assert abs(e16["loss"] - e32["loss"]) < 5e-3
    assert p32.dtype == np.float32 and p16.dtype == np.float16               # logits computed in float16
    np.testing.assert_allclose(p16.astype(np.float32), p32, atol=2e-2)
    assert all(w.dtype == np.float32 for w in m16.weights)
    cb = m16._policy_cb                                                      # one scaler across both fits
    assert cb.scaler is not None and cb.scaler.get_scale() == 2.0 ** 16
    assert not is_autocast_enabled()


def test_learner_to_fp16_and_back():
    from neuralbook.amp import MixedPrecision
    learn, _, _ = _learner_and_data([])
    assert learn.to_fp16(init_scale=512.0) is learn and learn.to_fp16() is learn     # never two callbacks
    mps = [c for c in learn.cbs if isinstance(c, MixedPrecision)]
    assert len(mps) == 1 and learn.mixed_precision is mps[0]
    learn.fit(1)
    assert mps[0].scaler.get_scale() == 2.0 ** 16 and len(learn.recorder.losses) == 3
    assert learn.to_fp32() is learn and not any(isinstance(c, MixedPrecision) for c in learn.cbs)
    assert not hasattr(learn, "mixed_precision")
