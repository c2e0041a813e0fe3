"""Keras masks in neuralbook.keras: made by Embedding(mask_zero=True) or compute_mask, passed on by layers that
support masking, received as `mask=` by a call that takes it, in eager calls, Sequential and functional models."""
import os
import warnings

import numpy as np
import pytest

from neuralbook import keras
from neuralbook.autograd import Tensor
from neuralbook.keras import layers
from neuralbook.keras.layers.layer import get_keras_mask, set_keras_mask

IDS = np.array([[3, 1, 0, 0], [2, 0, 0, 0], [1, 2, 3, 4]])
EXPECTED = IDS != 0


def _keras():
    os.environ["KERAS_BACKEND"] = "torch"
    return pytest.importorskip("keras")


class Reader(layers.Layer):
    "Records the mask its call received; passes the mask on."
    supports_masking = True
    def call(self, x, mask=None):
        self.seen = mask
        return x


def test_embedding_mask_zero_attaches_mask():
    h = layers.Embedding(5, 3, mask_zero=True)(IDS)
    np.testing.assert_array_equal(get_keras_mask(h).numpy(), EXPECTED)
    assert get_keras_mask(layers.Embedding(5, 3)(IDS)) is None


def test_mask_flows_through_dense_dropout_activation():
    h = layers.Embedding(5, 3, mask_zero=True)(IDS)
    for l in (layers.Dense(4), layers.Dropout(0.5), layers.Activation("relu"), layers.ReLU()):
        h = l(h)
        np.testing.assert_array_equal(get_keras_mask(h).numpy(), EXPECTED)


def test_call_receives_mask_sequential():
    m = keras.Sequential([keras.Input(shape=(4,), dtype="int64"), layers.Embedding(5, 3, mask_zero=True),
                          layers.Dense(2), Reader(name="reader")])
    m.predict(IDS, verbose=0)
    np.testing.assert_array_equal(m.get_layer("reader").seen.numpy(), EXPECTED)


def test_call_receives_mask_functional():
    x = keras.Input(shape=(4,), dtype="int64")
    y = Reader(name="reader")(layers.Dense(2)(layers.Embedding(5, 3, mask_zero=True)(x)))
    m = keras.Model(x, y)
    m(IDS)
    np.testing.assert_array_equal(m.get_layer("reader").seen.numpy(), EXPECTED)


def test_explicit_mask_argument_wins():
    r = Reader()
    explicit = np.array([[True, False, True, False]] * 3)
    r(layers.Embedding(5, 3, mask_zero=True)(IDS), mask=Tensor(explicit))
    np.testing.assert_array_equal(r.seen.numpy(), explicit)


def test_layer_without_masking_drops_it_with_a_warning():
    h = layers.Embedding(5, 3, mask_zero=True)(IDS)
    with pytest.warns(UserWarning, match="does not support masking"):
        out = layers.Flatten()(h)
    assert get_keras_mask(out) is None


def test_custom_compute_mask_and_merge():
    class NonZero(layers.Layer):
        def call(self, x): return x
        def compute_mask(self, x, mask=None): return Tensor(x.numpy() != 0)
    a = NonZero()(np.array([[1.0, 0.0, 2.0]]))
    b = NonZero()(np.array([[1.0, 3.0, 0.0]]))
    assert NonZero.supports_masking
    np.testing.assert_array_equal(get_keras_mask(layers.Add()([a, b])).numpy(), [[True, False, False]])
    c = layers.Concatenate(axis=1)([a, b])
    np.testing.assert_array_equal(get_keras_mask(c).numpy(), [[True, False, True, True, True, False]])


def test_set_keras_mask_is_forgotten_with_tensor():
    from neuralbook.keras.layers import layer as L
    t = Tensor(np.zeros((2, 3)))
    set_keras_mask(t, np.ones((2,), bool))
    k = id(t)
    assert k in L._MASKS
    del t
    assert k not in L._MASKS


def test_softmax_mask_matches_keras():
    K = _keras()
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    ours = layers.Softmax()(x, mask=EXPECTED).numpy()
    theirs = np.asarray(K.ops.convert_to_numpy(K.layers.Softmax()(x, mask=EXPECTED)))
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_embedding_mask_matches_keras():
    K = _keras()
    theirs = K.ops.convert_to_numpy(K.layers.Embedding(5, 3, mask_zero=True).compute_mask(IDS))
    np.testing.assert_array_equal(layers.Embedding(5, 3, mask_zero=True).compute_mask(Tensor(IDS)).numpy(), theirs)
    # and a mask-reading layer in Keras receives the same mask as ours
    class KReader(K.layers.Layer):
        def call(self, x, mask=None):
            self.seen = K.ops.convert_to_numpy(mask)
            return x
    r = KReader()
    r(K.layers.Dense(2)(K.layers.Embedding(5, 3, mask_zero=True)(IDS)))
    np.testing.assert_array_equal(r.seen, EXPECTED)


def test_hot_path_unaffected_without_masks():
    from neuralbook.keras.layers import layer as L
    d = layers.Dense(2)
    d(np.ones((1, 3)))
    assert not L._MASKS or all(e[0]() is not None for e in L._MASKS.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert d(Tensor(np.ones((4, 3), np.float32))).shape == (4, 2)
