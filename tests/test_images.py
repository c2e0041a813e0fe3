"""Chapter 25: augmentation during training only (BatchTransform), the Fashion-MNIST CNN."""
import numpy as np
import pytest

import neuralbook as nb
from neuralbook.data import DataLoader, TensorDataset
from neuralbook.learner import Learner
from neuralbook.losses import cross_entropy
from neuralbook.nn import Flatten, Linear, Module, Sequential
from neuralbook.optim import SGD
from neuralbook.regularization import Compose, RandomCrop, RandomHorizontalFlip
from neuralbook.vision import BatchTransform, fashion_cnn


class Spy(Module):
    "Flatten + Linear that remembers each input it saw, with the mode it was in."
    def __init__(self, d):
        super().__init__()
        self.net, self.seen = Sequential(Flatten(), Linear(d, 3)), []
    def forward(self, x):
        self.seen.append((self.training, x.numpy().copy()))
        return self.net(x)


def _learner(tfm, n=12, bs=4):
    rng = np.random.default_rng(0)
    X, y = rng.random((n, 1, 3, 3)).astype(np.float32), rng.integers(0, 3, n)
    nb.manual_seed(0)
    model = Spy(9)
    learn = Learner(model, cross_entropy, SGD(model.parameters(), lr=0.1), DataLoader(TensorDataset(X, y), bs),
                    DataLoader(TensorDataset(X, y), bs), callbacks=[BatchTransform(tfm)])
    return learn, model, X


def test_batch_transform_applies_to_training_batches_only():
    calls = []
    def negate(x):
        calls.append(x.shape)
        return -x
    learn, model, X = _learner(negate)
    learn.fit(2)
    train = [x for training, x in model.seen if training]
    valid = [x for training, x in model.seen if not training]
    assert len(calls) == len(train) == 6 and len(valid) == 6
    np.testing.assert_array_equal(np.concatenate(train[:3]), -X)         # training saw the transformed batches
    np.testing.assert_array_equal(np.concatenate(valid[:3]), X)          # validation saw the data as it is
    model.seen.clear()
    learn.validate(); learn.predict(X)
    assert len(calls) == 6 and all(not t for t, _ in model.seen)
    np.testing.assert_array_equal(np.concatenate([x for _, x in model.seen[:3]]), X)


def test_batch_transform_seeded_crop_flip_is_reproducible():
    runs = []
    for _ in range(2):
        learn, model, X = _learner(Compose([RandomCrop(3, padding=1, generator=nb.Generator(5)),
                                            RandomHorizontalFlip(generator=nb.Generator(6))]))
        learn.fit(1)
        runs.append([x for t, x in model.seen if t])
    for a, b in zip(*runs): np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, x) for a, x in zip(runs[0], np.split(X, 3)))   # something was augmented


def test_batch_transform_bad_input():
    with pytest.raises(TypeError, match="BatchTransform: tfm must be callable on a batch of inputs"):
        BatchTransform(3)
    assert "RandomCrop" in repr(BatchTransform(RandomCrop(28, padding=2)))


def test_fashion_cnn_shapes_and_size():
    nb.manual_seed(0)
    m = fashion_cnn((16, 32), 256)
    m.eval()
    assert m(nb.tensor(np.zeros((2, 1, 28, 28), np.float32))).shape == (2, 10)
    n_params = sum(p.data.size for p in m.parameters())
    assert n_params == 16 * 9 + 2 * 16 + 32 * 16 * 9 + 2 * 32 + 32 * 49 * 256 + 256 + 256 * 10 + 10
    assert fashion_cnn((8,), 32, image_size=8)(nb.tensor(np.zeros((1, 1, 8, 8), np.float32))).shape == (1, 10)
