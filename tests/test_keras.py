"""Chapter 11: the Keras-style API — layers that build lazily, functional graphs, compile/fit/evaluate/predict on the
Learner, losses/metrics/optimisers with Keras' conventions, callbacks, safe saving, clear errors, and the tutorial
program that must run unchanged with `import neuralbook as tf`."""
import json
import math
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import keras
from neuralbook.backend import default_generator

ROOT = Path(__file__).resolve().parents[1]

TUTORIAL = """\
import numpy as np
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
data = load_iris()
X, y = data.data, data.target
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
import tensorflow as tf
input_layer = tf.keras.Input(shape=(4,))
hidden_layer = tf.keras.layers.Dense(10, activation='relu')(input_layer)
output_layer = tf.keras.layers.Dense(3, activation='softmax')(hidden_layer)
model = tf.keras.Model(inputs=input_layer, outputs=output_layer)
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
history = model.fit(X_train, y_train, epochs=100, batch_size=32, validation_split=0.2)
loss, accuracy = model.evaluate(X_test, y_test)
print(f'Loss: {loss:.4f}, Accuracy: {accuracy:.4f}')
"""
PROGRAM = TUTORIAL.replace("import tensorflow as tf", "import neuralbook as tf")
RESULT = re.compile(r"^Loss: (\d+\.\d{4}), Accuracy: (\d\.\d{4})$", re.M)


@pytest.fixture(autouse=True)
def _fresh():
    "Every test starts from seed 0 and fresh layer names, and leaves the CPU as the default device."
    state = default_generator.get_state()
    nb.manual_seed(0)
    keras.backend.clear_session()
    yield
    keras.config.set_device("cpu")
    default_generator.set_state(state)


def iris_split():
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split
    X, y = load_iris(return_X_y=True)
    return train_test_split(X, y, test_size=0.2, random_state=42)


def iris_model(hidden=10):
    inp = keras.Input(shape=(4,))
    h = keras.layers.Dense(hidden, activation="relu")(inp)
    out = keras.layers.Dense(3, activation="softmax")(h)
    return keras.Model(inputs=inp, outputs=out)


# ---------------------------------------------------------------------------------------------------------------
# The tutorial program
# ---------------------------------------------------------------------------------------------------------------

def _keras_in_package_init() -> bool:
    return "keras" in (ROOT / "neuralbook" / "__init__.py").read_text()


@pytest.mark.xfail(not _keras_in_package_init(), strict=True,
                   reason="`import neuralbook as tf; tf.keras` needs `from neuralbook import keras` in nbs/index.ipynb")
def test_tutorial_runs_verbatim_as_a_script():
    "Only the import line changes; run as a separate program, it prints 100 epochs and Keras' result line."
    r = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert RESULT.search(r.stdout), r.stdout[-500:]
    assert r.stdout.count("Epoch ") == 100 and "Epoch 100/100" in r.stdout
    assert "3/3" in r.stdout and "val_accuracy" in r.stdout


def _run_tutorial(seed=0):
    "Execute the program in this process (import replaced; tf.keras bound explicitly), return namespace and time."
    nb.manual_seed(seed)
    keras.backend.clear_session()
    src = PROGRAM.replace("import neuralbook as tf", "import neuralbook as tf; tf.keras = __import__('neuralbook.keras').keras")
    ns = {}
    iris_split()                                   # import scikit-learn outside the timed region
    t0 = time.perf_counter()
    exec(compile(src, "tutorial", "exec"), ns)
    return ns, time.perf_counter() - t0


def test_tutorial_is_fast_and_keras_shaped(capsys):
    ns, seconds = _run_tutorial()
    out = capsys.readouterr().out
    assert seconds < 2.0, f"the tutorial took {seconds:.2f} s"
    assert RESULT.search(out)
    h = ns["history"].history
    assert list(h) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(v) == 100 and all(isinstance(x, float) for x in v) for v in h.values())
    assert h["loss"][-1] < h["loss"][0]
    assert isinstance(ns["loss"], float) and 0 <= ns["accuracy"] <= 1


def test_tutorial_computes_exactly_what_keras_computes():
    """Oracle: the same initial weights and the same shuffles in PyTorch (Adam 1e-3, ε=1e-7, cross-entropy on the
    softmax's logits, the first 96 training samples, batches of 32) give the same test loss and accuracy."""
    torch = pytest.importorskip("torch")
    import copy
    X_train, X_test, y_train, y_test = iris_split()
    model = iris_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    w0 = model.get_weights()
    gen = copy.deepcopy(default_generator)     # the permutations fit is about to draw
    model.fit(X_train, y_train, epochs=100, batch_size=32, validation_split=0.2, verbose=0)
    loss, acc = model.evaluate(X_test, y_test, verbose=0)
    W1, b1, W2, b2 = [torch.tensor(w, requires_grad=True) for w in w0]
    opt = torch.optim.Adam([W1, b1, W2, b2], lr=1e-3, eps=1e-7)
    Xt, yt = torch.tensor(X_train[:96], dtype=torch.float32), torch.tensor(y_train[:96])
    net = lambda x: torch.relu(x @ W1 + b1) @ W2 + b2
    for _ in range(100):
        perm = gen.permutation(96)
        for k in range(0, 96, 32):
            idx = torch.tensor(perm[k:k + 32])
            l = torch.nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
            opt.zero_grad(); l.backward(); opt.step()
    with torch.no_grad():
        z = net(torch.tensor(X_test, dtype=torch.float32))
        t_loss = torch.nn.functional.cross_entropy(z, torch.tensor(y_test)).item()
        t_acc = float((z.argmax(1).numpy() == y_test).mean())
    assert loss == pytest.approx(t_loss, abs=2e-4) and acc == t_acc


def test_tutorial_is_at_least_as_good_as_keras_3_over_seeds():
    """The program verbatim (only the import changed), seeded with `keras.utils.set_random_seed(s)` for s in 0..11.
    Its recipe (300 Adam steps at 1e-3 on unscaled iris) is under-trained, so single seeds vary; the acceptance is
    Keras 3's own record over the same seeds (torch backend: 5 of 12 reach 0.9, median 0.883): at least 5 of 12
    runs reach >= 0.9 test accuracy and the median is >= 0.88."""
    import contextlib
    import io
    src = PROGRAM.replace("import neuralbook as tf",
                          "import neuralbook as tf; tf.keras = __import__('neuralbook.keras').keras")
    accs = []
    for seed in range(12):
        keras.utils.set_random_seed(seed)
        keras.backend.clear_session()
        ns = {}
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(compile(src, "tutorial", "exec"), ns)
        assert RESULT.search(out.getvalue())
        accs.append(ns["accuracy"])
    reached = sum(a >= 0.9 for a in accs)
    assert reached >= 5 and np.median(accs) >= 0.88, [round(a, 4) for a in accs]


def test_tutorial_with_a_larger_learning_rate_is_reliable():
    "The program is under-trained (300 Adam steps of ~1e-3); with learning_rate=1e-2 every seed reaches >= 0.9."
    X_train, X_test, y_train, y_test = iris_split()
    for seed in range(4):
        nb.manual_seed(seed)
        m = iris_model()
        m.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        m.fit(X_train, y_train, epochs=100, batch_size=32, validation_split=0.2, verbose=0)
        assert m.evaluate(X_test, y_test, verbose=0)[1] >= 0.9, seed


def test_digits_mlp_reaches_96_percent_in_under_20_s():
    from sklearn.model_selection import train_test_split
    from neuralbook.datasets import load_digits
    X, y = load_digits()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    t0 = time.perf_counter()
    model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(Xtr, ytr, epochs=50, batch_size=32, validation_split=0.1, verbose=0)
    acc = model.evaluate(Xte, yte, verbose=0, return_dict=True)["accuracy"]
    assert time.perf_counter() - t0 < 20
    assert acc >= 0.96


def test_two_fits_with_the_same_seed_are_identical():
    X_train, _, y_train, _ = iris_split()
    runs = []
    for _ in range(2):
        nb.manual_seed(123)
        m = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.3),
                              keras.layers.Dense(3, activation="softmax")])
        m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        h = m.fit(X_train, y_train, epochs=5, validation_split=0.2, verbose=0)
        runs.append((h.history, m.get_weights()))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


# ---------------------------------------------------------------------------------------------------------------
# Layers and the graph
# ---------------------------------------------------------------------------------------------------------------

def test_dense_builds_lazily_with_keras_layout_and_defaults():
    d = keras.layers.Dense(5)
    assert not d.built and d.weights == []
    y = d(np.ones((2, 3)))
    assert d.built and d.kernel.shape == (3, 5) and d.bias.shape == (5,)
    assert y.shape == (2, 5) and y.dtype == np.float32            # float64 input cast to float32
    assert np.all(d.bias.numpy() == 0)
    lim = math.sqrt(6 / (3 + 5))                                     # glorot_uniform
    assert np.abs(d.kernel.numpy()).max() <= lim
    assert [w.shape for w in d.get_weights()] == [(3, 5), (5,)]
    with pytest.raises(ValueError, match=r"Dense 'dense' is incompatible: expected shape \(\.\.\., 3\), got \(2, 4\)"):
        d(np.ones((2, 4)))


def test_dense_matches_torch_linear_forward_and_backward():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    d = keras.layers.Dense(3, activation="tanh", dtype="float64")
    d.build((None, 4)); d.built = True
    d.set_weights([W, b])
    xt = nb.tensor(x, requires_grad=True)
    y = d(xt)
    y.sum().backward()
    tx = torch.tensor(x, requires_grad=True)
    lin = torch.nn.Linear(4, 3).double()
    with torch.no_grad(): lin.weight.copy_(torch.tensor(W.T)); lin.bias.copy_(torch.tensor(b))
    ty = torch.tanh(lin(tx)); ty.sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(d.kernel.grad.numpy(), lin.weight.grad.numpy().T, rtol=1e-12)
    np.testing.assert_allclose(d.bias.grad.numpy(), lin.bias.grad.numpy(), rtol=1e-12)


def test_dense_gradcheck_float64():
    d = keras.layers.Dense(3, activation="sigmoid", dtype="float64")
    x = nb.tensor(np.random.default_rng(1).standard_normal((4, 2)), requires_grad=True)
    d(x)
    assert nb.gradcheck(lambda a, k, b: F_dense(a, k, b), x, d.kernel, d.bias)


def F_dense(a, k, b):
    from neuralbook import functional as F
    return F.sigmoid(a @ k + b)


def test_initializers_follow_keras_fans_and_variances():
    shape = (400, 600)
    for name, var in [("glorot_uniform", 2 / 1000), ("glorot_normal", 2 / 1000), ("he_normal", 2 / 400),
                      ("he_uniform", 2 / 400), ("lecun_normal", 1 / 400), ("lecun_uniform", 1 / 400)]:
        w = keras.initializers.get(name)(shape)
        assert w.dtype == np.float32 and w.shape == shape
        assert w.var() == pytest.approx(var, rel=0.03), name
    tn = keras.initializers.TruncatedNormal(stddev=1.0, seed=3)((10000,))
    assert np.abs(tn).max() <= 2.0
    assert np.array_equal(tn, keras.initializers.TruncatedNormal(stddev=1.0, seed=3)((10000,)))   # seeded: repeatable
    conv = keras.initializers.HeUniform()((3, 3, 8, 16))                                          # fan_in = 3·3·8
    assert np.abs(conv).max() <= math.sqrt(6 / 72)
    with pytest.raises(ValueError, match="Unknown initializer 'glorot'; valid names: .*glorot_uniform"):
        keras.layers.Dense(2, kernel_initializer="glorot")


def test_functional_dag_multi_io_topological_order_and_shared_weights():
    a, b = keras.Input(shape=(3,), name="a"), keras.Input(shape=(3,), name="b")
    shared = keras.layers.Dense(4, activation="tanh", name="shared")
    sa, sb = shared(a), shared(b)
    cat = keras.layers.Concatenate(name="cat")([sa, sb])
    o1 = keras.layers.Dense(2, name="o1")(cat)
    o2 = keras.layers.Add(name="add")([sa, sb])
    model = keras.Model(inputs=[a, b], outputs=[o1, o2])
    assert [l.name for l in model.layers] == ["a", "b", "shared", "cat", "o1", "add"]
    order = [n.layer.name for n in model._nodes]
    for n in model._nodes:                                  # every node after the nodes producing its inputs
        for t in n.flat_inputs: assert order.index(t.node.layer.name) <= order.index(n.layer.name)
    assert model.count_params() == 16 + 18 and len(model.weights) == 4   # shared layer counted once
    xa, xb = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    y1, y2 = model([xa, xb])
    assert y1.shape == (5, 2) and y2.shape == (5, 4)
    K, c = shared.kernel.numpy(), shared.bias.numpy()
    np.testing.assert_allclose(y2.numpy(), np.tanh(xa @ K + c) + np.tanh(xb @ K + c), rtol=1e-5)
    y2.sum().backward()                                     # gradients of both uses add up in one Parameter
    ga = ((1 - np.tanh(xa @ K + c) ** 2)).sum(0) + ((1 - np.tanh(xb @ K + c) ** 2)).sum(0)
    np.testing.assert_allclose(shared.bias.grad.numpy(), ga, rtol=1e-5)
    d = model({"a": xa, "b": xb})                           # inputs by name
    np.testing.assert_allclose(d[0].numpy(), y1.numpy())


def test_graph_errors():
    a, b = keras.Input(shape=(3,), name="a"), keras.Input(shape=(3,), name="b")
    s = keras.layers.Add()([a, b])
    with pytest.raises(ValueError, match=r"Graph disconnected: .*input 'b' of shape \(None, 3\).*add it to inputs="):
        keras.Model(inputs=a, outputs=s)
    with pytest.raises(ValueError, match=r"the name\(s\) \['x'\] are used by more than one layer"):
        keras.Model(a, keras.layers.Dense(2, name="x")(keras.layers.Dense(2, name="x")(a)))
    with pytest.raises(TypeError, match="must be KerasTensors"):
        keras.Model(inputs=np.zeros((1, 3)), outputs=s)
    with pytest.raises(TypeError, match="is symbolic"):
        np.asarray(a)
    with pytest.raises(TypeError, match=r"keras.layers.Add\(\)\(\[a, b\]\)"):
        a + b
    with pytest.raises(ValueError, match=r"Concatenate 'concatenate': inputs must agree on every axis except axis -1"):
        keras.layers.Concatenate()([a, keras.Input(shape=(2, 3))])


def test_deep_chain_has_no_recursion_limit():
    x = inp = keras.Input(shape=(2,))
    for _ in range(3000): x = keras.layers.Activation("linear")(x)
    m = keras.Model(inp, x)
    assert len(m.layers) == 3001
    np.testing.assert_array_equal(m(np.ones((1, 2))).numpy(), np.ones((1, 2)))


def test_sequential_add_input_shape_and_lazy_build():
    s = keras.Sequential()
    s.add(keras.Input(shape=(4,)))
    s.add(keras.layers.Dense(6, activation="relu"))
    s.add(keras.layers.Dense(2))
    assert s.built and s.count_params() == 4 * 6 + 6 + 6 * 2 + 2
    s2 = keras.Sequential([keras.layers.Dense(6, input_shape=(4,)), keras.layers.Dense(2)])
    assert s2.built
    s3 = keras.Sequential([keras.layers.Dense(6), keras.layers.Flatten(), keras.layers.Dense(2)])
    assert not s3.built
    with pytest.raises(ValueError, match="is not built yet"):
        s3.layers[0].count_params()
    s3.compile("sgd", "mse")
    s3.fit(np.ones((8, 3)), np.zeros((8, 2)), verbose=0)
    assert s3.built and s3.layers[0].kernel.shape == (3, 6)
    with pytest.raises(ValueError, match=r"expected input shape \(None, 3\), got \(8, 5\)"):
        s3.fit(np.ones((8, 5)), np.zeros((8, 2)), verbose=0)
    with pytest.raises(TypeError, match="expected a keras layer"):
        s3.add(nb.nn.Linear(2, 2))


def test_subclassed_model_trains(tmp_path):
    class TwoLayer(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1, self.d2 = keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)
        def call(self, x): return self.d2(self.d1(x))
    m = TwoLayer()
    assert m.name == "two_layer"
    X = np.random.default_rng(0).standard_normal((64, 3)); y = X @ np.array([1.0, -2.0, 0.5])
    m.compile(keras.optimizers.Adam(0.01), "mse")
    h = m.fit(X, y, epochs=30, verbose=0)
    assert h.history["loss"][-1] < 0.2 * h.history["loss"][0]
    m.save(tmp_path / "two.keras")             # saved by its class name and get_config, as Keras 3 does (issue 20)
    back = keras.saving.load_model(tmp_path / "two.keras", custom_objects={"TwoLayer": TwoLayer})
    assert type(back) is TwoLayer and np.array_equal(back.predict(X, verbose=0), m.predict(X, verbose=0))


# ---------------------------------------------------------------------------------------------------------------
# compile / fit / evaluate / predict
# ---------------------------------------------------------------------------------------------------------------

def test_errors_a_keras_user_meets():
    X_train, X_test, y_train, y_test = iris_split()
    m = iris_model()
    with pytest.raises(RuntimeError, match=r"fit: the model must be compiled first"):
        m.fit(X_train, y_train)
    with pytest.raises(RuntimeError, match=r"evaluate: the model must be compiled first"):
        m.evaluate(X_test, y_test)
    with pytest.raises(ValueError, match="Unknown optimizer 'adamm'; valid names: adagrad, adam, adamw, nadam, rmsprop, sgd"):
        m.compile(optimizer="adamm", loss="mse")
    with pytest.raises(ValueError, match="Unknown loss 'sparse_crossentropy'; valid names: .*sparse_categorical_crossentropy"):
        m.compile(optimizer="adam", loss="sparse_crossentropy")
    with pytest.raises(ValueError, match="Unknown metric 'accuracyy'; valid names: accuracy"):
        m.compile(optimizer="adam", loss="mse", metrics=["accuracyy"])
    with pytest.raises(ValueError, match="Unknown activation 'rellu'; valid names: .*relu"):
        keras.layers.Dense(3, activation="rellu")
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with pytest.raises(ValueError, match=re.escape("expected input shape (None, 4), got (120, 5)")):
        m.fit(np.zeros((120, 5)), y_train, verbose=0)
    with pytest.raises(ValueError, match=r"x and y must have the same number of samples"):
        m.fit(X_train, y_train[:10], verbose=0)
    with pytest.raises(ValueError, match="verbose must be 'auto', 0"):
        m.fit(X_train, y_train, verbose=3)
    with pytest.raises(ValueError, match=r"sparse_categorical_crossentropy: integer labels of shape \(32, 3\) do not "
                                         r"match predictions of shape \(32, 3\).*one-hot targets need categorical"):
        m.fit(X_train, np.eye(3)[y_train], verbose=0)


def test_validation_split_takes_the_last_fraction_before_shuffling():
    X_train, _, y_train, _ = iris_split()
    m = iris_model()
    m.compile(keras.optimizers.SGD(learning_rate=0.0), "sparse_categorical_crossentropy", ["accuracy"])
    h = m.fit(X_train, y_train, epochs=1, validation_split=0.25, verbose=0)
    last = m.evaluate(X_train[90:], y_train[90:], verbose=0)
    assert h.history["val_loss"][0] == pytest.approx(last[0], rel=1e-6)
    assert h.history["val_accuracy"][0] == pytest.approx(last[1])
    assert h.history["loss"][0] == pytest.approx(m.evaluate(X_train[:90], y_train[:90], verbose=0)[0], rel=1e-6)
    h2 = m.fit(X_train, y_train, epochs=1, validation_split=0.25, validation_data=(X_train[:7], y_train[:7]),
               verbose=0)                                     # validation_data overrides the split
    assert h2.history["val_loss"][0] == pytest.approx(m.evaluate(X_train[:7], y_train[:7], verbose=0)[0], rel=1e-6)
    with pytest.raises(ValueError, match="validation_split must be in"):
        m.fit(X_train, y_train, validation_split=1.5, verbose=0)


def test_training_metrics_are_means_over_the_epochs_batches():
    "With lr = 0 the model is fixed, so the epoch's running accuracy equals the accuracy on the training split."
    X_train, _, y_train, _ = iris_split()
    m = iris_model()
    m.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy", ["accuracy"])
    h = m.fit(X_train, y_train, epochs=2, batch_size=50, verbose=0)   # batches of 50, 50, 20
    ev = m.evaluate(X_train, y_train, verbose=0, return_dict=True)
    assert h.history["accuracy"] == [pytest.approx(ev["accuracy"])] * 2
    assert h.history["loss"][0] == pytest.approx(ev["loss"], rel=1e-6)
    from sklearn.metrics import accuracy_score
    assert ev["accuracy"] == pytest.approx(accuracy_score(y_train, m.predict(X_train, verbose=0).argmax(1)))


@pytest.mark.parametrize("task", ["labels", "label_column", "float_labels", "one_hot", "one_hot_int",
                                  "binary", "binary_column", "binary_int"])
def test_fit_reports_what_evaluate_and_sklearn_compute_for_every_target_layout(task):
    """lr = 0 fixes the model, so fit's running loss and accuracy (batches of 7: the last one smaller) must equal
    evaluate's and scikit-learn's, whichever path the targets take (fused loss and counted accuracy on logits, or
    Keras' general conversions)."""
    from sklearn.metrics import accuracy_score
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    binary = task.startswith("binary")
    y = {"labels": labels, "label_column": labels[:, None], "float_labels": labels.astype(np.float32),
         "one_hot": np.eye(3, dtype=np.float32)[labels], "one_hot_int": np.eye(3, dtype=np.int64)[labels],
         "binary": (labels > 0).astype(np.float32), "binary_column": (labels[:, None] > 0).astype(np.float32),
         "binary_int": (labels > 0).astype(np.int64)}[task]
    m = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(5, activation="relu"),
                          keras.layers.Dense(1 if binary else 3, activation="sigmoid" if binary else "softmax")])
    loss = "binary_crossentropy" if binary else "categorical_crossentropy" if "one_hot" in task else \
        "sparse_categorical_crossentropy"
    m.compile(keras.optimizers.SGD(0.0), loss, ["accuracy"])
    h = m.fit(X, y, epochs=1, batch_size=7, verbose=0)
    ev = m.evaluate(X, y, verbose=0, return_dict=True)
    assert m._plan.fuse == (0,) and list(h.history) == ["loss", "accuracy"]
    assert h.history["loss"][0] == pytest.approx(ev["loss"], rel=1e-6)
    p = m.predict(X, verbose=0)
    hat = (p[:, 0] > 0.5).astype(int) if binary else p.argmax(1)
    truth = (labels > 0).astype(int) if binary else labels
    assert h.history["accuracy"][0] == ev["accuracy"] == pytest.approx(accuracy_score(truth, hat))
    q = p[:, 0] if binary else p[np.arange(40), labels]
    t = (labels > 0) if binary else np.ones(40, bool)
    ref = -np.mean(np.where(t, np.log(q), np.log1p(-q)))                         # the cross-entropy by hand
    assert ev["loss"] == pytest.approx(ref, rel=1e-5)


def test_loss_objects_on_logits_take_the_fused_path_with_the_same_value_and_gradient():
    "The one-call fused path of a from_logits loss equals Keras' general path (per-sample losses, then the mean)."
    rng = np.random.default_rng(0)
    L = keras.losses
    z3, z1 = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((6, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 6)
    cases = [(L.SparseCategoricalCrossentropy(from_logits=True), labels, z3),
             (L.SparseCategoricalCrossentropy(from_logits=True), labels[:, None], z3),      # general path
             (L.CategoricalCrossentropy(from_logits=True), np.eye(3, dtype=np.float32)[labels], z3),
             (L.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2), np.eye(3, dtype=np.float32)[labels],
              z3),
             (L.BinaryCrossentropy(from_logits=True), (labels > 0).astype(np.float32), z1),
             (L.BinaryCrossentropy(from_logits=True), (labels[:, None] > 0).astype(np.int64), z1)]
    for loss, y, z in cases:
        a, b = nb.tensor(z, requires_grad=True), nb.tensor(z, requires_grad=True)
        fast, general = loss(y, a), keras.losses.Loss.__call__(loss, y, b)
        fast.backward(); general.backward()
        assert fast.item() == pytest.approx(general.item(), rel=1e-6), loss
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_fit_keeps_one_learner_per_compile_and_frees_the_last_batch():
    import gc
    X_train, X_test, y_train, y_test = iris_split()
    m = iris_model()
    m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    m.fit(X_train, y_train, epochs=1, verbose=0)
    learn = m._plan.learner
    m.fit(X_train, y_train, epochs=1, validation_split=0.2, verbose=0)
    m.evaluate(X_test, y_test, verbose=0)
    assert m._plan.learner is learn and not m._plan.lent
    assert learn.pred is None and learn.loss is None and learn.dl is None and learn.keras.cbs == []
    gc.collect(); gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        m.fit(X_train, y_train, epochs=2, verbose=0); m.evaluate(X_test, y_test, verbose=0)
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0); gc.garbage.clear(); gc.enable()
    assert not left & {"Learner", "_KerasBridge", "Tensor", "History"}, left   # reference counting freed them


def test_evaluate_and_fit_inside_a_callback_get_a_learner_of_their_own():
    "A callback may evaluate (or even fit) the model during a fit: the outer fit's metrics are not disturbed."
    X_train, X_test, y_train, y_test = iris_split()

    def run(cb):
        nb.manual_seed(0); keras.backend.clear_session()
        m = iris_model()
        m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        seen = []
        cbs = [keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(cb(m)),
                                              on_epoch_end=lambda e, logs: seen.append(cb(m)))] if cb else []
        h = m.fit(X_train, y_train, epochs=2, validation_split=0.2, verbose=0, callbacks=cbs)
        return h.history, seen, m
    h0, _, _ = run(None)
    h1, seen, m = run(lambda m: m.evaluate(X_test, y_test, verbose=0, return_dict=True))
    assert h1 == h0 and len(seen) == 2 * 3 + 2 and all(set(s) == {"loss", "accuracy"} for s in seen)
    assert not m._plan.lent
    _, nested, m = run(lambda m: m.fit(X_test, y_test, epochs=1, verbose=0).history)
    assert all(list(s) == ["loss", "accuracy"] for s in nested) and not m._plan.lent


def test_batch_begin_callbacks_are_called():
    X_train, _, y_train, _ = iris_split()
    m = iris_model()
    m.compile("adam", "sparse_categorical_crossentropy")
    begun = []
    m.fit(X_train, y_train, epochs=2, batch_size=50, verbose=0,
          callbacks=[keras.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: begun.append(b))])
    assert begun == [0, 1, 2] * 2


def test_fit_batches_are_the_dataloaders(monkeypatch):
    "fit's loader yields the DataLoader's batches (same permutations of the generator); batches are copies."
    from neuralbook.data import DataLoader, TensorDataset
    from neuralbook.keras.trainers.data_adapter import _array_loader
    import neuralbook.data as D
    X = np.arange(46 * 3, dtype=np.float32).reshape(46, 3)
    y = np.arange(46)
    for shuffle in (False, True):
        for small in (True, False):
            monkeypatch.setattr(D, "_GATHER_EPOCH_BYTES", 1 << 20 if small else 0)   # whole-epoch or per-batch gather
            nb.manual_seed(3)
            ours = [[t.numpy() for t in b] for _ in range(2) for b in _array_loader([X, y], 10, shuffle, "fit")]
            nb.manual_seed(3)
            dl = DataLoader(TensorDataset(X, y), batch_size=10, shuffle=shuffle)
            ref = [[t.numpy() for t in b] for _ in range(2) for b in dl]
            assert len(ours) == len(ref) == 10
            assert all(np.array_equal(a, b) for o, r in zip(ours, ref) for a, b in zip(o, r))
    first = next(iter(_array_loader([X, y], 10, False, "fit")))
    assert not np.shares_memory(first[0].data, X)             # a copy (chapter 06): training cannot alias the data
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        _array_loader([X, y], 0, False, "fit")
    m = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])
    m.compile("adam", "mse")
    with pytest.raises(TypeError, match="fit: batch_size must be a positive int, got 2.5"):
        m.fit(X, np.zeros((46, 2)), batch_size=2.5, verbose=0)


def test_per_output_losses_are_named_after_their_outputs():
    "An output without a loss is skipped; the others' losses keep their own names."
    inp = keras.Input(shape=(4,))
    h = keras.layers.Dense(6, activation="relu")(inp)
    a, b = keras.layers.Dense(2, name="a")(h), keras.layers.Dense(3, activation="softmax", name="b")(h)
    m = keras.Model(inputs=inp, outputs=[a, b])
    m.compile(keras.optimizers.SGD(0.0), loss={"b": "sparse_categorical_crossentropy"})
    rng = np.random.default_rng(0)
    X, ya, yb = rng.standard_normal((20, 4)), rng.standard_normal((20, 2)), rng.integers(0, 3, 20)
    hist = m.fit(X, [ya, yb], epochs=1, batch_size=8, verbose=0).history
    assert list(hist) == ["loss", "b_loss"] and hist["b_loss"] == [pytest.approx(hist["loss"][0])]
    assert m.evaluate(X, [ya, yb], verbose=0, return_dict=True) == pytest.approx(
        {"loss": hist["loss"][0], "b_loss": hist["loss"][0]}, rel=1e-6)


def test_evaluate_and_predict_return_types():
    _, X_test, _, y_test = iris_split()
    m = iris_model()
    m.compile("adam", "sparse_categorical_crossentropy")
    assert isinstance(m.evaluate(X_test, y_test, verbose=0), float)                       # no metrics: a scalar
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy", keras.metrics.SparseCategoricalAccuracy()])
    r = m.evaluate(X_test, y_test, verbose=0)
    assert isinstance(r, list) and len(r) == 3 and r[1] == r[2]
    d = m.evaluate(X_test, y_test, verbose=0, return_dict=True)
    assert list(d) == ["loss", "accuracy", "sparse_categorical_accuracy"] and list(d.values()) == r
    p = m.predict(X_test, batch_size=7, verbose=0)
    assert isinstance(p, np.ndarray) and p.shape == (30, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)                                    # probabilities


def test_accuracy_is_resolved_from_shapes_like_keras():
    M = keras.metrics
    assert isinstance(M.get("accuracy", (8,), (8, 1)), M.BinaryAccuracy)
    assert isinstance(M.get("accuracy", (8,), (8, 3)), M.SparseCategoricalAccuracy)
    assert isinstance(M.get("acc", (8, 1), (8, 3)), M.SparseCategoricalAccuracy)
    assert isinstance(M.get("accuracy", (8, 3), (8, 3)), M.CategoricalAccuracy)
    assert M.get("acc", (8,), (8, 3)).name == "acc"
    y, p = np.array([0, 2, 1, 1]), np.array([[.8, .1, .1], [.2, .3, .5], [.3, .3, .4], [.1, .8, .1]])
    assert M.SparseCategoricalAccuracy()(y, p) == 0.75
    assert M.CategoricalAccuracy()(np.eye(3)[y], p) == 0.75
    assert M.BinaryAccuracy()(np.array([1, 0, 1]), np.array([[.9], [.6], [.4]])) == pytest.approx(1 / 3)
    m = M.MeanSquaredError(); m.update_state([1.0, 2.0], [[1.0], [4.0]]); m.update_state([0.0], [[1.0]])
    assert m.result() == pytest.approx(5 / 3)
    assert M.RootMeanSquaredError()([1.0, 2.0], [[1.0], [4.0]]) == pytest.approx(math.sqrt(2))


def test_one_hot_binary_and_regression_tasks():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5)).astype(np.float32)
    yb = (X[:, 0] + X[:, 1] > 0).astype(np.float32)
    m = keras.Sequential([keras.Input(shape=(5,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", ["accuracy"])
    h = m.fit(X, yb, epochs=20, verbose=0)
    assert m._plan.fuse == (0,) and h.history["accuracy"][-1] > 0.9
    yc = keras.utils.to_categorical(X[:, :3].argmax(1), 3)
    assert yc.shape == (200, 3) and isinstance(yc, np.ndarray)
    m2 = keras.Sequential([keras.Input(shape=(5,)), keras.layers.Dense(3, activation="softmax")])
    m2.compile(keras.optimizers.Adam(0.05), keras.losses.CategoricalCrossentropy(), ["accuracy"])
    h2 = m2.fit(X, yc, epochs=40, verbose=0)
    assert m2._plan.fuse == (0,) and h2.history["accuracy"][-1] > 0.8
    yr = X @ np.arange(5.0)
    m3 = keras.Sequential([keras.Input(shape=(5,)), keras.layers.Dense(1)])
    m3.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", ["mae"])
    h3 = m3.fit(X, yr, epochs=30, verbose=0)
    assert h3.history["loss"][-1] < 1e-3 and list(h3.history) == ["loss", "mae"]


def test_initial_epoch_and_history():
    X_train, _, y_train, _ = iris_split()
    m = iris_model()
    m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    h = m.fit(X_train, y_train, epochs=5, initial_epoch=3, verbose=0)
    assert h.epoch == [3, 4] and len(h.history["loss"]) == 2 and m.history is h


def test_verbose_output_is_keras_like(capsys):
    X_train, _, y_train, _ = iris_split()
    m = iris_model()
    m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    m.fit(X_train, y_train, epochs=2, validation_split=0.2, verbose=2)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Epoch 1/2"
    assert re.fullmatch(r"3/3 - \d+s - \d+ms/step - loss: \d\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d\.\d{4} - "
                        r"val_accuracy: \d\.\d{4}", out[1]), out[1]
    m.fit(X_train, y_train, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_trainable_is_fixed_at_compile():
    X_train, _, y_train, _ = iris_split()
    m = iris_model()
    m.layers[1].trainable = False
    m.compile("adam", "sparse_categorical_crossentropy")
    frozen = m.layers[1].get_weights()
    before_out = m.layers[2].get_weights()
    m.fit(X_train, y_train, epochs=2, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(frozen, m.layers[1].get_weights()))
    assert not np.array_equal(before_out[0], m.layers[2].kernel.numpy())
    text = m.summary(return_string=True)
    assert " Trainable params: 33 (132.00 B)" in text and " Non-trainable params: 50 (200.00 B)" in text
    assert len(m.trainable_weights) == 2 and len(m.non_trainable_weights) == 2
    m.layers[1].trainable = True                    # takes effect at the next compile
    m.fit(X_train, y_train, epochs=1, verbose=0)
    assert np.array_equal(frozen[0], m.layers[1].kernel.numpy())
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(X_train, y_train, epochs=1, verbose=0)
    assert not np.array_equal(frozen[0], m.layers[1].kernel.numpy())


def test_fully_frozen_model_and_dataloader_input():
    from neuralbook.data import DataLoader, TensorDataset
    X = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32); y = (X[:, 0] > 0).astype(np.int64)
    m = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2, activation="softmax")])
    m.trainable = False
    m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    w = m.get_weights()
    h = m.fit(X, y, epochs=2, verbose=0)                       # Keras allows it: nothing changes
    assert h.history["loss"][0] == pytest.approx(h.history["loss"][1], rel=1e-6) and all(np.array_equal(a, b) for a, b in zip(w, m.get_weights()))
    m.trainable = True
    m.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", ["accuracy"])
    h = m.fit(DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True), epochs=5, verbose=0,
              validation_data=DataLoader(TensorDataset(X, y), batch_size=64))
    assert list(h.history) == ["loss", "accuracy", "val_loss", "val_accuracy"] and h.history["loss"][-1] < h.history["loss"][0]


def test_regularizers_are_added_to_the_loss():
    X = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    y = np.zeros((16, 2), np.float32)
    inp = keras.Input(shape=(3,))
    d = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.l2(0.1), bias_regularizer=keras.regularizers.l1(0.5),
                           bias_initializer=keras.initializers.Constant(0.3))
    m = keras.Model(inp, d(inp))
    m.compile(keras.optimizers.SGD(0.0), "mse")
    K, b = d.get_weights()
    data_loss = float(np.mean((X @ K + b) ** 2))
    expected = data_loss + 0.1 * (K ** 2).sum() + 0.5 * np.abs(b).sum()
    h = m.fit(X, y, batch_size=16, verbose=0)
    assert h.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert m.evaluate(X, y, verbose=0) == pytest.approx(expected, rel=1e-5)
    assert sum(float(l.data) for l in m.losses) == pytest.approx(expected - data_loss, rel=1e-5)


def test_fused_softmax_cross_entropy_is_exact_and_stable():
    torch = pytest.importorskip("torch")
    m = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(3, activation="softmax", dtype="float64")])
    m.compile("sgd", "sparse_categorical_crossentropy")
    assert m._plan.fuse == (0,)
    m.layers[0].set_weights([np.array([[400.0, -400.0, 0.0], [0.0, 0.0, 1.0]]), np.zeros(3)])
    x, y = np.array([[1.0, 0.0], [0.01, 1.0]]), np.array([1, 2])
    z = m._forward_outputs(nb.tensor(x), False, m._plan.fuse)[0]
    loss = m._plan([z], y)
    zt = torch.tensor(x @ m.layers[0].kernel.numpy(), requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    assert loss.item() == pytest.approx(lt.item(), rel=1e-12) and math.isfinite(loss.item())   # p = e^-800 = 0
    unfused = keras.losses.SparseCategoricalCrossentropy()(y, m.predict(x, verbose=0))
    assert unfused.item() < loss.item()                                  # the clipped version saturates at -log(1e-7)
    loss.backward()
    assert np.all(np.isfinite(m.layers[0].kernel.grad.numpy()))


def test_keras_losses_match_their_formulas():
    "Keras' formulas (targets first, probabilities clipped at 1e-7, per-sample means) in float64; PyTorch for logits."
    torch = pytest.importorskip("torch")
    L, T = keras.losses, nb.tensor                  # float64 tensors keep float64 (NumPy arrays become float32)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 4)); p = np.exp(z) / np.exp(z).sum(1, keepdims=True); y = rng.integers(0, 4, 6)
    ref = -np.log(np.clip(p[np.arange(6), y], 1e-7, 1 - 1e-7)).mean()
    assert L.SparseCategoricalCrossentropy()(y, T(p)).item() == pytest.approx(ref, rel=1e-12)
    assert L.SparseCategoricalCrossentropy()(y[:, None], T(p)).item() == pytest.approx(ref, rel=1e-12)  # (N, 1) labels
    assert L.SparseCategoricalCrossentropy()(y, p).item() == pytest.approx(ref, rel=1e-6)   # arrays: float32
    zt = torch.tensor(z)
    assert L.SparseCategoricalCrossentropy(from_logits=True)(y, T(z)).item() == \
        pytest.approx(torch.nn.functional.cross_entropy(zt, torch.tensor(y)).item(), rel=1e-12)
    Y = np.eye(4)[y]
    assert L.CategoricalCrossentropy(label_smoothing=0.1, from_logits=True)(Y, T(z)).item() == pytest.approx(
        torch.nn.functional.cross_entropy(zt, torch.tensor(Y), label_smoothing=0.1).item(), rel=1e-12)
    assert L.categorical_crossentropy(Y, T(p)).numpy() == pytest.approx(-np.log(p[np.arange(6), y]), rel=1e-12)
    t, q = rng.integers(0, 2, (6, 1)).astype(float), rng.uniform(0.01, 0.99, (6, 1))
    assert L.BinaryCrossentropy()(t, T(q)).item() == pytest.approx(
        -(t * np.log(q) + (1 - t) * np.log(1 - q)).mean(), rel=1e-12)
    assert L.BinaryCrossentropy(from_logits=True)(t[:, 0], T(z[:, :1])).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(zt[:, :1], torch.tensor(t)).item(), rel=1e-12)
    r, s = rng.standard_normal((6, 2)), rng.standard_normal((6, 2)) * 3
    assert L.MeanSquaredError()(r, T(s)).item() == pytest.approx(((r - s) ** 2).mean(), rel=1e-12)
    assert L.MeanAbsoluteError()(r, T(s)).item() == pytest.approx(np.abs(r - s).mean(), rel=1e-12)
    assert L.Huber(delta=1.5)(r, T(s)).item() == pytest.approx(
        torch.nn.functional.huber_loss(torch.tensor(s), torch.tensor(r), delta=1.5).item(), rel=1e-12)
    assert L.MeanSquaredError(reduction="sum")(r, T(s)).item() == pytest.approx(((r - s) ** 2).mean(1).sum(), rel=1e-12)
    assert L.mse(r[:, 0], T(s[:, :1])).shape == (6,)         # (N,) targets against (N, 1) predictions: no broadcast
    with pytest.raises(ValueError, match=r"targets of shape \(6, 2\) and predictions of shape \(6, 3\) differ"):
        L.MeanSquaredError()(r, np.zeros((6, 3)))


def test_keras_optimizers_defaults_and_updates():
    O = keras.optimizers
    assert (O.Adam().learning_rate, O.Adam().epsilon) == (0.001, 1e-7)
    assert O.SGD().learning_rate == 0.01 and O.RMSprop().rho == 0.9 and O.Adagrad().initial_accumulator_value == 0.1
    assert isinstance(O.get("AdamW"), O.AdamW) and O.AdamW().weight_decay == 0.004
    # Keras' SGD with momentum: v <- mu v - lr g; w <- w + v (constant gradient 1 here)
    w = nb.nn.Parameter(np.array([1.0]))
    opt = O.SGD(learning_rate=0.1, momentum=0.9).build([w])
    v, ref = 0.0, 1.0
    for _ in range(3):
        w.grad = nb.tensor(np.array([1.0])); opt.step(); opt.zero_grad()
        v = 0.9 * v - 0.1; ref += v
    assert w.item() == pytest.approx(ref)
    # decoupled weight decay, clipping, schedules
    w = nb.nn.Parameter(np.array([2.0]))
    opt = O.SGD(learning_rate=0.1, weight_decay=0.5, clipvalue=0.1).build([w])
    w.grad = nb.tensor(np.array([5.0])); opt.step()
    assert w.item() == pytest.approx(2.0 * (1 - 0.05) - 0.1 * 0.1)
    sched = O.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    opt = O.SGD(sched).build([w])
    for _ in range(3): w.grad = nb.tensor(np.array([0.0])); opt.step()
    assert opt.learning_rate == pytest.approx(0.1 * 0.5 ** 3) and opt.iterations == 3
    with pytest.raises(TypeError, match="pass a keras.optimizers object"):
        O.get(nb.optim.SGD([w], lr=0.1))


def test_optimizer_objects_and_learning_rate_in_compile():
    X_train, _, y_train, _ = iris_split()
    for opt in ["sgd", "rmsprop", "adagrad", "adamw", "nadam", keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)]:
        m = iris_model()
        m.compile(opt, "sparse_categorical_crossentropy")
        h = m.fit(X_train, y_train, epochs=3, verbose=0)
        assert all(math.isfinite(v) for v in h.history["loss"]), opt


# ---------------------------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------------------------

def test_early_stopping_stops_and_restores_the_best_weights():
    X_train, _, y_train, _ = iris_split()
    m = iris_model()
    m.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")     # too large: the loss oscillates
    seen = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append((logs["val_loss"], m.get_weights())))
    es = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    h = m.fit(X_train, y_train, epochs=60, validation_split=0.2, callbacks=[keep, es], verbose=0)
    n = len(h.history["loss"])
    assert n < 60 and es.stopped_epoch == n - 1
    best = int(np.argmin([v for v, _ in seen]))
    assert n - 1 - best == 2                                                    # patience epochs without progress
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), seen[best][1]))
    with pytest.warns(UserWarning, match="'val_loss' is not in the logs"):
        m.fit(X_train, y_train, epochs=1, callbacks=[keras.callbacks.EarlyStopping()], verbose=0)


def test_model_checkpoint_and_stop_training(tmp_path):
    X_train, X_test, y_train, _ = iris_split()
    m = iris_model()
    m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    ck = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_accuracy", save_best_only=True)
    every = keras.callbacks.ModelCheckpoint(str(tmp_path / "w-{epoch:02d}.weights.safetensors"),
                                            save_weights_only=True)
    m.fit(X_train, y_train, epochs=3, validation_split=0.2, callbacks=[ck, every], verbose=0)
    assert (tmp_path / "best.keras").exists()
    assert sorted(p.name for p in tmp_path.glob("w-*")) == [f"w-0{i}.weights.safetensors" for i in (1, 2, 3)]
    m2 = iris_model(); m2.load_weights(tmp_path / "w-03.weights.safetensors")
    np.testing.assert_array_equal(m2.predict(X_test, verbose=0), m.predict(X_test, verbose=0))
    with pytest.raises(ValueError, match="must end in '.keras'"):
        keras.callbacks.ModelCheckpoint("model.h5")

    class StopAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1: self.model.stop_training = True
    h = m.fit(X_train, y_train, epochs=10, callbacks=[StopAt()], verbose=0)
    assert len(h.history["loss"]) == 1


def test_lr_callbacks():
    X_train, _, y_train, _ = iris_split()
    m = iris_model()
    m.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    lrs = []
    sched = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)
    rec = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: lrs.append(m.optimizer.learning_rate))
    m.fit(X_train, y_train, epochs=3, callbacks=[sched, rec], verbose=0)
    assert lrs == pytest.approx([0.1, 0.05, 0.025])
    assert m.optimizer._opt.param_groups[0]["lr"] == pytest.approx(0.025)


# ---------------------------------------------------------------------------------------------------------------
# Weights, summary, saving
# ---------------------------------------------------------------------------------------------------------------

def test_get_set_weights_order_and_errors():
    m = iris_model()
    ws = m.get_weights()
    assert [w.shape for w in ws] == [(4, 10), (10,), (10, 3), (3,)]
    new = [np.full_like(w, i) for i, w in enumerate(ws)]
    m.set_weights(new)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), new))
    assert m.layers[2].bias.numpy().tolist() == [3.0, 3.0, 3.0]
    with pytest.raises(ValueError, match=r"expected 4 arrays \(dense.kernel \(4, 10\), dense.bias"):
        m.set_weights(new[:3])
    with pytest.raises(ValueError, match=r"dense_1.kernel has shape \(10, 3\), the array given for it has shape \(3, 10\)"):
        m.set_weights(new[:2] + [new[2].T, new[3]])
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), new))     # nothing written


def test_summary_table():
    m = iris_model()
    text = m.summary(return_string=True)
    lines = text.splitlines()
    assert lines[0] == 'Model: "functional"'
    rows = [l for l in lines if l.startswith("│")]
    assert [re.split(r"\s*│\s*", r)[1:4] for r in rows] == [
        ["input_layer (InputLayer)", "(None, 4)", "0"], ["dense (Dense)", "(None, 10)", "50"],
        ["dense_1 (Dense)", "(None, 3)", "33"]]
    assert lines[-3:] == [" Total params: 83 (332.00 B)", " Trainable params: 83 (332.00 B)",
                          " Non-trainable params: 0 (0.00 B)"]
    got = []
    m.summary(print_fn=got.append)
    assert got == [text]
    big = keras.Sequential([keras.Input(shape=(784,)), keras.layers.Dense(256), keras.layers.Dense(10)])
    assert " Total params: 203,530 (795.04 KB)" in big.summary(return_string=True)
    assert "?" in keras.Sequential([keras.layers.Dense(3)]).summary(return_string=True)


def test_save_load_round_trip(tmp_path):
    X_train, X_test, y_train, _ = iris_split()
    m = iris_model()
    m.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"])
    m.fit(X_train, y_train, epochs=3, verbose=0)
    path = tmp_path / "iris.keras"
    m.save(path)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["config.json", "model.weights.safetensors"]   # JSON + safetensors, no pickle
        cfg = json.loads(z.read("config.json"))
    assert cfg["class_name"] == "Functional"
    assert cfg["config"]["layers"][1]["config"]["activation"] == "relu"
    assert cfg["compile_config"]["optimizer"]["config"]["learning_rate"] == 0.01
    m2 = keras.models.load_model(path)
    np.testing.assert_array_equal(m.predict(X_test, verbose=0), m2.predict(X_test, verbose=0))
    assert [l.name for l in m2.layers] == [l.name for l in m.layers] and m2.compiled
    assert isinstance(m2.optimizer, keras.optimizers.Adam) and m2.optimizer.learning_rate == 0.01
    m2.fit(X_train, y_train, epochs=1, verbose=0)                              # recompiled: trains
    bytes1 = path.read_bytes(); m.save(path)
    assert path.read_bytes() == bytes1                                         # deterministic file
    with pytest.raises(ValueError, match="must end in '.keras'"):
        m.save(tmp_path / "model.pkl")


def test_save_load_sequential_and_multi_io(tmp_path):
    s = keras.Sequential([keras.layers.Dense(5, activation="elu", kernel_regularizer=keras.regularizers.l2(0.01)),
                          keras.layers.Dropout(0.5), keras.layers.Dense(2, activation="sigmoid")])
    x = np.random.default_rng(0).standard_normal((9, 3)).astype(np.float32)
    s.predict(x, verbose=0)                                          # builds it
    s.save(tmp_path / "s.keras")
    s2 = keras.models.load_model(tmp_path / "s.keras")
    np.testing.assert_array_equal(s.predict(x, verbose=0), s2.predict(x, verbose=0))
    assert isinstance(s2.layers[0].kernel_regularizer, keras.regularizers.L2) and s2.layers[1].rate == 0.5
    a, b = keras.Input(shape=(3,), name="a"), keras.Input(shape=(3,), name="b")
    shared = keras.layers.Dense(4, name="shared")
    o = {"sum": keras.layers.Add(name="sum")([shared(a), shared(b)]), "cat": keras.layers.Concatenate(name="cat")([a, b])}
    m = keras.Model({"a": a, "b": b}, o)
    m.save(tmp_path / "m.keras")
    m2 = keras.models.load_model(tmp_path / "m.keras")
    p1, p2 = m.predict({"a": x, "b": 2 * x}, verbose=0), m2.predict({"a": x, "b": 2 * x}, verbose=0)
    assert list(p2) == ["sum", "cat"] and all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert len(m2.weights) == 2                                      # the shared layer is still shared


def test_save_refuses_custom_callables_and_checks_weights(tmp_path):
    inp = keras.Input(shape=(2,))
    m = keras.Model(inp, keras.layers.Dense(2, activation=lambda x: x * 2)(inp))
    with pytest.raises(ValueError, match=r"its activation '<lambda>' is a custom callable.*stores activations by name"):
        m.save(tmp_path / "x.keras")
    m2 = iris_model()
    m2.save_weights(tmp_path / "w.safetensors")
    other = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(7, name="dense")])
    with pytest.raises(ValueError, match=r"nothing was loaded:\n  missing: \[\]|missing"):
        other.load_weights(tmp_path / "w.safetensors")

    class Scale(keras.layers.Layer):
        def call(self, x): return x * 3.0
    m3 = keras.Model(inp, Scale(name="scale")(inp))
    m3.save(tmp_path / "c.keras")
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "c.keras").predict(np.ones((1, 2)), verbose=0),
                                  [[3.0, 3.0]])
    with pytest.raises(ValueError, match="not a '.keras' archive"):
        keras.models.load_model(tmp_path / "w.safetensors")


def test_json_architecture_and_state_dict_compatible_weights(tmp_path):
    m = iris_model()
    js = m.to_json()
    m2 = keras.models.model_from_json(js)
    assert [type(l).__name__ for l in m2.layers] == ["InputLayer", "Dense", "Dense"] and m2.count_params() == 83
    assert not any(np.array_equal(a, b) for a, b in zip(m.get_weights()[::2], m2.get_weights()[::2]))  # fresh weights
    m.save_weights(tmp_path / "w.safetensors")
    from neuralbook.learner import load_safetensors
    tensors, _ = load_safetensors(tmp_path / "w.safetensors")
    assert sorted(tensors) == sorted(m.state_dict())          # the names Learner.save and load_state_dict use
    m2.load_state_dict(tensors)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(m2.predict(x, verbose=0), m.predict(x, verbose=0))


def test_dropout_only_in_training_and_predict_is_deterministic():
    m = keras.Sequential([keras.Input(shape=(50,)), keras.layers.Dropout(0.5)])
    x = np.ones((4, 50), np.float32)
    np.testing.assert_array_equal(m.predict(x, verbose=0), x)
    np.testing.assert_array_equal(m(x).numpy(), x)
    y = m(x, training=True).numpy()
    assert set(np.unique(y)) == {0.0, 2.0}


def test_device_setting_on_cpu():
    X_train, _, y_train, _ = iris_split()
    keras.config.set_device("cpu")
    assert keras.config.device() == "cpu"
    m = iris_model()
    m.compile("adam", "sparse_categorical_crossentropy", device="cpu")
    m.fit(X_train, y_train, epochs=1, verbose=0)
    assert m.layers[1].kernel.device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        m.compile("adam", "mse", device="tpu")


@pytest.mark.gpu
def test_fit_on_cuda_matches_cpu():
    X_train, X_test, y_train, _ = iris_split()
    out = []
    for dev in ("cpu", "cuda"):
        nb.manual_seed(0); keras.backend.clear_session()
        m = iris_model()
        m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"], device=dev)
        h = m.fit(X_train, y_train, epochs=5, validation_split=0.2, verbose=0)
        assert m.layers[1].kernel.device.startswith(dev)
        out.append((h.history, m.predict(X_test, verbose=0)))
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[0][0]["loss"], out[1][0]["loss"], rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Issue 21: bad data at the door, integer inputs, TerminateOnNaN, Learner callbacks in fit
# ---------------------------------------------------------------------------------------------------------------

def _compiled(loss="sparse_categorical_crossentropy", lr=0.1):
    keras.backend.clear_session()
    nb.manual_seed(0)
    m = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3)])
    m.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss=loss)
    return m


@pytest.mark.parametrize("labels", [[0.5, 1.5], [0.0, np.nan], [1.0, np.inf]])
def test_sparse_losses_refuse_non_integral_or_non_finite_labels(labels):
    X = np.ones((2, 4), np.float32)
    for loss in ("sparse_categorical_crossentropy", keras.losses.SparseCategoricalCrossentropy(from_logits=True)):
        m = _compiled(loss)
        w0 = m.get_weights()
        with pytest.raises(ValueError, match=r"sparse_categorical_crossentropy: the labels must be class indices "
                                             r"\(integers, or integral floats such as 2\.0\).*categorical_crossentropy"):
            m.fit(X, np.array(labels), verbose=0, shuffle=False)
        np.testing.assert_array_equal(m.get_weights()[0], w0[0])
    with pytest.raises(ValueError, match=r"such as \[0\.5, 1\.5\]"):
        keras.losses.sparse_categorical_crossentropy(np.array([0.5, 1.5]), nb.tensor(np.full((2, 3), 1 / 3)))


def test_sparse_losses_accept_integral_float_labels():
    X = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    a, b = _compiled(), _compiled()
    ha = a.fit(X, np.array([0., 1., 2., 2., 1., 0.]), epochs=2, verbose=0, shuffle=False).history["loss"]
    hb = b.fit(X, np.array([0, 1, 2, 2, 1, 0]), epochs=2, verbose=0, shuffle=False).history["loss"]
    assert ha == hb and all(math.isfinite(v) for v in ha)


def test_fit_with_zero_samples_raises_before_training():
    m = _compiled()
    with pytest.raises(ValueError, match=r"fit: x has 0 samples \(shape \(0, 4\)\), so there is nothing to train on"):
        m.fit(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), verbose=0)


@pytest.mark.parametrize("make, name", [
    (lambda s: keras.optimizers.schedules.ExponentialDecay(0.1, s, 0.9), "ExponentialDecay"),
    (lambda s: keras.optimizers.schedules.CosineDecay(0.1, s), "CosineDecay")])
@pytest.mark.parametrize("steps", [0, -3, 2.5, float("nan"), True])
def test_schedules_refuse_bad_decay_steps_at_construction(make, name, steps):
    with pytest.raises(ValueError, match=rf"{name}: decay_steps must be a positive integer"):
        make(steps)
    assert make(np.int64(10)).decay_steps == 10 and make(10.0).decay_steps == 10


def test_terminate_on_nan_keeps_the_last_finite_weights(capsys):
    m = _compiled(loss="mse", lr=0.1)
    X = np.ones((8, 4), np.float32)
    y = np.zeros((8, 3), np.float32)
    y[6:] = np.nan                                       # the 4th batch of 2 has a NaN loss
    seen = []
    probe = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(m.get_weights()))
    h = m.fit(X, y, batch_size=2, epochs=3, shuffle=False, verbose=0,
              callbacks=[probe, keras.callbacks.TerminateOnNaN()])
    assert len(seen) == 3 and all(np.isfinite(w).all() for w in m.get_weights())
    for a, b in zip(m.get_weights(), seen[-1]): np.testing.assert_array_equal(a, b)   # no update after batch 3
    assert len(h.history["loss"]) == 1 and m.stop_training
    assert "the training loss is nan at epoch 0, batch 3 (0-based); stopping the fit before the weights are updated" \
        in capsys.readouterr().out


def test_dense_conv_and_batchnorm_cast_integer_input_to_their_dtype():
    keras.backend.clear_session()
    d = keras.layers.Dense(2)
    xi = np.arange(6, dtype=np.int64).reshape(2, 3)
    out = d(xi)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), d(xi.astype(np.float32)).numpy())
    assert d(np.array([[True, False, True]])).dtype == np.float32
    c = keras.layers.Conv2D(2, 2)
    assert c(np.ones((1, 3, 3, 1), np.int32)).dtype == np.float32
    bn = keras.layers.BatchNormalization()
    assert bn(np.ones((2, 3), np.int64)).dtype == np.float32
    e = keras.layers.Embedding(5, 2)                        # an Embedding still takes integer indices
    assert e(np.array([[1, 4]])).shape == (1, 2, 2)
    m = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])
    assert m.predict(xi, verbose=0).dtype == np.float32


def test_fit_accepts_learner_callbacks_next_to_keras_ones():
    from neuralbook.learner import Callback as LearnerCallback

    class CountBackward(LearnerCallback):
        def __init__(self): self.n = 0
        def after_backward(self): self.n += 1

    m = _compiled()
    X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    y = np.arange(10) % 3
    count, hist = CountBackward(), []
    h = m.fit(X, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[count, keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: hist.append(e))])
    assert count.n == 2 * 3 and hist == [0, 1] and len(h.history["loss"]) == 2
    m.fit(X, y, batch_size=4, epochs=1, verbose=0)            # added for that fit only
    assert count.n == 6
    with pytest.raises(TypeError, match=r"fit: callbacks must be keras\.callbacks objects or chapter 10's Learner "
                                        r"callbacks .*got int"):
        m.fit(X, y, callbacks=[3], verbose=0)


def test_fit_with_a_single_rank_distributed_callback_matches_a_plain_fit():
    from neuralbook.distributed import DistributedCallback
    X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    y = np.arange(10) % 3
    runs = []
    for cbs in ([], [DistributedCallback()]):
        m = _compiled()
        runs.append((m.fit(X, y, epochs=2, batch_size=4, shuffle=False, verbose=0, callbacks=cbs).history["loss"],
                     m.get_weights()))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]): np.testing.assert_array_equal(a, b)


def test_issue21_checks_on_the_emulated_gpu(tmp_path, capsys):
    "Labels checked, files round-tripped, integer input cast and TerminateOnNaN on a (chapter 32 emulated) GPU."
    from neuralbook import cuda_emu
    if cuda_emu.compiler() is None: pytest.skip("no C++ compiler for the emulated GPU")
    X = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    with cuda_emu.emulated_gpu(max_blocks=3):
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), device="cuda")
        assert math.isfinite(m.fit(X, np.array([0., 1, 2, 0, 1, 2]), verbose=0).history["loss"][0])
        with pytest.raises(ValueError, match=r"labels must be class indices .* such as \[0\.5\]"):
            m.fit(X, np.array([0.5, 1, 2, 0, 1, 2]), verbose=0)
        m.save(tmp_path / "m.keras")
        np.testing.assert_array_equal(keras.models.load_model(tmp_path / "m.keras").predict(X, verbose=0),
                                      m.predict(X, verbose=0))
        assert m.predict(np.arange(8).reshape(2, 4), verbose=0).dtype == np.float32
        y = np.zeros((6, 3), np.float32)
        y[4:] = np.nan
        m3 = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        m3.compile("sgd", "mse", device="cuda")
        m3.fit(X, y, batch_size=2, shuffle=False, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
        assert all(np.isfinite(w).all() for w in m3.get_weights())
