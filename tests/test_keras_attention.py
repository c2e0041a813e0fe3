"""Chapter 41: Keras MultiHeadAttention and LayerNormalization against Keras 3 (torch backend) on copied weights —
forward at 1e-5 in float32, gradients w.r.t. inputs and weights —, float64 gradient checks, masks from the inputs,
symbolic models with static options, .keras round trips, and bad input."""
import os

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import keras as nk
from neuralbook.backend import default_generator
from neuralbook.keras.layers.attention import Attention, LayerNormalization, MultiHeadAttention

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


rng = np.random.default_rng(0)
B, T, S, D = 2, 5, 4, 6
Q = rng.standard_normal((B, T, D)).astype(np.float32)
V = rng.standard_normal((B, S, D + 1)).astype(np.float32)
K = rng.standard_normal((B, S, 3)).astype(np.float32)
AM = rng.random((B, T, S)) > 0.3
AM[:, :, 0] = True                       # every query keeps a key (Keras' fused path differs on empty rows)


def _pair(keras, args, kw, seed=0):
    kl, ol = keras.layers.MultiHeadAttention(**kw), MultiHeadAttention(**kw)
    kl(*args)
    ol(*args)
    w = [np.random.default_rng(seed).uniform(-0.5, 0.5, a.shape).astype(np.float32) for a in kl.get_weights()]
    kl.set_weights(w)
    ol.set_weights(w)
    return kl, ol


def _list(o): return list(o) if isinstance(o, (list, tuple)) else [o]


CASES = [((Q, Q), dict(num_heads=2, key_dim=3), {}),
         ((Q, V), dict(num_heads=2, key_dim=3), {}),
         ((Q, V, K), dict(num_heads=3, key_dim=2, value_dim=4), {}),
         ((Q, V, K), dict(num_heads=3, key_dim=2, value_dim=4, output_shape=5), dict(attention_mask=AM)),
         ((Q, V, K), dict(num_heads=3, key_dim=2), dict(attention_mask=AM, return_attention_scores=True)),
         ((Q, Q), dict(num_heads=2, key_dim=3), dict(use_causal_mask=True)),
         ((Q, Q), dict(num_heads=2, key_dim=3, use_bias=False), dict(use_causal_mask=True, return_attention_scores=True)),
         ((Q, Q), dict(num_heads=4, key_dim=6), dict(attention_mask=AM[:, :, :1].repeat(T, 2) | np.eye(T, dtype=bool)))]


@pytest.mark.parametrize("args,kw,ckw", CASES)
def test_against_keras(args, kw, ckw):
    keras = _keras()
    kl, ol = _pair(keras, args, kw)
    ko, oo = _list(kl(*args, **ckw)), _list(ol(*args, **ckw))
    assert len(ko) == len(oo)
    for a, b in zip(ko, oo):
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("ckw", [{}, dict(use_causal_mask=True), dict(attention_mask=AM[:, :, :S].repeat(1, 0))])
def test_gradients_against_keras(ckw):
    "Gradients w.r.t. query, value and every weight against Keras' (torch autograd)."
    keras = _keras()
    import torch
    v = V[:, :, :D]
    args = (Q, v) if "attention_mask" in ckw else (Q, Q)
    kl, ol = _pair(keras, args, dict(num_heads=2, key_dim=4))
    kt = [torch.tensor(a, requires_grad=True) for a in args]
    nt = [nb.tensor(a, requires_grad=True) for a in args]
    ko, oo = kl(*kt, **ckw), ol(*nt, **ckw)
    c = np.random.default_rng(7).standard_normal(tuple(ko.shape)).astype(np.float32)
    (ko * torch.tensor(c)).sum().backward()
    (oo * nb.tensor(c)).sum().backward()
    for a, b in zip(kt, nt):
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), atol=1e-5)
    for kw_, ow in zip(kl.trainable_weights, ol.weights):
        np.testing.assert_allclose(ow.grad.numpy(), kw_.value.grad.numpy(), atol=1e-5, err_msg=kw_.path)


def test_input_masks_against_keras():
    "Keras masks of the inputs (an Embedding with mask_zero) join the attention mask; the output keeps the query's."
    keras = _keras()
    tok = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    ke, oe = keras.layers.Embedding(8, D, mask_zero=True), nk.layers.Embedding(8, D, mask_zero=True)
    ke(tok); oe(tok); oe.set_weights(ke.get_weights())
    kx, ox = ke(tok), oe(tok)
    kl, ol = _pair(keras, (Q, Q), dict(num_heads=2, key_dim=3))
    ko, oo = kl(kx, kx).detach().numpy(), ol(ox, ox)
    real = tok != 0                       # padded query rows: zero here; Keras' fused path averages there
    np.testing.assert_allclose(oo.numpy()[real], ko[real], atol=1e-5)
    from neuralbook.keras.layers.layer import get_keras_mask
    np.testing.assert_array_equal(get_keras_mask(oo).numpy(), real)
    _, A = ol(ox, ox, return_attention_scores=True)
    assert (A.numpy()[0, :, :, 3:] == 0).all() and (A.numpy()[0, :, 3:] == 0).all()


def test_gradcheck_float64():
    m = MultiHeadAttention(2, 3, dtype="float64")
    q, v = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 3, 5))
    m(nb.tensor(q), nb.tensor(v))
    am = np.array([[[1, 1, 0]] * 4, [[1, 0, 1]] * 4], bool)
    assert nb.gradcheck(lambda a, b: m(a, b, attention_mask=am), q, v)
    assert nb.gradcheck(lambda a, b: m(a, b, attention_mask=am, return_attention_scores=True)[1], q, v)
    ln = LayerNormalization(dtype="float64")
    ln(nb.tensor(q))
    assert nb.gradcheck(lambda a: ln(a), q)


@pytest.mark.parametrize("kw", [dict(), dict(epsilon=1e-5), dict(center=False), dict(scale=False),
                                dict(axis=[-2, -1])])
def test_layer_normalization_against_keras(kw):
    keras = _keras()
    kl, ol = keras.layers.LayerNormalization(**kw), LayerNormalization(**kw)
    kl(Q); ol(Q)
    w = [np.random.default_rng(1).uniform(0.5, 1.5, a.shape).astype(np.float32) for a in kl.get_weights()]
    kl.set_weights(w); ol.set_weights(w)
    np.testing.assert_allclose(ol(Q).numpy(), kl(Q).detach().numpy(), atol=1e-5)
    assert [tuple(a.shape) for a in ol.get_weights()] == [tuple(a.shape) for a in kl.get_weights()]


def test_symbolic_model_and_round_trip(tmp_path):
    "Static options (use_causal_mask, return_attention_scores) recorded by the node; .keras files round-trip."
    L = nk.layers
    inp = nk.Input(shape=(T, D))
    att = MultiHeadAttention(2, 4, name="att")
    y, scores = att(inp, inp, use_causal_mask=True, return_attention_scores=True)
    out = LayerNormalization(epsilon=1e-6)(L.Add()([inp, y]))
    model = nk.Model(inp, [out, scores])
    a, s = model(Q)
    assert tuple(s.shape) == (B, 2, T, T) and np.allclose(np.triu(s.numpy(), 1), 0)
    y_direct = att(Q, Q)                      # the recorded options are the layer's defaults from now on ...
    assert isinstance(y_direct, list) and np.allclose(y_direct[1].numpy(), s.numpy())
    y1 = att(Q, Q, return_attention_scores=False).numpy()     # ... and keyword arguments override them
    assert y1.shape == (B, T, D) and np.allclose(y1, y_direct[0].numpy())
    model.save(tmp_path / "m.keras")
    back = nk.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(back(Q)[0].numpy(), a.numpy(), atol=1e-6)
    with pytest.raises(TypeError, match=r"attention_mask cannot be recorded in a symbolic model"):
        att(inp, inp, attention_mask=np.ones((1, T, T), bool))
    with pytest.raises(ValueError, match=r"a layer reused in a model must get the same options"):
        att(inp, inp)


def test_bad_input():
    m = MultiHeadAttention(num_heads=2, key_dim=3, name="att")
    m(Q, Q)
    with pytest.raises(ValueError, match=r"MultiHeadAttention 'att': expected the query as a 3-D input \(batch, time "
                                         r"steps, features\), got shape \(2, 6\)"):
        m(Q[:, 0], Q[:, 0])
    with pytest.raises(ValueError, match=r"the query has 5 features, but the layer was built for 6 \(query_kernel "
                                         r"\(6, 2, 3\)\)"):
        m(Q[..., :5], Q)
    with pytest.raises(ValueError, match=r"key \(2, 5, 6\) and value \(2, 4, 6\) must have the same number of time"):
        m(Q, Q[:, :4], Q)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5, 4\), expected \(batch, query steps, key "
                                         r"steps\) = \(2, 5, 5\)"):
        m(Q, Q, attention_mask=np.ones((2, 5, 4), bool))
    with pytest.raises(ValueError, match=r"the mask has shape \(2, 4\), expected \(2, 5\)"):
        m(Q, Q, query_mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"num_heads must be a positive int, got 0"):
        MultiHeadAttention(num_heads=0, key_dim=4)
    with pytest.raises(ValueError, match=r"key_dim must be a positive int, got 2.5"):
        MultiHeadAttention(num_heads=2, key_dim=2.5)
    with pytest.raises(TypeError, match=r"call it as layer\(query, value\)"):
        m(Q)
    with pytest.raises(ValueError, match=r"LayerNormalization '.*': axis=1 must name the last axes of the input"):
        LayerNormalization(axis=1)(Q)


@pytest.mark.parametrize("kw", [dict(), dict(use_scale=True), dict(score_mode="concat"),
                                dict(score_mode="concat", use_scale=True)])
@pytest.mark.parametrize("ckw", [{}, dict(use_causal_mask=True), dict(return_attention_scores=True)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_layer_against_keras(kw, ckw, masked):
    keras = _keras()
    import torch
    q, v, k = Q, rng.standard_normal((B, T, 4)).astype(np.float32), rng.standard_normal((B, T, D)).astype(np.float32)
    kl, ol = keras.layers.Attention(**kw), Attention(**kw)
    kl([q, v, k]); ol([q, v, k])
    w = [np.array(1.7, np.float32) if i == 0 else np.array(0.6, np.float32) for i, _ in enumerate(kl.get_weights())]
    kl.set_weights(w); ol.set_weights(w)
    qm = np.ones((B, T), bool); qm[0, 3:] = False
    vm = np.ones((B, T), bool); vm[1, :2] = False
    km = [torch.tensor(qm), torch.tensor(vm)] if masked else None
    ko, oo = _list(kl([q, v, k], mask=km, **ckw)), _list(ol([q, v, k], mask=[qm, vm] if masked else None, **ckw))
    assert len(ko) == len(oo)
    for a, b in zip(ko, oo):
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), atol=1e-5)


def test_attention_layer_gradcheck_and_errors():
    a = Attention(use_scale=True, score_mode="concat", dtype="float64")
    q, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    a([nb.tensor(q), nb.tensor(v)])
    vm = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    assert nb.gradcheck(lambda x, y: a([x, y], mask=[None, vm]), q, v)
    with pytest.raises(TypeError, match=r"call it on a list \[query, value\]"):
        a(nb.tensor(q))
    with pytest.raises(ValueError, match=r"expected query \(batch, Tq, dim\), value .* got \(2, 3, 4\), \(2, 5, 4\), "
                                         r"\(2, 5, 3\)"):
        a([q, v, v[..., :3]])
    with pytest.raises(ValueError, match=r"score_mode must be 'dot' or 'concat'"):
        Attention(score_mode="general")
