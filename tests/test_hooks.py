"Chapter 10c: forward hooks, ActivationStats and UpdateRatio."
import numpy as np
import pytest

import neuralbook as nb
from neuralbook import nn
from neuralbook.data import DataLoader, TensorDataset
from neuralbook.hooks import ActivationStats, Hook, Hooks, UpdateRatio
from neuralbook.learner import Callback, Learner
from neuralbook.losses import cross_entropy
from neuralbook.optim import SGD


def _data(n=96, seed=0):
    r = np.random.default_rng(seed)
    return DataLoader(TensorDataset(r.standard_normal((n, 5)).astype(np.float32), r.integers(0, 3, n)), batch_size=32)


def _model():
    nb.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _hook_count(model): return sum(len(m._forward_hooks) for m in model.modules())


def test_hook_records_and_removes():
    m = _model()
    x = nb.tensor(np.ones((2, 5), np.float32))
    with Hook(m[0], lambda h, mod, inp, out: setattr(h, "stored", out.data.copy())) as h:
        out = m[0](x)
    np.testing.assert_array_equal(h.stored, out.data)
    assert _hook_count(m) == 0
    with pytest.raises(TypeError, match="Hook: expected a neuralbook Module"):
        Hook(object(), lambda *a: None)


def test_activation_stats_match_a_manual_forward():
    m, dl = _model(), _data()
    stats = ActivationStats(modules=[m[0], m[2]], bins=10, hist_range=(-3, 3))
    # lr=0: the weights never change, so a manual forward of each batch gives the same activations
    Learner(m, cross_entropy, SGD(m.parameters(), lr=0.0), dl, callbacks=[stats]).fit(1)
    assert stats.means.shape == (3, 2) and stats.hists.shape == (2, 3, 10) and _hook_count(m) == 0
    xb = nb.tensor(dl.dataset.arrays[0][:32])
    a0 = m[0](xb).data.astype(np.float64)
    np.testing.assert_allclose([stats.means[0, 0], stats.stds[0, 0]], [a0.mean(), a0.std()], rtol=1e-6)
    assert stats.hists[0, 0].sum() == a0.size          # values outside the range are clipped into the end bins
    assert stats.near_zero[0, 0] == pytest.approx(np.mean(np.abs(a0) < 1e-2))


def test_activation_stats_skip_validation_and_remove_hooks_after_a_failure():
    m = _model()
    stats = ActivationStats()

    class Boom(Callback):
        def after_batch(self):
            if self.learn.iter == 1: raise RuntimeError("boom")

    learn = Learner(m, cross_entropy, SGD(m.parameters(), lr=0.1), _data(), callbacks=[Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, callbacks=[stats])
    assert _hook_count(m) == 2 and stats.learn is None          # after_fit never ran ...
    m(nb.tensor(np.ones((1, 5), np.float32)))
    assert _hook_count(m) == 0                                  # ... the next forward removes them
    with pytest.raises(RuntimeError, match="boom"):
        Learner(m, cross_entropy, SGD(m.parameters(), lr=0.1), _data(), callbacks=[stats, Boom()]).fit(1)
    stats.remove()
    assert _hook_count(m) == 0
    stats = ActivationStats()
    Learner(m, cross_entropy, SGD(m.parameters(), lr=0.1), _data(), _data(64, 1), callbacks=[stats]).fit(1)
    assert stats.stds.shape == (3, 2)                  # 3 training batches; the 2 validation batches not recorded


def test_activation_stats_needs_modules_with_parameters():
    m = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match="ActivationStats: the model has no module with parameters"):
        Learner(m, cross_entropy, SGD([nb.tensor(np.zeros(1), requires_grad=True)], lr=0.1), _data(),
                callbacks=[ActivationStats()]).fit(1)


def test_update_ratio_is_the_step_the_optimizer_took():
    m, dl = _model(), _data()
    before = {n: p.data.copy() for n, p in m.named_parameters()}
    upd = UpdateRatio()
    Learner(m, cross_entropy, SGD(m.parameters(), lr=0.1, momentum=0.9), dl, callbacks=[upd]).fit(1)
    assert upd.ratios.shape == (3, 4) and upd.names[0] == "0.weight"
    # one step only: redo the first step by hand and compare its ratio
    m2 = _model()
    opt = SGD(m2.parameters(), lr=0.1, momentum=0.9)
    cross_entropy(m2(nb.tensor(dl.dataset.arrays[0][:32])), nb.tensor(dl.dataset.arrays[1][:32])).backward()
    opt.step()
    w0, w1 = before["0.weight"], m2[0].weight.data
    assert upd.ratios[0, 0] == pytest.approx(np.log10((w1 - w0).std() / w0.std()), rel=1e-5)
