"""Issue 20: PyTorch's tensor protocol on neuralbook tensors (chapter 03b, `neuralbook.tensor_methods`) — element-wise
`==`/`!=`, hashing by identity, conversions to Python numbers, `__format__`, dtype casts, `.size()`, factories and
dtype names — each checked against PyTorch where it is installed."""
import numpy as np
import pytest

import neuralbook as nb
from neuralbook import tensor_methods as tm
from tests.helpers import torch


def _pair():
    return nb.tensor([1.0, 2.0, 3.0], requires_grad=True), nb.tensor([1.0, 0.0, 3.0])


def test_eq_ne_are_elementwise_bool_tensors_without_grad():
    a, b = _pair()
    for got, want in [(a == b, [True, False, True]), (a != b, [False, True, False]), (a == 2.0, [False, True, False]),
                      (a.eq(b), [True, False, True]), (a.ne(b), [False, True, False]),
                      (a == np.array([1.0, 2.0, 0.0]), [True, True, False]), (2.0 == a, [False, True, False])]:
        assert isinstance(got, nb.Tensor) and got.dtype == np.bool_ and not got.requires_grad
        assert got.tolist() == want
    ints = nb.tensor(np.array([0, 1, 2]))
    assert (ints == nb.tensor(np.array([0, 5, 2]))).tolist() == [True, False, True]
    assert (np.array([1.0, 2.0, 3.0]) == a).tolist() == [True, True, True]       # ndarray on the left defers to us
    assert (a < b).tolist() == [False, False, False] and (a >= b).tolist() == [True, True, True]
    assert (a == None) is False and (a != None) is True and (a == "x") is False   # noqa: E711
    assert a.equal(nb.tensor([1.0, 2.0, 3.0])) and not a.equal(b) and not a.equal(nb.tensor([1.0, 2.0]))


def test_eq_shape_mismatch_names_both_shapes():
    a, _ = _pair()
    with pytest.raises(ValueError, match=r"eq: cannot compare shapes \(3,\) and \(2,\).*broadcastable"):
        a == nb.tensor([1.0, 2.0])


def test_hash_by_identity_dicts_sets_and_identity_lookups():
    a, b = _pair()
    c = nb.tensor([1.0, 2.0, 3.0])                  # equal values, another tensor
    assert hash(a) == id(a)
    d = {a: "a", b: "b", c: "c"}
    assert d[a] == "a" and d[c] == "c" and len({a, b, c, a}) == 3 and a in {a, b} and c not in {a, b}
    assert any(t is a for t in [b, c, a]) and [id(t) for t in [b, a]].index(id(a)) == 1
    assert a in [a, b]                              # list membership checks identity first, so the same object is found
    with pytest.raises(ValueError, match="ambiguous"):
        a in [b]                                    # … but a different tensor is compared element-wise, as in PyTorch


def test_bool_of_one_element_and_ambiguous_for_many():
    assert bool(nb.tensor(2.0)) and not bool(nb.tensor([0.0])) and bool(nb.tensor([[1]]))
    for t in (nb.tensor([1.0, 2.0]), nb.tensor(np.zeros(0))):
        with pytest.raises(ValueError, match=r"truth value of a tensor with shape .* is ambiguous"):
            bool(t)
    if torch is not None:
        with pytest.raises(RuntimeError, match="ambiguous"):
            bool(torch.tensor([1.0, 2.0]))


def test_int_float_index_format():
    t = nb.tensor([[0.25, 1.5, -2.75]])
    assert int(t[0, 1]) == 1 and int(t[0, 2]) == -2 and float(t[0, 0]) == 0.25 and complex(t[0, 0]) == 0.25
    assert f"{t[0, 1]:.2f}" == "1.50" and f"{t[0, 2]:>8.3f}" == "  -2.750" and f"{nb.tensor([3.0]):g}" == "3"
    classes = ["a", "b", "c"]
    assert classes[t.argmax(1)[0]] == "b" and classes[nb.tensor(2)] == "c" and [0, 1, 2, 3][nb.tensor([1])] == 1
    assert np.arange(5)[nb.tensor(3)] == 3 and range(10)[nb.tensor(np.int32(4))] == 4
    if torch is not None:
        tt = torch.tensor([[0.25, 1.5, -2.75]])
        assert f"{tt[0, 1]:.2f}" == f"{t[0, 1]:.2f}" and int(tt[0, 2]) == int(t[0, 2])
        assert f"{tt}" == f"{tt}" and str(nb.tensor([1.0, 2.0])) == f"{nb.tensor([1.0, 2.0])}"


def test_conversion_errors_say_what_to_do():
    t = nb.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"int\(\): only a one-element tensor .* shape \(2,\).*tolist"):
        int(t)
    with pytest.raises(ValueError, match=r"float\(\): only a one-element tensor"):
        float(t)
    with pytest.raises(TypeError, match=r"__index__: only integer tensors .* float32.*int\(t\)"):
        [1, 2][nb.tensor(1.0)]
    with pytest.raises(TypeError, match="unsupported format string"):
        f"{t:.2f}"
    if torch is not None:
        with pytest.raises(TypeError, match="unsupported format string"):
            f"{torch.tensor([1.0, 2.0]):.2f}"


@pytest.mark.parametrize("method,dtype,name", [("float", "float32", "FloatTensor"), ("double", "float64", "DoubleTensor"),
                                               ("half", "float16", "HalfTensor"), ("long", "int64", "LongTensor"),
                                               ("int", "int32", "IntTensor"), ("bool", "bool", "BoolTensor"),
                                               ("byte", "uint8", "ByteTensor")])
def test_dtype_casts_and_type_names(method, dtype, name):
    x = nb.tensor([0.0, 1.5, -2.0])
    y = getattr(x, method)()
    assert y.dtype == np.dtype(dtype) and y.type() == "neuralbook." + name
    assert x.type(dtype).dtype == y.dtype and x.type("torch." + name).dtype == y.dtype
    assert x.type(tm.DTYPE_NAMES[dtype]).dtype == y.dtype
    if torch is not None:
        ty = getattr(torch.tensor([0.0, 1.5, -2.0]), method)()
        assert ty.type() == "torch." + name
        np.testing.assert_array_equal(y.numpy(), ty.numpy())


def test_casts_keep_the_graph_between_floats_only():
    x = nb.tensor([1.0, 2.0], requires_grad=True)
    y = x.double() * 3.0
    y.sum().backward()
    assert y.dtype == np.float64 and x.grad.dtype == np.float32 and x.grad.tolist() == [3.0, 3.0]
    assert x.float() is x and x.type(nb.tensor([1.0]).dtype) is x
    for t in (x.long(), x.int(), x.bool(), x.type(tm.DTYPE_NAMES["long"])):
        assert not t.requires_grad and t.creator is None
    acc = (nb.tensor([0, 2, 1]) == nb.tensor([0, 1, 1])).type(tm.DTYPE_NAMES["float"]).sum().item()
    assert acc == 2.0 and isinstance(acc, float)


def test_size_dim_numel_tolist_view():
    x = nb.tensor(np.zeros((2, 3, 4), np.float32))
    assert x.size == 24 and x.size + 1 == 25 and isinstance(x.size, int)          # NumPy's meaning stays
    assert x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4          # PyTorch's call
    assert x.dim() == 3 and x.ndimension() == 3 and x.numel() == 24 and x.nelement() == 24
    assert x.view(6, 4).shape == (6, 4) and nb.tensor([[1, 2]]).tolist() == [[1, 2]]
    assert x.is_floating_point() and not x.long().is_floating_point()
    if torch is not None:
        tx = torch.zeros((2, 3, 4))
        assert tuple(tx.size()) == x.size() and tx.size(1) == x.size(1) and tx.dim() == x.dim()


def test_factories_and_dtype_names():
    nb.manual_seed(0)
    a = tm.randn(2, 3)
    nb.manual_seed(0)
    b = tm.randn((2, 3))
    assert a.shape == (2, 3) and a.dtype == np.float32 and a.tolist() == b.tolist()
    assert tm.zeros(2, 3).tolist() == [[0.0] * 3] * 2 and tm.ones((2,), dtype=np.int64).dtype == np.int64
    assert tm.full((2, 2), 7.0).tolist() == [[7.0, 7.0]] * 2
    r = tm.rand(1000)
    assert 0 <= r.numpy().min() and r.numpy().max() < 1
    assert tm.arange(4).tolist() == [0, 1, 2, 3] and tm.arange(4).dtype == np.int64
    assert tm.arange(1, 2, 0.5).tolist() == [1.0, 1.5] and tm.arange(1, 2, 0.5).dtype == np.float32
    assert tm.zeros(3, requires_grad=True).requires_grad
    names = tm.DTYPE_NAMES
    assert names["float"] == np.float32 == names["float32"] and names["double"] == np.float64
    assert names["long"] == np.int64 and names["int"] == np.int32 and names["half"] == np.float16
    assert names["bool"] == np.bool_ and names["uint8"] == np.uint8
    assert nb.tensor([1.0]).dtype == names["float"]
    assert tm.cuda_device_count() == (1 if nb.cuda_is_available() else 0) or tm.cuda_device_count() >= 1
    if torch is not None:
        for n in ("float32", "float", "float64", "double", "float16", "half", "int64", "long", "int32", "int",
                  "bool", "uint8"):
            assert str(getattr(torch, n)).replace("torch.", "") == str(names[n])


def test_package_names_when_wired():
    "Chapter 99 attaches these to the package (nb.float32, nb.save, nb.cuda.is_available, nb.utils.data)."
    if not hasattr(nb, "save"):
        pytest.skip("chapter 99 does not wire nb.save / nb.float32 / nb.cuda.is_available / nb.utils yet")
    assert nb.float32 == np.float32 and nb.long == np.int64 and nb.bool == np.bool_
    assert nb.cuda.is_available() == nb.cuda_is_available() and nb.cuda.device_count() >= 0
    assert nb.utils.data.DataLoader is nb.data.DataLoader and nb.utils.data.TensorDataset is nb.data.TensorDataset
    from neuralbook.utils.data import DataLoader, Dataset  # noqa: F401  (PyTorch's import path)
    assert nb.save is nb.io.save and nb.load is nb.io.load
    assert nb.randn(2).shape == (2,) and nb.zeros(1).tolist() == [0.0] and nb.arange(2).tolist() == [0, 1]


def test_size_survives_copy_and_pickle():
    import copy
    import pickle
    s = nb.tensor(np.zeros((2, 3))).size
    for c in (copy.deepcopy(s), pickle.loads(pickle.dumps(s)), copy.copy(s)):
        assert c == 6 and c() == (2, 3)


def test_max_min_with_dim_return_values_and_indices_like_torch():
    "x.max(dim=1) / nb.max(x, 1): PyTorch's (values, indices); axis= keeps NumPy's values-only meaning."
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(0).standard_normal((4, 5))
    x, tx = nb.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    for ours, theirs in [(x.max(dim=1), tx.max(dim=1)), (nb.max(x, 0), torch.max(tx, 0)),
                         (x.min(dim=-1, keepdim=True), tx.min(dim=-1, keepdim=True)), (nb.min(x, 1), torch.min(tx, 1))]:
        np.testing.assert_array_equal(ours.values.data, theirs.values.detach().numpy())
        np.testing.assert_array_equal(ours.indices.data, theirs.indices.numpy())
    v, i = nb.max(x, 1)
    v.sum().backward(); torch.max(tx, 1).values.sum().backward()
    np.testing.assert_array_equal(x.grad.data, tx.grad.numpy())
    assert x.max(axis=1).shape == (4,) and float(nb.max(x)) == a.max()
    _, predicted = nb.max(x.data, 1)                           # torch.max(outputs.data, 1) on the raw array
    labels = nb.tensor(a.argmax(1))
    assert (predicted == labels).sum().item() == 4
    assert nb.cat([x, x], 1).shape == (4, 10) and nb.flatten(x).shape == (20,) and float(nb.sum(x, 0).sum()) == pytest.approx(a.sum())
    with pytest.raises(TypeError, match="max: give axis= or dim=, not both"):
        x.max(axis=0, dim=1)
