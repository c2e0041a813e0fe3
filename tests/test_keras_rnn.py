"""Chapter 41: Keras recurrent layers (SimpleRNN, LSTM, GRU, Bidirectional, TimeDistributed) against Keras 3 (torch
backend) on copied weights — forward at 1e-5 in float32 and gradients w.r.t. inputs and weights —, float64 gradient
checks, masks in symbolic models, .keras round trips, and bad input."""
import os

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import keras as nk
from neuralbook.backend import default_generator
from neuralbook.keras.layers import rnn as R

os.environ.setdefault("KERAS_BACKEND", "torch")


def _keras():
    pytest.importorskip("torch")
    k = pytest.importorskip("keras")
    if k.backend.backend() != "torch": pytest.skip("Keras must run on its torch backend here")
    return k


@pytest.fixture(autouse=True)
def _fresh():
    state = default_generator.get_state()
    nb.manual_seed(0)
    nk.backend.clear_session()
    yield
    default_generator.set_state(state)


B, T, I, H = 3, 6, 5, 4
X = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
MASK = np.ones((B, T), bool)
MASK[0, 4:] = False                      # right-padded
MASK[1, :2] = False                      # left-padded
MASK[2, 3] = False                       # a hole


def _pair(keras, name, kw, wrap=None, seed=0):
    "A Keras layer and ours with the same (random) weights."
    r = np.random.default_rng(seed)
    kl, ol = getattr(keras.layers, name)(H, **kw), getattr(R, name)(H, **kw)
    if wrap is not None: kl, ol = wrap[0](kl), wrap[1](ol)
    kl(X)
    w = [r.uniform(-0.5, 0.5, a.shape).astype(np.float32) for a in kl.get_weights()]
    kl.set_weights(w)
    ol(X)
    ol.set_weights(w)
    return kl, ol


def _list(o): return list(o) if isinstance(o, (list, tuple)) else [o]


def _states(n, seed=1):
    return [np.random.default_rng(seed + i).standard_normal((B, H)).astype(np.float32) for i in range(n)]


OPTIONS = [dict(), dict(return_sequences=True), dict(go_backwards=True),
           dict(return_sequences=True, go_backwards=True, return_state=True), dict(return_state=True),
           dict(return_sequences=True, zero_output_for_mask=True), dict(use_bias=False, return_sequences=True)]


@pytest.mark.parametrize("name", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(kw) or "default")
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("init", [False, True], ids=["zeros", "init"])
def test_against_keras(name, kw, masked, init):
    keras = _keras()
    import torch
    kl, ol = _pair(keras, name, kw)
    st = _states(2 if name == "LSTM" else 1) if init else None
    ko = _list(kl(X, mask=torch.tensor(MASK) if masked else None, initial_state=st))
    oo = _list(ol(X, mask=MASK if masked else None, initial_state=st))
    assert len(ko) == len(oo)
    for a, b in zip(ko, oo):
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("name,kw", [("LSTM", dict(activation="relu", recurrent_activation="tanh")),
                                     ("GRU", dict(reset_after=False)), ("GRU", dict(recurrent_activation="relu")),
                                     ("SimpleRNN", dict(activation="relu")), ("SimpleRNN", dict(activation="elu")),
                                     ("GRU", dict(reset_after=False, use_bias=False, go_backwards=True))])
def test_other_activations_against_keras(name, kw):
    "Configurations without a fused cell (the per-step graph), and SimpleRNN's fused relu."
    keras = _keras()
    import torch
    kl, ol = _pair(keras, name, dict(kw, return_sequences=True))
    np.testing.assert_allclose(ol(X, mask=MASK).numpy(), kl(X, mask=torch.tensor(MASK)).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("kw", [dict(), dict(return_sequences=True), dict(return_sequences=True, return_state=True)],
                         ids=["last", "seq", "seq+state"])
def test_bidirectional_against_keras(name, merge, kw):
    keras = _keras()
    import torch
    kl, ol = _pair(keras, name, kw, wrap=(lambda l: keras.layers.Bidirectional(l, merge_mode=merge),
                                          lambda l: R.Bidirectional(l, merge_mode=merge)))
    st = _states(4 if name == "LSTM" else 2) if kw.get("return_state") else None
    ko = _list(kl(X, mask=torch.tensor(MASK), initial_state=st))
    oo = _list(ol(X, mask=MASK, initial_state=st))
    assert len(ko) == len(oo)
    for a, b in zip(ko, oo):
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("name,kw", [("LSTM", dict(return_sequences=True)), ("GRU", dict(go_backwards=True)),
                                     ("SimpleRNN", dict(return_sequences=True, go_backwards=True)),
                                     ("GRU", dict(reset_after=False, return_sequences=True))])
def test_gradients_against_keras(name, kw):
    "Gradients w.r.t. the inputs and every weight, through masks, against Keras' (torch autograd)."
    keras = _keras()
    import torch
    kl, ol = _pair(keras, name, kw)
    xt = torch.tensor(X, requires_grad=True)
    ko = kl(xt, mask=torch.tensor(MASK))
    v = np.random.default_rng(5).standard_normal(tuple(ko.shape)).astype(np.float32)
    (ko * torch.tensor(v)).sum().backward()
    xn = nb.tensor(X, requires_grad=True)
    (ol(xn, mask=MASK) * nb.tensor(v)).sum().backward()
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), atol=1e-5)
    for kw_, ow in zip(kl.trainable_weights, ol.weights):
        np.testing.assert_allclose(ow.grad.numpy(), kw_.value.grad.numpy(), atol=1e-5, err_msg=kw_.path)


def test_bidirectional_gradients_against_keras():
    keras = _keras()
    import torch
    kl, ol = _pair(keras, "LSTM", dict(return_sequences=True), wrap=(keras.layers.Bidirectional, R.Bidirectional))
    xt = torch.tensor(X, requires_grad=True)
    (kl(xt, mask=torch.tensor(MASK)) ** 2).sum().backward()
    xn = nb.tensor(X, requires_grad=True)
    (ol(xn, mask=MASK) ** 2).sum().backward()
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), atol=1e-5)
    for kw_, ow in zip(kl.trainable_weights, ol.weights):
        np.testing.assert_allclose(ow.grad.numpy(), kw_.value.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("name,kw", [("LSTM", dict(return_sequences=True)), ("GRU", dict(go_backwards=True)),
                                     ("SimpleRNN", dict(return_state=True)), ("LSTM", dict(activation="relu")),
                                     ("GRU", dict(reset_after=False, return_sequences=True))])
def test_gradcheck_float64(name, kw):
    "Central differences in float64 through the fused recurrence (or the per-step graph) with a mask."
    layer = getattr(R, name)(3, dtype="float64", **kw)
    x = np.random.default_rng(2).standard_normal((2, 4, 3))
    layer(nb.tensor(x))
    m = np.array([[True, True, False, True], [False, True, True, True]])
    f = lambda t: sum((o * o).sum() for o in _list(layer(t, mask=m)))
    assert nb.gradcheck(f, nb.tensor(x, requires_grad=True))


def test_timedistributed_against_keras():
    keras = _keras()
    kl, ol = keras.layers.TimeDistributed(keras.layers.Dense(3)), R.TimeDistributed(nk.layers.Dense(3))
    kl(X)
    ol(X)
    ol.set_weights(kl.get_weights())
    np.testing.assert_allclose(ol(X).numpy(), kl(X).detach().numpy(), atol=1e-6)
    assert ol.compute_output_shape((None, T, I)) == (None, T, 3)


def test_dropout_training_only():
    "Input and recurrent dropout act in training (one mask per sequence) and not in inference."
    layer = R.LSTM(H, dropout=0.5, recurrent_dropout=0.5, seed=1, return_sequences=True)
    ref = R.LSTM(H, return_sequences=True)
    layer(X); ref(X); ref.set_weights(layer.get_weights())
    np.testing.assert_allclose(layer(X).numpy(), ref(X).numpy(), atol=1e-7)
    a, b = layer(X, training=True).numpy(), layer(X, training=True).numpy()
    assert a.shape == (B, T, H) and not np.allclose(a, ref(X).numpy()) and not np.allclose(a, b)


def test_functional_model_with_mask_and_states():
    "Embedding(mask_zero) → LSTM in a symbolic model; an encoder's states as a decoder's initial_state."
    L = nk.layers
    ids = nk.Input(shape=(None,), dtype="int64")
    e = L.Embedding(10, I, mask_zero=True)(ids)
    seq, h, c = R.LSTM(H, return_sequences=True, return_state=True)(e)
    dec = R.GRU(H, return_sequences=True)(seq, initial_state=[h])
    model = nk.Model(ids, [dec, h])
    tok = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    out, hh = model(tok)
    assert tuple(out.shape) == (2, 5, H) and tuple(hh.shape) == (2, H)
    emb, lstm, gru = model.layers[1], model.layers[2], model.layers[3]
    s2, h2, c2 = lstm(emb(tok))
    np.testing.assert_allclose(hh.numpy(), h2.numpy(), atol=1e-6)
    alone = lstm(emb(tok[:1, :3]))[1]                  # the padded steps do not change the final state
    np.testing.assert_allclose(h2.numpy()[:1], alone.numpy(), atol=1e-6)


def test_save_load_round_trip(tmp_path):
    L = nk.layers
    inp = nk.Input(shape=(T, I))
    x = R.Bidirectional(R.GRU(H, return_sequences=True), merge_mode="sum")(inp)
    x = R.TimeDistributed(L.Dense(2))(x)
    x = R.SimpleRNN(3, activation="relu")(R.LSTM(H, return_sequences=True, go_backwards=True)(x))
    model = nk.Model(inp, x)
    model.save(tmp_path / "m.keras")
    back = nk.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(back.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)
    assert [type(l).__name__ for l in back.layers] == [type(l).__name__ for l in model.layers]


def test_orthogonal_initializer():
    q = R.Orthogonal(seed=3)((6, 6))
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-6)
    w = R.Orthogonal(gain=2.0, seed=3)((3, 5))
    np.testing.assert_allclose(w @ w.T, 4 * np.eye(3), atol=1e-5)
    assert nk.initializers.get("orthogonal").__class__ is R.Orthogonal


def test_bad_input():
    layer = R.LSTM(H)
    layer(X)
    with pytest.raises(ValueError, match=r"LSTM 'lstm.*': expected a 3-D input \(batch, time steps, features\), got "
                                         r"shape \(6, 5\).*x\[None\]"):
        layer(X[0])
    with pytest.raises(ValueError, match=r"has 3 features, but the layer was built for 5 \(kernel \(5, 16\)\)"):
        layer(X[..., :3])
    with pytest.raises(ValueError, match=r"the mask has shape \(3, 5\), expected \(3, 6\) \(batch, time steps\)"):
        layer(X, mask=np.ones((3, 5), bool))
    with pytest.raises(ValueError, match=r"initial_state must be \[h, c\] \(two states\).*= \(3, 4\), got 1"):
        layer(X, initial_state=[np.zeros((3, H), np.float32)])
    with pytest.raises(ValueError, match=r"initial_state\[1\] has shape \(3, 5\), expected \(batch, units\) = \(3, 4\)"):
        layer(X, initial_state=[np.zeros((3, H), np.float32), np.zeros((3, 5), np.float32)])
    with pytest.raises(ValueError, match=r"Bidirectional: layer must be a SimpleRNN, LSTM or GRU"):
        R.Bidirectional(nk.layers.Dense(3))
    with pytest.raises(ValueError, match=r"merge_mode must be"):
        R.Bidirectional(R.GRU(2), merge_mode="max")
    with pytest.raises(ValueError, match=r"initial_state must hold the forward layer's states, then the backward"):
        bi = R.Bidirectional(R.GRU(H))
        bi(X, initial_state=[np.zeros((B, H), np.float32)] * 3)
    with pytest.raises(ValueError, match=r"GRU: units must be a positive int, got 0"):
        R.GRU(0)
    with pytest.raises(ValueError, match=r"stateful=True is not supported"):
        R.LSTM(2, stateful=True)
    with pytest.raises(ValueError, match=r"TimeDistributed '.*': expected an input \(batch, time steps, \.\.\.\) of "
                                         r"rank >= 3, got shape \((None|3), 5\)"):
        R.TimeDistributed(nk.layers.Dense(2))(X[:, 0])


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_layers_on_cuda_match_cpu(cp, name):
    "The Keras layers on the GPU (real, or chapter 32's emulated one): same outputs and gradients as on the CPU."
    from neuralbook.keras.layers.attention import MultiHeadAttention
    res = {}
    for device in ("cpu", "cuda"):
        nb.manual_seed(0)
        nk.backend.clear_session()
        bi = R.Bidirectional(getattr(R, name)(H, return_sequences=True))
        mha = MultiHeadAttention(2, 3)
        h = bi(X)
        mha(h, h)
        bi.to(device); mha.to(device)
        x = nb.tensor(X, requires_grad=True, device=device)
        y = mha(bi(x, mask=MASK), bi(x, mask=MASK), attention_mask=MASK[:, None, :] & MASK[:, :, None])
        assert y.device == x.device
        (y * y).sum().backward()
        res[device] = [y.numpy(), x.grad.numpy()] + [p.grad.numpy() for p in bi.weights + mha.weights]
    for a, b in zip(res["cpu"], res["cuda"]):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
