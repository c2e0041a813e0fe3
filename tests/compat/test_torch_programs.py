"""Small programs in the style of PyTorch's tutorials (written for this project), each one function of the module
`torch`, run with `import neuralbook as torch` and with PyTorch where installed: a custom `Dataset` subclass with a
`DataLoader`, `model.train()`/`model.eval()` around dropout, `torch.no_grad()`, `dim=` keywords, and a checkpoint of
model + optimiser saved with `torch.save` and resumed with `torch.load` so that the resumed run equals the
uninterrupted one bit for bit."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

TOL = 0.05   # final test accuracy, neuralbook vs PyTorch (different initial weights; seen 0.01 apart)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


def dataset_program(torch, X, y):
    nn = torch.nn

    class Digits(torch.utils.data.Dataset):
        def __init__(self, X, y):
            self.X, self.y = X, y

        def __len__(self):
            return len(self.X)

        def __getitem__(self, i):
            return torch.tensor(self.X[i], dtype=torch.float32), int(self.y[i])

    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(Digits(X[:1400], y[:1400]), batch_size=32, shuffle=True)
    test = torch.utils.data.DataLoader(Digits(X[1400:], y[1400:]), batch_size=100)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(5):
        model.train()
        for xb, yb in train:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
    model.eval()
    correct, n = 0, 0
    with torch.no_grad():
        for xb, yb in test:
            out = model(xb)
            assert not out.requires_grad
            probs = out.softmax(dim=1)
            assert np.allclose(probs.sum(dim=1).numpy(), 1.0, atol=1e-5)
            correct += int((out.argmax(dim=1) == yb).sum())
            n += len(yb)
        x0 = next(iter(test))[0]
        deterministic = bool((model(x0) == model(x0)).all())      # eval(): dropout is off
    model.train()
    with torch.no_grad():
        differs = bool((model(x0) != model(x0)).any())            # train(): dropout is on
    batch = next(iter(train))
    return {"acc": correct / n, "deterministic": deterministic, "differs": differs,
            "batch": (tuple(batch[0].shape), str(batch[0].dtype), tuple(batch[1].shape), str(batch[1].dtype))}


def test_custom_dataset_dataloader_eval_no_grad(nbtorch, digits):
    ours = dataset_program(nbtorch, *digits)
    assert ours["acc"] >= 0.85 and ours["deterministic"] and ours["differs"]
    assert ours["batch"] == ((32, 64), "float32", (32,), "int64")
    torch = pytest.importorskip("torch")
    theirs = dataset_program(torch, *digits)
    assert theirs["batch"] == ((32, 64), "torch.float32", (32,), "torch.int64")
    assert abs(ours["acc"] - theirs["acc"]) <= TOL, (ours["acc"], theirs["acc"])


def resume_program(torch, X, y, path, split):
    "Train 3 epochs straight, or `split` epochs, save model + optimiser, rebuild both from the file, then the rest."
    nn = torch.nn
    Xt, yt = torch.tensor(X[:512]), torch.tensor(y[:512])

    def build():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        return model, torch.optim.Adam(model.parameters(), lr=3e-3)

    def epochs(model, opt, k):
        for _ in range(k):
            for i in range(0, 512, 64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(Xt[i:i + 64]), yt[i:i + 64]).backward()
                opt.step()

    model, opt = build()
    if split is None:
        epochs(model, opt, 3)
    else:
        epochs(model, opt, split)
        torch.save({"epoch": split, "model": model.state_dict(), "optimizer": opt.state_dict()}, path)
        del model, opt
        model, opt = build()
        ck = torch.load(path, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        epochs(model, opt, 3 - ck["epoch"])
    return [np.asarray(p.detach().numpy()).copy() for p in model.parameters()]


@pytest.mark.parametrize("lib", ["neuralbook", "torch"])
def test_checkpoint_resume_equals_uninterrupted_run(nbtorch, digits, tmp_path, lib):
    torch = nbtorch if lib == "neuralbook" else pytest.importorskip("torch")
    straight = resume_program(torch, *digits, tmp_path / "ck.pth", None)
    resumed = resume_program(torch, *digits, tmp_path / "ck.pth", 2)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def test_the_refusal_message_for_a_pth_file_works_as_advertised(nbtorch, tmp_path):
    "torch.save → nb.load refuses and says: torch.load(..., weights_only=True) in PyTorch, then load_torch_weights."
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.save(theirs.state_dict(), tmp_path / "model.pth")
    with pytest.raises(ValueError, match=r"model.pth is a zip archive.*torch.load\(path, weights_only=True\).*"
                                         r"neuralbook.finetune.load_torch_weights\(model, sd\)"):
        nbtorch.load(tmp_path / "model.pth")
    from neuralbook.finetune import load_torch_weights
    ours = nbtorch.nn.Sequential(nbtorch.nn.Linear(4, 8), nbtorch.nn.ReLU(), nbtorch.nn.Linear(8, 3))
    sd = torch.load(tmp_path / "model.pth", weights_only=True)          # the step done in PyTorch
    assert load_torch_weights(ours, sd) == ([], [])
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(ours(nbtorch.tensor(x)).numpy(), theirs(torch.tensor(x)).numpy(), atol=1e-6)
