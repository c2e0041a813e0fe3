"""Chapter 17's benchmark: a training step of a 2-layer transformer encoder against PyTorch (loaded by bench/run.py).

batch 16, sequence 64, width 128, 4 heads, feed-forward 512, post-norm, ReLU, dropout 0 (the same work on both
sides), causal self-attention; loss: mean squared error against a fixed target; Adam."""
import numpy as np

import neuralbook as nb

try:
    import torch
except ImportError:
    torch = None

N, T, D, H, FF, LAYERS = 16, 64, 128, 4, 512, 2


def transformer_encoder_2x128():
    "training step (fwd, bwd, Adam) of a 2-layer transformer encoder, batch 16, seq 64, width 128, 4 heads, causal"
    from neuralbook import optim
    from neuralbook.attention import TransformerEncoder, TransformerEncoderLayer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    target = rng.standard_normal((N, T, D)).astype(np.float32)

    model = TransformerEncoder(TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True), LAYERS)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    xb, tb = nb.tensor(x), nb.tensor(target)

    def ours():
        d = model(xb, is_causal=True) - tb
        loss = (d * d).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    tl = torch.nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True)
    tmodel = torch.nn.TransformerEncoder(tl, LAYERS, enable_nested_tensor=False)
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    txb, ttb = torch.tensor(x), torch.tensor(target)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(T)

    def theirs():
        loss = torch.nn.functional.mse_loss(tmodel(txb, mask=mask, is_causal=True), ttb)
        topt.zero_grad()
        loss.backward()
        topt.step()
    return ours, theirs


WORKLOADS = {"transformer_encoder_2x128": transformer_encoder_2x128}
MEMORY = {"transformer_encoder_2x128"}
