"""Issue 20: `keras.ops` over neuralbook tensors (chapter 37). One table drives every check: each op on the same
inputs against Keras 3's own `keras.ops` (torch backend) where Keras is installed — values at 1e-5 and the result's
dtype —, and a float64 `nb.gradcheck` for the differentiable ones. Bad input names the op, the shapes and the fix."""
import os

import numpy as np
import pytest

import neuralbook as nb
from neuralbook.keras import ops

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
    kops = keras.ops if keras.backend.backend() == "torch" else None
except ImportError:  # Keras is only an oracle
    kops = None

R = np.random.default_rng(0)
A = R.standard_normal((2, 3)).astype(np.float32)
B = R.standard_normal((2, 3)).astype(np.float32)
ROW = R.standard_normal((3,)).astype(np.float32)
POS = (np.abs(A) + 0.5).astype(np.float32)
SQ = R.standard_normal((3, 3)).astype(np.float32)
T3 = R.standard_normal((2, 3, 4)).astype(np.float32)
M34 = R.standard_normal((3, 4)).astype(np.float32)
IDS = np.array([[0, 2, 1], [1, 1, 0]], np.int64)
U = np.array([0.3, -1.2, 2.0, 0.0, 5.0], np.float32)   # distinct values: no ties for sort/top_k
D = "diff"   # differentiable: gradcheck in float64

# name: (args, kwargs, differentiable?) — `ops.<name>(*args, **kwargs)` on both sides
TABLE = {
    "add": ((A, B), {}, D), "add_scalar": ((A, 1.5), {}, D), "subtract": ((A, ROW), {}, D),
    "multiply": ((A, ROW), {}, D), "divide": ((A, POS), {}, D), "true_divide": ((A, POS), {}, D),
    "power": ((POS, 2.5), {}, D), "negative": ((A,), {}, D), "abs": ((A,), {}, D), "absolute": ((A,), {}, D),
    "square": ((A,), {}, D), "sqrt": ((POS,), {}, D), "exp": ((A,), {}, D), "log": ((POS,), {}, D),
    "log1p": ((POS,), {}, D), "expm1": ((A,), {}, D), "sin": ((A,), {}, D), "cos": ((A,), {}, D),
    "reciprocal": ((POS,), {}, D), "erf": ((A,), {}, D), "sign": ((A,), {}, None), "floor": ((A * 3,), {}, None),
    "ceil": ((A * 3,), {}, None), "maximum": ((A, B), {}, D), "minimum": ((A, 0.0), {}, D),
    "matmul": ((A, M34), {}, D), "matmul_batch": ((T3, M34.T), {}, D), "matmul_vec": ((A, ROW), {}, D),
    "dot": ((A, M34), {}, D),
    "einsum": (("ij,jk->ik", A, M34), {}, D), "einsum_batch": (("bij,bkj->bik", T3, T3), {}, D),
    "einsum_sum": (("ij->j", A), {}, D), "tensordot": ((T3, M34, ([1, 2], [0, 1])), {}, D),
    "tensordot_int": ((A, M34, 1), {}, D),
    "sum": ((T3,), {"axis": 1}, D), "sum_all": ((T3,), {}, D), "mean": ((T3,), {"axis": (0, 2), "keepdims": True}, D),
    "max": ((A,), {"axis": 1}, D), "min": ((A,), {"axis": 0, "keepdims": True}, D),
    "prod": ((POS,), {"axis": 1}, D), "std": ((T3,), {"axis": -1}, D), "var": ((T3,), {"axis": 1}, D),
    "argmax": ((A,), {"axis": 1}, None), "argmin": ((A,), {"axis": 0}, None), "any": ((A > 0,), {"axis": 1}, None),
    "all": ((A > -5,), {}, None), "logsumexp": ((T3,), {"axis": -1}, D), "norm": ((A,), {}, D),
    "norm_axis": ((A,), {"axis": 1}, D), "reshape": ((T3, (4, 6)), {}, D), "transpose": ((T3,), {"axes": (2, 0, 1)}, D),
    "transpose_default": ((A,), {}, D), "expand_dims": ((A, 1), {}, D), "squeeze": ((A[:, None],), {"axis": 1}, D),
    "concatenate": (([A, B],), {"axis": 1}, D), "stack": (([A, B],), {"axis": 0}, D), "split": ((T3, 2), {"axis": 2}, D),
    "split_indices": ((T3, [1, 3]), {"axis": -1}, D), "tile": ((A, (2, 1)), {}, D), "repeat": ((A, 2), {"axis": 1}, D),
    "repeat_flat": ((A, 2), {}, D), "where": ((A > 0, A, B), {}, D), "where_scalar": ((A > 0, A, 0.0), {}, D),
    "where_indices": ((A > 0,), {}, None), "clip": ((A, -0.5, 0.5), {}, D), "take": ((M34, np.array([2, 0])), {"axis": 1}, D),
    "take_flat": ((M34, np.array([5, 1, 11])), {}, D),
    "take_along_axis": ((A, np.argsort(A, axis=1)), {"axis": 1}, D), "cumsum": ((A,), {"axis": 1}, D),
    "cumsum_flat": ((A,), {}, D), "sort": ((U,), {}, D), "argsort": ((U,), {}, None), "top_k": ((U, 3), {}, None),
    "equal": ((IDS, 1), {}, None), "not_equal": ((A, B), {}, None), "greater": ((A, B), {}, None),
    "greater_equal": ((A, 0.0), {}, None), "less": ((A, B), {}, None), "less_equal": ((A, B), {}, None),
    "logical_and": ((A > 0, B > 0), {}, None), "logical_or": ((A > 0, B > 0), {}, None),
    "logical_not": ((A > 0,), {}, None), "isnan": ((np.array([1.0, np.nan], np.float32),), {}, None),
    "isfinite": ((np.array([1.0, np.inf, np.nan], np.float32),), {}, None), "cast": ((A, "float64"), {}, D),
    "cast_int": ((A * 3, "int32"), {}, None), "convert_to_tensor": ((A,), {}, None), "shape": ((T3,), {}, None),
    "arange": ((5,), {}, None), "arange_float": ((0.0, 1.0, 0.25), {}, None), "linspace": ((0.0, 1.0, 5), {}, None),
    "ones": (((2, 3),), {}, None), "zeros": (((2,),), {"dtype": "int32"}, None), "full": (((2, 2), 7.0), {}, None),
    "eye": ((3,), {}, None), "ones_like": ((A,), {}, None), "zeros_like": ((IDS,), {}, None),
    "one_hot": ((IDS, 3), {}, None), "relu": ((A,), {}, D), "relu6": ((A * 4,), {}, D), "gelu": ((A,), {}, D),
    "gelu_exact": ((A,), {"approximate": False}, D), "softmax": ((A,), {"axis": -1}, D),
    "log_softmax": ((T3,), {"axis": 1}, D), "sigmoid": ((A,), {}, D), "tanh": ((A,), {}, D), "silu": ((A,), {}, D),
    "swish": ((A,), {}, D), "elu": ((A,), {"alpha": 0.5}, D), "selu": ((A,), {}, D), "softplus": ((A,), {}, D),
    "softsign": ((A,), {}, D), "leaky_relu": ((A,), {}, D), "hard_sigmoid": ((A * 4,), {}, D),
    "log_sigmoid": ((A,), {}, D), "full_like": ((A, 2.0), {}, None),
    "pad": ((A, ((0, 1), (2, 0))), {}, D), "pad_value": ((T3, ((1, 1), (0, 0), (0, 2))), {"constant_values": 2.0}, D),
    "tril": ((SQ,), {}, D), "triu": ((T3,), {"k": 1}, D), "flip": ((A,), {"axis": 1}, D), "flip_all": ((A,), {}, D),
    "slice": ((T3, (0, 1, 1), (2, 2, 3)), {}, D), "broadcast_to": ((ROW, (2, 3)), {}, D),
    "floor_divide": ((A * 5, 2.0), {}, None), "mod": ((IDS * 7, 4), {}, None),
}
ALIAS = {"add_scalar": "add", "matmul_batch": "matmul", "matmul_vec": "matmul",
         "einsum_batch": "einsum", "einsum_sum": "einsum", "tensordot_int": "tensordot", "sum_all": "sum",
         "norm_axis": "norm", "transpose_default": "transpose", "split_indices": "split", "repeat_flat": "repeat",
         "where_scalar": "where", "where_indices": "where", "take_flat": "take", "cumsum_flat": "cumsum",
         "cast_int": "cast", "arange_float": "arange", "gelu_exact": "gelu", "pad_value": "pad",
         "flip_all": "flip"}
NN = ["relu", "relu6", "sigmoid", "silu", "swish", "selu", "softplus", "softsign", "elu", "leaky_relu", "gelu",
      "hard_sigmoid", "log_sigmoid", "softmax", "log_softmax", "one_hot"]


def _np(v):
    if isinstance(v, (tuple, list)): return [_np(u) for u in v]
    if isinstance(v, nb.Tensor): return v.numpy()
    return np.asarray(kops.convert_to_numpy(v)) if kops is not None and not isinstance(v, (int, float, np.ndarray)) \
        else np.asarray(v)


@pytest.mark.parametrize("case", list(TABLE))
def test_matches_keras(case):
    if kops is None: pytest.skip("Keras 3 with the torch backend is not installed")
    args, kw, _ = TABLE[case]
    name = ALIAS.get(case, case)
    ours, theirs = getattr(ops, name)(*args, **kw), getattr(kops, name)(*args, **kw)
    if name == "shape": assert ours == tuple(theirs); return
    o, t = _np(ours), _np(theirs)
    if isinstance(o, list):
        assert len(o) == len(t)
        for a, b in zip(o, t): np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6); assert a.dtype == b.dtype
        return
    assert o.shape == t.shape, (o.shape, t.shape)
    assert o.dtype == t.dtype, (o.dtype, t.dtype)
    np.testing.assert_allclose(o, t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [c for c, v in TABLE.items() if v[2] == D])
def test_gradcheck(case):
    args, kw, _ = TABLE[case]
    name = ALIAS.get(case, case)
    fn = getattr(ops, name)
    is_x = [isinstance(a, np.ndarray) and a.dtype == np.float32 for a in args]
    if name in ("concatenate", "stack"):
        assert nb.gradcheck(lambda a, b: fn([a, b], **kw), *(x.astype(np.float64) for x in args[0]))
        return
    if name == "split":
        assert nb.gradcheck(lambda x: ops.concatenate([p * (i + 1.0) for i, p in enumerate(fn(x, *args[1:], **kw))],
                                                      axis=kw["axis"]), args[0].astype(np.float64))
        return
    xs = [a.astype(np.float64) for a, x in zip(args, is_x) if x]
    def f(*ts):
        it = iter(ts)
        out = fn(*[next(it) if x else a for a, x in zip(args, is_x)], **kw)
        return out[0] if isinstance(out, tuple) else out
    assert nb.gradcheck(f, *xs)


def test_results_are_neuralbook_tensors_and_differentiable():
    x = nb.tensor(A, requires_grad=True)
    y = ops.sum(ops.softmax(ops.matmul(x, ops.transpose(x))) * ops.relu(ops.mean(x, axis=1, keepdims=True)))
    assert isinstance(y, nb.Tensor) and y.requires_grad
    y.backward()
    assert x.grad.shape == A.shape
    assert isinstance(ops.convert_to_numpy(x), np.ndarray) and ops.convert_to_tensor([1.0, 2.0]).dtype == np.float32
    assert ops.convert_to_tensor([1, 2]).dtype == np.int64 and ops.convert_to_tensor(A, "float64").dtype == np.float64
    assert ops.add(x, 1.5).dtype == np.float32 and ops.stop_gradient(x).requires_grad is False
    assert ops.cast(x, "int32").creator is None and ops.is_tensor(x) and ops.ndim(x) == 2 and ops.size(x) == 6


def test_dot_of_nd_arrays_is_numpys():
    "Keras documents NumPy's dot (its torch backend computes a matmul there); this one follows NumPy, and gradchecks."
    b = R.standard_normal((2, 4, 5))
    np.testing.assert_allclose(ops.dot(T3, b).numpy(), np.dot(T3.astype(np.float64), b), rtol=1e-5)
    assert nb.gradcheck(ops.dot, T3.astype(np.float64), b)


def test_sub_namespaces():
    for n in NN: assert getattr(ops.nn, n) is getattr(ops, n)
    for n in ("add", "matmul", "einsum", "mean", "where", "arange", "concatenate"):
        assert getattr(ops.numpy, n) is getattr(ops, n)
    m, v = ops.nn.moments(T3, axes=[0, 1])
    np.testing.assert_allclose(m.numpy(), T3.mean((0, 1)), rtol=1e-5)
    np.testing.assert_allclose(v.numpy(), T3.var((0, 1)), rtol=1e-5)
    if kops is not None:
        km, kv = kops.moments(T3, axes=[0, 1])
        np.testing.assert_allclose(v.numpy(), _np(kv), rtol=1e-5)


@pytest.mark.parametrize("fn,args,kw", [("sparse_categorical_crossentropy", (np.array([0, 2]), A[:, :3]), {"from_logits": True}),
                                        ("categorical_crossentropy", (np.eye(3, dtype=np.float32)[[0, 2]], np.abs(A) + 0.1), {}),
                                        ("binary_crossentropy", ((A > 0).astype(np.float32), A), {"from_logits": True}),
                                        ("binary_crossentropy", ((A > 0).astype(np.float32), 1 / (1 + np.exp(-A))), {})])
def test_nn_losses_match_keras(fn, args, kw):
    if kops is None: pytest.skip("Keras 3 with the torch backend is not installed")
    np.testing.assert_allclose(getattr(ops.nn, fn)(*args, **kw).numpy(), _np(getattr(kops.nn, fn)(*args, **kw)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.add(np.ones((2, 3)), np.ones((4, 3))), ValueError,
     r"ops.add: shapes \(2, 3\) and \(4, 3\) cannot be broadcast.*expand_dims"),
    (lambda: ops.multiply(A, np.ones(4)), ValueError, r"ops.multiply: shapes \(2, 3\) and \(4,\)"),
    (lambda: ops.matmul(A, A), ValueError, r"ops.matmul: shapes \(2, 3\) and \(2, 3\) do not align: 3 .* != 2.*transpose"),
    (lambda: ops.matmul(A, 2.0), ValueError, r"ops.matmul: operands must have at least one axis.*ops.multiply"),
    (lambda: ops.concatenate([A, M34], axis=0), ValueError, r"ops.concatenate: shapes \[\(2, 3\), \(3, 4\)\] do not fit"),
    (lambda: ops.stack([A, M34]), ValueError, r"ops.stack: shapes .* stack needs equal shapes"),
    (lambda: ops.split(A, 2, axis=1), ValueError, r"ops.split: axis 1 of shape \(2, 3\) \(3\) does not divide into 2"),
    (lambda: ops.einsum("ij,jk->ik", A, A), ValueError, r"ops.einsum: 'ij,jk->ik' with shapes \[\(2, 3\), \(2, 3\)\]"),
    (lambda: ops.einsum("...j,jk", A, M34), ValueError, r"ops.einsum: .*write the output explicitly"),
    (lambda: ops.tensordot(A, M34, ([0], [0])), ValueError,
     r"ops.tensordot: contracted axes \[0\] of shape \(2, 3\) and \[0\] of shape \(3, 4\)"),
    (lambda: ops.top_k(U, 9), ValueError, r"ops.top_k: k=9 must be in \[1, 5\]"),
    (lambda: ops.one_hot(A, 3), TypeError, r"ops.one_hot: labels must be integers, got float32.*ops.cast"),
    (lambda: ops.take(A, np.array([0.5])), TypeError, r"ops.take: indices must be integers"),
    (lambda: ops.sqrt("abc"), TypeError, r"ops.sqrt: tensor: data must be numbers"),
    (lambda: ops.matmul(np.ones((2, 2), bool), np.array([["a", "b"], ["c", "d"]])), TypeError, r"ops.matmul"),
    (lambda: ops.norm(A, ord=3), ValueError, r"ops.norm: ord=3 is not supported"),
    (lambda: ops.pad(A, ((1, 1),)), ValueError, r"ops.pad: pad_width has 1 entries for a tensor of shape \(2, 3\)"),
    (lambda: ops.pad(A, ((1, 1), (0, 0)), mode="reflect"), ValueError, r"ops.pad: only mode='constant'"),
])
def test_bad_input_names_op_shapes_and_fix(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
