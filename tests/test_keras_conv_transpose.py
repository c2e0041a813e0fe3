"""Keras Conv2DTranspose (chapter 40) against Keras 3 on copied kernels: output sizes for 'valid'/'same', explicit
output_padding, strides, dilation, both data formats; input and kernel gradients; float64 gradcheck; save/load."""
import os

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.keras.layers.convolutional import Conv2DTranspose

CASES = [dict(kernel_size=3, strides=2, padding="valid"), dict(kernel_size=3, strides=2, padding="same"),
         dict(kernel_size=2, strides=3, padding="same"), dict(kernel_size=4, strides=2, padding="same"),
         dict(kernel_size=3, strides=2, padding="same", output_padding=1),
         dict(kernel_size=3, strides=2, padding="valid", output_padding=1),
         dict(kernel_size=4, strides=3, padding="same", output_padding=2), dict(kernel_size=2, strides=2, padding="same",
         output_padding=1), dict(kernel_size=5, strides=3, padding="same", output_padding=1),
         dict(kernel_size=4, strides=1, padding="same", output_padding=0),
         dict(kernel_size=(3, 2), strides=(1, 2), padding="valid"),
         dict(kernel_size=3, strides=1, padding="same", dilation_rate=2),
         dict(kernel_size=3, strides=2, padding="same", data_format="channels_first")]


@pytest.fixture(scope="module")
def keras3():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_matches_keras3(keras3, cfg):
    first = cfg.get("data_format") == "channels_first"
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4) if first else (2, 5, 4, 3)).astype(np.float32)
    theirs = keras3.layers.Conv2DTranspose(4, **cfg)
    y_ref = np.asarray(theirs(x).detach().cpu().numpy() if hasattr(theirs(x), "detach") else theirs(x))
    ours = Conv2DTranspose(4, **cfg)
    y = ours(x)
    ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    y = ours(x).numpy()
    assert y.shape == y_ref.shape == ours.compute_output_shape(x.shape)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)


def test_gradients_and_gradcheck():
    nb.manual_seed(0)
    layer = Conv2DTranspose(2, 3, strides=2, padding="same", dtype="float64")
    x = nb.tensor(np.random.default_rng(1).standard_normal((1, 3, 3, 2)), requires_grad=True)
    layer(x)
    k = layer._parameters["kernel"]
    assert nb.gradcheck(lambda a: (layer(a) ** 2).sum(), x)
    y = (layer(x) ** 2).sum()
    y.backward()
    assert k.grad is not None and k.grad.shape == (3, 3, 2, 2)


def test_save_load_and_errors(tmp_path):
    from neuralbook import keras
    m = keras.Sequential([keras.Input((4, 4, 2)), Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1)])
    x = np.random.default_rng(2).standard_normal((1, 4, 4, 2)).astype(np.float32)
    m.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(back.predict(x, verbose=0), m.predict(x, verbose=0))
    with pytest.raises(ValueError, match=r"Conv2DTranspose: output_padding \(2, 2\) must be smaller than the strides"):
        Conv2DTranspose(1, 3, strides=2, output_padding=2)
    layer = Conv2DTranspose(1, 3)
    layer(np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="Conv2DTranspose '.*' is incompatible: 3 channels"):
        layer(np.zeros((1, 4, 4, 3), np.float32))


def test_global_max_pooling_2d_matches_keras3(keras3):
    from neuralbook import keras
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 3)).astype(np.float32)
    for kd in (False, True):
        for fmt in ("channels_last", "channels_first"):
            ref = keras3.layers.GlobalMaxPooling2D(data_format=fmt, keepdims=kd)(x).detach().cpu().numpy()
            ours = keras.layers.GlobalMaxPooling2D(data_format=fmt, keepdims=kd)
            np.testing.assert_array_equal(ours(x).numpy(), ref)
            assert ours.compute_output_shape(x.shape) == ref.shape
    assert keras.layers.GlobalMaxPool2D is keras.layers.GlobalMaxPooling2D
