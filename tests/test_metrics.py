"""neuralbook.metrics against scikit-learn (the oracle): random inputs for every function and option, edge cases,
warnings, error messages, Tensor inputs and the plots."""
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm  # the oracle (scikit-learn is a dependency of neuralbook)
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning as SkWarning

import neuralbook.metrics as M
from neuralbook.autograd import Tensor

AVERAGES = ("binary", "micro", "macro", "weighted", None)
ZERO_DIVISION = ("warn", 0.0, 1.0, np.nan)


def _run(f, *a, **k):
    "Call f; return (result or the ValueError it raised, whether it warned that a metric is undefined)."
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try: out = f(*a, **k)
        except ValueError as e: out = e
    return out, any(issubclass(w.category, (M.UndefinedMetricWarning, SkWarning)) for w in rec)


def _same(a, b, rtol=1e-10, atol=1e-12):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b): _same(x, y, rtol, atol)
    elif a is None or b is None:
        assert a is None and b is None
    elif isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray), (type(a), b)
        assert a.shape == b.shape, (a.shape, b.shape)
        if b.dtype.kind in "biu": assert a.dtype.kind in "biu", (a.dtype, b.dtype)
        np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=rtol, atol=atol, equal_nan=True)
    else:
        assert isinstance(a, float), (type(a), a, b)
        np.testing.assert_allclose(a, float(b), rtol=rtol, atol=atol, equal_nan=True)


def check(ours, theirs, *a, warn=True, **k):
    "Same result (or both raise ValueError) and, if `warn`, an UndefinedMetricWarning in both or in neither."
    r1, w1 = _run(ours, *a, **k)
    r2, w2 = _run(theirs, *a, **k)
    assert isinstance(r1, ValueError) == isinstance(r2, ValueError), (ours.__name__, k, r1, r2)
    if not isinstance(r1, ValueError): _same(r1, r2)
    if warn: assert w1 == w2, (ours.__name__, k, "warned" if w1 else "silent", "sklearn", w2)
    return r1


def _label_set(rng, K):
    kind = rng.integers(4)
    if kind == 0: return np.arange(K)
    if kind == 1: return np.sort(rng.choice(np.arange(-5, 20), K, replace=False))
    if kind == 2: return np.array(["ant", "bee", "cat", "dog", "eel", "fox"][:K])
    return np.array([-1, 1]) if K == 2 else np.arange(1, K + 1)


def random_case(rng, K=None, n=None):
    "Random labels with K classes, y_pred correlated with y_true, sometimes a missing class, sometimes weights."
    K = K or int(rng.integers(2, 6))
    n = n or int(rng.integers(1, 40))
    labs = _label_set(rng, K)
    t = rng.integers(0, K, n)
    p = np.where(rng.random(n) < 0.5, t, rng.integers(0, K, n))
    if rng.random() < 0.3: p[p == rng.integers(K)] = rng.integers(K)   # some class is (likely) never predicted
    w = None if rng.random() < 0.6 else (rng.integers(0, 4, n) if rng.random() < 0.5 else rng.random(n) * 3)
    return labs[t], labs[p], labs, w


# ---------------------------------------------------------------- classification: random cases vs sklearn
def test_accuracy_and_confusion_matrix_random():
    rng = np.random.default_rng(0)
    for _ in range(300):
        t, p, labs, w = random_case(rng)
        for normalize in (True, False):
            check(M.accuracy_score, skm.accuracy_score, t, p, normalize=normalize, sample_weight=w)
        for norm in (None, "true", "pred", "all"):
            check(M.confusion_matrix, skm.confusion_matrix, t, p, sample_weight=w, normalize=norm, warn=False)
        sub = rng.permutation(labs)[: rng.integers(1, len(labs) + 1)]        # reordered subset, maybe
        extra = np.r_[sub, labs[-1:]] if labs[-1] not in sub else sub
        for labels in (sub, extra):
            check(M.confusion_matrix, skm.confusion_matrix, t, p, labels=labels, sample_weight=w, warn=False)


def test_confusion_matrix_dtypes():
    cm = M.confusion_matrix([0, 1, 1], [0, 1, 0])
    assert cm.dtype == np.int64 and cm.tolist() == [[1, 0], [1, 1]]
    assert M.confusion_matrix([0, 1, 1], [0, 1, 0], sample_weight=[1, 2, 3]).dtype == np.int64
    assert M.confusion_matrix([0, 1, 1], [0, 1, 0], sample_weight=[0.5, 2, 3]).dtype == np.float64


@pytest.mark.parametrize("average", AVERAGES)
def test_prf_random(average):
    rng = np.random.default_rng(1)
    fns = [(M.precision_score, skm.precision_score), (M.recall_score, skm.recall_score), (M.f1_score, skm.f1_score)]
    for i in range(120):
        t, p, labs, w = random_case(rng, K=2 if i % 2 and average == "binary" else None)
        zd = ZERO_DIVISION[i % 4]
        pos = {"pos_label": labs[-1]} if average == "binary" else {}
        labels = {"labels": rng.permutation(labs)[: rng.integers(1, len(labs) + 1)]} if i % 3 == 0 else {}
        for ours, theirs in fns:
            check(ours, theirs, t, p, average=average, sample_weight=w, zero_division=zd, **pos, **labels)
        beta = [0.0, 0.5, 2.0, np.inf][i % 4]
        check(M.fbeta_score, skm.fbeta_score, t, p, beta=beta, average=average, sample_weight=w, zero_division=zd,
              **pos, **labels)
        check(M.precision_recall_fscore_support, skm.precision_recall_fscore_support, t, p, beta=beta,
              average=average, sample_weight=w, zero_division=zd, **pos, **labels)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30),
       st.sampled_from(AVERAGES), st.sampled_from(ZERO_DIVISION), st.floats(0, 4))
def test_prf_hypothesis(pairs, average, zero_division, beta):
    t, p = map(np.array, zip(*pairs))
    check(M.fbeta_score, skm.fbeta_score, t, p, beta=beta, average=average, zero_division=zero_division)
    check(M.precision_recall_fscore_support, skm.precision_recall_fscore_support, t, p, average=average,
          zero_division=zero_division)


def test_prf_edge_cases():
    cases = [([0, 0, 0], [0, 0, 0]),              # a single class, positive class 1 absent everywhere
             ([1, 1, 1], [1, 1, 1]),              # a single class, all correct
             ([0, 1, 2, 2], [1, 2, 0, 0]),        # everything wrong
             ([0, 1, 2, 2], [0, 1, 1, 1]),        # class 2 never predicted
             ([0, 0, 1, 1], [2, 2, 2, 2]),        # class 2 never true, others never predicted
             (["a", "a"], ["a", "a"]),            # strings, pos_label=1 is not a label but only one class
             ([True, False, True], [True, True, False])]
    for t, p in cases:
        for average in AVERAGES:
            for zd in ZERO_DIVISION:
                for ours, theirs in [(M.precision_score, skm.precision_score), (M.recall_score, skm.recall_score),
                                     (M.f1_score, skm.f1_score)]:
                    check(ours, theirs, t, p, average=average, zero_division=zd)
                if not isinstance(t[0], str):
                    check(M.precision_score, skm.precision_score, t, p, average=average, zero_division=zd,
                          labels=[0, 5])


def test_prf_default_zero_division_warns_and_returns_zero():
    with pytest.warns(M.UndefinedMetricWarning, match=r"precision_score: precision is ill-defined.*zero_division"):
        assert M.precision_score([0, 1, 1], [0, 0, 0]) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.precision_score([0, 1, 1], [0, 0, 0], zero_division=1.0) == 1.0
        assert np.isnan(M.precision_score([0, 1, 1], [0, 0, 0], zero_division=np.nan))
        assert M.precision_score([0, 1, 1], [0, 0, 0], zero_division=0.0) == 0.0


def test_micro_equals_accuracy_for_multiclass():
    rng = np.random.default_rng(2)
    t, p = rng.integers(0, 5, 100), rng.integers(0, 5, 100)
    acc = M.accuracy_score(t, p)
    for f in (M.precision_score, M.recall_score, M.f1_score):
        assert f(t, p, average="micro") == pytest.approx(acc)


def test_classification_report_random():
    rng = np.random.default_rng(3)
    for i in range(80):
        t, p, labs, w = random_case(rng)
        kw = {"digits": int(rng.integers(1, 5)), "zero_division": ZERO_DIVISION[i % 4], "sample_weight": w}
        if i % 3 == 0: kw["labels"] = rng.permutation(labs)[: rng.integers(1, len(labs) + 1)]
        if i % 5 == 0:
            n = len(kw.get("labels", np.unique(np.r_[t, p])))
            kw["target_names"] = [f"class number {j}" for j in range(n)]
        ours, _ = _run(M.classification_report, t, p, **kw)
        theirs, _ = _run(skm.classification_report, t, p, **kw)
        # Two sklearn artefacts we do not copy: float supports can differ in the last bit (it computes tp + (true -
        # tp)), and supports print as floats ("1.0") when not a single prediction is right.
        if (w is None or w.dtype.kind == "i") and (t == p).any():
            assert ours == theirs, (kw, ours, theirs)
        d1, _ = _run(M.classification_report, t, p, output_dict=True, **kw)
        d2, _ = _run(skm.classification_report, t, p, output_dict=True, **kw)
        assert list(d1) == list(d2)
        for k in d2:
            if isinstance(d2[k], dict):
                assert list(d1[k]) == list(d2[k])
                for h in d2[k]: _same(d1[k][h], d2[k][h])
            else: _same(d1[k], d2[k])


def test_classification_report_strings_exact():
    t = ["cat", "dog", "cat", "bird", "dog", "dog"]
    p = ["cat", "cat", "cat", "dog", "dog", "bird"]
    assert M.classification_report(t, p, digits=3) == skm.classification_report(t, p, digits=3)
    assert M.classification_report(t, p, labels=["dog", "cat"]) == skm.classification_report(t, p, labels=["dog", "cat"])


# ---------------------------------------------------------------- ROC, AUC, top-k
def _binary_case(rng):
    n = int(rng.integers(2, 50))
    t = rng.integers(0, 2, n)
    s = np.round(rng.random(n) + 0.3 * t, int(rng.integers(1, 4)))   # rounding makes ties
    w = None if rng.random() < 0.5 else np.round(rng.random(n) * 2, 1)  # zeros happen
    return t, s, w


def test_roc_curve_random():
    rng = np.random.default_rng(4)
    for i in range(300):
        t, s, w = _binary_case(rng)
        labs = [np.array([0, 1]), np.array([-1, 1]), np.array(["neg", "pos"]), np.array([3, 7])][i % 4]
        pos = {} if i % 4 < 2 else {"pos_label": labs[1]}
        for drop in (True, False):
            r = check(M.roc_curve, skm.roc_curve, labs[t], s, sample_weight=w, drop_intermediate=drop, **pos)
            if not isinstance(r, ValueError): assert r[2].dtype == np.float64 and r[2][0] == np.inf


def test_roc_curve_needs_pos_label_for_other_labels():
    with pytest.raises(ValueError, match=r"roc_curve: y_true takes values \['a', 'b'\].*pos_label"):
        M.roc_curve(["a", "b"], [0.1, 0.9])
    fpr, tpr, _ = M.roc_curve(["a", "b", "b"], [0.1, 0.9, 0.4], pos_label="b")
    assert fpr.tolist() == [0, 0, 0, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    with pytest.warns(M.UndefinedMetricWarning, match="no negative samples"):
        fpr, _, _ = M.roc_curve([1, 1], [0.2, 0.3])
    assert np.isnan(fpr).all()


def test_roc_auc_binary_random():
    rng = np.random.default_rng(5)
    for i in range(300):
        t, s, w = _binary_case(rng)
        if len(np.unique(t)) < 2: continue
        labs = [np.array([0, 1]), np.array(["no", "yes"]), np.array([-3, 8])][i % 3]
        max_fpr = [None, 1, 0.3, 0.75][i % 4]
        check(M.roc_auc_score, skm.roc_auc_score, labs[t], s, sample_weight=w, max_fpr=max_fpr)


def test_roc_auc_is_probability_positive_outranks_negative():
    rng = np.random.default_rng(6)
    t = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + t, 1)
    sp, sn = s[t == 1], s[t == 0]
    pairs = ((sp[:, None] > sn) + 0.5 * (sp[:, None] == sn)).mean()
    assert M.roc_auc_score(t, s) == pytest.approx(pairs, abs=1e-12)
    fpr, tpr, _ = M.roc_curve(t, s, drop_intermediate=False)
    assert M.auc(fpr, tpr) == pytest.approx(pairs, abs=1e-12)


def test_roc_auc_accepts_predict_proba_and_tensors():
    t = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.2, 0.7, 0.6, 0.4, 0.3])
    proba = np.c_[1 - p1, p1]
    expected = skm.roc_auc_score(t, p1)
    assert M.roc_auc_score(t, proba) == pytest.approx(expected)
    assert M.roc_auc_score(Tensor(t), Tensor(p1.astype(np.float32))) == pytest.approx(expected)


def _multiclass_case(rng, K):
    n = int(rng.integers(K * 3, 80))
    t = np.r_[np.arange(K), rng.integers(0, K, n - K)]          # every class present
    P = rng.dirichlet(np.ones(K), n) + 0.5 * np.eye(K)[t]
    P = np.round(P / P.sum(1, keepdims=True), 2)
    P[:, -1] = 1 - P[:, :-1].sum(1)                               # rows sum to 1 exactly-ish, with ties
    return t, P


def test_roc_auc_multiclass_random():
    rng = np.random.default_rng(7)
    for i in range(120):
        K = int(rng.integers(3, 6))
        t, P = _multiclass_case(rng, K)
        labs = [np.arange(K), np.array(["ant", "bee", "cat", "dog", "eel"][:K]), np.arange(K) * 10 - 5][i % 3]
        w = None if i % 2 else rng.random(len(t))
        for average in ("macro", "weighted", "micro", None):
            check(M.roc_auc_score, skm.roc_auc_score, labs[t], P, multi_class="ovr", average=average,
                  sample_weight=w)
        for average in ("macro", "weighted"):
            check(M.roc_auc_score, skm.roc_auc_score, labs[t], P, multi_class="ovo", average=average)
        check(M.roc_auc_score, skm.roc_auc_score, labs[t], P, multi_class="ovr", labels=labs)


def test_roc_auc_errors():
    with pytest.raises(ValueError, match=r"roc_auc_score: only one class \(1\) is present in y_true"):
        M.roc_auc_score([1, 1, 1], [0.1, 0.2, 0.3])
    P = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.8, 0.1]])
    with pytest.raises(ValueError, match="multi_class='ovr'"):
        M.roc_auc_score([2, 0, 1], P)
    with pytest.raises(ValueError, match="sum to 1"):
        M.roc_auc_score([2, 0, 1], P * 2, multi_class="ovr")
    with pytest.raises(ValueError, match="y_true has 2 classes but y_score scores 3"):
        M.roc_auc_score([0, 0, 1], P, multi_class="ovr")
    with pytest.raises(ValueError, match=r"only one class is present in y_true == 2"):
        M.roc_auc_score([0, 0, 1], np.c_[P, np.zeros(3)], multi_class="ovr", labels=[0, 1, 2, 3])


def test_top_k_random():
    rng = np.random.default_rng(8)
    for i in range(150):
        K = int(rng.integers(3, 7))
        t, P = _multiclass_case(rng, K)
        P = np.round(P, 1)                                            # many ties
        w = None if i % 2 else rng.random(len(t))
        for k in range(1, K + 1):
            for normalize in (True, False):
                check(M.top_k_accuracy_score, skm.top_k_accuracy_score, t, P, k=k, normalize=normalize,
                      sample_weight=w)
        missing = t[t != K - 1]                                       # last class never true: needs labels=
        check(M.top_k_accuracy_score, skm.top_k_accuracy_score, missing, P[t != K - 1], k=2, labels=np.arange(K))
    for i in range(100):                                              # binary scores, probabilities or not
        t, s, w = _binary_case(rng)
        if len(np.unique(t)) < 2: continue
        s = s if i % 2 else s * 4 - 2
        for k in (1, 2):
            check(M.top_k_accuracy_score, skm.top_k_accuracy_score, t, s, k=k, sample_weight=w)


# ---------------------------------------------------------------- regression
@pytest.mark.parametrize("ours,theirs", [(M.mean_squared_error, skm.mean_squared_error),
                                         (M.mean_absolute_error, skm.mean_absolute_error),
                                         (M.r2_score, skm.r2_score)])
def test_regression_random(ours, theirs):
    rng = np.random.default_rng(9)
    for i in range(150):
        n, D = int(rng.integers(1, 30)), int(rng.integers(1, 4))
        t = rng.normal(size=(n, D)) if i % 3 else rng.normal(size=n)
        p = t + rng.normal(size=t.shape) * rng.random()
        if i % 7 == 0: t[:] = 1.5                                     # constant target: R² has 0 in the denominator
        if i % 11 == 0: p = t.copy()
        w = None if i % 2 else rng.random(n)
        modes = ["raw_values", "uniform_average"] + (["variance_weighted"] if ours is M.r2_score else [])
        if t.ndim == 2 and D > 1: modes.append(rng.random(D))
        for mo in modes:
            check(ours, theirs, t, p, sample_weight=w, multioutput=mo)
        if ours is M.r2_score:
            check(ours, theirs, t, p, sample_weight=w, force_finite=False)


# ---------------------------------------------------------------- inputs and errors
def test_tensor_and_list_inputs():
    t, p = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    for conv in (list, np.array, lambda a: Tensor(np.array(a)), lambda a: Tensor(np.array(a, dtype=np.float32))):
        assert M.accuracy_score(conv(t), conv(p)) == skm.accuracy_score(t, p)
        assert (M.confusion_matrix(conv(t), conv(p)) == skm.confusion_matrix(t, p)).all()
        assert M.f1_score(conv(t), conv(p), average="macro") == pytest.approx(skm.f1_score(t, p, average="macro"))
    yr, pr = [1.0, 2.0, 3.5], [1.5, 2.0, 3.0]
    assert M.r2_score(Tensor(np.array(yr)), Tensor(np.array(pr))) == pytest.approx(skm.r2_score(yr, pr))
    assert M.accuracy_score(np.array([[0], [1]]), [0, 0]) == 0.5                 # column vectors are flattened


@pytest.mark.parametrize("f", [M.accuracy_score, M.confusion_matrix, M.precision_score, M.recall_score, M.f1_score,
                               M.classification_report, M.roc_curve, M.roc_auc_score, M.top_k_accuracy_score,
                               M.mean_squared_error, M.mean_absolute_error, M.r2_score])
def test_empty_and_length_mismatch(f):
    with pytest.raises(ValueError, match=rf"^{f.__name__}: y_true is empty"):
        f([], [])
    with pytest.raises(ValueError, match=rf"^{f.__name__}: inconsistent numbers of samples: y_true has 3, \w+ has 2"):
        f([0, 1, 1], [0.2, 0.9] if f.__name__ in ("roc_curve", "roc_auc_score", "top_k_accuracy_score") else [0, 1])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"accuracy_score: y_pred holds continuous values \(e.g. 0.2\)"):
        M.accuracy_score([0, 1], [0.2, 0.9])
    with pytest.raises(ValueError, match=r"accuracy_score: y_pred must be 1-D.*shape \(2, 3\).*argmax"):
        M.accuracy_score([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="f1_score: y_true holds string labels but y_pred holds number labels"):
        M.f1_score(["a", "b"], [0, 1])
    with pytest.raises(ValueError, match=r"precision_score: the targets have 3 classes \[0, 1, 2\] but average='binary'"):
        M.precision_score([0, 1, 2], [0, 1, 1])
    with pytest.raises(ValueError, match=r"recall_score: pos_label=1 is not a valid label.*\['a', 'b'\]"):
        M.recall_score(["a", "b"], ["a", "a"])
    with pytest.raises(ValueError, match="f1_score: average='mean' must be one of"):
        M.f1_score([0, 1], [0, 1], average="mean")
    with pytest.raises(ValueError, match="multilabel"):
        M.f1_score([0, 1], [0, 1], average="samples")
    with pytest.raises(ValueError, match="f1_score: zero_division=2 must be"):
        M.f1_score([0, 1], [0, 1], zero_division=2)
    with pytest.raises(ValueError, match="fbeta_score: beta=-1 must be a number >= 0"):
        M.fbeta_score([0, 1], [0, 1], beta=-1)
    with pytest.raises(ValueError, match="confusion_matrix: normalize='rows'"):
        M.confusion_matrix([0, 1], [0, 1], normalize="rows")
    with pytest.raises(ValueError, match=r"confusion_matrix: none of labels=\[5, 6\] occurs in y_true"):
        M.confusion_matrix([0, 1], [0, 1], labels=[5, 6])
    with pytest.raises(ValueError, match=r"f1_score: labels=\[0, 5\] and the data's labels \['a', 'b'\] are of diff"):
        M.f1_score(["a", "b"], ["a", "a"], labels=[0, 5], average="macro")   # sklearn silently scores 0.0
    with pytest.raises(ValueError, match="'labels' should contain at least one label"):
        M.confusion_matrix([0, 1], [0, 1], labels=[])
    with pytest.raises(ValueError, match="mean_squared_error: y_true has 2 outputs but y_pred has 3"):
        M.mean_squared_error(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="mean_absolute_error: multioutput='variance_weighted' must be one of"):
        M.mean_absolute_error([1.0, 2.0], [1.0, 2.0], multioutput="variance_weighted")
    with pytest.raises(ValueError, match="r2_score: y_pred contains NaN or infinity"):
        M.r2_score([1.0, 2.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="top_k_accuracy_score: k=0 must be an integer >= 1"):
        M.top_k_accuracy_score([0, 1], [0.2, 0.9], k=0)
    with pytest.raises(TypeError, match="accuracy_score: y_true is None"):
        M.accuracy_score(None, [1])
    with pytest.warns(UserWarning, match="pos_label=2 is ignored when average='macro'"):
        M.f1_score([0, 1, 2], [0, 1, 1], average="macro", pos_label=2)


# ---------------------------------------------------------------- plots
def test_plots_return_axes():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    cm = M.confusion_matrix([0, 1, 2, 2, 1], [0, 2, 2, 2, 1])
    ax = M.plot_confusion_matrix(cm, labels=["a", "b", "c"])
    assert isinstance(ax, Axes) and len(ax.texts) == 9 and ax.texts[0].get_text() == "1"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    ax = M.plot_confusion_matrix(cm, normalize="true")
    assert ax.texts[1].get_text() == "0.00" and ax.texts[5].get_text() == "0.50"
    with pytest.raises(ValueError, match="plot_confusion_matrix: cm must be a square numeric matrix"):
        M.plot_confusion_matrix(np.zeros((2, 3)))
    _, axs = plt.subplots(1, 2)
    ax = M.plot_roc_curve([0, 1, 1, 0], [0.1, 0.8, 0.4, 0.5], ax=axs[0])
    assert ax is axs[0] and len(ax.lines) == 2 and "AUC = 0.750" in ax.get_legend().get_texts()[0].get_text()
    P = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.3, 0.3, 0.4]])
    ax = M.plot_roc_curve([0, 1, 2, 2], P, ax=axs[1])
    assert len(ax.lines) == 4
    plt.close("all")
