"""The layers the Keras guides use, added for issue 20: outputs against Keras 3 (torch backend), gradients by
float64 gradcheck, configs round-trip."""
import os

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.autograd import Tensor
from neuralbook.keras import layers as L


def _keras():
    os.environ["KERAS_BACKEND"] = "torch"
    return pytest.importorskip("keras")


RNG = np.random.default_rng(0)
IMG = RNG.normal(size=(2, 3, 4, 2)).astype(np.float32)
VEC = RNG.normal(size=(3, 5)).astype(np.float32)

CASES = [("UpSampling2D", {"size": (2, 3)}, IMG), ("UpSampling2D", {}, IMG), ("Permute", {"dims": (3, 1, 2)}, IMG),
         ("RepeatVector", {"n": 4}, VEC), ("LeakyReLU", {}, VEC), ("LeakyReLU", {"negative_slope": 0.1}, VEC),
         ("Rescaling", {"scale": 1 / 255, "offset": -1.0}, IMG), ("Identity", {}, VEC),
         ("Reshape", {"target_shape": (5, 1)}, VEC), ("Flatten", {}, IMG)]


@pytest.mark.parametrize("name,kw,x", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_layer_matches_keras(name, kw, x):
    K = _keras()
    ours = getattr(L, name)(**kw)(x).numpy()
    theirs = K.ops.convert_to_numpy(getattr(K.layers, name)(**kw)(x))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert getattr(L, name)(**kw).compute_output_shape((None,) + x.shape[1:]) == (None,) + theirs.shape[1:]


def test_normalization_adapt_matches_keras():
    K = _keras()
    x = RNG.normal(loc=3.0, scale=2.0, size=(64, 4)).astype(np.float32)
    ours, theirs = L.Normalization(), K.layers.Normalization()
    ours.adapt([x[:20], x[20:]])                 # batches combine to the statistics of the whole
    theirs.adapt(x)
    np.testing.assert_allclose(ours(x).numpy(), K.ops.convert_to_numpy(theirs(x)), rtol=1e-4, atol=1e-5)
    img = RNG.normal(size=(8, 3, 3, 2)).astype(np.float32)
    o2, t2 = L.Normalization(axis=-1), K.layers.Normalization(axis=-1)
    o2.adapt(img); t2.adapt(img)
    np.testing.assert_allclose(o2(img).numpy(), K.ops.convert_to_numpy(t2(img)), rtol=1e-4, atol=1e-5)
    assert len(o2.trainable_weights) == 0 and len(o2.non_trainable_weights) == 2
    inv = L.Normalization(mean=2.0, variance=4.0, invert=True)
    np.testing.assert_allclose(inv(np.array([[1.0]])).numpy(), [[4.0]])


def test_lambda_layer():
    lam = L.Lambda(lambda x, k=2.0: x * k, arguments={"k": 3.0})
    np.testing.assert_allclose(lam(np.ones((1, 2))).numpy(), [[3.0, 3.0]])
    with pytest.raises(ValueError, match="cannot save Lambda"):
        lam.get_config()


@pytest.mark.parametrize("layer,x", [(L.UpSampling2D((2, 2)), IMG[:1, :2, :2].astype(np.float64)),
                                     (L.RepeatVector(3), VEC[:2].astype(np.float64)),
                                     (L.Permute((2, 1)), VEC[:2, :, None].repeat(2, -1).astype(np.float64))])
def test_reshapes_gradcheck(layer, x):
    layer._dtype = np.dtype(np.float64)
    assert nb.gradcheck(lambda a: layer(a), x)


def test_configs_round_trip():
    for l in (L.UpSampling2D((2, 3)), L.Permute((2, 1)), L.RepeatVector(4), L.LeakyReLU(0.2), L.Rescaling(0.5, 1.0),
              L.Normalization(axis=-1)):
        c = l.get_config()
        assert type(l).from_config(c).get_config() == c


def test_bad_arguments():
    with pytest.raises(ValueError, match="Permute: dims must be a permutation"):
        L.Permute((1, 3))
    with pytest.raises(ValueError, match="give both mean and variance"):
        L.Normalization(mean=1.0)
