"""A program in the style of Keras' "customizing what happens in fit" guide (written for this project), run on
neuralbook.keras and on Keras 3 (torch backend) from the same initial weights and data: the histories of fit and the
results of evaluate must agree within 1e-4 (relative; float32 sums in a different order)."""
import contextlib
import os

import numpy as np
import pytest

TOL = 1e-4


def program(keras, gradients, no_grad=contextlib.nullcontext):
    "The user's program. `gradients(model, x, y)` -> (loss, y_pred, grads) is the one backend-specific line."
    class CustomModel(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(16, activation="relu")
            self.head = keras.layers.Dense(1)

        def call(self, x):
            return self.head(self.hidden(x))

        def train_step(self, data):
            x, y = data
            loss, y_pred, grads = gradients(self, x, y)
            with no_grad():
                self.optimizer.apply(grads, self.trainable_weights)
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss)
                else:
                    metric.update_state(y, y_pred)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            x, y = data
            y_pred = self(x, training=False)
            loss = self.compute_loss(y=y, y_pred=y_pred)
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss)
                else:
                    metric.update_state(y, y_pred)
            return {m.name: m.result() for m in self.metrics}

    class Counter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.test_batches = self.predict_batches = 0
        def on_test_batch_end(self, batch, logs=None): self.test_batches += 1
        def on_predict_batch_end(self, batch, logs=None): self.predict_batches += 1

    return CustomModel, Counter


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 6)).astype(np.float32)
    y = (np.tanh(x @ rng.normal(size=(6, 1))) + 0.1 * rng.normal(size=(320, 1))).astype(np.float32)
    return x, y


def run(keras, gradients, weights=None, no_grad=contextlib.nullcontext):
    CustomModel, Counter = program(keras, gradients, no_grad)
    x, y = data()
    model = CustomModel()
    model(x[:2])
    if weights is not None: model.set_weights(weights)
    w0 = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse", metrics=["mae"])
    hist = model.fit(x[:256], y[:256], batch_size=32, epochs=4, shuffle=False, verbose=0,
                     validation_data=(x[256:], y[256:])).history
    counter = Counter()
    ev = model.evaluate(x[256:], y[256:], batch_size=16, verbose=0, return_dict=True, callbacks=[counter])
    pred = model.predict(x[:40], batch_size=16, verbose=0, callbacks=[counter])
    return w0, hist, ev, np.asarray(pred), (counter.test_batches, counter.predict_batches)


def nb_gradients(model, x, y):
    from neuralbook import keras
    with keras.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(y=y, y_pred=y_pred)
    return loss, y_pred, tape.gradient(loss, model.trainable_weights)


def nb_backward(model, x, y):
    "The PyTorch way on neuralbook: loss.backward(), then each weight's .grad."
    model.zero_grad()
    y_pred = model(x, training=True)
    loss = model.compute_loss(y=y, y_pred=y_pred)
    loss.backward()
    return loss, y_pred, [v.grad for v in model.trainable_weights]


def test_custom_fit_runs_on_neuralbook():
    import neuralbook as nb
    from neuralbook import keras
    nb.manual_seed(0)
    w0, hist, ev, pred, counts = run(keras, nb_gradients)
    assert sorted(hist) == ["loss", "mae", "val_loss", "val_mae"]
    assert hist["loss"][-1] < hist["loss"][0]
    assert sorted(ev) == ["loss", "mae"] and pred.shape == (40, 1) and counts == (4, 3)
    # the same program with loss.backward() + .grad gives the same numbers
    _, hist2, ev2, _, _ = run(keras, nb_backward, w0)
    for k in hist: np.testing.assert_allclose(hist2[k], hist[k], rtol=1e-6)


def test_custom_fit_matches_keras3():
    os.environ["KERAS_BACKEND"] = "torch"
    K = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    import neuralbook as nb
    from neuralbook import keras
    nb.manual_seed(1)
    w0, hist, ev, pred, counts = run(keras, nb_gradients)

    def torch_gradients(model, x, y):
        model.zero_grad()
        y_pred = model(x, training=True)
        loss = model.compute_loss(y=y, y_pred=y_pred)
        loss.backward()
        return loss, y_pred, [v.value.grad for v in model.trainable_weights]

    _, khist, kev, kpred, kcounts = run(K, torch_gradients, w0, torch.no_grad)
    assert sorted(khist) == sorted(hist) and counts == kcounts
    for k in hist: np.testing.assert_allclose(hist[k], khist[k], rtol=TOL, err_msg=k)
    for k in ev: np.testing.assert_allclose(ev[k], kev[k], rtol=TOL, err_msg=k)
    np.testing.assert_allclose(pred, kpred, rtol=TOL, atol=1e-6)
