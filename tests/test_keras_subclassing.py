"""Subclassing as in Keras (layers and models), custom steps' bad input, and saving custom objects in .keras files."""
import json
import os
import zipfile

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import keras
from neuralbook.keras import layers


def _keras():
    os.environ["KERAS_BACKEND"] = "torch"
    return pytest.importorskip("keras")


class Linear(layers.Layer):
    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True,
                                 name="kernel")
        self.b = self.add_weight(shape=(self.units,), initializer=keras.initializers.Zeros(), name="bias")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen", dtype="float64")

    def call(self, inputs):
        return inputs @ self.w + self.b


def test_lazy_build_and_weights():
    l = Linear(3)
    assert not l.built and l.weights == []
    y = l(np.ones((2, 5), np.float32))
    assert l.built and y.shape == (2, 3)
    assert [tuple(w.shape) for w in l.trainable_weights] == [(5, 3), (3,)]
    assert [tuple(w.shape) for w in l.non_trainable_weights] == [()] and l.seen.dtype == np.float64
    assert [n for n, _ in l._weight_paths()] == ["w", "b", "seen"]
    assert l.compute_output_shape((None, 5)) == (None, 3)


def test_unbuilt_weight_read_is_explained():
    with pytest.raises(AttributeError, match="Linear 'lin' has no attribute 'w': the layer is not built yet"):
        Linear(name="lin").w


def test_add_weight_unknown_initializer():
    class Bad(layers.Layer):
        def build(self, s): self.k = self.add_weight(shape=(2,), initializer="gloriot_uniform", name="k")
    with pytest.raises(ValueError, match=r"Bad 'bad_\w*'.add_weight\('k'\): Unknown initializer 'gloriot_uniform'"):
        Bad(name="bad_x")(np.ones((1, 2)))


def test_call_gets_training_and_mask_only_if_it_takes_them():
    seen = {}
    class Both(layers.Layer):
        def call(self, x, training=None, mask=None):
            seen["training"], seen["mask"] = training, mask
            return x
    class Plain(layers.Layer):
        def call(self, x): return x
    Both()(np.ones((1, 2)), training=True)
    assert seen == {"training": True, "mask": None}
    Plain()(np.ones((1, 2)), training=True)


def test_nested_tracking_lists_dicts_and_add_loss():
    class Block(layers.Layer):
        def __init__(self):
            super().__init__()
            self.stack = [layers.Dense(4), layers.Dense(4)]
            self.heads = {"a": layers.Dense(1), "b": layers.Dense(2)}
        def call(self, x):
            for l in self.stack: x = l(x)
            self.add_loss(0.5 * (x * x).mean())
            return self.heads["a"](x), self.heads["b"](x)
    b = Block()
    a, c = b(np.ones((3, 5), np.float32))
    assert len(b.trainable_weights) == 8 and len(b.weights) == 8
    assert len(b.losses) == 1
    b(np.ones((3, 5), np.float32))
    assert len(b.losses) == 1                   # cleared at each outermost call


def test_auto_config_round_trip():
    l = Linear(7, name="lin7")
    c = l.get_config()
    assert c["units"] == 7 and c["name"] == "lin7"
    assert Linear.from_config(c).units == 7


class TwoLayer(keras.Model):
    def __init__(self, hidden=8, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.d1 = layers.Dense(hidden, activation="relu")
        self.drop = layers.Dropout(0.5)
        self.d2 = layers.Dense(1)

    def call(self, x, training=None):
        return self.d2(self.drop(self.d1(x)))


def _reg_data(n=128):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], np.float32)).astype(np.float32)


def test_subclassed_model_compile_fit_evaluate_predict_summary():
    nb.manual_seed(0)
    x, y = _reg_data()
    m = TwoLayer()
    m.compile(optimizer="adam", loss="mse", metrics=["mae"])
    h = m.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert len(m.evaluate(x, y, verbose=0)) == 2 and m.predict(x, verbose=0).shape == (128, 1)
    assert "Total params: 49" in m.summary(return_string=True)


def test_training_flag_reaches_nested_layers():
    nb.manual_seed(0)
    m = TwoLayer()
    x = np.ones((64, 4), np.float32)
    assert np.array_equal(m(x).numpy(), m(x).numpy())                       # inference: dropout off
    assert not np.array_equal(m(x, training=True).numpy(), m(x).numpy())   # training=True reaches Dropout


def test_subclassed_model_matches_keras_with_same_weights():
    K = _keras()
    class KTwo(K.Model):
        def __init__(self):
            super().__init__()
            self.d1, self.d2 = K.layers.Dense(8, activation="relu"), K.layers.Dense(1)
        def call(self, x): return self.d2(self.d1(x))
    x, _ = _reg_data(16)
    ours = TwoLayer()
    ours(x)
    theirs = KTwo()
    theirs(x)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_compile_without_loss_fails_at_fit():
    m = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(1)])
    m.compile(optimizer="adam")
    x, y = _reg_data(8)
    with pytest.raises(ValueError, match=r"compiled without a loss.*pass loss=\.\.\. to compile\(\)"):
        m.fit(x, y, verbose=0)


def test_add_loss_counts_in_builtin_fit():
    class Penalised(layers.Layer):
        def call(self, x):
            self.add_loss(100.0 * (x * x).mean())
            return x
    nb.manual_seed(0)
    x, y = _reg_data(64)
    m = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(1), Penalised()])
    m.compile(optimizer="sgd", loss="mse")
    pred = m.predict(x, verbose=0)
    expected = float(((pred - y) ** 2).mean() + 100.0 * (pred ** 2).mean())
    np.testing.assert_allclose(m.evaluate(x, y, batch_size=64, verbose=0), expected, rtol=1e-4)
    h = m.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.history["loss"][0], expected, rtol=1e-4)


# -- saving ---------------------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="Tests")
class Scale(layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
    def build(self, input_shape):
        self.k = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="k")
    def call(self, x): return x * self.k * self.factor
    def get_config(self): return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="Tests", name="Regressor")
class Regressor(keras.Model):
    def __init__(self, units=5, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.body, self.scale = layers.Dense(units, activation="tanh"), Scale(0.5)
        self.out = layers.Dense(1)
    def call(self, x): return self.out(self.scale(self.body(x)))


def test_save_load_registered_layer_and_subclassed_model(tmp_path):
    nb.manual_seed(0)
    x, y = _reg_data(32)
    seq = keras.Sequential([keras.Input(shape=(4,)), Scale(3.0), layers.Dense(2)])
    seq.compile(optimizer="adam", loss="mse")
    keras.saving.save_model(seq, tmp_path / "seq.keras")
    cfg = json.loads(zipfile.ZipFile(tmp_path / "seq.keras").read("config.json"))
    assert cfg["config"]["layers"][0]["class_name"] == "Tests>Scale"
    back = keras.saving.load_model(tmp_path / "seq.keras")
    np.testing.assert_array_equal(back.predict(x, verbose=0), seq.predict(x, verbose=0))
    reg = Regressor(6)
    reg.compile(optimizer="adam", loss="mse")
    reg.fit(x, y, epochs=1, verbose=0)
    reg.save(tmp_path / "reg.keras")
    again = keras.models.load_model(tmp_path / "reg.keras")
    assert type(again) is Regressor and again.units == 6
    np.testing.assert_array_equal(again.predict(x, verbose=0), reg.predict(x, verbose=0))
    again2 = keras.saving.load_model(tmp_path / "reg.keras", custom_objects={"Regressor": Regressor})
    assert type(again2) is Regressor


def test_unregistered_class_is_refused(tmp_path):
    seq = keras.Sequential([keras.Input(shape=(4,)), Scale(3.0)])
    seq.save(tmp_path / "s.keras")
    with zipfile.ZipFile(tmp_path / "s.keras") as z:
        cfg, w = json.loads(z.read("config.json")), z.read("model.weights.safetensors")
    cfg["config"]["layers"][0]["class_name"] = "Elsewhere>Vanished"
    with zipfile.ZipFile(tmp_path / "bad.keras", "w") as z:
        z.writestr("config.json", json.dumps(cfg)); z.writestr("model.weights.safetensors", w)
    with pytest.raises(ValueError, match=r"names the class 'Elsewhere>Vanished'.*register_keras_serializable\(\), or "
                                         r"pass custom_objects=\{'Vanished': Vanished\}"):
        keras.saving.load_model(tmp_path / "bad.keras")


def test_unsaveable_config_is_refused(tmp_path):
    class Holder(layers.Layer):
        def __init__(self, thing=None, **kwargs):
            super().__init__(**kwargs); self.thing = thing
        def call(self, x): return x
        def get_config(self): return {**super().get_config(), "thing": object()}
    m = keras.Sequential([keras.Input(shape=(2,)), Holder()])
    with pytest.raises(ValueError, match="get_config\\(\\) holds a value that is not plain JSON"):
        m.save(tmp_path / "h.keras")


def test_custom_steps_and_masks_on_the_emulated_gpu():
    "A custom train_step (GradientTape, optimizer.apply, metrics) and a masked model on chapter 32's emulated GPU."
    from neuralbook import cuda_emu
    if cuda_emu.compiler() is None: pytest.skip("no C++ compiler for the emulated GPU")

    class Step(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(1)
        def call(self, x): return self.d(x)
        def train_step(self, data):
            x, y = data
            with keras.GradientTape() as tape:
                pred = self(x, training=True)
                loss = self.compute_loss(y=y, y_pred=pred)
            self.optimizer.apply(tape.gradient(loss, self.trainable_weights), self.trainable_weights)
            for m in self.metrics:
                m.update_state(loss) if m.name == "loss" else m.update_state(y, pred)
            return {m.name: m.result() for m in self.metrics}

    class Reader(layers.Layer):
        supports_masking = True
        def call(self, x, mask=None):
            self.seen = mask
            return x

    x, y = _reg_data(8)
    with cuda_emu.emulated_gpu(max_blocks=3):
        keras.utils.set_random_seed(0)
        m = Step()
        m.compile(optimizer="sgd", loss="mse", metrics=["mae"], device="cuda")
        h = m.fit(x, y, epochs=2, batch_size=4, verbose=0).history
        assert sorted(h) == ["loss", "mae"] and all(np.isfinite(h["loss"]))
        assert m.predict(x, verbose=0).shape == (8, 1)
        ids = np.array([[1, 2, 0], [3, 0, 0]])
        seq = keras.Sequential([keras.Input(shape=(3,), dtype="int64"), layers.Embedding(4, 2, mask_zero=True),
                                layers.Dense(2), Reader(name="r")])
        seq.compile(optimizer="sgd", loss="mse", device="cuda")
        seq.predict(ids, verbose=0)
        np.testing.assert_array_equal(seq.get_layer("r").seen.numpy(), ids != 0)


def test_custom_train_step_with_a_dataloader_and_super_train_step():
    from neuralbook.data import DataLoader, TensorDataset
    class Counting(keras.Model):
        def __init__(self):
            super().__init__()
            self.d, self.calls = layers.Dense(1), 0
        def call(self, x): return self.d(x)
        def train_step(self, data):
            self.calls += 1
            return super().train_step(data)
    nb.manual_seed(0)
    x, y = _reg_data(64)
    m = Counting()
    m.compile("sgd", "mse", metrics=["mae"])
    h = m.fit(DataLoader(TensorDataset(x, y), batch_size=16), epochs=2, verbose=0,
              validation_data=DataLoader(TensorDataset(x, y), batch_size=32)).history
    assert m.calls == 8 and sorted(h) == ["loss", "mae", "val_loss", "val_mae"]
    assert h["loss"][1] < h["loss"][0]
