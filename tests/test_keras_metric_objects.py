"""keras.metrics objects (update_state / result / reset_state) against Keras 3 (torch backend) and scikit-learn on
random data, in batches, with and without sample weights; and inside compile(metrics=[...])."""
import os

import numpy as np
import pytest

from neuralbook import keras
from neuralbook.keras import metrics as M

RTOL = 1e-5


def _keras():
    os.environ["KERAS_BACKEND"] = "torch"
    return pytest.importorskip("keras")


def _data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    yt = rng.integers(0, 2, size=(n, 1)).astype(np.float32)
    yp = np.clip(0.35 * yt + 0.65 * rng.random((n, 1)), 0, 1).astype(np.float32)
    w = rng.random(n).astype(np.float32)
    return yt, yp, w


def _feed(m, yt, yp, w=None, batches=4):
    m.reset_state()
    for idx in np.array_split(np.arange(len(yt)), batches):
        m.update_state(yt[idx], yp[idx], None if w is None else w[idx])
    return np.asarray(m.result(), dtype=np.float64)


BINARY = [("TruePositives", {}), ("TrueNegatives", {}), ("FalsePositives", {}), ("FalseNegatives", {}),
          ("TruePositives", {"thresholds": [0.3, 0.5, 0.8]}), ("Precision", {}), ("Recall", {}),
          ("Precision", {"thresholds": 0.7}), ("Recall", {"thresholds": [0.2, 0.6]}), ("AUC", {}),
          ("AUC", {"curve": "PR"}), ("AUC", {"num_thresholds": 50, "summation_method": "minoring"}),
          ("BinaryAccuracy", {})]


@pytest.mark.parametrize("name,kw", BINARY, ids=[f"{n}-{k}" for n, k in BINARY])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_metrics_match_keras(name, kw, weighted):
    K = _keras()
    yt, yp, w = _data(1)
    sw = w if weighted else None
    ours = _feed(getattr(M, name)(**kw), yt, yp, sw)
    theirs = _feed(getattr(K.metrics, name)(**kw), yt, yp, sw)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=1e-6)


def test_confusion_counts_and_prf_match_sklearn():
    from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score
    yt, yp, w = _data(2, 500)
    t, p = yt[:, 0].astype(int), (yp[:, 0] > 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(t, p, sample_weight=w).ravel()
    for cls, ref in ((M.TruePositives, tp), (M.FalsePositives, fp), (M.TrueNegatives, tn), (M.FalseNegatives, fn)):
        np.testing.assert_allclose(_feed(cls(), yt, yp, w), ref, rtol=1e-6)
    np.testing.assert_allclose(_feed(M.Precision(), yt, yp), precision_score(t, p), rtol=1e-6)
    np.testing.assert_allclose(_feed(M.Recall(), yt, yp), recall_score(t, p), rtol=1e-6)
    # Keras' AUC is a 200-threshold approximation of the exact area
    assert abs(_feed(M.AUC(num_thresholds=1000), yt, yp) - roc_auc_score(t, yp[:, 0])) < 2e-3


def test_categorical_mean_sum_match_keras():
    K = _keras()
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(120, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 120)
    onehot = np.eye(5, dtype=np.float32)[labels]
    w = rng.random(120).astype(np.float32)
    for name, yt in (("SparseCategoricalAccuracy", labels), ("CategoricalAccuracy", onehot)):
        for sw in (None, w):
            np.testing.assert_allclose(_feed(getattr(M, name)(), yt, logits, sw),
                                       _feed(getattr(K.metrics, name)(), yt, logits, sw), rtol=RTOL)
    v = rng.normal(size=(30, 4)).astype(np.float32)
    for name in ("Mean", "Sum"):
        for sw in (None, w[:30]):
            ours, theirs = getattr(M, name)(), getattr(K.metrics, name)()
            for chunk in np.array_split(np.arange(30), 3):
                ours.update_state(v[chunk], None if sw is None else sw[chunk])
                theirs.update_state(v[chunk], None if sw is None else sw[chunk])
            np.testing.assert_allclose(ours.result(), float(theirs.result()), rtol=RTOL)


def test_reset_state_and_names():
    m = M.Precision()
    m.update_state([1, 0, 1], [0.9, 0.8, 0.2])
    assert m.result() == 0.5
    m.reset_state()
    assert m.result() == 0.0
    assert [c().name for c in (M.AUC, M.Precision, M.Recall, M.TruePositives, M.FalseNegatives)] == \
        ["auc", "precision", "recall", "true_positives", "false_negatives"]


def test_metric_objects_in_compile():
    import neuralbook as nb
    nb.manual_seed(0)
    yt, yp, _ = _data(4, 256)
    x = np.concatenate([yp, np.random.default_rng(0).random((256, 3)).astype(np.float32)], axis=1)
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy",
                  metrics=[M.Precision(), M.Recall(), M.AUC(), M.FalseNegatives(), "auc"])
    hist = model.fit(x, yt, epochs=2, batch_size=64, verbose=0, validation_split=0.25).history
    assert {"precision", "recall", "auc", "false_negatives", "val_auc"} <= set(hist)
    ev = model.evaluate(x, yt, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    ref = M.AUC(); ref.update_state(yt, pred)
    np.testing.assert_allclose(ev["auc"], ref.result(), rtol=1e-5)


def test_auc_bad_arguments():
    with pytest.raises(ValueError, match="AUC: curve must be 'ROC' or 'PR'"):
        M.AUC(curve="XYZ")


def test_custom_metric_with_variables_in_compile():
    class CountPositives(M.Metric):
        def __init__(self, name="count_positives", **kwargs):
            super().__init__(name=name, **kwargs)
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")
        def update_state(self, y_true, y_pred, sample_weight=None):
            self.count.assign_add((np.asarray(y_pred) > 0.5).sum())
        def result(self): return self.count
    m = CountPositives()
    m.update_state(None, np.array([[0.9], [0.2], [0.7]]))
    assert float(m.result()) == 2.0
    m.reset_state()
    assert float(m.result()) == 0.0
    import neuralbook as nb
    nb.manual_seed(0)
    yt, yp, _ = _data(5, 64)
    model = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy", metrics=[CountPositives()])
    h = model.fit(yp, yt, epochs=1, batch_size=16, verbose=0).history
    assert isinstance(h["count_positives"][0], float)
    ev = model.evaluate(yp, yt, verbose=0, return_dict=True)
    assert ev["count_positives"] == float((model.predict(yp, verbose=0) > 0.5).sum())
