"""Chapter 40: Keras convolution layers — channels-last ops and layers on chapter 12's Functions. PyTorch oracles
(with TensorFlow's 'same' padding written out independently), float64 gradient checks, output shapes and
summary() against hand-computed numbers, Keras' batch-norm conventions, save/load round trips and bad input."""
import math

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import keras
from neuralbook.backend import default_generator
from neuralbook.keras.layers.convolutional import conv
from neuralbook.keras.layers.pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D, average_pool, max_pool
from tests.helpers import compare_with_torch, torch

tF = torch.nn.functional if torch is not None else None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the oracle")
L = keras.layers


@pytest.fixture(autouse=True)
def _fresh():
    state = default_generator.get_state()
    nb.manual_seed(0)
    keras.backend.clear_session()
    yield
    default_generator.set_state(state)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def tf_same(n, k, s, d=1):
    "TensorFlow's 'same' padding of one axis, written out: ceil(n/s) outputs, the odd pixel after."
    out = math.ceil(n / s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def torch_pad(x, hw, k, s, d, padding, value=0.0):
    "Pad an NCHW torch tensor as TensorFlow would."
    if padding == "valid": return x
    (t, b), (l, r) = tf_same(hw[0], k[0], s[0], d[0]), tf_same(hw[1], k[1], s[1], d[1])
    return tF.pad(x, (l, r, t, b), value=value)


# ---------------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------------

def test_layers_are_in_keras_layers_and_registered_for_load_model():
    from neuralbook.keras.layers.layer import _LAYER_CLASSES
    for name in ["Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "BatchNormalization"]:
        cls = getattr(L, name)
        assert _LAYER_CLASSES[name] is cls
    assert L.MaxPool2D is MaxPooling2D and L.AvgPool2D is AveragePooling2D
    assert L.Conv2D(4, 3).name == "conv2d" and L.MaxPooling2D().name == "max_pooling2d"
    assert L.BatchNormalization().name == "batch_normalization"


# ---------------------------------------------------------------------------------------------------------------
# The ops against PyTorch
# ---------------------------------------------------------------------------------------------------------------

CONV_CASES = [  # (H, W, C, K, kernel, strides, padding, dilation)
    (7, 6, 3, 4, (3, 3), (1, 1), "valid", (1, 1)),
    (7, 6, 3, 4, (3, 3), (1, 1), "same", (1, 1)),
    (8, 8, 2, 3, (3, 3), (2, 2), "same", (1, 1)),      # asymmetric padding (0, 1)
    (7, 9, 2, 3, (2, 4), (2, 3), "same", (1, 1)),
    (9, 8, 3, 2, (3, 2), (1, 1), "same", (2, 3)),
    (9, 9, 2, 2, (3, 3), (2, 1), "valid", (2, 1)),
]


@needs_torch
@pytest.mark.parametrize("H,W,C,K,ks,s,pad,d", CONV_CASES)
def test_conv_matches_torch(H, W, C, K, ks, s, pad, d):
    x, k, b = rand(2, H, W, C), rand(*ks, C, K, seed=1), rand(K, seed=2)

    def theirs(x, k, b):
        xt = torch_pad(x.permute(0, 3, 1, 2), (H, W), ks, s, d, pad)
        return tF.conv2d(xt, k.permute(3, 2, 0, 1), b, stride=s, dilation=d).permute(0, 2, 3, 1)

    compare_with_torch(lambda x, k, b: conv(x, k, b, strides=s, padding=pad, dilation_rate=d), theirs, x, k, b)


@needs_torch
def test_conv_groups_and_channels_first_match_torch():
    x, k = rand(2, 6, 7, 7), rand(3, 3, 2, 6, seed=1)             # channels_first input (N, C=6, H, W), 3 groups
    compare_with_torch(lambda x, k: conv(x, k, strides=2, padding="same", data_format="channels_first"),
                       lambda x, k: tF.conv2d(torch_pad(x, (7, 7), (3, 3), (2, 2), (1, 1), "same"),
                                              k.permute(3, 2, 0, 1), stride=2, groups=3), x, k)


@needs_torch
@pytest.mark.parametrize("hw,pool,strides,pad", [((6, 6), (2, 2), None, "valid"), ((7, 5), (2, 2), None, "same"),
                                                 ((7, 8), (3, 3), (2, 2), "same"), ((7, 8), (3, 2), (1, 2), "valid"),
                                                 ((5, 5), (3, 3), (1, 1), "same")])
def test_pools_match_torch(hw, pool, strides, pad):
    x = rand(2, *hw, 3)
    s = strides or pool

    def t_max(x):
        xt = torch_pad(x.permute(0, 3, 1, 2), hw, pool, s, (1, 1), pad, value=-math.inf)
        return tF.max_pool2d(xt, pool, s).permute(0, 2, 3, 1)

    def t_avg(x):   # TensorFlow: the mean over the window's pixels inside the image
        xt = x.permute(0, 3, 1, 2)
        total = tF.avg_pool2d(torch_pad(xt, hw, pool, s, (1, 1), pad), pool, s, divisor_override=1)
        count = tF.avg_pool2d(torch_pad(torch.ones_like(xt), hw, pool, s, (1, 1), pad), pool, s, divisor_override=1)
        return (total / count).permute(0, 2, 3, 1)

    compare_with_torch(lambda x: max_pool(x, pool, strides, pad), t_max, x)
    compare_with_torch(lambda x: average_pool(x, pool, strides, pad), t_avg, x)


@needs_torch
@pytest.mark.parametrize("padding,strides,dilation,use_bias", [("same", 1, 1, True), ("same", 2, 1, False),
                                                               ("valid", (1, 2), (2, 1), True)])
def test_conv2d_layer_forward_backward_match_torch(padding, strides, dilation, use_bias):
    "The layer in float64 against torch.nn.Conv2d holding the transposed kernel: output and all gradients."
    x = rand(3, 9, 8, 4)
    layer = L.Conv2D(5, (3, 2), strides=strides, padding=padding, dilation_rate=dilation, use_bias=use_bias,
                     dtype="float64")
    layer.build((None, 9, 8, 4)); layer.built = True
    kernel = layer.get_weights()[0]
    assert kernel.shape == (3, 2, 4, 5) and len(layer.get_weights()) == 1 + use_bias
    if use_bias: layer.set_weights([kernel, rand(5, seed=3)])
    tconv = torch.nn.Conv2d(4, 5, (3, 2), stride=strides, dilation=dilation, bias=use_bias).double()
    with torch.no_grad():
        tconv.weight.copy_(torch.tensor(kernel.transpose(3, 2, 0, 1)))
        if use_bias: tconv.bias.copy_(torch.tensor(rand(5, seed=3)))
    pair = lambda v: (v, v) if isinstance(v, int) else v
    xn, xt = nb.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y = layer(xn)
    ty = tconv(torch_pad(xt.permute(0, 3, 1, 2), (9, 8), (3, 2), pair(strides), pair(dilation), padding))
    ty = ty.permute(0, 2, 3, 1)
    assert y.shape == tuple(ty.shape) == (3,) + layer.compute_output_shape((None, 9, 8, 4))[1:]
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-10)
    v = rand(*y.shape, seed=4)
    y.backward(v); ty.backward(torch.tensor(v))
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(layer.kernel.grad.numpy(), tconv.weight.grad.numpy().transpose(2, 3, 1, 0), atol=1e-10)
    if use_bias: np.testing.assert_allclose(layer.bias.grad.numpy(), tconv.bias.grad.numpy(), atol=1e-10)


@needs_torch
@pytest.mark.parametrize("shape,axis", [((4, 3, 3, 5), -1), ((4, 5, 3, 3), 1), ((16, 6), -1)])
def test_batch_normalization_matches_torch(shape, axis):
    "Training mode = F.batch_norm with batch statistics; moving averages Keras' way (keep factor, biased variance)."
    x = rand(*shape) * 2 + 1
    bn = L.BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3, dtype="float64")
    bn.build((None,) + shape[1:]); bn.built = True
    C = shape[axis]
    g, b = rand(C, seed=1), rand(C, seed=2)
    bn.set_weights([g, b, np.zeros(C), np.ones(C)])
    perm = list(range(len(shape)))
    perm.insert(1, perm.pop(axis % len(shape)))       # the channel axis to position 1, as PyTorch wants it
    inv = list(np.argsort(perm))
    train, infer = (with_weights(bn, ["gamma", "beta"], lambda l, x, t=t: l(x, training=t)) for t in (True, False))
    compare_with_torch(train,
                       lambda x, g, b: tF.batch_norm(x.permute(*perm), None, None, g, b, True, 0.0, 1e-3)
                       .permute(*inv), x, g, b)
    # the call above ran in training mode once: moving averages with the biased variance of the batch
    red = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    mm, mv = bn.get_weights()[2:]
    np.testing.assert_allclose(mm, 0.1 * x.mean(axis=red), atol=1e-12)
    np.testing.assert_allclose(mv, 0.9 + 0.1 * x.var(axis=red), atol=1e-12)
    # inference mode = F.batch_norm with running statistics
    compare_with_torch(infer, lambda x, g, b: tF.batch_norm(
        x.permute(*perm), torch.tensor(mm), torch.tensor(mv), g, b, False, 0.0, 1e-3).permute(*inv), x, g, b)
    # ... which leaves the moving averages where they were
    np.testing.assert_array_equal(bn.get_weights()[2], mm)


# ---------------------------------------------------------------------------------------------------------------
# Gradient checks through the layers (float64)
# ---------------------------------------------------------------------------------------------------------------

def with_weights(layer, names, fn=None):
    "A function of (x, *weights) that runs the layer with those weights (so that gradcheck perturbs them too)."
    def run(x, *ws):
        for n, w in zip(names, ws): layer._parameters[n] = w
        out = layer(x, training=True) if fn is None else fn(layer, x)
        return out
    return run


@pytest.mark.parametrize("kwargs", [{"padding": "same", "strides": 2}, {"padding": "valid", "dilation_rate": (2, 1)},
                                    {"padding": "same", "groups": 2, "activation": "tanh"}])
def test_gradcheck_conv2d(kwargs):
    layer = L.Conv2D(4, (3, 2), dtype="float64", **kwargs)
    x = rand(2, 5, 4, 2)
    layer.build((None, 5, 4, 2)); layer.built = True
    nb.gradcheck(with_weights(layer, ["kernel", "bias"]), x, layer.kernel.numpy(), rand(4, seed=5))


def test_gradgradcheck_conv_op():
    nb.gradgradcheck(lambda x, k: conv(x, k, strides=2, padding="same"), rand(1, 5, 4, 2), rand(2, 2, 2, 3, seed=1))


@pytest.mark.parametrize("cls,kwargs", [(MaxPooling2D, {"padding": "same"}),
                                        (MaxPooling2D, {"pool_size": 3, "strides": 2}),
                                        (AveragePooling2D, {"padding": "same"}),
                                        (AveragePooling2D, {"pool_size": (3, 2), "strides": 1}),
                                        (GlobalAveragePooling2D, {}), (GlobalAveragePooling2D, {"keepdims": True})])
def test_gradcheck_pooling(cls, kwargs):
    nb.gradcheck(lambda x: cls(**kwargs, dtype="float64")(x), rand(2, 5, 5, 3))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis,shape", [(-1, (3, 3, 2, 4)), (1, (3, 4, 2, 2))])
def test_gradcheck_batch_normalization(training, axis, shape):
    bn = L.BatchNormalization(axis=axis, dtype="float64")
    bn.build((None,) + shape[1:]); bn.built = True
    C = shape[axis]
    bn.set_weights([rand(C, seed=1), rand(C, seed=2), rand(C, seed=3), rand(C, seed=4) ** 2 + 0.5])
    bn.momentum = 1.0                        # keep the moving averages fixed while gradcheck calls the layer again
    nb.gradcheck(with_weights(bn, ["gamma", "beta"], lambda l, x: l(x, training=training)), rand(*shape) * 3,
                 rand(C, seed=1), rand(C, seed=2))


# ---------------------------------------------------------------------------------------------------------------
# Shapes, summary() and weights
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("H,W,C,K,ks,s,pad,d", CONV_CASES)
def test_compute_output_shape_equals_the_output_shape(H, W, C, K, ks, s, pad, d):
    layer = L.Conv2D(K, ks, strides=s, padding=pad, dilation_rate=d)
    y = layer(rand(2, H, W, C))
    assert (2,) + layer.compute_output_shape((None, H, W, C))[1:] == y.shape
    for n, k_, s_, d_, o in zip((H, W), ks, s, d, y.shape[1:3]):
        assert o == (math.ceil(n / s_) if pad == "same" else (n - d_ * (k_ - 1) - 1) // s_ + 1)
    for pl in (L.MaxPooling2D(ks, s, pad), L.AveragePooling2D(ks, s, pad)):
        assert (2,) + pl.compute_output_shape((None, H, W, C))[1:] == pl(rand(2, H, W, C)).shape


def test_summary_of_lenet5_by_hand(capsys):
    "LeNet-5 in Keras form; parameter counts computed by hand: 156, 2416, 48120, 10164, 850 = 61,706."
    m = keras.Sequential([keras.Input(shape=(28, 28, 1)),
                          L.Conv2D(6, 5, padding="same", activation="tanh"), L.AveragePooling2D(),
                          L.Conv2D(16, 5, activation="tanh"), L.AveragePooling2D(), L.Flatten(),
                          L.Dense(120, activation="tanh"), L.Dense(84, activation="tanh"),
                          L.Dense(10, activation="softmax")])
    expected = [((None, 28, 28, 6), 5 * 5 * 1 * 6 + 6), ((None, 14, 14, 6), 0),
                ((None, 10, 10, 16), 5 * 5 * 6 * 16 + 16), ((None, 5, 5, 16), 0), ((None, 400), 0),
                ((None, 120), 400 * 120 + 120), ((None, 84), 120 * 84 + 84), ((None, 10), 84 * 10 + 10)]
    assert [(s, l.count_params()) for s, l in zip(m._shapes, m.layers)] == expected
    m.summary()
    out = capsys.readouterr().out
    assert "(None, 28, 28, 6)" in out and "│       156 │" in out and "Total params: 61,706" in out
    assert m.predict(rand(3, 28, 28, 1), verbose=0).shape == (3, 10)


def test_summary_functional_with_batch_norm(capsys):
    "The brief's example — Conv2D(8, 3, padding='same') on (28, 28, 1): (None, 28, 28, 8), 80 params — and BN's 4C."
    inp = keras.Input(shape=(28, 28, 1))
    x = L.Conv2D(8, 3, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling2D(padding="same", strides=3)(x)                # ceil(28 / 3) = 10
    x = L.Conv2D(16, 3, strides=2, padding="same", groups=2)(x)       # 3·3·4·16 + 16 = 592, ceil(10 / 2) = 5
    out = L.Dense(10)(L.GlobalAveragePooling2D()(x))
    m = keras.Model(inp, out)
    m.summary()
    text = capsys.readouterr().out
    for s in ["(None, 28, 28, 8)", "│        80 │", "(None, 10, 10, 8)", "(None, 5, 5, 16)", "│       592 │",
              "(None, 16)", "Total params: 874", "Trainable params: 858", "Non-trainable params: 16"]:
        assert s in text, s
    assert [w.shape for w in m.layers[2].get_weights()] == [(8,)] * 4


def test_unknown_spatial_size():
    inp = keras.Input(shape=(None, None, 3))
    y = L.GlobalAveragePooling2D()(L.MaxPooling2D()(L.Conv2D(8, 3, padding="same")(inp)))
    m = keras.Model(inp, L.Dense(2)(y))
    assert m.layers[1].output.shape == (None, None, None, 8) and y.shape == (None, 8)
    assert m.predict(rand(2, 10, 7, 3), verbose=0).shape == m.predict(rand(2, 6, 6, 3), verbose=0).shape == (2, 2)


def test_weights_layout_initialisation_and_set_weights():
    layer = L.Conv2D(32, (3, 5), groups=4)
    layer(np.zeros((1, 6, 6, 8), np.float32))
    k, b = layer.get_weights()
    assert k.shape == (3, 5, 2, 32) and k.dtype == np.float32 and not b.any()
    limit = math.sqrt(6 / (3 * 5 * 2 + 3 * 5 * 32))                 # Glorot with Keras' conv fans
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
    layer.set_weights([np.ones_like(k), np.arange(32, dtype=np.float32)])
    y = layer(np.ones((1, 3, 5, 8), np.float32)).numpy()
    np.testing.assert_allclose(y[0, 0, 0], 3 * 5 * 2 + np.arange(32))
    bn = L.BatchNormalization(center=False)
    bn.build((None, 4)); bn.built = True
    assert [n for n, _ in bn._weight_paths()] == ["gamma", "moving_mean", "moving_variance"]
    assert len(bn.trainable_weights) == 1 and len(bn.non_trainable_weights) == 2


def test_channels_first_equals_channels_last():
    x = rand(2, 7, 6, 3).astype(np.float32)
    a = L.Conv2D(4, 3, strides=2, padding="same")
    b = L.Conv2D(4, 3, strides=2, padding="same", data_format="channels_first")
    ya = a(x)
    b(x.transpose(0, 3, 1, 2))
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(b(x.transpose(0, 3, 1, 2)).numpy().transpose(0, 2, 3, 1), ya.numpy(), atol=1e-6)
    for cl, cf in [(L.MaxPooling2D(padding="same"), L.MaxPooling2D(padding="same", data_format="channels_first")),
                   (L.AveragePooling2D(3, 2, "same"), L.AveragePooling2D(3, 2, "same", data_format="channels_first")),
                   (L.GlobalAveragePooling2D(keepdims=True), L.GlobalAveragePooling2D("channels_first", True))]:
        np.testing.assert_allclose(cf(x.transpose(0, 3, 1, 2)).numpy().transpose(0, 2, 3, 1), cl(x).numpy(),
                                   atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Training, saving, loading
# ---------------------------------------------------------------------------------------------------------------

def small_cnn(**bn_kwargs):
    return keras.Sequential([keras.Input(shape=(8, 8, 1)), L.Conv2D(4, 3, padding="same", use_bias=False),
                             L.BatchNormalization(**bn_kwargs), L.Activation("relu"), L.MaxPooling2D(),
                             L.AveragePooling2D(2, 1, "same"), L.Conv2D(6, 3, strides=2, padding="same"),
                             L.GlobalAveragePooling2D(), L.Dense(3, activation="softmax")])


def toy_data(n=64):
    X = rand(n, 8, 8, 1).astype(np.float32)
    y = (X[:, :4].mean(axis=(1, 2, 3)) > 0).astype(np.int64) + (X[:, :, :4].mean(axis=(1, 2, 3)) > 0)
    return X, y


def test_fit_trains_batch_norm_and_predict_does_not_touch_it():
    X, y = toy_data()
    m = small_cnn()
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    bn = m.layers[1]
    h = m.fit(X, y, epochs=3, batch_size=16, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    mm, mv = bn.get_weights()[2:]
    assert not np.allclose(mm, 0) and not np.allclose(mv, 1)
    p1 = m.predict(X, verbose=0)
    m.evaluate(X, y, verbose=0)
    np.testing.assert_array_equal(bn.get_weights()[2], mm)
    np.testing.assert_array_equal(m.predict(X, verbose=0), p1)


def test_frozen_batch_norm_runs_in_inference_mode_inside_fit():
    X, y = toy_data()
    m = small_cnn()
    bn = m.layers[1]
    bn.trainable = False
    m.compile("adam", "sparse_categorical_crossentropy")
    before = bn.get_weights()
    m.fit(X, y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(before, bn.get_weights()): np.testing.assert_array_equal(a, b)


def test_save_load_round_trip_identical_predictions(tmp_path):
    X, y = toy_data()
    inp = keras.Input(shape=(8, 8, 1))
    a = L.Conv2D(6, (3, 2), padding="same", activation="relu", kernel_regularizer=keras.regularizers.l2(1e-3))(inp)
    a = L.BatchNormalization(momentum=0.9, epsilon=1e-4)(a)
    b = L.Conv2D(6, 3, padding="same", dilation_rate=2, groups=3)(a)
    c = L.MaxPool2D(3, 2, "same")(keras.layers.Add()([a, b]))
    d = L.AvgPool2D(padding="same")(c)
    out = L.Dense(3, activation="softmax")(L.Flatten()(d))
    m = keras.Model(inp, out)
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(X, y, epochs=2, batch_size=16, verbose=0)
    m.save(tmp_path / "m.keras")
    r = keras.models.load_model(tmp_path / "m.keras")
    assert [type(l).__name__ for l in r.layers] == [type(l).__name__ for l in m.layers]
    np.testing.assert_array_equal(r.predict(X, verbose=0), m.predict(X, verbose=0))
    for l, l2 in zip(m.layers, r.layers):
        assert l.get_config() == l2.get_config()
        for w, w2 in zip(l.get_weights(), l2.get_weights()): np.testing.assert_array_equal(w, w2)
    assert r.compiled and np.isfinite(r.evaluate(X, y, verbose=0)[0])
    # a Sequential model too, and the config alone (clone_model)
    s = small_cnn()
    s.compile("adam", "sparse_categorical_crossentropy")
    s.fit(X, y, epochs=1, verbose=0)
    s.save(tmp_path / "s.keras")
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "s.keras").predict(X, verbose=0),
                                  s.predict(X, verbose=0))
    assert [l.get_config() for l in keras.models.clone_model(s).layers][1:] == [l.get_config() for l in s.layers][1:]


def test_fully_convolutional_model_with_a_fused_softmax():
    "Per-pixel classes: a last Conv2D with softmax is fused into the loss like a last Dense (input_shape= works too)."
    m = keras.Sequential([L.Conv2D(4, 3, padding="same", activation="relu", input_shape=(6, 6, 2)),
                          L.Conv2D(3, 1, activation="softmax")])
    assert m.layers[1].compute_output_shape((None, 6, 6, 4)) == (None, 6, 6, 3) and m.count_params() == 76 + 15
    m.compile("adam", "sparse_categorical_crossentropy")
    X, y = rand(8, 6, 6, 2).astype(np.float32), np.random.default_rng(1).integers(0, 3, (8, 6, 6))
    h = m.fit(X, y, epochs=2, verbose=0)
    assert m._plan.fuse == (0,) and np.isfinite(h.history["loss"]).all()
    np.testing.assert_allclose(m.predict(X, verbose=0).sum(-1), 1, rtol=1e-5)


def test_config_round_trip_of_each_layer():
    for layer in [L.Conv2D(3, (2, 3), strides=(1, 2), padding="same", dilation_rate=2, activation="relu",
                           use_bias=False, kernel_initializer="he_normal", bias_regularizer="l2"),
                  L.MaxPooling2D(3, 1, "same"), L.AveragePooling2D((2, 3)), L.GlobalAveragePooling2D(keepdims=True),
                  L.BatchNormalization(axis=1, momentum=0.5, center=False, gamma_regularizer=keras.regularizers.l1(0.1))]:
        c = layer.get_config()
        assert type(layer).from_config(c).get_config() == c


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

def test_channels_that_do_not_match_the_kernel():
    layer = L.Conv2D(8, 3)
    layer(np.zeros((2, 6, 6, 1), np.float32))
    with pytest.raises(ValueError, match=r"Conv2D 'conv2d'.*\(2, 6, 6, 3\) has 3 channels.*built for 1: kernel "
                                         r"\(3, 3, 1, 8\)"):
        layer(np.zeros((2, 6, 6, 3), np.float32))
    m = keras.Sequential([keras.Input(shape=(6, 6, 2)), L.Conv2D(4, 3)])
    with pytest.raises(ValueError, match=r"expected input shape \(None, 6, 6, 2\), got \(1, 6, 6, 3\)"):
        m.predict(np.zeros((1, 6, 6, 3)), verbose=0)
    bn = L.BatchNormalization()
    bn(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNormalization 'batch_normalization'.*3 channels on axis -1, got "
                                         r"shape \(2, 4, 4, 5\)"):
        bn(np.zeros((2, 4, 4, 5), np.float32))


@pytest.mark.parametrize("make", [lambda: L.Conv2D(2, 3), lambda: L.MaxPooling2D(), lambda: L.AveragePooling2D(),
                                  lambda: L.GlobalAveragePooling2D()])
def test_non_4d_input(make):
    layer = make()
    with pytest.raises(ValueError, match=r"'.*': expected a 4-D input \(batch, height, width, channels\), got shape "
                                         r"\((None|2), 6, 6\); .*x\[\.\.\., None\]"):
        layer(np.zeros((2, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"expected a 4-D input .*got shape \(None, 36\)"):
        make()(keras.Input(shape=(36,)))
    with pytest.raises(ValueError, match=r"conv: expected a 4-D input"):
        conv(np.zeros((6, 6, 1)), np.zeros((3, 3, 1, 2)))


def test_bad_arguments_and_sizes():
    with pytest.raises(ValueError, match="Conv2D: padding must be 'valid' or 'same', got 'causal'"):
        L.Conv2D(2, 3, padding="causal")
    with pytest.raises(ValueError, match="Conv2D: filters must be a positive int, got 0"):
        L.Conv2D(0, 3)
    with pytest.raises(ValueError, match=r"Conv2D: groups \(4\) must divide filters \(6\)"):
        L.Conv2D(6, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        L.Conv2D(2, 0)
    with pytest.raises(ValueError, match="data_format must be 'channels_last'"):
        L.MaxPooling2D(data_format="NHWC")
    with pytest.raises(ValueError, match=r"channel axis .* divisible by groups=2, got input shape \(None, 5, 5, 3\)"):
        L.Conv2D(4, 3, groups=2)(keras.Input(shape=(5, 5, 3)))
    with pytest.raises(ValueError, match=r"Conv2D 'conv2d_\d+': a 5×5 kernel does not fit in the 3×4 input with "
                                         r"padding='valid'; use padding='same'"):
        L.Conv2D(2, 5)(keras.Input(shape=(3, 4, 1)))
    with pytest.raises(ValueError, match=r"a 3×3 kernel \(dilated 5×5\) does not fit in the 4×4 input"):
        conv(np.zeros((1, 4, 4, 1)), np.zeros((3, 3, 1, 1)), dilation_rate=2)
    with pytest.raises(ValueError, match=r"MaxPooling2D 'max_pooling2d(_\d+)?': a 3×3 pool window does not fit in the 2×2"):
        L.MaxPooling2D(3)(np.zeros((1, 2, 2, 1), np.float32))
    with pytest.raises(TypeError, match=r"conv: input \(float32\) and kernel \(float64\) must have the same"):
        conv(np.zeros((1, 4, 4, 1), np.float32), np.zeros((3, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"conv: the input \(1, 4, 4, 3\) has 3 channels and the kernel \(3, 3, 2, 4\)"):
        conv(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 2, 4)))
    with pytest.raises(ValueError, match=r"conv: bias must have shape \(4,\)"):
        conv(np.zeros((1, 4, 4, 2)), np.zeros((3, 3, 2, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="BatchNormalization: momentum must be in"):
        L.BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match=r"axis=3 is out of range for an input of shape \(None, 4, 4\)"):
        L.BatchNormalization(axis=3)(keras.Input(shape=(4, 4)))
    with pytest.raises(TypeError, match="axis must be an int"):
        L.BatchNormalization(axis=[1, 2])


# -- 1-D layers (chapter 40: Conv1D, pooling over steps) against Keras 3 on its torch backend --

def _keras3():
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch")
    k = pytest.importorskip("keras")
    if k.backend.backend() != "torch": pytest.skip("Keras must run on its torch backend here")
    return k


SEQ = np.random.default_rng(3).standard_normal((2, 9, 4)).astype(np.float32)


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, padding="same"),
                                dict(kernel_size=3, padding="causal"), dict(kernel_size=4, strides=2, padding="same"),
                                dict(kernel_size=3, dilation_rate=2, padding="causal"),
                                dict(kernel_size=2, groups=2, padding="same"), dict(kernel_size=3, strides=3),
                                dict(kernel_size=3, padding="same", data_format="channels_first")])
def test_conv1d_against_keras(kw):
    keras = _keras3()
    import torch
    from neuralbook.keras.layers.convolutional import Conv1D
    x = SEQ if kw.get("data_format") != "channels_first" else SEQ.transpose(0, 2, 1).copy()
    kl, ol = keras.layers.Conv1D(6, **kw), Conv1D(6, **kw)
    kl(x); ol(x)
    w = [np.random.default_rng(4).uniform(-0.5, 0.5, a.shape).astype(np.float32) for a in kl.get_weights()]
    kl.set_weights(w); ol.set_weights(w)
    assert [a.shape for a in ol.get_weights()] == [a.shape for a in w]
    xt, xn = torch.tensor(x, requires_grad=True), nb.tensor(x, requires_grad=True)
    ko, oo = kl(xt), ol(xn)
    np.testing.assert_allclose(oo.numpy(), ko.detach().numpy(), atol=1e-5)
    assert ol.compute_output_shape((None,) + x.shape[1:]) == (None,) + tuple(ko.shape[1:])
    c = np.random.default_rng(5).standard_normal(tuple(ko.shape)).astype(np.float32)
    (ko * torch.tensor(c)).sum().backward(); (oo * nb.tensor(c)).sum().backward()
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), atol=1e-5)


def test_conv1d_gradcheck_and_causality():
    from neuralbook.keras.layers.convolutional import Conv1D
    c = Conv1D(3, 3, padding="causal", dilation_rate=2, dtype="float64")
    x = np.random.default_rng(6).standard_normal((2, 7, 2))
    c(nb.tensor(x))
    assert nb.gradcheck(lambda t: c(t), x)
    y, x2 = c(nb.tensor(x)).numpy(), x.copy()
    x2[:, 4:] += 1.0                                     # changing step 4 on leaves steps 0..3 unchanged
    np.testing.assert_array_equal(c(nb.tensor(x2)).numpy()[:, :4], y[:, :4])


@pytest.mark.parametrize("name,kw", [("MaxPooling1D", dict()), ("MaxPooling1D", dict(pool_size=3, strides=2,
                                     padding="same")), ("AveragePooling1D", dict(pool_size=3, padding="same")),
                                     ("AveragePooling1D", dict(pool_size=2, strides=1)),
                                     ("GlobalAveragePooling1D", dict()), ("GlobalMaxPooling1D", dict(keepdims=True)),
                                     ("AveragePooling1D", dict(pool_size=2, data_format="channels_first"))])
def test_pooling1d_against_keras(name, kw):
    keras = _keras3()
    import neuralbook.keras.layers.pooling as P
    kl, ol = getattr(keras.layers, name)(**kw), getattr(P, name)(**kw)
    np.testing.assert_allclose(ol(SEQ).numpy(), kl(SEQ).detach().numpy(), atol=1e-6)
    assert ol.compute_output_shape((None, 9, 4)) == (None,) + tuple(kl(SEQ).shape[1:])


def test_global_average_pooling1d_mask_against_keras():
    keras = _keras3()
    import torch
    from neuralbook.keras.layers.pooling import GlobalAveragePooling1D
    m = np.ones((2, 9), bool); m[0, 5:] = False; m[1, :2] = False
    ko = keras.layers.GlobalAveragePooling1D()(SEQ, mask=torch.tensor(m))
    np.testing.assert_allclose(GlobalAveragePooling1D()(SEQ, mask=m).numpy(), ko.detach().numpy(), atol=1e-6)
    g = GlobalAveragePooling1D(dtype="float64")
    assert nb.gradcheck(lambda t: g(t, mask=m), SEQ.astype(np.float64))


def test_1d_bad_input_and_round_trip(tmp_path):
    from neuralbook.keras.layers.convolutional import Conv1D
    from neuralbook.keras.layers.pooling import GlobalAveragePooling1D, MaxPooling1D
    c = Conv1D(4, 3, name="c1")
    c(SEQ)
    with pytest.raises(ValueError, match=r"Conv1D 'c1': expected a 3-D input \(batch, steps, channels\), got shape "
                                         r"\(9, 4\); one sequence"):
        c(SEQ[0])
    with pytest.raises(ValueError, match=r"Conv1D 'c1' is incompatible: the input \(2, 9, 3\) has 3 channels, but the "
                                         r"layer was built for 4"):
        c(SEQ[..., :3])
    with pytest.raises(ValueError, match=r"padding must be 'valid', 'same' or 'causal', got 'full'"):
        Conv1D(2, 3, padding="full")
    with pytest.raises(ValueError, match=r"kernel_size must be a positive int \(or a 1-tuple\), got \(3, 3\)"):
        Conv1D(2, (3, 3))
    with pytest.raises(ValueError, match=r"MaxPooling1D '.*': expected a 3-D input"):
        MaxPooling1D()(SEQ[0])
    with pytest.raises(ValueError, match=r"the mask has shape \(2, 8\), expected \(batch, steps\) = \(2, 9\)"):
        GlobalAveragePooling1D()(SEQ, mask=np.ones((2, 8), bool))
    inp = keras.Input(shape=(9, 4))
    y = GlobalAveragePooling1D()(MaxPooling1D(2)(Conv1D(5, 3, padding="causal", dilation_rate=2)(inp)))
    model = keras.Model(inp, y)
    model.save(tmp_path / "c.keras")
    back = keras.models.load_model(tmp_path / "c.keras")
    np.testing.assert_allclose(back.predict(SEQ, verbose=0), model.predict(SEQ, verbose=0), atol=1e-6)
