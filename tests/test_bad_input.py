"""Bad data is refused at the door (issue 21): one table, one row per probe — the bad call, the exception type and a
fragment of the message (a regex). A new failure mode is one new row. Below the table, what the door lets in:
integer, bool and list input to float layers is cast to the layer's dtype (chapter 04's rule)."""
import math

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.conv import Conv2d, ConvTranspose2d, conv2d, conv_transpose2d
from neuralbook.data import DataLoader, TensorDataset
from neuralbook.losses import cross_entropy, nll_loss
from neuralbook.nn import Linear
from neuralbook.optim import SGD, Adagrad, Adam, AdamW, NAdam, RMSprop
from neuralbook.optim import lr_scheduler as S

INF, NAN = math.inf, math.nan


def _params():
    return [nb.tensor(np.zeros(3, np.float32), requires_grad=True)]


def _sgd():
    return SGD(_params(), lr=0.1, momentum=0.9)


def _logits():
    return nb.tensor(np.zeros((4, 3), np.float32), requires_grad=True)


def _second_backward():
    x = nb.tensor([0.5, 1.0], requires_grad=True)
    y = (x.exp() * 2.0).sum()
    y.backward()
    y.backward()


def _load_inf_lr():
    opt = SGD(_params(), lr=0.1)
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = INF
    SGD(_params(), lr=0.1).load_state_dict(sd)


class _Empty:
    def __len__(self): return 0
    def __getitem__(self, i): raise IndexError(i)


_TEN = TensorDataset(np.zeros((10, 2), np.float32), np.arange(10))

PROBES = [
    # ---- nb.tensor: numbers only (chapter 02)
    ("tensor str", lambda: nb.tensor("abc"), TypeError, r"tensor: data must be numbers .*got str 'abc'"),
    ("tensor None in list", lambda: nb.tensor([None, 1.0]), TypeError, r"got list \[None, 1.0\] holding a NoneType"),
    ("tensor dict", lambda: nb.tensor({"a": 1}), TypeError, r"tensor: data must be numbers .*got dict \{'a': 1\}"),
    ("tensor str array", lambda: nb.tensor(np.array(["a", "bc"])), TypeError, r"got an array of dtype <U2"),
    ("tensor bytes array", lambda: nb.tensor(np.array([b"x"])), TypeError, r"got an array of dtype \|S1"),
    ("tensor object array", lambda: nb.tensor(np.array([1.0, None], dtype=object)), TypeError,
     r"array of dtype object holding a NoneType"),
    ("tensor str with dtype", lambda: nb.tensor("1.5", dtype="float32"), TypeError, r"float\(s\)"),
    ("tensor list of str", lambda: nb.tensor(["1", "2"]), TypeError, r"got list \['1', '2'\]"),
    ("tensor datetime", lambda: nb.tensor(np.array(["2026-01-01"], dtype="datetime64[D]")), TypeError,
     r"dtype datetime64\[D\]"),
    ("tensor ragged", lambda: nb.tensor([[1.0, 2.0], [3.0]]), ValueError, r"tensor: .*nested lists must be rectangular"),
    ("nn.Parameter str", lambda: nb.nn.Parameter("abc"), TypeError, r"tensor: data must be numbers"),
    # ---- the graph is freed by backward (chapter 02)
    ("second backward", _second_backward, RuntimeError, r"backward through the graph a second time.*retain_graph=True"),
    # ---- layers meet data (chapter 04 rule; Linear, Conv2d, ConvTranspose2d, conv2d)
    ("Linear list of str", lambda: Linear(3, 2)(["a", "b", "c"]), TypeError, r"Linear\(3, 2\): input: data must be numbers"),
    ("Linear str array", lambda: Linear(3, 2)(np.array(["a", "b", "c"])), TypeError,
     r"Linear\(3, 2\): input must be numbers, got an array of dtype <U1"),
    ("Linear None", lambda: Linear(3, 2)(None), TypeError, r"Linear\(3, 2\): input: data must be numbers.*NoneType"),
    ("Linear ragged list", lambda: Linear(2, 2)([[1, 2], [3]]), ValueError, r"Linear\(2, 2\): input: .*rectangular"),
    ("Linear wrong width list", lambda: Linear(3, 2)([1.0, 2.0]), ValueError, r"Linear\(3, 2\): input has shape \(2,\)"),
    ("Conv2d str array", lambda: Conv2d(1, 2, 3)(np.full((1, 1, 4, 4), "a")), TypeError,
     r"Conv2d\(1, 2, kernel_size=\(3, 3\).*\): input must be numbers"),
    ("ConvTranspose2d object", lambda: ConvTranspose2d(1, 1, 2)(np.full((1, 1, 2, 2), None)), TypeError,
     r"ConvTranspose2d\(.*\): input must be numbers, got an array of dtype object"),
    ("conv2d float64 vs float32", lambda: conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3), np.float32)),
     TypeError, r"conv2d: input \(float64\) and weight \(float32\) must have the same floating-point dtype"),
    # ---- sparse labels are integers (or integral floats) (chapter 05)
    ("cross_entropy 0.5 labels", lambda: cross_entropy(_logits(), np.array([0.5, 1.5, 0.0, 1.0])), ValueError,
     r"cross_entropy: target value 0.5 is not a class label.*np.rint\(target\).astype\(np.int64\)"),
    ("nll_loss 1.5 label", lambda: nll_loss(_logits(), np.array([0.0, 1.5, 2.0, 1.0])), ValueError,
     r"nll_loss: target value 1.5 is not a class label: sparse labels are integers 0..2"),
    ("cross_entropy inf label", lambda: cross_entropy(_logits(), np.array([0.0, INF, 2.0, 1.0])), ValueError,
     r"cross_entropy: target value inf is not a class label"),
    ("cross_entropy nan label", lambda: cross_entropy(_logits(), np.array([NAN, 1.0, 2.0, 1.0])), ValueError,
     r"target value nan is not a class label"),
    ("cross_entropy float label out of range", lambda: cross_entropy(_logits(), np.array([0.0, 3.0, 2.0, 1.0])),
     ValueError, r"cross_entropy: target label 3 is out of range for 3 classes"),
    ("nll_loss str labels", lambda: nll_loss(_logits(), np.array(["a", "b", "c", "d"])), TypeError,
     r"nll_loss: target must hold integer class labels, got dtype <U1"),
    # ---- optimisers check their arguments at construction (chapter 07)
    ("SGD lr inf", lambda: SGD(_params(), lr=INF), ValueError, r"SGD \(param group 0\): lr must be a finite number >= 0, got inf"),
    ("SGD lr nan", lambda: SGD(_params(), lr=NAN), ValueError, r"SGD \(param group 0\): lr must be a number >= 0, got nan"),
    ("SGD lr negative", lambda: SGD(_params(), lr=-0.1), ValueError, r"SGD.*lr must be a number >= 0, got -0.1"),
    ("SGD lr str", lambda: SGD(_params(), lr="0.1"), ValueError, r"SGD.*lr must be a number >= 0, got '0.1'"),
    ("SGD momentum negative", lambda: SGD(_params(), lr=0.1, momentum=-0.5), ValueError,
     r"SGD.*momentum must be a number >= 0, got -0.5"),
    ("SGD weight_decay negative", lambda: SGD(_params(), lr=0.1, weight_decay=-1e-4), ValueError,
     r"SGD.*weight_decay must be a number >= 0"),
    ("SGD weight_decay inf", lambda: SGD(_params(), lr=0.1, weight_decay=INF), ValueError,
     r"SGD.*weight_decay must be a finite number >= 0, got inf"),
    ("SGD group lr inf", lambda: SGD([{"params": _params()}, {"params": _params(), "lr": INF}], lr=0.1), ValueError,
     r"SGD \(param group 1\): lr must be a finite number"),
    ("SGD load_state_dict lr inf", _load_inf_lr, ValueError, r"SGD.load_state_dict \(param group 0\): lr must be a finite"),
    ("Adam beta1 = 1", lambda: Adam(_params(), betas=(1.0, 0.999)), ValueError, r"Adam.*betas must be a pair.*0 <= beta < 1"),
    ("Adam beta2 negative", lambda: Adam(_params(), betas=(0.9, -0.1)), ValueError, r"Adam.*betas"),
    ("Adam beta nan", lambda: Adam(_params(), betas=(NAN, 0.999)), ValueError, r"Adam.*betas"),
    ("Adam eps 0", lambda: Adam(_params(), eps=0.0), ValueError, r"Adam \(param group 0\): eps must be a number > 0, got 0.0"),
    ("Adam eps inf", lambda: Adam(_params(), eps=INF), ValueError, r"Adam.*eps must be a finite number"),
    ("Adam lr inf", lambda: Adam(_params(), lr=INF), ValueError, r"Adam.*lr must be a finite number >= 0, got inf"),
    ("AdamW weight_decay negative", lambda: AdamW(_params(), weight_decay=-0.1), ValueError, r"AdamW.*weight_decay"),
    ("NAdam lr negative", lambda: NAdam(_params(), lr=-1.0), ValueError, r"NAdam.*lr must be a number >= 0"),
    ("RMSprop alpha > 1", lambda: RMSprop(_params(), alpha=1.5), ValueError, r"RMSprop.*alpha must be in \[0, 1\]"),
    ("RMSprop eps 0", lambda: RMSprop(_params(), eps=0), ValueError, r"RMSprop.*eps must be a number > 0"),
    ("Adagrad lr inf", lambda: Adagrad(_params(), lr=INF), ValueError, r"Adagrad.*lr must be a finite number"),
    # ---- schedules check their arguments at construction (chapter 07b)
    ("StepLR step_size 0", lambda: S.StepLR(_sgd(), step_size=0), ValueError, r"StepLR: step_size must be a positive integer, got 0"),
    ("StepLR step_size 2.5", lambda: S.StepLR(_sgd(), step_size=2.5), ValueError, r"StepLR: step_size must be a positive integer"),
    ("StepLR gamma inf", lambda: S.StepLR(_sgd(), 3, gamma=INF), ValueError, r"StepLR: gamma must be a finite number > 0, got inf"),
    ("StepLR gamma 0", lambda: S.StepLR(_sgd(), 3, gamma=0.0), ValueError, r"StepLR: gamma must be a finite number > 0"),
    ("MultiStepLR float milestone", lambda: S.MultiStepLR(_sgd(), [2, 4.5]), ValueError,
     r"MultiStepLR: milestones must be integer steps >= 0, got \[2, 4.5\]"),
    ("MultiStepLR gamma nan", lambda: S.MultiStepLR(_sgd(), [2], gamma=NAN), ValueError, r"MultiStepLR: gamma must be a finite"),
    ("ExponentialLR gamma negative", lambda: S.ExponentialLR(_sgd(), gamma=-0.5), ValueError, r"ExponentialLR: gamma must be"),
    ("CosineAnnealingLR T_max 0", lambda: S.CosineAnnealingLR(_sgd(), T_max=0), ValueError,
     r"CosineAnnealingLR: T_max must be a positive integer, got 0"),
    ("CosineAnnealingLR eta_min negative", lambda: S.CosineAnnealingLR(_sgd(), T_max=10, eta_min=-1.0), ValueError,
     r"CosineAnnealingLR: eta_min must be a finite number >= 0"),
    ("LinearLR total_iters 0", lambda: S.LinearLR(_sgd(), total_iters=0), ValueError, r"LinearLR: total_iters must be a positive"),
    ("LinearLR start_factor 0", lambda: S.LinearLR(_sgd(), start_factor=0.0), ValueError, r"LinearLR: start_factor must be in \(0, 1\]"),
    ("OneCycleLR total_steps 0", lambda: S.OneCycleLR(_sgd(), max_lr=0.1, total_steps=0), ValueError,
     r"OneCycleLR: total_steps must be a positive integer"),
    ("OneCycleLR max_lr inf", lambda: S.OneCycleLR(_sgd(), max_lr=INF, total_steps=10), ValueError,
     r"OneCycleLR: max_lr must be a finite number > 0, got inf"),
    ("OneCycleLR div_factor 0", lambda: S.OneCycleLR(_sgd(), max_lr=0.1, total_steps=10, div_factor=0), ValueError,
     r"OneCycleLR: div_factor must be a finite number > 0"),
    ("OneCycleLR pct_start 1.5", lambda: S.OneCycleLR(_sgd(), max_lr=0.1, total_steps=10, pct_start=1.5), ValueError,
     r"OneCycleLR: pct_start must be in \[0, 1\]"),
    # ---- datasets and loaders (chapter 06)
    ("TensorDataset empty", lambda: TensorDataset(np.zeros((0, 2)), np.zeros(0)), ValueError,
     r"TensorDataset: the arrays hold no samples \(shapes \(0, 2\), \(0,\)\)"),
    ("TensorDataset lengths differ", lambda: TensorDataset(np.zeros((10, 2)), np.zeros(9)), ValueError,
     r"TensorDataset: all arrays need the same first dimension.*got lengths 10, 9"),
    ("TensorDataset no arrays", lambda: TensorDataset(), ValueError, r"TensorDataset: give at least one array"),
    ("DataLoader empty dataset", lambda: DataLoader(_Empty(), batch_size=4), ValueError,
     r"DataLoader: the dataset _Empty is empty \(len 0\)"),
    ("DataLoader drop_last drops all", lambda: DataLoader(_TEN, batch_size=16, drop_last=True), ValueError,
     r"DataLoader: drop_last=True with batch_size=16 drops all 10 samples"),
    ("DataLoader batch_size 0", lambda: DataLoader(_TEN, batch_size=0), ValueError, r"DataLoader: batch_size must be a positive int"),
    ("DataLoader batch_size float", lambda: DataLoader(_TEN, batch_size=2.5), TypeError, r"DataLoader: batch_size must be a positive int"),
]


@pytest.mark.parametrize("call,exc,match", [p[1:] for p in PROBES], ids=[p[0] for p in PROBES])
def test_bad_input_is_refused_with_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_probe_names_are_unique():
    names = [p[0] for p in PROBES]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------- what the door lets in
def test_tensor_keeps_numbers_as_before():
    assert nb.tensor([True, False]).dtype == np.bool_ and nb.tensor([1, 2]).dtype == np.int64
    assert nb.tensor([0.5, 1]).dtype == np.float32 and nb.tensor(2.0).dtype == np.float32
    assert nb.tensor(np.float64(2.0)).dtype == np.float32            # a NumPy scalar is a Python-like number
    assert nb.tensor(np.zeros(2)).dtype == np.float64                 # arrays keep their dtype
    assert nb.tensor([1.5, 2.5], dtype="float64").data.tolist() == [1.5, 2.5]
    assert nb.tensor([1 + 2j]).dtype.kind == "c"
    assert nb.tensor(nb.tensor([1.0])).dtype == np.float32


def test_object_array_of_numbers_is_refused_too():
    "An object array is refused even when it holds numbers: its dtype says nothing about what it holds."
    with pytest.raises(TypeError, match=r"got an array of dtype object"):
        nb.tensor(np.array([1.0, 2.0], dtype=object))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x", [np.arange(6).reshape(2, 3), np.arange(6, dtype=np.uint8).reshape(2, 3),
                               np.array([[True, False, True], [False, True, False]]), [[0, 1, 2], [3, 4, 5]],
                               "tensor_int"], ids=["int64", "uint8", "bool", "list", "int tensor"])
def test_linear_casts_integer_bool_and_list_input_to_its_dtype(x, dtype):
    nb.manual_seed(0)
    layer = Linear(3, 2, dtype=dtype)
    if isinstance(x, str): x = nb.tensor(np.arange(6).reshape(2, 3))
    y = layer(x)
    assert y.dtype == dtype
    ref = np.asarray(x.numpy() if isinstance(x, nb.Tensor) else x, dtype=dtype) @ layer.weight.data.T + layer.bias.data
    np.testing.assert_allclose(np.asarray(y.data if isinstance(y, nb.Tensor) else y), ref, rtol=1e-6)


def test_linear_float_input_and_raw_arrays_are_unchanged():
    layer = Linear(3, 2)
    assert layer(np.arange(3)).dtype == np.float32 and layer([1, 2, 3]).dtype == np.float32
    assert isinstance(layer([1, 2, 3]), nb.Tensor)
    assert layer(np.zeros(3)).dtype == np.float64            # float64 into float32: your choice, NumPy's promotion
    x = nb.tensor(np.ones((4, 3), np.float32), requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.shape == (4, 3)                            # the float path keeps the graph


@pytest.mark.parametrize("make,shape", [(lambda: Conv2d(1, 2, 3, padding=1), (2, 1, 5, 5)),
                                        (lambda: ConvTranspose2d(1, 2, 2, stride=2), (2, 1, 3, 3))],
                         ids=["Conv2d", "ConvTranspose2d"])
@pytest.mark.parametrize("kind", ["uint8", "int64", "bool", "list"])
def test_conv_layers_cast_integer_bool_and_list_input(make, shape, kind):
    nb.manual_seed(0)
    layer = make()
    a = (np.arange(np.prod(shape)) % 7).reshape(shape)
    x = {"uint8": a.astype(np.uint8), "int64": a, "bool": a % 2 == 1, "list": a.tolist()}[kind]
    y = layer(x)
    assert y.dtype == np.float32
    ref = layer(nb.tensor(np.asarray(x, dtype=np.float32)))
    np.testing.assert_array_equal(np.asarray(y.data if isinstance(y, nb.Tensor) else y), ref.data)


def test_functional_conv_casts_integer_input_to_the_weight_dtype():
    w = np.ones((1, 1, 2, 2), np.float64)
    assert conv2d(np.ones((1, 1, 3, 3), np.int64), w).dtype == np.float64
    assert conv_transpose2d(np.ones((1, 1, 3, 3), np.uint8), w).dtype == np.float64
    assert conv2d(nb.tensor(np.ones((1, 1, 3, 3), bool)), nb.tensor(w.astype(np.float32))).dtype == np.float32


def test_integral_float_labels_are_labels():
    z = nb.tensor(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    t = np.array([0, 2, 1, 2])
    assert cross_entropy(z, t.astype(np.float32)).item() == cross_entropy(z, t).item()
    assert nll_loss(z, t.astype(np.float64)).item() == nll_loss(z, t).item()
    probs = np.eye(3, dtype=np.float32)[t]          # a float target of the input's shape: probabilities, as before
    assert np.isclose(cross_entropy(z, probs).item(), cross_entropy(z, t).item(), rtol=1e-6)


def test_valid_edges_are_accepted():
    SGD(_params(), lr=0.0)                      # lr = 0 is allowed (PyTorch too): a frozen run
    Adam(_params(), betas=(0.0, 0.0))
    S.StepLR(_sgd(), 1, gamma=1.0)
    S.MultiStepLR(_sgd(), [])
    S.CosineAnnealingLR(_sgd(), T_max=1, eta_min=0.0)
    assert len(DataLoader(_TEN, batch_size=10, drop_last=True)) == 1
    assert len(TensorDataset(np.zeros((1, 2)))) == 1
