"""Test helpers: run the same computation in neuralbook and PyTorch and compare forward and backward."""
import numpy as np

import neuralbook as nb

try:
    import torch
except ImportError:  # torch is only an oracle
    torch = None


def compare_with_torch(nb_fn, torch_fn, *arrays, atol=1e-9, rtol=1e-7, seed=0):
    """Evaluate nb_fn and torch_fn on float64 copies of `arrays`, backpropagate the same random cotangent and
    compare outputs, gradients, shapes and dtypes. Integer arrays are passed through without gradients."""
    nb_in = [nb.tensor(a.copy(), requires_grad=a.dtype.kind == "f") if isinstance(a, np.ndarray) else a for a in arrays]
    t_in = [torch.tensor(a.copy(), requires_grad=a.dtype.kind == "f") if isinstance(a, np.ndarray) else a
            for a in arrays]
    y = nb_fn(*nb_in)
    ty = torch_fn(*t_in)
    assert tuple(y.shape) == tuple(ty.shape), f"shape {y.shape} vs torch {tuple(ty.shape)}"
    assert y.dtype == np.dtype(str(ty.dtype).replace("torch.", "")), f"dtype {y.dtype} vs torch {ty.dtype}"
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=atol, rtol=rtol, err_msg="forward")
    if not any(isinstance(t, nb.Tensor) and t.requires_grad for t in nb_in):
        return
    v = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(v.astype(y.dtype))
    ty.backward(torch.tensor(v, dtype=ty.dtype))
    for i, (a, b) in enumerate(zip(nb_in, t_in)):
        if isinstance(a, nb.Tensor) and a.requires_grad:
            ga = a.grad.numpy() if a.grad is not None else np.zeros(a.shape)
            gb = b.grad.numpy() if b.grad is not None else np.zeros(a.shape)
            np.testing.assert_allclose(ga, gb, atol=atol, rtol=rtol, err_msg=f"gradient of input {i}")
