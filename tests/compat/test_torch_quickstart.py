"""PyTorch's Quickstart pattern, as a program written for this project: an `nn.Module` subclass (Flatten, Sequential,
Linear, ReLU), a hand-written train/test loop (`loss_fn(pred, y)`, `zero_grad`, `backward`, `step`, accuracy as
`(pred.argmax(1) == y).type(torch.float).sum().item()`), `torch.save(model.state_dict(), ...)` /
`load_state_dict(torch.load(..., weights_only=True))`, `classes[pred[0].argmax(0)]`, `f"{loss:>7f}"` and
`torch.cuda.is_available()`. The program is one function of the module `torch`; it runs with
`import neuralbook as torch` and with PyTorch itself, on 4,000 + 1,000 images of Fashion-MNIST (Debian's
`dataset-fashion-mnist`; 8×8 scikit-learn digits padded to 28×28 when it is missing), 4 epochs of SGD (lr 0.05).

Tolerance: the two runs start from different random weights and shuffles (each library's own generator) and plain SGD
on 4,000 images is noisy (the test accuracy moves by a few points from epoch to epoch), so the final test accuracies
are compared within 0.08 absolute (seen on this machine: neuralbook 0.694, PyTorch 0.686) and each must clear 0.60."""
import numpy as np
import pytest

N_TRAIN, N_TEST, EPOCHS, LR, TOL, FLOOR = 4000, 1000, 4, 0.05, 0.08, 0.60
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _data():
    try:
        from neuralbook.datasets import fashion_mnist
        X, y = fashion_mnist("train")
        Xt, yt = fashion_mnist("test")
        X, y, Xt, yt = X[:N_TRAIN], y[:N_TRAIN], Xt[:N_TEST], yt[:N_TEST]
        X, Xt = X.reshape(-1, 1, 28, 28), Xt.reshape(-1, 1, 28, 28)
    except FileNotFoundError:
        from sklearn.datasets import load_digits
        d = load_digits()
        img = np.zeros((len(d.images), 1, 28, 28), np.float32)
        img[:, 0, 2:26, 2:26] = np.kron(d.images, np.ones((3, 3))) / 16.0
        X, y, Xt, yt = img[:1400], d.target[:1400], img[1400:], d.target[1400:]
    return X.astype(np.float32), y.astype(np.int64), Xt.astype(np.float32), yt.astype(np.int64)


def quickstart(torch, data, tmp_path):
    "The user's program: only the name `torch` differs between the two runs."
    from_numpy = torch.tensor
    nn = torch.nn
    DataLoader, TensorDataset = torch.utils.data.DataLoader, torch.utils.data.TensorDataset
    X, y, Xt, yt = data
    torch.manual_seed(0)
    training_data = TensorDataset(from_numpy(X), from_numpy(y))
    test_data = TensorDataset(from_numpy(Xt), from_numpy(yt))
    batch_size = 64
    train_dataloader = DataLoader(training_data, batch_size=batch_size, shuffle=True)
    test_dataloader = DataLoader(test_data, batch_size=batch_size)
    for X_, y_ in test_dataloader:
        first_batch = (tuple(X_.shape), str(y_.dtype))
        break
    device = "cuda" if torch.cuda.is_available() else "cpu"

    class NeuralNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.flatten = nn.Flatten()
            self.linear_relu_stack = nn.Sequential(
                nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

        def forward(self, x):
            x = self.flatten(x)
            logits = self.linear_relu_stack(x)
            return logits

    model = NeuralNetwork().to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    log = []

    def train(dataloader, model, loss_fn, optimizer):
        size = len(dataloader.dataset)
        model.train()
        for batch, (X, y) in enumerate(dataloader):
            X, y = X.to(device), y.to(device)
            pred = model(X)
            loss = loss_fn(pred, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if batch % 25 == 0:
                log.append(f"loss: {loss:>7f}  [{(batch + 1) * len(X):>5d}/{size:>5d}]")   # a 0-d tensor, formatted
                loss, current = loss.item(), (batch + 1) * len(X)
                log.append(f"loss: {loss:>7f}  [{current:>5d}/{size:>5d}]")

    def test(dataloader, model, loss_fn):
        size = len(dataloader.dataset)
        num_batches = len(dataloader)
        model.eval()
        test_loss, correct = 0, 0
        with torch.no_grad():
            for X, y in dataloader:
                X, y = X.to(device), y.to(device)
                pred = model(X)
                test_loss += loss_fn(pred, y).item()
                correct += (pred.argmax(1) == y).type(torch.float).sum().item()
        test_loss /= num_batches
        correct /= size
        log.append(f"Test Error: \n Accuracy: {(100 * correct):>0.1f}%, Avg loss: {test_loss:>8f} \n")
        return correct, test_loss

    for t in range(EPOCHS):
        log.append(f"Epoch {t + 1}\n-------------------------------")
        train(train_dataloader, model, loss_fn, optimizer)
        acc, test_loss = test(test_dataloader, model, loss_fn)

    path = str(tmp_path / "model.pth")
    torch.save(model.state_dict(), path)
    model2 = NeuralNetwork().to(device)
    model2.load_state_dict(torch.load(path, weights_only=True))
    acc2, loss2 = test(test_dataloader, model2, loss_fn)

    model2.eval()
    x, y = test_data[0][0], test_data[0][1]
    with torch.no_grad():
        x = x.to(device)
        pred = model2(x)
        predicted, actual = CLASSES[pred[0].argmax(0)], CLASSES[y]
    return {"acc": acc, "test_loss": test_loss, "reloaded": (acc2, loss2), "prediction": (predicted, actual),
            "first_batch": first_batch, "log": log, "pred_requires_grad": pred.requires_grad}


@pytest.fixture(scope="module")
def data():
    return _data()


def _check(out, data):
    assert out["acc"] >= FLOOR, out["log"][-1]
    assert out["reloaded"][0] == out["acc"] and abs(out["reloaded"][1] - out["test_loss"]) < 1e-5
    assert out["prediction"][1] == CLASSES[int(data[3][0])] and out["prediction"][0] in CLASSES
    assert out["first_batch"] == ((64, 1, 28, 28), out["first_batch"][1]) and "int64" in out["first_batch"][1]
    assert not out["pred_requires_grad"]
    assert out["log"][1].startswith("loss: ") and out["log"][1].endswith(f"[   64/{len(data[0]):>5d}]")
    assert out["log"][1] == out["log"][2]          # f"{tensor:>7f}" == f"{tensor.item():>7f}"


def test_quickstart_runs_on_neuralbook_and_matches_pytorch(nbtorch, data, tmp_path):
    ours = quickstart(nbtorch, data, tmp_path)
    _check(ours, data)
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    theirs = quickstart(torch, data, tmp_path)
    _check(theirs, data)
    assert abs(ours["acc"] - theirs["acc"]) <= TOL, (ours["acc"], theirs["acc"])
