"""Chapter 16: RNN, LSTM, GRU (and their one-step cells) against PyTorch (weights copied in, float64, forward and every gradient), gradient
checks of the fused cells, variable-length batches against packed sequences, dropout, bad input, the emulated GPU."""
import itertools

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.rnn import GRU, LSTM, RNN, GRUCell, GRUCellFn, LSTMCellFn, Recurrence, RNNCellFn, unbind

CLASSES = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}
I, H, T, B = 3, 4, 5, 3


def _pair(kind, torch, num_layers=1, bidirectional=False, batch_first=False, seed=0, **kw):
    "Our layer and PyTorch's with the same (copied) float64 weights."
    nb.manual_seed(seed)
    ours = CLASSES[kind](I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                         dtype=np.float64, **kw)
    theirs = getattr(torch.nn, kind)(I, H, num_layers=num_layers, bidirectional=bidirectional,
                                     batch_first=batch_first, dtype=torch.float64, **kw)
    names = [n for n, _ in theirs.named_parameters()]
    assert names == [n for n, _ in ours.named_parameters()]
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            assert tuple(p.shape) == tuple(getattr(ours, n).shape), n
            p.copy_(torch.tensor(getattr(ours, n).numpy()))
    return ours, theirs


COMBOS = list(itertools.product(["RNN", "LSTM", "GRU"], [False, True], [1, 2], [False, True], [False, True],
                                [False, True]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per_step_graph"])
@pytest.mark.parametrize("kind,bidirectional,num_layers,batch_first,with_lengths,with_h0", COMBOS)
def test_against_torch(kind, bidirectional, num_layers, batch_first, with_lengths, with_h0, fused):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    ours, theirs = _pair(kind, torch, num_layers, bidirectional, batch_first)
    ours.fused = fused
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    lengths = np.array([3, 5, 1]) if with_lengths else None
    nd = num_layers * (2 if bidirectional else 1)
    states = [rng.standard_normal((nd, B, H)) for _ in range(2 if kind == "LSTM" else 1)] if with_h0 else []
    x, tx = nb.tensor(xs, requires_grad=True), torch.tensor(xs, requires_grad=True)
    s, ts = [nb.tensor(a, requires_grad=True) for a in states], [torch.tensor(a, requires_grad=True) for a in states]
    hx = None if not with_h0 else (tuple(s) if kind == "LSTM" else s[0])
    thx = None if not with_h0 else (tuple(ts) if kind == "LSTM" else ts[0])
    out, hn = ours(x, hx, lengths=lengths)
    if with_lengths:
        packed = pack_padded_sequence(tx, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        tp, thn = theirs(packed, thx)
        tout, _ = pad_packed_sequence(tp, batch_first=batch_first, total_length=T)
    else:
        tout, thn = theirs(tx, thx)
    hn, thn = (list(hn), list(thn)) if kind == "LSTM" else ([hn], [thn])
    assert out.shape == tuple(tout.shape)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), atol=1e-6, rtol=1e-6, err_msg="output")
    for a, b in zip(hn, thn):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), atol=1e-6, rtol=1e-6, err_msg="h_n / c_n")
    # one random cotangent on every output
    vs = [rng.standard_normal(o.shape) for o in [out] + hn]
    loss = sum(((o * v).sum() for o, v in zip([out] + hn, vs)), nb.tensor(0.0, dtype=np.float64))
    loss.backward()
    tloss = sum((o * torch.tensor(v)).sum() for o, v in zip([tout] + thn, vs))
    tloss.backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), atol=1e-6, rtol=1e-6, err_msg="input grad")
    for a, b in zip(s, ts):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-6, rtol=1e-6, err_msg="h0 grad")
    for n, p in theirs.named_parameters():
        np.testing.assert_allclose(getattr(ours, n).grad.numpy(), p.grad.numpy(), atol=1e-6, rtol=1e-6, err_msg=n)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_options_against_torch(kind):
    "bias=False, relu (RNN), unbatched input."
    torch = pytest.importorskip("torch")
    kw = {"bias": False}
    if kind == "RNN": kw["nonlinearity"] = "relu"
    ours, theirs = _pair(kind, torch, 2, True, **kw)
    assert not any("bias" in n for n, _ in ours.named_parameters())
    xs = np.random.default_rng(2).standard_normal((T, I))              # unbatched (T, input_size)
    out, hn = ours(nb.tensor(xs))
    tout, thn = theirs(torch.tensor(xs))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), atol=1e-9)
    if kind == "LSTM": hn, thn = hn[1], thn[1]
    assert hn.shape == tuple(thn.shape) == (4, H)
    np.testing.assert_allclose(hn.numpy(), thn.detach().numpy(), atol=1e-9)
    want = repr(theirs).replace("(3, 4, ", "(3, 4, nonlinearity='relu', ") if kind == "RNN" else repr(theirs)
    assert repr(ours) == want                       # PyTorch's repr (which does not show the nonlinearity)


def test_init_is_pytorchs_uniform():
    m = LSTM(10, 100, num_layers=2)
    k = 1 / np.sqrt(100)
    for n, p in m.named_parameters():
        assert p.dtype == np.float32 and np.abs(p.numpy()).max() <= k
        assert np.abs(p.numpy()).max() > 0.9 * k and abs(p.numpy().mean()) < 0.1 * k, n
    assert m.weight_ih_l0.shape == (400, 10) and m.weight_ih_l1.shape == (400, 100) and m.bias_hh_l1.shape == (400,)


# ---------------------------------------------------------------- gradient checks (float64, small)
@pytest.mark.parametrize("masked", [False, True])
def test_cells_gradcheck(masked):
    rng = np.random.default_rng(3)
    Bc, Hc = 3, 2
    m = np.array([[True], [False], [True]]) if masked else None
    xg4, hg4 = rng.standard_normal((Bc, 4 * Hc)), rng.standard_normal((Bc, 4 * Hc))
    c, h = rng.standard_normal((Bc, Hc)), rng.standard_normal((Bc, Hc))
    lstm = (lambda a, b, c, h: LSTMCellFn(m)(a, b, c, h)) if masked else (lambda a, b, c, h: LSTMCellFn()(a, b, c))
    assert nb.gradcheck(lstm, xg4, hg4, c, h)
    assert nb.gradcheck(lambda a, b, c, h: lstm(a, b, c, h)[1], xg4, hg4, c, h)        # only c' used: gh is None
    assert nb.gradcheck(lambda a, b, h: GRUCellFn(m)(a, b, h), xg4[:, :3 * Hc], hg4[:, :3 * Hc], h)
    for act in ("tanh", "relu"):
        f = (lambda a, b, h: RNNCellFn(act, m)(a, b, h)) if masked else (lambda a, b, h: RNNCellFn(act)(a, b))
        assert nb.gradcheck(f, xg4[:, :Hc], hg4[:, :Hc], h)


@pytest.mark.parametrize("reverse,masked,bias", [(False, False, False), (True, True, True), (False, True, True),
                                                  (True, False, False)])
def test_lstm_recurrence_gate_major_matches_the_cells(reverse, masked, bias):
    """The fused LSTM loop (gate-major arrays) against a loop of LSTMCellFn steps: outputs and every gradient, float64;
    W_hh also as a transposed (Fortran-ordered) view, as Keras passes it (a reshape of it is a view: must not be
    scaled in place)."""
    rng = np.random.default_rng(7)
    masks = [np.array([[True], [t < 3], [t != 1]]) for t in range(T)] if masked else None
    arrays = [rng.standard_normal(s) for s in ((T, B, 4 * H), (4 * H, H), (B, H), (B, H))] + \
        ([rng.standard_normal(4 * H)] if bias else [])
    def run(fused, W_layout):
        ins = [nb.tensor(a, requires_grad=True) for a in arrays]
        W = nb.tensor(np.asfortranarray(arrays[1]), requires_grad=True) if W_layout == "F" else ins[1]
        if fused:
            S, h, c = Recurrence("LSTM", masks, reverse, bias)(ins[0], W, *ins[2:])
        else:
            h, c, steps = ins[2], ins[3], [None] * T
            for t in (range(T - 1, -1, -1) if reverse else range(T)):
                hg = h @ W.T + (ins[4] if bias else 0.0)
                h, c = LSTMCellFn()(ins[0][t], hg, c) if not masked else LSTMCellFn(masks[t])(ins[0][t], hg, c, h)
                steps[t] = h
            S = nb.functional.stack(steps, axis=0)
        ((S * S).sum() + (h * h).sum() + (c * c * c).sum()).backward()
        return [S.numpy(), h.numpy(), c.numpy()] + [t.grad.numpy() for t in ins if t is not ins[1]] + [W.grad.numpy()]
    ref = run(False, "C")
    for layout in ("C", "F"):
        for a, b in zip(run(True, layout), ref):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_lstm_recurrence_gate_major_input():
    "Recurrence(gate_major=True) takes the projections as (4, T*B, H) in the order i, f, o, g: same as the flat input."
    rng = np.random.default_rng(9)
    xg, W, h0, c0, b = (rng.standard_normal(s) for s in ((T, B, 4 * H), (4 * H, H), (B, H), (B, H), (4 * H,)))
    X = np.ascontiguousarray(xg.reshape(T * B, 4, H).transpose(1, 0, 2)[[0, 1, 3, 2]])
    res = []
    for gate_major, inp in ((False, xg), (True, X)):
        ins = [nb.tensor(a, requires_grad=True) for a in (inp, W, h0, c0, b)]
        S, h, c = Recurrence("LSTM", None, True, True, gate_major=gate_major)(*ins)
        ((S * S).sum() + h.sum() + (c * c).sum()).backward()
        g = ins[0].grad.numpy()
        g = g if not gate_major else g[[0, 1, 3, 2]].transpose(1, 0, 2).reshape(T, B, 4 * H)
        res.append([S.numpy(), h.numpy(), c.numpy(), g] + [t.grad.numpy() for t in ins[1:]])
    for a, b_ in zip(*res):
        np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-14)


def test_lstm_recurrence_gradcheck():
    rng = np.random.default_rng(8)
    masks = [np.array([[True], [t > 1]]) for t in range(3)]
    f = lambda *a: Recurrence("LSTM", masks, True, True)(*a)
    assert nb.gradcheck(f, *(rng.standard_normal(s) for s in ((3, 2, 8), (8, 2), (2, 2), (2, 2), (8,))))


def test_cells_double_backward():
    rng = np.random.default_rng(4)
    m = np.array([[True], [False]])
    assert nb.gradgradcheck(lambda a, b, c, h: LSTMCellFn(m)(a, b, c, h), *(rng.standard_normal(s) for s in
                            [(2, 8), (2, 8), (2, 2), (2, 2)]))
    assert nb.gradgradcheck(lambda a, b, h: GRUCellFn(m)(a, b, h), *(rng.standard_normal(s) for s in
                            [(2, 6), (2, 6), (2, 2)]))
    assert nb.gradgradcheck(lambda a, b: RNNCellFn()(a, b), rng.standard_normal((2, 2)), rng.standard_normal((2, 2)))


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_double_backward_needs_the_per_step_graph(kind):
    nb.manual_seed(0)
    layer = CLASSES[kind](2, 3, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((3, 2, 2))
    def f(x):
        out, hn = layer(x, lengths=[3, 2])
        return out
    with pytest.raises(RuntimeError, match=rf"{kind}.*double backward .* set layer.fused = False"):
        nb.gradgradcheck(f, x)
    layer.fused = False
    assert nb.gradgradcheck(f, x)


def test_unbind():
    x = np.arange(24.0).reshape(2, 3, 4)
    parts = unbind(nb.tensor(x), 1)
    assert len(parts) == 3 and parts[1].shape == (2, 4)
    assert nb.gradcheck(lambda x: unbind(x, 1)[0] * unbind(x, 1)[2], x)     # an unused slice gets zeros


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first,bidirectional,fused", [(False, False, True), (True, True, True),
                                                             (True, True, False)])
def test_layers_gradcheck(kind, batch_first, bidirectional, fused):
    nb.manual_seed(5)
    layer = CLASSES[kind](2, 2, num_layers=2, batch_first=batch_first, bidirectional=bidirectional, dtype=np.float64)
    layer.fused = fused
    x = np.random.default_rng(5).standard_normal((2, 3, 2) if batch_first else (3, 2, 2))
    lengths = np.array([3, 2])
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *ps):
        for n, v in zip(names, ps): layer._parameters[n] = v        # the checked leaves stand in for the weights
        out, hn = layer(x, lengths=lengths)
        return out, (hn[0] if kind == "LSTM" else hn)
    assert nb.gradcheck(f, x, *[p.numpy().copy() for p in layer.parameters()])


# ---------------------------------------------------------------- dropout, modes
def test_dropout_between_layers():
    x = nb.tensor(np.random.default_rng(6).standard_normal((4, 2, 3)))
    nb.manual_seed(0)
    m = LSTM(3, 5, num_layers=3, dropout=0.5, dtype=np.float64)
    nb.manual_seed(0)
    ref = LSTM(3, 5, num_layers=3, dtype=np.float64)
    out1 = m(x)[0].numpy()
    out2 = m(x)[0].numpy()
    assert out1.shape == (4, 2, 5) and not np.allclose(out1, out2)        # fresh masks each call
    nb.manual_seed(7); a = m(x)[0].numpy()
    nb.manual_seed(7); b = m(x)[0].numpy()
    np.testing.assert_array_equal(a, b)                                  # reproducible with a seed
    assert not np.allclose(a, ref(x)[0].numpy())
    m.eval()
    np.testing.assert_array_equal(m(x)[0].numpy(), ref(x)[0].numpy())    # eval mode = no dropout
    m.train()
    out, (h, c) = m(x)
    (out.sum() + h.sum()).backward()
    assert all(p.grad is not None for p in m.parameters())


def test_float32_and_state_dict_roundtrip():
    torch = pytest.importorskip("torch")
    nb.manual_seed(0)
    ours = GRU(I, H, num_layers=2, batch_first=True)
    theirs = torch.nn.GRU(I, H, num_layers=2, batch_first=True)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    xs = np.random.default_rng(8).standard_normal((B, T, I)).astype(np.float32)
    out, hn = ours(nb.tensor(xs))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), theirs(torch.tensor(xs))[0].detach().numpy(), atol=1e-5)


# ---------------------------------------------------------------- bad input
def test_bad_input():
    m = LSTM(3, 4, num_layers=2)
    x = nb.tensor(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"LSTM\(3, 4\): expected a 3-D input \(T, B, input_size\).*got shape \(5,\)"):
        m(nb.tensor(np.zeros(5, np.float32)))
    with pytest.raises(ValueError, match=r"has 7 features on its last axis, expected input_size=3"):
        m(nb.tensor(np.zeros((5, 2, 7), np.float32)))
    with pytest.raises(ValueError, match=r"h0 has shape \(1, 2, 4\), expected .* = \(2, 2, 4\); pass hx=None"):
        m(x, (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32)))
    with pytest.raises(ValueError, match=r"c0 has shape \(2, 3, 4\), expected"):
        m(x, (np.zeros((2, 2, 4), np.float32), np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h0, c0\) for an LSTM"):
        m(x, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(TypeError, match=r"GRU\(3, 4\): hx must be one tensor h0"):
        GRU(3, 4)(x, (np.zeros((1, 2, 4)), np.zeros((1, 2, 4))))
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.5 .*got min 0 and max 5"):
        m(x, lengths=[0, 5])
    with pytest.raises(ValueError, match=r"lengths must lie in 1\.\.5 .*max 6"):
        m(x, lengths=[6, 5])
    with pytest.raises(ValueError, match=r"lengths must be integers, one per sequence: shape \(2,\)"):
        m(x, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"B, T, input_size"):
        GRU(3, 4, batch_first=True)(np.zeros((1, 2, 3, 4)))
    with pytest.raises(TypeError, match=r"LSTM\(3, 4\): the input is float64 but the parameters are float32; convert"):
        m(np.zeros((5, 2, 3)))
    with pytest.raises(TypeError, match=r"GRUCell\(3, 4\): the input is float64 but the parameters are float32"):
        GRUCell(3, 4)(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"RNN: nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"GRU: hidden_size must be a positive integer, got 0"):
        GRU(3, 0)
    with pytest.raises(ValueError, match=r"LSTM: dropout must be a probability"):
        LSTM(3, 4, dropout=1.5)


# ---------------------------------------------------------------- GPU: emulated (CI) and real
# `cp` (a real GPU, or chapter 32's emulated one): the fixture in tests/conftest.py


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_layer_on_cuda_matches_cpu(cp, kind):
    rng = np.random.default_rng(9)
    xs = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = np.array([5, 2, 4])
    res = {}
    for device in ("cpu", "cuda"):
        nb.manual_seed(0)
        m = CLASSES[kind](I, H, num_layers=2, batch_first=True, bidirectional=True).to(device)
        x = nb.tensor(xs, requires_grad=True, device=device)
        out, hn = m(x, lengths=lengths)
        if kind == "LSTM": hn = hn[0]
        assert out.device == hn.device == m.weight_hh_l0.device
        (out.sum() + (hn * hn).sum()).backward()
        res[device] = [out.numpy(), hn.numpy(), x.grad.numpy()] + [p.grad.numpy() for p in m.parameters()]
    for a, b in zip(res["cpu"], res["cuda"]):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- single-step cells
@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("batched,with_h0,bias", [(True, False, True), (True, True, True), (False, True, False)])
def test_cells_against_torch(kind, batched, with_h0, bias):
    torch = pytest.importorskip("torch")
    from neuralbook import rnn
    kw = {"nonlinearity": "relu"} if kind == "RNNCell" and not bias else {}
    nb.manual_seed(0)
    ours = getattr(rnn, kind)(I, H, bias=bias, dtype=np.float64, **kw)
    theirs = getattr(torch.nn, kind)(I, H, bias=bias, dtype=torch.float64, **kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(10)
    xs = rng.standard_normal((B, I) if batched else (I,))
    ss = [rng.standard_normal((B, H) if batched else (H,)) for _ in range(2 if kind == "LSTMCell" else 1)]
    x, tx = nb.tensor(xs, requires_grad=True), torch.tensor(xs, requires_grad=True)
    s, ts = [nb.tensor(a, requires_grad=True) for a in ss], [torch.tensor(a, requires_grad=True) for a in ss]
    hx = (tuple(s) if kind == "LSTMCell" else s[0]) if with_h0 else None
    thx = (tuple(ts) if kind == "LSTMCell" else ts[0]) if with_h0 else None
    outs, touts = ours(x, hx), theirs(tx, thx)
    outs, touts = (list(outs), list(touts)) if kind == "LSTMCell" else ([outs], [touts])
    vs = [rng.standard_normal(o.shape) for o in outs]
    sum(((o * v).sum() for o, v in zip(outs, vs)), nb.tensor(0.0, dtype=np.float64)).backward()
    sum((o * torch.tensor(v)).sum() for o, v in zip(touts, vs)).backward()
    for a, b in zip(outs, touts):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), atol=1e-9)
    if with_h0:
        for a, b in zip(s, ts): np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-9)
    for n, p in theirs.named_parameters():
        np.testing.assert_allclose(getattr(ours, n).grad.numpy(), p.grad.numpy(), atol=1e-9, err_msg=n)


def test_cells_bad_input():
    from neuralbook.rnn import LSTMCell
    with pytest.raises(ValueError, match=r"LSTMCell\(3, 4\): expected an input \(B, 3\) or unbatched \(3,\), got shape \(2, 5\)"):
        LSTMCell(3, 4)(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"GRUCell\(3, 4\): the state has shape \(2, 5\), expected \(2, 4\)"):
        GRUCell(3, 4)(np.zeros((2, 3), np.float32), np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h, c\)"):
        LSTMCell(3, 4)(np.zeros((2, 3), np.float32), (np.zeros((2, 4), np.float32),))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_runs_under_autocast(kind):
    "Under autocast the input projection runs in float16; the recurrence stays float32 and close to the float32 run."
    nb.manual_seed(0)
    m = CLASSES[kind](I, H, num_layers=2, bidirectional=True)
    x = nb.tensor(np.random.default_rng(11).standard_normal((T, B, I)).astype(np.float32))
    with nb.amp.autocast():
        out, hn = m(x, lengths=[5, 3, 4])
    hn = hn[0] if kind == "LSTM" else hn
    (out.sum() + hn.sum()).backward()
    assert out.dtype == np.float32 and all(p.grad is not None and p.grad.dtype == np.float32 for p in m.parameters())
    np.testing.assert_allclose(out.numpy(), m(x, lengths=[5, 3, 4])[0].numpy(), atol=2e-3)


@pytest.mark.parametrize("bidirectional,num_layers,batch_first,with_lengths,with_h0",
                         [(False, 1, False, False, False), (True, 2, True, True, True), (False, 2, False, True, True),
                          (True, 1, True, False, True)])
def test_lstm_proj_size_against_torch(bidirectional, num_layers, batch_first, with_lengths, with_h0):
    "LSTM(proj_size=2): weight_hr_l{k}, h with 2 features, c with H; forward and every gradient at 1e-6 (float64)."
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    P = 2
    ours, theirs = _pair("LSTM", torch, num_layers, bidirectional, batch_first, proj_size=P)
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    nd = num_layers * (2 if bidirectional else 1)
    states = [rng.standard_normal((nd, B, P)), rng.standard_normal((nd, B, H))] if with_h0 else []
    lengths = np.array([3, 5, 1]) if with_lengths else None
    x, tx = nb.tensor(xs, requires_grad=True), torch.tensor(xs, requires_grad=True)
    s, ts = [nb.tensor(a, requires_grad=True) for a in states], [torch.tensor(a, requires_grad=True) for a in states]
    out, hn = ours(x, tuple(s) if with_h0 else None, lengths=lengths)
    if with_lengths:
        packed = pack_padded_sequence(tx, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        tp, thn = theirs(packed, tuple(ts) if with_h0 else None)
        tout, _ = pad_packed_sequence(tp, batch_first=batch_first, total_length=T)
    else:
        tout, thn = theirs(tx, tuple(ts) if with_h0 else None)
    assert out.shape == tuple(tout.shape) and out.shape[-1] == P * (2 if bidirectional else 1)
    outs, touts = [out] + list(hn), [tout] + list(thn)
    for a, b in zip(outs, touts):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), atol=1e-6, rtol=1e-6)
    vs = [rng.standard_normal(o.shape) for o in outs]
    sum(((o * v).sum() for o, v in zip(outs, vs)), nb.tensor(0.0, dtype=np.float64)).backward()
    sum((o * torch.tensor(v)).sum() for o, v in zip(touts, vs)).backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), atol=1e-6, rtol=1e-6)
    for a, b in zip(s, ts):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-6, rtol=1e-6)
    for n, p in theirs.named_parameters():
        np.testing.assert_allclose(getattr(ours, n).grad.numpy(), p.grad.numpy(), atol=1e-6, rtol=1e-6, err_msg=n)


def test_lstm_proj_size_gradcheck_and_errors():
    nb.manual_seed(0)
    m = LSTM(I, H, proj_size=2, bidirectional=True, dtype=np.float64)
    assert "proj_size=2" in repr(m) and tuple(m.weight_hr_l0_reverse.shape) == (2, H)
    xs = np.random.default_rng(0).standard_normal((T, B, I))
    assert nb.gradcheck(lambda x: m(x, lengths=np.array([5, 2, 4]))[0], xs)
    with pytest.raises(ValueError, match=r"proj_size \(4\) must be smaller than hidden_size \(4\)"):
        LSTM(I, H, proj_size=4)
    with pytest.raises(ValueError, match=r"proj_size is only defined for LSTM"):
        from neuralbook.rnn import RNNBase
        RNNBase("GRU", I, H, proj_size=2)
    with pytest.raises(ValueError, match=r"h0 has shape \(1, 3, 4\), expected .* = \(1, 3, 2\)"):
        LSTM(I, H, proj_size=2)(nb.tensor(np.zeros((T, B, I), np.float32)),
                                (np.zeros((1, B, H), np.float32), np.zeros((1, B, H), np.float32)))


@pytest.mark.parametrize("cls", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cell_reset_parameters_like_pytorch(cls):
    "A cell has PyTorch's reset_parameters: every weight and bias redrawn from U(−1/√H, 1/√H)."
    import neuralbook as nb
    nb.manual_seed(0)
    cell = getattr(nb.nn, cls)(3, 4)
    before = [p.data.copy() for p in cell.parameters()]
    cell.reset_parameters()
    after = [p.data for p in cell.parameters()]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    assert all(np.abs(a).max() <= 0.5 for a in after)          # 1/√4
