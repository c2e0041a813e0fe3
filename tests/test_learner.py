"""Chapter 10: the Learner's loop, callback events, order and cancellation, the built-in callbacks, atomic files,
reproducibility and the digits done-when (≥ 96 % test accuracy in < 20 s)."""
import csv
import io
import math
import os
import time
from functools import partial

import numpy as np
import pytest

import neuralbook as nb
import neuralbook.learner as L
import neuralbook.io as nio
from neuralbook import nn, optim
from neuralbook.data import DataLoader, StandardScaler, TensorDataset, train_test_split
from neuralbook.learner import (
    EVENTS,
    Callback,
    CancelBackwardException,
    CancelBatch,
    CancelBatchException,
    CancelEpoch,
    CancelEpochException,
    CancelFit,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidateException,
    CSVLogger,
    EarlyStoppingCallback,
    GradientClipping,
    Learner,
    LRSchedulerCallback,
    ModelCheckpoint,
    ProgressCallback,
    Recorder,
    TerminateOnNaN,
    accuracy,
    atomic_write,
    error_rate,
    f1_macro,
    load_safetensors,
    mae,
    mse,
    save_safetensors_atomic,
)
from neuralbook.losses import CrossEntropyLoss, cross_entropy

# ---------------------------------------------------------------- fixtures

RNG = np.random.default_rng(0)
XS = RNG.standard_normal((10, 4)).astype(np.float32)
YS = RNG.integers(0, 3, 10)


class Trace(Callback):
    "Records every event."
    def __init__(self): self.seen = []


for _e in EVENTS:
    setattr(Trace, _e, (lambda e: lambda self: self.seen.append(e))(_e))


def tiny(*cbs, metrics=(), valid=True, lr=0.1, opt=None, **kw):
    "10 samples in batches of 6 and 4; validation: 4 samples in one batch."
    nb.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    return Learner(m, cross_entropy, opt or optim.SGD(m.parameters(), lr=lr), DataLoader(TensorDataset(XS, YS), 6),
                   DataLoader(TensorDataset(XS[:4], YS[:4]), 4) if valid else None, metrics=metrics, callbacks=cbs,
                   **kw)


def weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class Values(Callback):
    "Puts a scripted value into logs['score'] each epoch (before the consumers read it)."
    order = 25
    def __init__(self, values): self.values = values
    def after_epoch(self): self.learn.logs["score"] = self.values[self.learn.epoch]


class Snapshots(Callback):
    "Weights at the end of every epoch."
    order = 21
    def __init__(self): self.w = []
    def after_epoch(self): self.w.append(weights(self.learn.model))


# ---------------------------------------------------------------- events and control flow

BATCH_TRAIN = ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward", "before_step",
               "after_step", "after_batch"]
BATCH_VALID = ["before_batch", "after_pred", "after_loss", "after_batch"]


def test_event_sequence_of_one_epoch():
    t = Trace()
    tiny(t).fit(1)
    assert t.seen == (["before_fit", "before_epoch", "before_train"] + BATCH_TRAIN * 2 +
                      ["after_train", "before_validate"] + BATCH_VALID + ["after_validate", "after_epoch", "after_fit"])


def test_no_validation_phase_without_valid_dl():
    t = Trace()
    learn = tiny(t, valid=False)
    learn.fit(2)
    assert "before_validate" not in t.seen and t.seen.count("after_epoch") == 2
    assert list(learn.recorder.history) == ["epoch", "train_loss"]


def test_callbacks_run_by_order_ties_keep_given_order():
    log = []

    class Say(Callback):
        def __init__(self, tag, order): self.tag, self.order = tag, order
        @property
        def name(self): return "say_" + self.tag
        def before_fit(self): log.append(self.tag)

    tiny(Say("c", 5), Say("a", -1), Say("b", 5), Say("d", 100)).fit(1)
    assert log == ["a", "c", "b", "d"]


def test_learner_state_visible_to_callbacks():
    seen = []

    class Peek(Callback):
        def after_loss(self):
            l = self.learn
            seen.append((l.epoch, l.iter, l.training, l.n_epochs, l.n_iter, tuple(l.xb[0].shape), tuple(l.yb[0].shape),
                         tuple(l.pred.shape), l.loss.shape, l.model is not None, l.opt is not None, len(l.batch)))

    tiny(Peek()).fit(1)
    assert seen == [(0, 0, True, 1, 2, (6, 4), (6,), (6, 3), (), True, True, 2),
                    (0, 1, True, 1, 2, (4, 4), (4,), (4, 3), (), True, True, 2),
                    (0, 0, False, 1, 1, (4, 4), (4,), (4, 3), (), True, True, 2)]


def test_aliases():
    assert CancelBatch is CancelBatchException and CancelEpoch is CancelEpochException
    assert CancelFit is CancelFitException


def test_cancel_batch_skips_the_step_but_calls_after_events():
    class Skip(Callback):
        def after_loss(self):
            if self.learn.training and self.learn.iter == 0: raise CancelBatchException()
    t = Trace()
    learn = tiny(t, Skip())  # same order: the trace, given first, sees after_loss before Skip raises
    learn.fit(2)
    assert learn.train_iter == 2                      # 2 epochs × (2 batches − 1 skipped)
    assert t.seen.count("after_cancel_batch") == 2 and t.seen.count("after_batch") == 6
    i = t.seen.index("after_cancel_batch")
    assert t.seen[i - 1] == "after_loss" and t.seen[i + 1] == "after_batch"
    # a skipped batch counts nowhere (the recorder, order 20, never saw its after_loss): train_loss is batch 1's
    assert len(learn.recorder.losses) == 2
    assert learn.recorder.history["train_loss"][0] == pytest.approx(learn.recorder.losses[0], rel=1e-6)


def test_cancel_train_still_validates():
    class Cut(Callback):
        def after_batch(self):
            if self.learn.training: raise CancelTrainException()
    t = Trace()
    learn = tiny(Cut(), t)
    learn.fit(2)
    assert learn.train_iter == 2 and t.seen.count("after_cancel_train") == 2
    assert t.seen.count("after_train") == 2 and t.seen.count("after_validate") == 2
    assert t.seen.index("after_cancel_train") + 1 == t.seen.index("after_train")


def test_cancel_validate():
    class Cut(Callback):
        def before_validate(self): raise CancelValidateException()
    t = Trace()
    es, mc = EarlyStoppingCallback("accuracy", patience=2), ModelCheckpoint("unused.safetensors", "accuracy")
    learn = tiny(Cut(), t, es, mc, metrics=["accuracy"])
    learn.fit(2)  # the watched value is missing: it counts as NaN (never an improvement), not as an error
    assert t.seen.count("after_cancel_validate") == 2 and "after_validate" in t.seen
    assert es.stopped_epoch == 1 and mc.saved == []
    assert math.isnan(learn.recorder.history["valid_loss"][0]) and "accuracy" not in learn.logs


def test_cancel_epoch_goes_to_next_epoch():
    class Cut(Callback):
        def after_train(self):
            if self.learn.epoch == 0: raise CancelEpochException()
    t = Trace()
    tiny(Cut(), t).fit(2)
    assert t.seen.count("before_epoch") == 2 and t.seen.count("after_cancel_epoch") == 1
    assert t.seen.count("after_validate") == 1 and t.seen.count("after_epoch") == 2


def test_cancel_fit_calls_after_cancel_fit_and_after_fit():
    class Stop(Callback):
        def after_step(self):
            if self.learn.epoch == 1: raise CancelFitException()
    t = Trace()
    learn = tiny(Stop(), t)
    learn.fit(5)
    assert t.seen[-2:] == ["after_cancel_fit", "after_fit"]
    assert t.seen.count("before_epoch") == 2 and t.seen.count("after_epoch") == 1 and learn.train_iter == 3


def test_cancel_step_keeps_weights_and_zeroes_grads():
    class NoStep(Callback):
        def before_step(self): raise CancelStepException()
    t = Trace()
    learn = tiny(NoStep(), t)
    w0 = weights(learn.model)
    learn.fit(2)
    assert same_weights(w0, weights(learn.model)) and learn.train_iter == 0
    assert all(p.grad is None or not np.any(p.grad.data) for p in learn.model.parameters())
    assert t.seen.count("after_cancel_step") == 4 and t.seen.count("after_step") == 4


def test_cancel_backward_skips_gradients():
    class NoBackward(Callback):
        def before_backward(self): raise CancelBackwardException()
    learn = tiny(NoBackward())
    w0 = weights(learn.model)
    learn.fit(1)
    assert same_weights(w0, weights(learn.model))  # no gradient, so SGD does not move


def test_stop_training_flag_ends_after_the_epoch():
    t = Trace()

    class Flag(Callback):
        order = 0
        def after_epoch(self):
            if self.learn.epoch == 1: self.learn.stop_training = True
    learn = tiny(Flag(), t)
    learn.fit(5)
    assert t.seen.count("after_epoch") == 2 and t.seen[-1] == "after_fit"
    assert learn.recorder.history["epoch"] == [0, 1]


def test_errors_that_are_not_cancellations_propagate():
    class Bug(Callback):
        def after_pred(self): raise ZeroDivisionError("bug")
    t = Trace()
    with pytest.raises(ZeroDivisionError):
        tiny(Bug(), t).fit(1)
    assert "after_fit" not in t.seen


def test_fit_callbacks_are_temporary_and_attributes_named():
    learn = tiny()
    t = Trace()
    learn.fit(1, callbacks=[t])
    assert t.seen and t not in learn.cbs and not hasattr(learn, "trace")
    cbs = [ProgressCallback(silent=True), EarlyStoppingCallback(), ModelCheckpoint("x.safetensors"),
           CSVLogger("x.csv"), TerminateOnNaN(), GradientClipping(1.0), LRSchedulerCallback(object())]
    learn = tiny(*cbs)
    names = ["progress", "early_stopping", "model_checkpoint", "csv_logger", "terminate_on_nan", "gradient_clipping",
             "lr_scheduler"]
    assert [getattr(learn, n) for n in names] == cbs and isinstance(learn.recorder, Recorder)

    class Model(Callback): pass  # a callback named like a learner attribute must not replace it
    learn.add_cb(Model())
    assert isinstance(learn.model, nn.Module)


def test_bad_arguments():
    m = nn.Sequential(nn.Linear(4, 3))
    dl = DataLoader(TensorDataset(XS, YS), 5)
    with pytest.raises(TypeError, match="optimizer must be an optimiser"):
        Learner(m, cross_entropy, 0.1, dl)
    with pytest.raises(TypeError, match="factory returned"):
        Learner(m, cross_entropy, lambda ps: 3, dl)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        Learner(m, "mse", optim.SGD(m.parameters(), lr=0.1), dl)
    with pytest.raises(ValueError, match="unknown metric name 'acuracy'.*accuracy"):
        Learner(m, cross_entropy, optim.SGD(m.parameters(), lr=0.1), dl, metrics=["acuracy"])
    with pytest.raises(ValueError, match="'accuracy' is used twice"):
        Learner(m, cross_entropy, optim.SGD(m.parameters(), lr=0.1), dl, metrics=["accuracy", accuracy])
    with pytest.raises(TypeError, match="Callback instances"):
        Learner(m, cross_entropy, optim.SGD(m.parameters(), lr=0.1), dl, callbacks=[print])
    learn = Learner(m, cross_entropy, None, dl)
    with pytest.raises(RuntimeError, match="no optimizer"):
        learn.fit(1)
    with pytest.raises(ValueError, match="start_epoch <= epochs"):
        tiny().fit(2, start_epoch=3)
    with pytest.raises(ValueError, match="no data"):
        tiny(valid=False).validate()


# ---------------------------------------------------------------- the numbers

def test_train_loss_is_sample_weighted_and_valid_loss_is_whole_set():
    learn = tiny(metrics=["accuracy"])
    rec = learn.fit(1)
    b = rec.losses
    assert len(b) == 2 and rec.history["train_loss"][0] == pytest.approx((6 * b[0] + 4 * b[1]) / 10, rel=1e-6)
    with nb.no_grad():
        pred = learn.model(nb.tensor(XS[:4]))
        full = cross_entropy(pred, YS[:4]).item()
    assert learn.logs["valid_loss"] == pytest.approx(full, rel=1e-6)
    assert learn.logs["accuracy"] == accuracy(YS[:4], pred.numpy())
    # batch losses equal a manual replay of the same SGD steps
    nb.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3)); opt = optim.SGD(m.parameters(), lr=0.1)
    manual = []
    for xb, yb in DataLoader(TensorDataset(XS, YS), 6):
        loss = cross_entropy(m(xb), yb); manual.append(loss.item()); loss.backward(); opt.step(); opt.zero_grad()
    assert b == manual


def test_metrics_see_all_predictions_at_once():
    calls = []

    def spy(y_true, y_pred):
        calls.append((y_true.shape, y_pred.shape, type(y_true), type(y_pred)))
        return 0.5
    nb.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    learn = Learner(m, cross_entropy, optim.SGD(m.parameters(), lr=0.1), DataLoader(TensorDataset(XS, YS), 4),
                    DataLoader(TensorDataset(XS, YS), 3), metrics={"spy": spy})
    learn.fit(2)
    assert calls == [((10,), (10, 3), np.ndarray, np.ndarray)] * 2
    assert learn.recorder.history["spy"] == [0.5, 0.5]


def test_metric_functions_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    scores = rng.standard_normal((200, 4))
    hat = scores.argmax(1)
    assert accuracy(y, scores) == pytest.approx(skm.accuracy_score(y, hat))
    assert error_rate(y, scores) == pytest.approx(1 - skm.accuracy_score(y, hat))
    assert accuracy(np.eye(4)[y], scores) == accuracy(y, scores)  # one-hot targets
    assert f1_macro(y, scores) == pytest.approx(skm.f1_score(y, hat, average="macro"))
    p = rng.random(200); yb = rng.integers(0, 2, 200)
    assert accuracy(yb, p) == pytest.approx(skm.accuracy_score(yb, p > 0.5))
    assert accuracy(yb, p[:, None]) == accuracy(yb, p)
    assert accuracy(yb, p - 0.5, threshold=0.0) == accuracy(yb, p)
    t, q = rng.standard_normal(50), rng.standard_normal((50, 1))
    assert mse(t, q) == pytest.approx(skm.mean_squared_error(t, q[:, 0]))
    assert mae(t, q) == pytest.approx(skm.mean_absolute_error(t, q[:, 0]))
    with pytest.raises(ValueError, match="mse: y_true has shape"):
        mse(t, q[:10])
    with pytest.raises(ValueError, match="accuracy: y_true has 200 samples but y_pred has 10"):
        accuracy(y, scores[:10])


def test_optimizer_factory_lr_and_instance():
    nb.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    learn = Learner(m, cross_entropy, partial(optim.Adam, lr=1e-3), DataLoader(TensorDataset(XS, YS), 5))
    assert isinstance(learn.opt, optim.Adam) and learn.lr == 1e-3
    rec = learn.fit(2, lr=0.01)
    assert learn.lr == 0.01 and rec.lrs == [0.01] * 4
    assert isinstance(tiny().opt, optim.SGD)
    cls = Learner(m, cross_entropy, optim.SGD, DataLoader(TensorDataset(XS, YS), 5))  # a class is a factory too
    assert isinstance(cls.opt, optim.SGD) and all(a is b for a, b in zip(cls.opt.param_groups[0]["params"], m.parameters()))


def test_multi_input_batches():
    class Two(nn.Module):
        def __init__(self):
            super().__init__(); self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)
        def forward(self, x1, x2): return self.a(x1) + self.b(x2)
    nb.manual_seed(0)
    m = Two()
    x2 = RNG.standard_normal((10, 2)).astype(np.float32)
    dl = DataLoader(TensorDataset(XS, x2, YS), 5)
    learn = Learner(m, cross_entropy, optim.SGD(m.parameters(), lr=0.1), dl, dl, metrics=["accuracy"])
    learn.fit(1)
    assert len(learn.xb) == 2 and len(learn.yb) == 1
    out = learn.predict(dl)
    with nb.no_grad():
        ref = m(nb.tensor(XS), nb.tensor(x2)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_predict_and_validate():
    learn = tiny(metrics=["accuracy"])
    learn.fit(1)
    learn.model.train()
    with nb.no_grad():
        ref = learn.model(nb.tensor(XS)).numpy()
    for data in (XS, XS.astype(np.float64), nb.tensor(XS), XS.tolist(), DataLoader(TensorDataset(XS, YS), 3)):
        out = learn.predict(data, batch_size=3) if not isinstance(data, DataLoader) else learn.predict(data)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-6)
    assert learn.model.training  # restored
    logs = dict(learn.logs)
    res = learn.validate(DataLoader(TensorDataset(XS, YS), 4))
    assert set(res) == {"valid_loss", "accuracy"} and learn.logs == logs and learn.model.training
    assert res["accuracy"] == accuracy(YS, ref) and res["valid_loss"] == pytest.approx(
        cross_entropy(nb.tensor(ref), YS).item(), rel=1e-6)
    assert learn.validate() == pytest.approx(learn.validate())


def test_validate_from_inside_a_callback_does_not_disturb_the_epoch():
    out = []

    class Probe(Callback):
        def after_train(self): out.append(self.learn.validate())
    learn = tiny(Probe(), metrics=["accuracy"])
    learn.fit(2)
    ref = tiny(metrics=["accuracy"]); ref.fit(2)
    assert learn.recorder.history == ref.recorder.history and len(out) == 2


def test_device_cpu_is_accepted():
    learn = tiny(device="cpu", metrics=["accuracy"])
    learn.fit(2)
    ref = tiny(metrics=["accuracy"]); ref.fit(2)
    assert learn.recorder.history == ref.recorder.history


@pytest.mark.gpu
def test_device_cuda_trains_like_cpu():
    cpu = tiny(metrics=["accuracy"]); cpu.fit(3)
    gpu = tiny(device="cuda", metrics=["accuracy"]); gpu.fit(3)
    assert gpu.model.device.startswith("cuda")
    for k in ("train_loss", "valid_loss"):
        np.testing.assert_allclose(gpu.recorder.history[k], cpu.recorder.history[k], rtol=1e-4)
    np.testing.assert_allclose(gpu.predict(XS), cpu.predict(XS), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- reproducibility and the done-when

def _digits():
    from neuralbook.datasets import load_digits
    X, y = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, seed=0, stratify=y)
    sc = StandardScaler().fit(X_tr)
    return sc.transform(X_tr), sc.transform(X_te), y_tr, y_te


def _digits_learner(X_tr, y_tr, X_te, y_te, seed):
    nb.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return Learner(model, CrossEntropyLoss(), partial(optim.Adam, lr=1e-3),
                   DataLoader(TensorDataset(X_tr, y_tr), batch_size=32, shuffle=True, seed=seed),
                   DataLoader(TensorDataset(X_te, y_te), batch_size=256), metrics=["accuracy"])


def test_digits_mlp_reaches_96_percent_in_under_20_s():
    X_tr, X_te, y_tr, y_te = _digits()
    t0 = time.perf_counter()
    learn = _digits_learner(X_tr, y_tr, X_te, y_te, seed=0)
    learn.fit(15)
    acc = accuracy(y_te, learn.predict(X_te))
    elapsed = time.perf_counter() - t0
    assert acc >= 0.96, acc
    assert elapsed < 20, elapsed


def test_same_seed_same_history_different_seed_different():
    X_tr, X_te, y_tr, y_te = _digits()
    runs = []
    for seed in (3, 3, 4):
        learn = _digits_learner(X_tr[:400], y_tr[:400], X_te, y_te, seed)
        learn.fit(3)
        runs.append((learn.recorder.history, learn.recorder.losses, weights(learn.model)))
    (h1, b1, w1), (h2, b2, w2), (h3, _, _) = runs
    assert h1 == h2 and b1 == b2 and same_weights(w1, w2)
    assert h1 != h3


def test_loop_overhead_is_small():
    "The learner's own cost per batch (events, bookkeeping) next to a bare loop, on a model that does nothing."
    class NoOpt:
        param_groups = [{"lr": 0.1}]
        def step(self): pass
        def zero_grad(self): pass

    class Same(nn.Module):
        def forward(self, x): return x

    class Loss:
        data = np.float32(0.0)
        def backward(self): pass
    loss = Loss()
    batches = [(nb.tensor(np.zeros((32, 4), np.float32)), nb.tensor(np.zeros(32, np.int64)))] * 2000

    def bare():
        m, opt = Same(), NoOpt(); t = time.perf_counter()
        m.train()
        for xb, yb in batches:
            m(xb); loss.backward(); opt.step(); opt.zero_grad()
        return (time.perf_counter() - t) / len(batches)

    def learner():
        learn = Learner(Same(), lambda p, y: loss, NoOpt(), batches)
        t = time.perf_counter(); learn.fit(1); return (time.perf_counter() - t) / len(batches)
    b = min(bare() for _ in range(3)); lr = min(learner() for _ in range(3))
    assert lr - b < 30e-6, f"learner overhead {1e6 * (lr - b):.1f} µs per batch"


def test_event_tables_are_built_lazily_and_follow_changes():
    "Tables are rebuilt once after the callbacks change (also mid-fit); an instance attribute set to None is no event."
    calls = []

    class Count(Callback):
        def after_batch(self): calls.append("count")

    class Quiet(Count):
        def __init__(self): self.after_batch = None              # switched off on the instance

    class AddsOne(Callback):
        def before_epoch(self):
            if self.learn.epoch == 1: self.learn.add_cb(Count())

    learn = tiny(Quiet(), AddsOne())
    assert learn._ev is None                                      # nothing built at construction
    learn.fit(1)
    assert calls == [] and learn._ev["after_batch"] == ()
    learn.fit(2)                                 # Count joins in epoch 1: 2 training and 1 validation batch
    assert calls == ["count"] * 3
    n = len(learn.cbs)
    learn.remove_cbs([c for c in learn.cbs if type(c) is Count])
    assert len(learn.cbs) == n - 1 and learn._ev is None


def test_train_loss_of_float_scalars_and_0d_arrays():
    "The epoch loss is the sample-weighted mean whether a loss holds a NumPy scalar or a 0-d array."
    class Loss:
        def __init__(self, v): self.data = v
        def backward(self): pass

    class NoOpt:
        def step(self): pass
        def zero_grad(self): pass
    values = iter([np.float32(1.0), np.array(4.0, np.float32)])
    batches = [(nb.tensor(np.zeros((3, 4), np.float32)), nb.tensor(np.zeros(3, np.int64))),
               (nb.tensor(np.zeros((1, 4), np.float32)), nb.tensor(np.zeros(1, np.int64)))]
    learn = Learner(nn.Sequential(), lambda p, y: Loss(next(values)), NoOpt(), batches)
    learn.fit(1)
    assert learn.recorder.history["train_loss"] == [pytest.approx((3 * 1.0 + 1 * 4.0) / 4)]
    assert learn.recorder.losses == [1.0, 4.0]


# ---------------------------------------------------------------- Recorder and progress

def test_recorder_history_batches_lrs_plot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    learn = tiny(metrics=["accuracy", "error_rate"])
    rec = learn.fit(3)
    assert rec is learn.recorder
    assert list(rec.history) == ["epoch", "train_loss", "valid_loss", "accuracy", "error_rate"]
    assert rec.history["epoch"] == [0, 1, 2] and all(len(v) == 3 for v in rec.history.values())
    assert len(rec.losses) == 6 and rec.lrs == [0.1] * 6
    assert all(isinstance(v, float) for v in rec.losses)
    axes = rec.plot()
    assert len(axes) == 2 and all(isinstance(a, matplotlib.axes.Axes) for a in axes)
    assert {l.get_label() for l in axes[0].get_lines()} >= {"train_loss", "valid_loss", "train (batch)"}
    assert isinstance(rec.plot_lr(), matplotlib.axes.Axes)
    one = tiny(valid=False); one.fit(1)
    assert len(one.recorder.plot()) == 1
    assert repr(rec) == "Recorder(3 epochs: train_loss, valid_loss, accuracy, error_rate)"
    import matplotlib.pyplot as plt
    plt.close("all")


def test_recorder_new_fit_resets_resume_appends():
    learn = tiny()
    learn.fit(2)
    learn.fit(4, start_epoch=2)
    assert learn.recorder.history["epoch"] == [0, 1, 2, 3] and len(learn.recorder.losses) == 8
    learn.fit(1)
    assert learn.recorder.history["epoch"] == [0]


def test_resume_continues_like_one_run():
    a = tiny(); a.fit(4)
    b = tiny(); b.fit(2); b.fit(4, start_epoch=2)
    assert a.recorder.history == b.recorder.history and same_weights(weights(a.model), weights(b.model))


def test_progress_table_is_deterministic_and_silent_mode(capsys):
    tiny(ProgressCallback(bar=False, every=2), metrics=["accuracy"]).fit(3)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy"]
    assert [l.split()[0] for l in out[1:]] == ["1", "2"]  # every 2nd epoch, and always the last
    assert all(len(v.split(".")[1]) == 4 for v in out[1].split()[1:])
    tiny(ProgressCallback(bar=False, every=2), metrics=["accuracy"]).fit(3)
    assert capsys.readouterr().out.splitlines() == out
    tiny(ProgressCallback(silent=True)).fit(2)
    tiny(ProgressCallback(silent=True, bar=False)).fit(2)
    c = capsys.readouterr()
    assert c.out == "" and c.err == ""


def test_progress_bar_one_per_epoch():
    pytest.importorskip("tqdm")
    f = io.StringIO()
    tiny(ProgressCallback(bar=True, file=f), metrics=["accuracy"]).fit(2)
    s = f.getvalue()
    assert "epoch 1/2" in s and "epoch 2/2" in s and "accuracy" in s and "valid_loss" in s


# ---------------------------------------------------------------- early stopping and checkpoints

ZERO = {"score": lambda t, p: 0.0}  # declares the log key 'score'; Values overwrites it each epoch


def test_early_stopping_stops_and_restores_best():
    snaps = Snapshots()
    es = EarlyStoppingCallback("score", patience=2, mode="min")
    learn = tiny(Values([1.0, 0.5, 0.7, 0.8, 0.2, 0.1]), snaps, es, metrics=ZERO)
    learn.fit(6)
    assert es.stopped_epoch == 3 and es.best_epoch == 1 and es.best == 0.5
    assert learn.recorder.history["epoch"] == [0, 1, 2, 3]
    assert same_weights(weights(learn.model), snaps.w[1]) and not same_weights(snaps.w[1], snaps.w[3])


def test_early_stopping_restores_best_when_epochs_run_out_and_mode_auto():
    snaps = Snapshots()
    es = EarlyStoppingCallback("score", patience=10)  # 'auto' reads 'score' as higher-is-better
    learn = tiny(Values([0.1, 0.9, 0.3, 0.2]), snaps, es, metrics=ZERO)
    learn.fit(4)
    assert es.mode == "max" and es.stopped_epoch is None and es.best_epoch == 1
    assert same_weights(weights(learn.model), snaps.w[1])
    snaps2 = Snapshots()
    keep = tiny(EarlyStoppingCallback(patience=10, restore_best=False), snaps2)
    keep.fit(3)
    assert same_weights(weights(keep.model), snaps2.w[-1])
    assert EarlyStoppingCallback("valid_loss").mode == "min" and EarlyStoppingCallback("f1_macro").mode == "max"


def test_monitor_must_exist():
    with pytest.raises(ValueError, match=r"monitor 'valid_loss' is not one of the epoch's logs \['train_loss'\].*valid_dl"):
        tiny(EarlyStoppingCallback(), valid=False).fit(1)
    with pytest.raises(ValueError, match="monitor 'acc' is not one"):
        tiny(ModelCheckpoint("x", monitor="acc"), metrics=["accuracy"]).fit(1)
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        EarlyStoppingCallback(mode="up")


def test_model_checkpoint_best_only(tmp_path):
    path = tmp_path / "sub" / "best.safetensors"
    snaps = Snapshots()
    mc = ModelCheckpoint(path, monitor="score", mode="min")
    learn = tiny(Values([1.0, 0.5, 0.7, 0.4, 0.9]), snaps, mc, metrics=ZERO)
    learn.fit(5)
    assert mc.best_epoch == 3 and len(mc.saved) == 3  # epochs 0, 1, 3 improved
    tensors, meta = load_safetensors(path)
    assert same_weights(tensors, snaps.w[3])
    assert meta["epoch"] == 3 and meta["monitor"] == "score" and meta["value"] == 0.4 and meta["logs"]["score"] == 0.4
    fresh = tiny()
    assert fresh.load(path)["epoch"] == 3 and same_weights(weights(fresh.model), snaps.w[3])
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_model_checkpoint_every_epoch_with_formatted_path(tmp_path):
    mc = ModelCheckpoint(tmp_path / "e{epoch:02d}.safetensors", save_best_only=False)
    learn = tiny(mc)
    learn.fit(3)
    assert sorted(os.listdir(tmp_path)) == ["e00.safetensors", "e01.safetensors", "e02.safetensors"]
    assert same_weights(load_safetensors(tmp_path / "e02.safetensors")[0], weights(learn.model))


def test_checkpoint_survives_a_crash_half_way(tmp_path, monkeypatch):
    path = tmp_path / "best.safetensors"
    learn = tiny(ModelCheckpoint(path, monitor="train_loss"))
    learn.fit(1)
    before = path.read_bytes()
    w_before = load_safetensors(path)[0]

    def dies_half_way(f, blob):
        f.write(blob[: len(blob) // 2]); f.flush()
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(nio, "_write_blob", dies_half_way)  # the writer moved to chapter 30's neuralbook.io
    with pytest.raises(OSError, match="disk full"):
        learn.fit(3, start_epoch=1)  # train_loss improves at epoch 1: the checkpoint write dies half-way
    assert path.read_bytes() == before and same_weights(load_safetensors(path)[0], w_before)
    assert os.listdir(tmp_path) == ["best.safetensors"]  # no temporary file left behind
    monkeypatch.undo()
    learn.save(path, note="ok")
    assert load_safetensors(path)[1]["note"] == "ok"


def test_atomic_write_text_and_bytes(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, lambda f: f.write("héllo\n"), mode="w")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    atomic_write(p, lambda f: f.write(b"bytes"))
    assert p.read_bytes() == b"bytes"
    with pytest.raises(RuntimeError):
        atomic_write(p, lambda f: (f.write(b"partial"), (_ for _ in ()).throw(RuntimeError("x"))))
    assert p.read_bytes() == b"bytes" and os.listdir(tmp_path) == ["a.txt"]
    save_safetensors_atomic(tmp_path / "t.safetensors", {"w": nb.tensor(np.ones((2, 3))), "b": np.arange(3)},
                            {"k": [1, 2]})
    t, meta = load_safetensors(tmp_path / "t.safetensors")
    assert list(t) == ["b", "w"] or list(t) == ["w", "b"]
    assert np.array_equal(t["w"], np.ones((2, 3))) and meta == {"k": [1, 2]}


def test_no_pickle_in_the_module():
    with open(L.__file__, encoding="utf-8") as f:
        src = f.read()
    assert "pickle" not in src and "np.save(" not in src and "allow_pickle" not in src


# ---------------------------------------------------------------- NaN, clipping, schedules, CSV

def test_terminate_on_nan_names_epoch_and_batch(capsys):
    def nan_at(pred, y):
        loss = cross_entropy(pred, y)
        if learn.training and learn.epoch == 1 and learn.iter == 1: loss = loss * float("nan")
        return loss
    nb.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3))
    snaps = Snapshots()
    learn = Learner(m, nan_at, optim.SGD(m.parameters(), lr=0.1), DataLoader(TensorDataset(XS, YS), 3),
                    callbacks=[TerminateOnNaN(), snaps])
    steps = []
    learn.add_cb(type("Steps", (Callback,), {"after_step": lambda self: steps.append(self.learn.train_iter)})())
    learn.fit(5)
    out = capsys.readouterr().out
    assert "TerminateOnNaN: the training loss is nan at epoch 1, batch 1" in out
    assert learn.terminate_on_nan.message in out
    assert learn.recorder.history["epoch"] == [0] and steps[-1] == 5  # 4 steps in epoch 0, 1 in epoch 1
    assert all(np.isfinite(v).all() for v in weights(learn.model).values())


def test_gradient_clipping_bounds_the_norm():
    norms = []

    class Norm(Callback):
        order = 1  # after GradientClipping (order 0)
        def after_backward(self):
            norms.append(math.sqrt(sum(float((p.grad.data.astype(np.float64) ** 2).sum())
                                       for p in self.learn.model.parameters())))
    learn = tiny(GradientClipping(0.05), Norm(), lr=0.1)
    learn.fit(2)
    assert len(norms) == 4 and max(norms) <= 0.05 * (1 + 1e-4)
    assert learn.gradient_clipping.last_norm > 0.05  # the raw gradients were larger
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        GradientClipping(0)


def test_lr_scheduler_callback_per_batch_epoch_monitor_factory():
    class Count:
        def __init__(self, opt=None): self.calls, self.opt = [], opt
        def step(self, *a): self.calls.append(a)
    s = Count()
    tiny(LRSchedulerCallback(s, per="batch")).fit(3)
    assert len(s.calls) == 6 and s.calls[0] == ()
    s = Count()
    tiny(LRSchedulerCallback(s, per="epoch")).fit(3)
    assert s.calls == [(), (), ()]
    s = Count()
    learn = tiny(LRSchedulerCallback(s, per="epoch", monitor="valid_loss"))
    learn.fit(2)
    assert [c[0] for c in s.calls] == learn.recorder.history["valid_loss"]
    learn = tiny(LRSchedulerCallback(Count, per="batch"))
    learn.fit(1)
    assert isinstance(learn.lr_scheduler.scheduler, Count) and learn.lr_scheduler.scheduler.opt is learn.opt
    with pytest.raises(ValueError, match="per must be 'batch' or 'epoch'"):
        LRSchedulerCallback(s, per="step")


def test_lr_scheduler_with_the_library_schedulers():
    lr_scheduler = pytest.importorskip("neuralbook.optim.lr_scheduler")
    learn = tiny(LRSchedulerCallback(partial(lr_scheduler.StepLR, step_size=2, gamma=0.5), per="batch"), lr=0.4)
    rec = learn.fit(3)
    assert rec.lrs == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1, 0.1])


def test_csv_logger_content_and_append(tmp_path):
    path = tmp_path / "log.csv"
    learn = tiny(CSVLogger(path), metrics=["accuracy"])
    learn.fit(3)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    h = learn.recorder.history
    assert list(rows[0]) == ["epoch", "train_loss", "valid_loss", "accuracy"] and len(rows) == 3
    for k in h:
        assert [float(r[k]) for r in rows] == [float(v) for v in h[k]]  # repr round-trips exactly
    learn = tiny(CSVLogger(path, append=True), metrics=["accuracy"])
    learn.fit(2)
    with open(path, newline="") as f:
        rows2 = list(csv.DictReader(f))
    assert len(rows2) == 5 and rows2[:3] == rows
    assert [t for t in os.listdir(tmp_path)] == ["log.csv"]


def test_save_safetensors_keeps_0d_arrays(tmp_path):
    from neuralbook.learner import load_safetensors, save_safetensors_atomic
    save_safetensors_atomic(tmp_path / "x.safetensors", {"n": np.array(3, dtype=np.int64), "w": np.ones((2, 2))}, {})
    tensors, _ = load_safetensors(tmp_path / "x.safetensors")
    assert tensors["n"].shape == () and tensors["n"] == 3


# ---------------------------------------------------------------- bad data at the door (issue 21)

def test_fit_refuses_empty_loaders_before_the_first_epoch():
    class Count(Callback):
        n = 0
        def before_epoch(self): Count.n += 1
    class Empty:                                                 # a loader with len() == 0
        dataset, batch_size, drop_last = XS[:5], 6, True
        def __len__(self): return 0
        def __iter__(self): return iter(())
    learn = tiny(Count())
    learn.train_dl = Empty()
    with pytest.raises(ValueError, match=r"Learner\.fit: the training loader \(Empty: 5 samples, batch_size=6, "
                                         r"drop_last=True\) yields no batch"):
        learn.fit(2)
    learn = tiny(Count())
    learn.valid_dl = []
    with pytest.raises(ValueError, match=r"the validation loader \(list\) yields no batch.*valid_dl=None"):
        learn.fit(1)
    assert Count.n == 0
    learn = tiny()
    learn.train_dl = iter(())                                    # no len(): found out at the end of the first phase
    with pytest.raises(ValueError, match=r"the training loader \(tuple_iterator\) yields no batch"):
        learn.fit(1)


def test_nan_inputs_warn_once_raise_or_pass():
    import warnings
    X = XS.copy()
    X[7, 1] = np.inf
    batches = [(nb.tensor(X[:6]), nb.tensor(YS[:6])), (nb.tensor(X[6:]), nb.tensor(YS[6:]))]  # a loader without arrays
    def learner(dl=None, **kw):
        nb.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 3))
        return Learner(m, cross_entropy, optim.SGD(m.parameters(), lr=0.1),
                       DataLoader(TensorDataset(X, YS), 6) if dl is None else dl, **kw)
    def learner_warnings(learn, epochs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            learn.fit(epochs)
        return [str(w.message) for w in caught if str(w.message).startswith("Learner")]  # (NumPy adds its own)
    msgs = learner_warnings(learner(), 3)                        # a TensorDataset: its arrays, once, at fit
    assert len(msgs) == 1 and "input 0 of the training data holds 1 NaN or infinite value(s) of 40" in msgs[0]
    msgs = learner_warnings(learner(batches), 3)                 # other loaders: batch by batch, in the first epoch
    assert len(msgs) == 1 and "input 0 of training batch 1 (epoch 0) holds 1 NaN or infinite value(s) of 16" in msgs[0]
    with pytest.raises(ValueError, match=r"input 0 of the training data holds 1 NaN.*check_inputs='off'"):
        learner(check_inputs="raise").fit(1)
    with pytest.raises(ValueError, match=r"training batch 1 \(epoch 0\) holds 1 NaN"):
        learner(batches, check_inputs="raise").fit(1)
    assert learner_warnings(learner(check_inputs="off"), 1) == learner_warnings(learner(batches, check_inputs="off"),
                                                                                1) == []
    assert learner_warnings(tiny(), 2) == []                     # finite data: no warning
    with pytest.raises(ValueError, match=r"check_inputs must be 'warn', 'raise' or 'off', got 'yes'"):
        learner(check_inputs="yes")


def test_learner_load_verifies_the_digest_and_old_files_need_verify_false(tmp_path):
    learn = tiny()
    p = learn.save(tmp_path / "m.safetensors")
    raw = bytearray(p.read_bytes()); raw[-2] ^= 0x10
    p.write_bytes(bytes(raw))
    fresh = tiny()
    before = weights(fresh.model)
    with pytest.raises(ValueError, match=r"Learner\.load: .*m\.safetensors: the metadata or the tensor data does not "
                                         r"match the SHA-256 digest"):
        fresh.load(p)
    assert same_weights(weights(fresh.model), before)
    from safetensors.numpy import save                            # what Learner.save wrote before chapter 30
    old = tmp_path / "old.safetensors"
    old.write_bytes(save({k: v for k, v in weights(learn.model).items()}, metadata={"neuralbook": '{"epoch": 4}'}))
    with pytest.raises(ValueError, match=r"has no digest .*verify=False"):
        fresh.load(old)
    assert fresh.load(old, verify=False) == {"epoch": 4} and same_weights(weights(fresh.model), weights(learn.model))


# ---------------------------------------------------------------- issue 12: the LR finder as a callback, one accuracy

def _finder_learner(opt_cls=optim.Adam, lr=1e-3, shuffle_seed=4):
    nb.manual_seed(0)
    X = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    return Learner(m, cross_entropy, opt_cls(m.parameters(), lr=lr),
                   DataLoader(TensorDataset(X, y), 16, shuffle=True, seed=shuffle_seed),
                   DataLoader(TensorDataset(X, y), 32), metrics=["accuracy"])


def test_lr_finder_restores_model_optimizer_and_generators_bit_identically():
    from neuralbook.learner import LRFinder, LRFindResult
    learn = _finder_learner()
    learn.fit(2)                                       # some optimiser state to restore
    hist = {k: list(v) for k, v in learn.recorder.history.items()}
    w = {k: v.copy() for k, v in learn.model.state_dict().items()}
    o = learn.opt.state_dict()
    g, d = nb.backend.get_generator().get_state(), learn.train_dl.generator.get_state()
    learn.model.eval()
    finder = LRFinder(start_lr=1e-5, end_lr=10, num_it=30)
    res = finder.run(learn)
    assert isinstance(res, LRFindResult) and 2 <= len(res.lrs) <= 30
    assert all(np.array_equal(w[k], v) for k, v in learn.model.state_dict().items())
    o2 = learn.opt.state_dict()
    assert o2["param_groups"] == o["param_groups"] and learn.lr == 1e-3
    assert all(np.array_equal(o["state"][i][k], o2["state"][i][k]) for i in o["state"] for k in o["state"][i]
               if isinstance(o["state"][i][k], np.ndarray))
    assert nb.backend.get_generator().get_state() == g and learn.train_dl.generator.get_state() == d
    assert not learn.model.training and learn.recorder.history == hist and learn.epoch == 1
    # the next fit continues exactly as if lr_find had never run
    def run(find):
        learn = _finder_learner()
        learn.fit(2)
        if find: learn.lr_find(start_lr=1e-5, end_lr=10, num_it=30)
        learn.fit(4, start_epoch=2)
        return learn.recorder.history, learn.model.state_dict()
    (h1, w1), (h2, w2) = run(False), run(True)
    assert h1 == h2 and all(np.array_equal(w1[k], w2[k]) for k in w1)
    np.testing.assert_allclose(np.diff(np.log(res.lrs)), np.log(10 / 1e-5) / 29)
    assert res.lrs[0] == 1e-5


def test_lr_finder_cancels_on_divergence_and_skips_validation():
    from neuralbook.learner import LRFinder
    learn = _finder_learner(optim.SGD, lr=0.1)
    seen = []
    class Watch(Callback):
        def after_batch(self):
            if not self.learn.training: seen.append("validation batch")
        def after_cancel_validate(self): seen.append("validation cancelled")
        def after_cancel_fit(self): seen.append("cancelled")
    learn.add_cb(Watch())
    res = learn.lr_find(start_lr=1e-3, end_lr=1e6, num_it=100)
    assert len(res.lrs) < 100 and seen.count("cancelled") == 1 and "validation batch" not in seen
    assert seen.count("validation cancelled") == -(-len(res.lrs) // 4) - 1   # every epoch but the cancelled one
    assert max(res.smoothed) > 4 * min(res.smoothed)         # it stopped because the loss had diverged
    assert learn.lr == 0.1
    no_stop = LRFinder(1e-3, 1e-1, num_it=12, stop_div=False).run(learn)
    assert len(no_stop.lrs) == 12                             # 12 steps over 4 batches per epoch: 3 epochs, then cancel
    with pytest.raises(ValueError, match="need 0 < start_lr < end_lr"):
        learn.lr_find(start_lr=1, end_lr=0.1)
    with pytest.raises(ValueError, match="num_it must be an int >= 2"):
        learn.lr_find(num_it=1)
    with pytest.raises(ValueError, match="suggestion must be 'steepest' or 'min/10'"):
        learn.lr_find(suggestion="max")


def test_learner_lr_find_keeps_discriminative_ratios_and_quiet_callbacks(tmp_path):
    learn = _finder_learner()
    m = learn.model
    learn.opt = optim.Adam([{"params": m[0].parameters(), "lr": 1e-3}, {"params": m[3].parameters(), "lr": 4e-3}])
    rates = []
    class Rates(Callback):
        def after_step(self): rates.append([g["lr"] for g in self.learn.opt.param_groups])
    log = tmp_path / "log.csv"
    learn.add_cbs([Rates(), CSVLogger(log), ProgressCallback(bar=False, file=io.StringIO())])
    res = learn.lr_find(start_lr=1e-4, end_lr=1.0, num_it=10)
    assert len(rates) == len(res.lrs) and all(b == pytest.approx(4 * a) for a, b in rates)   # the ratio is kept
    assert [a for a, _ in rates] == pytest.approx(res.lrs.tolist())
    assert not log.exists()                                   # the CSV logger sat this one out
    assert any(type(c).__name__ == "CSVLogger" for c in learn.cbs)   # and is back
    rates.clear()
    learn.fit(1)
    assert rates and all(r == [1e-3, 4e-3] for r in rates) and log.exists()   # the rates are restored
    assert res.suggestion == "steepest" and res.suggested_lr == res.steepest_lr
    assert repr(res).startswith(f"LRFindResult({len(res.lrs)} steps, suggested_lr=")


def test_learner_accuracy_is_chapter_07s_accuracy_score(monkeypatch):
    import neuralbook.metrics as M
    calls = []
    real = M.accuracy_score
    monkeypatch.setattr(L, "accuracy_score", lambda t, p: calls.append(1) or real(t, p))
    assert L.accuracy([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]) == pytest.approx(2 / 3) and calls == [1]
    assert L.METRICS["accuracy"] is L.accuracy


def test_learner_is_assembled_from_one_idea_parts_with_its_public_signature():
    "Issue 19: the Learner is split into mixins (one per notebook cell); its constructor and methods keep their API."
    import inspect
    parts = {c.__name__ for c in Learner.__mro__[1:-1]}
    assert {"_Setup", "_Callbacks", "_Events", "_Batch", "_Step", "_Phases", "_Checks", "_Fit", "_Validate",
            "_Predict", "_Saving"} <= parts
    assert list(inspect.signature(Learner).parameters) == [
        "model", "loss_fn", "optimizer", "train_dl", "valid_dl", "metrics", "callbacks", "device", "n_inp",
        "check_inputs"]
    for name in ("fit", "validate", "predict", "save", "load", "lr_find", "add_cb", "add_cbs", "remove_cbs"):
        assert callable(getattr(Learner, name)), name
    assert list(inspect.signature(Learner.fit).parameters) == ["self", "epochs", "lr", "start_epoch", "callbacks"]


def test_recorder_plots_through_module_functions():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    learn = tiny(metrics=["accuracy"])
    learn.fit(2)
    axes = learn.recorder.plot(logy=True)
    assert len(axes) == 2 and axes[0].get_yscale() == "log"
    ax = learn.recorder.plot_lr()
    assert len(ax.lines[0].get_ydata()) == len(learn.recorder.lrs) == 2 * len(learn.train_dl)
    plt.close("all")
