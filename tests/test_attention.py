"""Chapter 17: scaled dot-product attention, MultiheadAttention, positional encodings and transformer layers —
float64 gradient checks, PyTorch on copied weights (forward and backward at 1e-6), bad input, the emulated GPU."""

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.attention import (
    LearnedPositionalEncoding,
    MultiheadAttention,
    SinusoidalPositionalEncoding,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    causal_mask,
    generate_square_subsequent_mask,
    scaled_dot_product_attention,
    sinusoidal_encoding,
)
from neuralbook.norm import LayerNorm

TOL = dict(atol=1e-6, rtol=1e-6)


def _torch():
    return pytest.importorskip("torch")


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------ the function
def _masks(L, S, rng):
    keep = rng.random((L, S)) > 0.3
    keep[:, 0] = True                                              # every query keeps at least one key
    return {"none": None, "bool": keep, "float": rng.standard_normal((L, S)),
            "bool_batched": np.broadcast_to(keep, (2, 1, L, S)).copy()}


@pytest.mark.parametrize("mask", ["none", "bool", "float", "bool_batched", "causal"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_matches_torch(mask, scale):
    torch = _torch()
    rng = _rng(1)
    q, k, v = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((2, 3, 6, 7))
    m = None if mask == "causal" else _masks(4, 6, rng)[mask]
    causal = mask == "causal"
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    nq, nk, nv = (nb.tensor(a, requires_grad=True) for a in (q, k, v))
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=None if m is None else torch.tensor(m),
                                                          is_causal=causal, scale=scale)
    ny = scaled_dot_product_attention(nq, nk, nv, attn_mask=m, is_causal=causal, scale=scale)
    np.testing.assert_allclose(ny.numpy(), ty.detach().numpy(), **TOL)
    g = rng.standard_normal(ty.shape)
    ty.backward(torch.tensor(g))
    ny.backward(g)
    for a, b in zip((nq, nk, nv), (tq, tk, tv)):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **TOL)


def test_sdpa_fully_masked_row_is_zero_as_in_torch():
    torch = _torch()
    rng = _rng(2)
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    m = rng.random((3, 5)) > 0.5
    m[0], m[1, 0] = False, True
    ty = torch.nn.functional.scaled_dot_product_attention(*(torch.tensor(a) for a in (q, k, v)), attn_mask=torch.tensor(m))
    y = scaled_dot_product_attention(q, k, v, attn_mask=m)
    np.testing.assert_allclose(y, ty.numpy(), **TOL)
    assert (y[0] == 0).all()
    assert nb.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=m), q, k, v)


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"scale": 0.5}])
def test_sdpa_gradcheck_and_double_backward(kw):
    rng = _rng(3)
    q, k, v = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 2))
    assert nb.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, **kw), q, k, v)
    assert nb.gradgradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, **kw), q, k, v)


def test_sdpa_broadcasts_batch_axes():
    torch = _torch()
    rng = _rng(4)
    q, k, v = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((1, 3, 6, 5)), rng.standard_normal((1, 1, 6, 2))
    nq, nk, nv = (nb.tensor(a, requires_grad=True) for a in (q, k, v))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    y = scaled_dot_product_attention(nq, nk, nv)
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL)
    y.sum().backward(); ty.sum().backward()
    for a, b in zip((nq, nk, nv), (tq, tk, tv)):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **TOL)


def test_sdpa_dropout_is_seeded_and_unbiased():
    rng = _rng(5)
    q, k, v = rng.standard_normal((4, 3)), rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    nb.manual_seed(0)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    nb.manual_seed(0)
    b = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, scaled_dot_product_attention(q, k, v))
    ys = np.mean([scaled_dot_product_attention(q, k, v, dropout_p=0.5) for _ in range(2000)], axis=0)
    np.testing.assert_allclose(ys, scaled_dot_product_attention(q, k, v), atol=0.1)


def test_sdpa_float32_stays_float32():
    x = nb.tensor(np.ones((2, 3, 4), np.float32), requires_grad=True)
    y = scaled_dot_product_attention(x, x, x, is_causal=True)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_sdpa_bad_input():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention: query, key and value need at least 2 axes"):
        scaled_dot_product_attention(np.zeros(4), x, x)
    with pytest.raises(ValueError, match=r"query \(2, 3, 4\) and key \(2, 3, 5\) must have the same last axis"):
        scaled_dot_product_attention(x, np.zeros((2, 3, 5)), x)
    with pytest.raises(ValueError, match=r"key \(2, 3, 4\) and value \(2, 5, 4\) must have the same number"):
        scaled_dot_product_attention(x, x, np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4, 3\) cannot be broadcast.*\(2, 3, 3\)"):
        scaled_dot_product_attention(x, x, x, attn_mask=np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        scaled_dot_product_attention(x, x, x, attn_mask=np.ones((3, 3), bool), is_causal=True)
    with pytest.raises(TypeError, match=r"mask must be boolean or floating point, got int64"):
        scaled_dot_product_attention(x, x, x, attn_mask=np.ones((3, 3), np.int64))


def test_mask_helpers():
    np.testing.assert_array_equal(causal_mask(2, 3), [[True, False, False], [True, True, False]])
    torch = _torch()
    np.testing.assert_array_equal(generate_square_subsequent_mask(4),
                                  torch.nn.Transformer.generate_square_subsequent_mask(4).numpy())


# ---------------------------------------------------------------------------------------- MultiheadAttention
def _copy_mha(t, ours):
    for name, p in t.named_parameters():
        ours_p = dict(ours.named_parameters())[name]
        ours_p.data[...] = p.detach().numpy()


def _mha_pair(torch, E=8, H=2, seed=0, **kw):
    torch.manual_seed(seed)
    t = torch.nn.MultiheadAttention(E, H, dtype=torch.float64, **kw)
    ours = MultiheadAttention(E, H, dtype=np.float64, **kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in t.named_parameters()]
    _copy_mha(t, ours)
    return t, ours


def _run_pair(torch, t, ours, arrays, kwargs, need_grad_idx=(0, 1, 2), seed=0):
    tin = [torch.tensor(a, requires_grad=True) for a in arrays]
    nin = [nb.tensor(a, requires_grad=True) for a in arrays]
    self_attn = len(arrays) == 1
    targs = tin * 3 if self_attn else tin
    nargs = nin * 3 if self_attn else nin
    tk = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    ty, tw = t(*targs, **tk)
    ny, nw = ours(*nargs, **kwargs)
    np.testing.assert_allclose(ny.numpy(), ty.detach().numpy(), **TOL)
    assert (tw is None) == (nw is None)
    rng = _rng(seed)
    loss_t = (ty * torch.tensor(rng.standard_normal(ty.shape))).sum()
    gy = _rng(seed).standard_normal(ty.shape)
    loss_n = (ny * gy).sum()
    if tw is not None:
        np.testing.assert_allclose(nw.numpy(), tw.detach().numpy(), **TOL)
        gw = rng.standard_normal(tw.shape)
        loss_t = loss_t + (tw * torch.tensor(gw)).sum()
        loss_n = loss_n + (nw * gw).sum()
    loss_t.backward()
    loss_n.backward()
    for a, b in zip(nin, tin):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **TOL)
    tp = dict(t.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tp[name].grad.numpy(), err_msg=name, **TOL)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("masks", ["none", "kpm", "attn_bool", "attn_float", "attn3d", "both", "causal"])
def test_mha_self_attention_matches_torch(batch_first, need_weights, average, masks):
    torch = _torch()
    t, ours = _mha_pair(torch, batch_first=batch_first)
    rng = _rng(7)
    N, L, E, H = 3, 5, 8, 2
    x = rng.standard_normal((N, L, E) if batch_first else (L, N, E))
    kpm = np.zeros((N, L), bool)
    kpm[0, -2:] = kpm[2, -1] = True
    am = rng.random((L, L)) > 0.6
    np.fill_diagonal(am, False)                                   # True = ignore: every query keeps itself
    kw = {"need_weights": need_weights, "average_attn_weights": average}
    if masks in ("kpm", "both"): kw["key_padding_mask"] = kpm
    if masks in ("attn_bool", "both"): kw["attn_mask"] = am
    if masks == "attn_float": kw["attn_mask"] = rng.standard_normal((L, L))
    if masks == "attn3d": kw["attn_mask"] = rng.standard_normal((N * H, L, L))
    if masks == "causal":
        kw["attn_mask"], kw["is_causal"] = np.triu(np.ones((L, L), bool), 1), True
    _run_pair(torch, t, ours, [x], kw)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kvdim", [None, (5, 3)])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_mha_cross_attention_matches_torch(batch_first, kvdim, need_weights, bias):
    torch = _torch()
    kdim, vdim = kvdim or (None, None)
    t, ours = _mha_pair(torch, batch_first=batch_first, kdim=kdim, vdim=vdim, bias=bias, seed=1)
    rng = _rng(8)
    N, L, S, E = 2, 4, 6, 8
    shp = (lambda T, D: (N, T, D)) if batch_first else (lambda T, D: (T, N, D))
    q, k, v = rng.standard_normal(shp(L, E)), rng.standard_normal(shp(S, kdim or E)), rng.standard_normal(shp(S, vdim or E))
    kpm = np.zeros((N, S), bool)
    kpm[1, :3] = True
    _run_pair(torch, t, ours, [q, k, v], {"need_weights": need_weights, "key_padding_mask": kpm})


def test_mha_unbatched_matches_torch():
    torch = _torch()
    t, ours = _mha_pair(torch, seed=2)
    rng = _rng(9)
    q, kv = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    _run_pair(torch, t, ours, [q, kv, kv], {"key_padding_mask": np.array([False] * 5 + [True])})


def test_mha_gradcheck():
    rng = _rng(10)
    mha = MultiheadAttention(4, 2, batch_first=True, dtype=np.float64)
    x = rng.standard_normal((2, 3, 4))
    kpm = np.array([[False, False, True], [False, False, False]])
    for need in (True, False):
        assert nb.gradcheck(lambda x, need=need: mha(x, x, x, key_padding_mask=kpm, need_weights=need)[0], x)
    assert nb.gradcheck(lambda w: _with_weight(mha, w, x), mha.in_proj_weight.numpy())


def _with_weight(mha, w, x):
    old = mha.in_proj_weight
    mha._parameters["in_proj_weight"] = w
    try:
        return mha(nb.tensor(x), nb.tensor(x), nb.tensor(x), need_weights=False)[0]
    finally:
        mha._parameters["in_proj_weight"] = old


def test_mha_dropout_in_train_mode_only():
    mha = MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    x = nb.tensor(_rng(11).standard_normal((2, 5, 8)).astype(np.float32))
    mha.eval()
    a, _ = mha(x, x, x)
    b, _ = mha(x, x, x, need_weights=False)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    mha.train()
    nb.manual_seed(0)
    c, w = mha(x, x, x, average_attn_weights=False)
    assert not np.allclose(c.numpy(), a.numpy())
    assert ((w.numpy() == 0).mean()) > 0.3                         # dropped weights are returned as zeros


def test_mha_bad_input():
    with pytest.raises(ValueError, match=r"MultiheadAttention\(embed_dim=10, num_heads=3\): embed_dim must be divisible"):
        MultiheadAttention(10, 3)
    mha = MultiheadAttention(8, 2, batch_first=True)
    x = nb.tensor(np.zeros((2, 5, 8), np.float32))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(5, 4\) must be \(L, S\) = \(5, 5\) or "
                                         r"\(N·num_heads, L, S\) = \(4, 5, 5\)"):
        mha(x, x, x, attn_mask=np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match=r"key_padding_mask of shape \(5, 2\) must be \(N, S\) = \(2, 5\)"):
        mha(x, x, x, key_padding_mask=np.zeros((5, 2), bool))
    with pytest.raises(ValueError, match=r"must all be 3-D \(\(N, L, E\)\) or all 2-D.*got shapes \(2, 5, 8, 1\)"):
        y = nb.tensor(np.zeros((2, 5, 8, 1), np.float32))
        mha(y, y, y)
    with pytest.raises(ValueError, match=r"query of shape \(2, 5, 6\) must have 8 features"):
        y = nb.tensor(np.zeros((2, 5, 6), np.float32))
        mha(y, y, y)
    with pytest.raises(ValueError, match=r"must share the batch size"):
        mha(x, nb.tensor(np.zeros((3, 5, 8), np.float32)), nb.tensor(np.zeros((3, 5, 8), np.float32)))


# ------------------------------------------------------------------------------------------ positional encodings
def test_sinusoidal_encoding():
    pe = sinusoidal_encoding(10, 6, dtype=np.float64)
    t, i = 7, 1
    assert pe[t, 2 * i] == pytest.approx(np.sin(t / 10000 ** (2 * i / 6)))
    assert pe[t, 2 * i + 1] == pytest.approx(np.cos(t / 10000 ** (2 * i / 6)))
    m = SinusoidalPositionalEncoding(6, max_len=10, batch_first=False)
    y = m(nb.tensor(np.zeros((4, 2, 6), np.float32)))
    np.testing.assert_allclose(y.numpy()[:, 1], pe[:4], atol=1e-7)
    assert "pe" not in m.state_dict()
    with pytest.raises(ValueError, match=r"SinusoidalPositionalEncoding\(d_model=6, max_len=10\): expected "
                                         r"\(T, N, d_model\) with T ≤ 10, got shape \(11, 2, 6\)"):
        m(nb.tensor(np.zeros((11, 2, 6), np.float32)))


def test_learned_positional_encoding_trains():
    m = LearnedPositionalEncoding(4, max_len=6)
    x = nb.tensor(np.ones((2, 3, 4), np.float32))
    m(x).sum().backward()
    g = m.weight.grad.numpy()
    np.testing.assert_array_equal(g[:3], 2.0)
    np.testing.assert_array_equal(g[3:], 0.0)


# ----------------------------------------------------------------------------------------- transformer layers
def _copy_module(t, ours):
    tp = dict(t.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert sorted(names) == sorted(tp), (names, list(tp))
    for n, p in ours.named_parameters():
        p.data[...] = tp[n].detach().numpy()


def _compare_layers(torch, t, ours, inputs, kwargs, train=False):
    tin = [torch.tensor(a, requires_grad=True) for a in inputs]
    nin = [nb.tensor(a, requires_grad=True) for a in inputs]
    tk = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    ty = t(*tin, **tk)
    ny = ours(*nin, **kwargs)
    np.testing.assert_allclose(ny.numpy(), ty.detach().numpy(), **TOL)
    g = _rng(0).standard_normal(ty.shape)
    ty.backward(torch.tensor(g))
    ny.backward(g)
    for a, b in zip(nin, tin):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **TOL)
    tp = dict(t.named_parameters())
    for n, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tp[n].grad.numpy(), err_msg=n, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dropout,mode", [(0.0, "train"), (0.3, "eval")])
def test_encoder_layer_matches_torch(norm_first, activation, batch_first, dropout, mode):
    torch = _torch()
    torch.manual_seed(0)
    kw = dict(dim_feedforward=12, dropout=dropout, activation=activation, batch_first=batch_first,
              norm_first=norm_first, layer_norm_eps=1e-6)
    t = torch.nn.TransformerEncoderLayer(8, 2, dtype=torch.float64, **kw)
    ours = TransformerEncoderLayer(8, 2, dtype=np.float64, **kw)
    _copy_module(t, ours)
    for m in (t, ours): m.train(mode == "train")
    rng = _rng(12)
    x = rng.standard_normal((3, 5, 8) if batch_first else (5, 3, 8))
    kpm = np.zeros((3, 5), bool)
    kpm[1, -2:] = True
    _compare_layers(torch, t, ours, [x], {"src_key_padding_mask": kpm})
    _compare_layers(torch, t, ours, [x], {"src_mask": generate_square_subsequent_mask(5, np.float64),
                                          "is_causal": True})


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_decoder_layer_matches_torch(norm_first, activation, batch_first):
    torch = _torch()
    torch.manual_seed(1)
    kw = dict(dim_feedforward=12, dropout=0.2, activation=activation, batch_first=batch_first, norm_first=norm_first)
    t = torch.nn.TransformerDecoderLayer(8, 2, dtype=torch.float64, **kw).eval()
    ours = TransformerDecoderLayer(8, 2, dtype=np.float64, **kw).eval()
    _copy_module(t, ours)
    rng = _rng(13)
    shp = (lambda T: (2, T, 8)) if batch_first else (lambda T: (T, 2, 8))
    tgt, mem = rng.standard_normal(shp(4)), rng.standard_normal(shp(6))
    mkpm = np.zeros((2, 6), bool)
    mkpm[0, -1] = True
    _compare_layers(torch, t, ours, [tgt, mem], {"tgt_mask": generate_square_subsequent_mask(4, np.float64),
                                                 "tgt_is_causal": True, "memory_key_padding_mask": mkpm})


def test_encoder_and_decoder_stacks_match_torch():
    torch = _torch()
    torch.manual_seed(2)
    kw = dict(dim_feedforward=12, dropout=0.0, batch_first=True, norm_first=True)
    t = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, dtype=torch.float64, **kw), 2,
                                    norm=torch.nn.LayerNorm(8, dtype=torch.float64), enable_nested_tensor=False)
    ours = TransformerEncoder(TransformerEncoderLayer(8, 2, dtype=np.float64, **kw), 2,
                              norm=LayerNorm(8, dtype=np.float64))
    _copy_module(t, ours)
    x = _rng(14).standard_normal((2, 5, 8))
    _compare_layers(torch, t, ours, [x], {"mask": generate_square_subsequent_mask(5, np.float64), "is_causal": True})
    td = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(8, 2, dtype=torch.float64, **kw), 2)
    od = TransformerDecoder(TransformerDecoderLayer(8, 2, dtype=np.float64, **kw), 2)
    _copy_module(td, od)
    _compare_layers(torch, td, od, [x[:, :3], x], {})


def test_encoder_layer_gradcheck():
    layer = TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=True, norm_first=True,
                                    activation="gelu", dtype=np.float64)
    x = _rng(15).standard_normal((2, 3, 4))
    assert nb.gradcheck(lambda x: layer(x, is_causal=True), x)


def test_layer_bad_activation():
    with pytest.raises(ValueError, match=r"TransformerEncoderLayer: activation must be 'relu', 'gelu' or a callable"):
        TransformerEncoderLayer(8, 2, activation="swish")


# ------------------------------------------------------------------------------------------------- GPU
# `cp` (a real GPU, or chapter 32's emulated one): the fixture in tests/conftest.py


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_on_gpu_matches_cpu(cp, need_weights):
    rng = _rng(16)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    kpm = np.zeros((2, 5), bool)
    kpm[0, -1] = True
    out = {}
    for device in ("cpu", "cuda"):
        nb.manual_seed(0)
        mha = MultiheadAttention(8, 2, batch_first=True).to(device)
        xt = nb.tensor(x, requires_grad=True, device=device)
        m = kpm if device == "cpu" else cp.asarray(kpm)
        y, _ = mha(xt, xt, xt, key_padding_mask=m, need_weights=need_weights, is_causal=True)
        assert y.device == ("cpu" if device == "cpu" else "cuda:0")
        (y * y).sum().backward()
        out[device] = [y.data, xt.grad.data, mha.in_proj_weight.grad.data]
    for g, c in zip(out["cuda"], out["cpu"]):
        np.testing.assert_allclose(cp.asnumpy(g), c, rtol=2e-5, atol=2e-5)


def test_layer_under_autocast_is_close_to_float32():
    "Chapter 33: under autocast the attention runs as ops that hold the precision policy (float16 products)."
    x = nb.tensor(_rng(17).standard_normal((2, 5, 8)).astype(np.float32), requires_grad=True)
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    y32 = layer(x, is_causal=True).numpy()
    with nb.amp.autocast():
        y = layer(x, is_causal=True)
        s = scaled_dot_product_attention(x, x, x, is_causal=True)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), y32, atol=5e-3)
    np.testing.assert_allclose(s.numpy().astype(np.float32),
                               scaled_dot_product_attention(x, x, x, is_causal=True).numpy(), atol=5e-3)
    y.sum().backward()
    assert x.grad.dtype == np.float32 and np.isfinite(x.grad.numpy()).all()


def test_dropout_add_is_dropout_plus_add_bit_for_bit_and_keeps_no_input():
    "chapter 17: _dropout_add(h, x, drop) == drop(h) + x (same mask stream), same gradients, inputs stubbed"
    from neuralbook.attention import _DropoutAdd, _dropout_add
    from neuralbook.regularization import Dropout
    rng = np.random.default_rng(0)
    h0 = rng.standard_normal((96, 200)).astype(np.float32)
    x0 = rng.standard_normal((96, 200)).astype(np.float32)
    g = rng.standard_normal((96, 200)).astype(np.float32)
    for p, train in ((0.3, True), (0.3, False), (0.0, True), (1.0, True)):
        drop = Dropout(p).train(train)
        res = []
        for fused in (False, True):
            h, x = nb.tensor(h0, requires_grad=True), nb.tensor(x0, requires_grad=True)
            nb.manual_seed(5)
            y = _dropout_add(h * 1.0, x, drop) if fused else drop(h * 1.0) + x
            y.backward(nb.tensor(g))
            res.append((y.numpy(), h.grad.numpy(), x.grad.numpy()))
        for a, b in zip(*res):
            assert np.array_equal(a, b), (p, train)
    nb.manual_seed(5)
    y = _dropout_add(nb.tensor(h0, requires_grad=True) * 1.0, nb.tensor(x0), Dropout(0.3))
    assert type(y.creator) is _DropoutAdd and y.creator.x_data[0].strides == (0, 0)
    assert y.creator.keep.dtype == bool


def test_merge_heads_rows_is_the_reshaped_merge():
    "chapter 17: MergeHeads(rows=True) gives (N·T, H·d) in one node; its VJP is the inverse view"
    from neuralbook.attention import MergeHeads
    o = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    y = MergeHeads(rows=True)(nb.tensor(o))
    assert y.shape == (8, 15) and np.array_equal(y.numpy(), MergeHeads()(nb.tensor(o)).numpy().reshape(8, 15))
    assert nb.gradcheck(lambda t: MergeHeads(rows=True)(t), nb.tensor(o, requires_grad=True))
