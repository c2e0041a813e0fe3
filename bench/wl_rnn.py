"""Chapter 16's benchmark: an LSTM training step against PyTorch (loaded by bench/run.py, see `_load_workloads`)."""
import numpy as np

import neuralbook as nb

try:
    import torch
except ImportError:
    torch = None

B, T, I, H, K = 32, 50, 32, 128, 10


def lstm_b32_t50_h128():
    "training step (fwd, bwd, Adam) of an LSTM (batch 32, 50 steps, 32 inputs, 128 hidden) + linear head on h_n"
    from neuralbook import losses, nn, optim
    from neuralbook.rnn import LSTM
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((T, B, I)).astype(np.float32), rng.integers(0, K, B)

    class Ours(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = LSTM(I, H), nn.Linear(H, K)
        def forward(self, x):
            _, (h_n, _) = self.lstm(x)
            return self.head(h_n[-1])

    model = Ours()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    xb, yb = nb.tensor(x), nb.tensor(y)

    def ours():
        loss = losses.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    class Theirs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = torch.nn.LSTM(I, H), torch.nn.Linear(H, K)
        def forward(self, x):
            _, (h_n, _) = self.lstm(x)
            return self.head(h_n[-1])

    tmodel = Theirs()
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    txb, tyb = torch.tensor(x), torch.tensor(y)

    def theirs():
        loss = torch.nn.functional.cross_entropy(tmodel(txb), tyb)
        topt.zero_grad()
        loss.backward()
        topt.step()
    return ours, theirs


WORKLOADS = {"lstm_b32_t50_h128": lstm_b32_t50_h128}
MEMORY = {"lstm_b32_t50_h128"}
