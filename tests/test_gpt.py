"""Chapter 18: the character-level GPT — data encoding, causality, a short training run that beats the bigram
baseline on held-out names, reproducible sampling, bad input."""
import importlib.util
import math
import os

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import optim
from neuralbook.gpt import GPT, CharVocab, encode_words, evaluate_loss, generate, lm_loss, load_names, sample_words


@pytest.fixture(scope="module")
def data():
    if importlib.util.find_spec("names") is None:
        msg = "the `names` package holds the name lists: pip install names (it belongs in the dev extra)"
        if os.environ.get("CI"): pytest.fail(msg)                # CI installs the dev extra: never skip there
        pytest.skip(msg)
    words = load_names()
    rng = np.random.default_rng(0)
    words = [words[i] for i in rng.permutation(len(words))]
    n_val = len(words) // 10
    vocab = CharVocab(words)
    T = max(map(len, words)) + 1
    return vocab, T, encode_words(words[n_val:], vocab, T), encode_words(words[:n_val], vocab, T), words[n_val:]


def _bigram_nats(Xtr, Ytr, Xva, Yva, V):
    counts = np.ones((V, V))
    m = Ytr >= 0
    np.add.at(counts, (Xtr[m], Ytr[m]), 1)
    p = counts / counts.sum(1, keepdims=True)
    mv = Yva >= 0
    return float(-np.log(p[Xva[mv], Yva[mv]]).mean())


def test_load_names_and_encoding(data):
    vocab, T, (Xtr, Ytr), _, train_words = data
    assert len(vocab) == 27 and vocab.itos[0] == "." and vocab.decode(vocab.encode("anna")) == "anna"
    assert T == 12 and Xtr.shape == (len(train_words), T)
    w = train_words[0]
    assert vocab.decode(Xtr[0, 1:len(w) + 1]) == w and Xtr[0, 0] == 0
    assert vocab.decode(Ytr[0, :len(w)]) == w and Ytr[0, len(w)] == 0 and (Ytr[0, len(w) + 1:] == -1).all()
    with pytest.raises(ValueError, match=r"encode_words: 'abcdef' has 6 letters, needs block_size ≥ 7"):
        encode_words(["abcdef"], vocab, 5)


def test_gpt_is_causal_and_shapes():
    nb.manual_seed(0)
    model = GPT(27, 8, n_layer=2, n_head=2, n_embd=16)
    x = np.random.default_rng(0).integers(0, 27, (3, 8))
    x2 = x.copy()
    x2[:, 4] = (x2[:, 4] + 1) % 27
    with nb.no_grad():
        a, b = model(x).numpy(), model(x2).numpy()
    assert a.shape == (3, 8, 27)
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert not np.allclose(a[:, 4], b[:, 4])


def test_gpt_gradcheck_float64():
    nb.manual_seed(1)
    model = GPT(5, 4, n_layer=1, n_head=2, n_embd=4, dtype=np.float64)
    x = np.array([[0, 1, 2, 3], [4, 3, 2, 1]])
    y = np.array([[1, 2, 3, -1], [3, 2, 1, 0]])
    w = model.lm_head.weight

    def f(W):
        old = model.lm_head._parameters["weight"]
        model.lm_head._parameters["weight"] = W
        try:
            return lm_loss(model(x), y)
        finally:
            model.lm_head._parameters["weight"] = old
    assert nb.gradcheck(f, w.numpy())
    loss = lm_loss(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gpt_bad_input():
    model = GPT(27, 8, n_layer=1, n_head=2, n_embd=8)
    with pytest.raises(ValueError, match=r"GPT\(block_size=8\): expected ids of shape \(N, T\) with T ≤ 8, got shape "
                                         r"\(2, 9\); crop the context"):
        model(np.zeros((2, 9), np.int64))
    with pytest.raises(ValueError, match=r"got shape \(9,\)"):
        model(np.zeros(9, np.int64))
    with pytest.raises(ValueError, match="generate: temperature must be ≥ 0"):
        generate(model, [[0]], 3, temperature=-1)
    with pytest.raises(ValueError, match="generate: top_k must be ≥ 1"):
        generate(model, [[0]], 3, top_k=0)


def test_generate_is_reproducible_and_respects_top_k():
    nb.manual_seed(2)
    model = GPT(10, 6, n_layer=1, n_head=2, n_embd=8)
    a = generate(model, np.zeros((4, 1), np.int64), 8, seed=3)
    b = generate(model, np.zeros((4, 1), np.int64), 8, seed=3)
    assert a.shape == (4, 9) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, generate(model, np.zeros((4, 1), np.int64), 8, seed=4))
    np.testing.assert_array_equal(generate(model, [[1, 2]], 5, top_k=1, seed=0),
                                  generate(model, [[1, 2]], 5, temperature=0))
    # top_k=2: every sampled token is among the 2 most likely at its step
    ids = generate(model, np.zeros((8, 1), np.int64), 5, top_k=2, seed=5)
    with nb.no_grad():
        for t in range(1, ids.shape[1]):
            z = model(ids[:, max(0, t - 6):t]).numpy()[:, -1]
            top2 = np.argsort(z, axis=-1)[:, -2:]
            assert all(ids[i, t] in top2[i] for i in range(len(ids)))
    assert model.training                                    # generate restores the mode


def test_short_training_beats_bigram(data):
    vocab, T, (Xtr, Ytr), (Xva, Yva), _ = data
    bigram = _bigram_nats(Xtr, Ytr, Xva, Yva, len(vocab))
    assert 2.3 < bigram < 2.45
    threadpoolctl = pytest.importorskip("threadpoolctl")
    nb.manual_seed(0)
    model = GPT(len(vocab), T, n_layer=1, n_head=4, n_embd=32)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(0)
    assert abs(evaluate_loss(model, Xva, Yva) - math.log(27)) < 0.15
    with threadpoolctl.threadpool_limits(1):                 # small matrices: one BLAS thread is fastest
        for step in range(400):
            idx = rng.integers(0, len(Xtr), 32)
            loss = lm_loss(model(Xtr[idx]), Ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    val = evaluate_loss(model, Xva, Yva)
    assert val < bigram - 0.1, (val, bigram)
    words = sample_words(model, vocab, 20, seed=0)
    assert words == sample_words(model, vocab, 20, seed=0)
    assert all(set(w) <= set(vocab.itos[1:]) for w in words)
