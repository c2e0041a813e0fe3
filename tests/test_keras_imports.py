"""Issue 12: `neuralbook.keras` is a package laid out like `keras/src`, so every import path Keras code uses works."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MODULES = ["neuralbook.keras", "neuralbook.keras.activations", "neuralbook.keras.backend", "neuralbook.keras.config",
           "neuralbook.keras.mixed_precision", "neuralbook.keras.optimizers.schedules",
           "neuralbook.keras.initializers", "neuralbook.keras.regularizers", "neuralbook.keras.layers",
           "neuralbook.keras.layers.layer", "neuralbook.keras.layers.core", "neuralbook.keras.layers.merging",
           "neuralbook.keras.layers.reshaping", "neuralbook.keras.layers.convolutional",
           "neuralbook.keras.layers.pooling", "neuralbook.keras.layers.normalization", "neuralbook.keras.models",
           "neuralbook.keras.models.functional", "neuralbook.keras.models.model", "neuralbook.keras.models.sequential",
           "neuralbook.keras.losses", "neuralbook.keras.metrics", "neuralbook.keras.optimizers",
           "neuralbook.keras.callbacks", "neuralbook.keras.trainers", "neuralbook.keras.trainers.compile_utils",
           "neuralbook.keras.trainers.data_adapter", "neuralbook.keras.saving", "neuralbook.keras.utils"]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_is_a_real_module(name):
    m = importlib.import_module(name)
    assert m.__name__ == name and type(m).__name__ == "module"


def test_the_old_modules_are_gone():
    assert not (ROOT / "neuralbook" / "keras.py").exists() and not (ROOT / "neuralbook" / "keras_conv.py").exists()
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("neuralbook.keras_conv")


def test_from_imports_as_in_keras_code():
    from neuralbook.keras import layers, models, optimizers, losses, metrics, callbacks, saving, utils
    from neuralbook.keras.layers import (Dense, Conv2D, MaxPooling2D, Flatten, Dropout, BatchNormalization,
                                         Activation, Input, Add, Concatenate, Reshape, Embedding)
    from neuralbook.keras.models import Model, Sequential, load_model
    from neuralbook.keras.callbacks import EarlyStopping, ModelCheckpoint, TerminateOnNaN, LearningRateScheduler
    from neuralbook.keras.optimizers import Adam, SGD
    from neuralbook.keras.optimizers.schedules import ExponentialDecay, CosineDecay
    from neuralbook.keras.mixed_precision import set_global_policy, Policy
    from neuralbook.keras.config import floatx
    from neuralbook.keras.utils import to_categorical
    from neuralbook.keras.saving import load_model as load_model2
    import neuralbook.keras.layers as L
    assert L.Dense is Dense is layers.Dense and L.Conv2D is Conv2D and layers.MaxPool2D is MaxPooling2D
    assert models.Model is Model and models.Sequential is Sequential and load_model is load_model2
    assert optimizers.Adam is Adam and callbacks.EarlyStopping is EarlyStopping
    assert utils.to_categorical is to_categorical and saving.load_model is load_model
    assert losses.SparseCategoricalCrossentropy and metrics.SparseCategoricalAccuracy
    for cls in (Flatten, Dropout, BatchNormalization, Activation, Add, Concatenate, Reshape, Embedding, Input,
                ModelCheckpoint, TerminateOnNaN, LearningRateScheduler, SGD, ExponentialDecay, CosineDecay,
                set_global_policy, Policy, floatx):
        assert callable(cls)


def test_attribute_paths():
    import neuralbook as nb
    from neuralbook import keras
    assert nb.keras is keras
    assert keras.Input is keras.layers.Input and keras.Model is keras.models.Model
    assert keras.Sequential is keras.models.Sequential and issubclass(keras.Sequential, keras.Model)
    assert keras.callbacks.EarlyStopping and keras.saving.load_model is keras.models.load_model
    assert keras.optimizers.Adam and keras.optimizers.schedules.ExponentialDecay is keras.optimizers.ExponentialDecay
    assert keras.losses.get("mse") and keras.metrics.get("mae") and keras.utils.to_categorical([1]).shape == (1, 2)
    assert keras.regularizers.l2 and keras.initializers.HeNormal and keras.activations.relu
    assert keras.backend.clear_session is keras.clear_session is keras.utils.clear_session
    assert keras.config.floatx() == "float32" and keras.mixed_precision.global_policy().name == "float32"
    assert keras.POLICY_RUNTIME is keras.backend.POLICY_RUNTIME


def test_model_is_a_trainer_and_a_layer():
    from neuralbook.keras import Layer, Model
    from neuralbook.keras.trainers import Trainer
    assert Model.__mro__[1] is Trainer and issubclass(Model, Layer)
    for m in ("compile", "fit", "evaluate", "predict"):
        assert getattr(Model, m) is getattr(Trainer, m)


def test_import_neuralbook_as_tf():
    code = ("import neuralbook as tf\n"
            "i = tf.keras.Input(shape=(4,))\n"
            "m = tf.keras.Model(inputs=i, outputs=tf.keras.layers.Dense(3, activation='softmax')(i))\n"
            "m.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
            "print(type(m).__module__, tf.keras.layers.Dense.__module__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["neuralbook.keras.models.model", "neuralbook.keras.layers.core"]
