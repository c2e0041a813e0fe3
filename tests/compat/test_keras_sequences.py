"""Compatibility programs (issue 13): Keras text classifiers of the guides' kind — written here, not copied — run on
neuralbook (`from neuralbook import keras`) and on Keras 3 (torch backend) with the same data and the same initial
weights copied across. Checked: the forward pass before training at 1e-5, and the test accuracy after training, which
must agree within 0.05 (the two runs start identical but float rounding in 2 × ~100 Adam steps separates them a
little) and beat the majority class clearly. (Keras' LSTM loops in Python on its torch backend: the BiLSTM
program is most of this file's ~1 min of CPU time.)

Until the lead registers the sequence layers in `neuralbook.keras.layers` (10a_keras_9_layers), the `nk` fixture
attaches the missing names from their modules for the test; once they are registered it changes nothing."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

LAYERS = {"SimpleRNN": "rnn", "LSTM": "rnn", "GRU": "rnn", "Bidirectional": "rnn", "TimeDistributed": "rnn",
          "MultiHeadAttention": "attention", "LayerNormalization": "attention", "Conv1D": "convolutional",
          "GlobalAveragePooling1D": "pooling", "GlobalMaxPooling1D": "pooling", "MaxPooling1D": "pooling"}


@pytest.fixture
def nk(monkeypatch):
    import importlib
    import neuralbook as nb
    from neuralbook import keras
    from neuralbook.backend import default_generator
    state = default_generator.get_state()
    for name, mod in LAYERS.items():
        if not hasattr(keras.layers, name):
            m = importlib.import_module(f"neuralbook.keras.layers.{mod}")
            monkeypatch.setattr(keras.layers, name, getattr(m, name), raising=False)
    nb.manual_seed(0)
    keras.backend.clear_session()
    yield keras
    default_generator.set_state(state)


@pytest.fixture
def k3():
    pytest.importorskip("torch")
    k = pytest.importorskip("keras")
    if k.backend.backend() != "torch": pytest.skip("Keras must run on its torch backend here")
    k.utils.set_random_seed(0)
    return k


def make_data(n, seed, maxlen=12, vocab=5):
    "Token ids 1..vocab-1 padded with 0 to maxlen; label 1 when a sequence holds more 1s than 2s."
    r = np.random.default_rng(seed)
    X = np.zeros((n, maxlen), np.int64)
    for i, l in enumerate(r.integers(4, maxlen + 1, n)): X[i, :l] = r.integers(1, vocab, l)
    return X, ((X == 1).sum(1) > (X == 2).sum(1)).astype(np.float32)


def bilstm_classifier(keras):
    "Embedding with mask_zero → Bidirectional(LSTM) → Dense: the shape of Keras' IMDB LSTM example."
    inputs = keras.Input(shape=(None,), dtype="int64")
    x = keras.layers.Embedding(5, 8, mask_zero=True)(inputs)
    x = keras.layers.Bidirectional(keras.layers.LSTM(12))(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def transformer_classifier(keras):
    "A transformer block (attention, residual, layer norm, MLP) and masked average pooling, then Dense."
    L = keras.layers
    inputs = keras.Input(shape=(12,), dtype="int64")
    x = L.Embedding(5, 16, mask_zero=True)(inputs)
    attn = L.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, attn]))
    ff = L.Dense(16)(L.Dense(32, activation="relu")(x))
    x = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, ff]))
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(1, activation="sigmoid")(x))


def run(keras, build, weights=None, epochs=4):
    "The user program: build, (copy weights), compile, fit, evaluate. Returns (model, predictions before, accuracy)."
    X_tr, y_tr = make_data(400, 1)
    X_te, y_te = make_data(200, 2)
    model = build(keras)
    if weights is not None: model.set_weights(weights)
    before = np.asarray(model.predict(X_te, verbose=0))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy",
                  metrics=["accuracy"])
    model.fit(X_tr, y_tr, batch_size=50, epochs=epochs, shuffle=False, verbose=0)
    acc = model.evaluate(X_te, y_te, verbose=0, return_dict=True)["accuracy"]
    return model, before, float(acc), max(y_te.mean(), 1 - y_te.mean())


@pytest.mark.parametrize("build", [bilstm_classifier, transformer_classifier], ids=["bilstm", "transformer"])
def test_same_program_on_both(nk, k3, build):
    km = build(k3)
    weights = km.get_weights()
    _, k_before, k_acc, majority = run(k3, lambda _: km, None)
    _, n_before, n_acc, _ = run(nk, build, weights)
    np.testing.assert_allclose(n_before, k_before, atol=1e-5)
    print(f"{build.__name__}: test accuracy keras {k_acc:.3f}, neuralbook {n_acc:.3f}, majority {majority:.3f}")
    assert abs(n_acc - k_acc) <= 0.05, (n_acc, k_acc)
    assert n_acc >= majority + 0.2 and k_acc >= majority + 0.2
