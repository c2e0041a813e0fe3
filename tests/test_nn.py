"""Modules: registration order, traversal, modes, devices, state dicts, initialisers, layers against PyTorch."""
import math

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import nn
from tests.helpers import torch


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_parameters_in_definition_order_and_named():
    m = mlp()
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [type(c).__name__ for c in m.children()] == ["Linear", "ReLU", "Linear"]
    assert m.num_parameters() == 4 * 8 + 8 + 8 * 3 + 3


def test_shared_parameter_listed_once():
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.Tanh(), lin)
    assert len(list(m.parameters())) == 2


def test_custom_module_registration_and_repr():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()
            self.scale = nn.Parameter(np.ones(1, np.float32))
            self.register_buffer("count", np.zeros(1, np.float32))

        def forward(self, x):
            return self.body(x) * self.scale

    net = Net()
    # PyTorch's order: a module's own parameters (and buffers, in the state dict) before its children's
    assert [n for n, _ in net.named_parameters()] == ["scale", "body.0.weight", "body.0.bias", "body.2.weight",
                                                      "body.2.bias"]
    assert list(net.state_dict()) == ["scale", "count", "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]
    assert "(body): Sequential(" in repr(net) and "Linear(in_features=4, out_features=8, bias=True)" in repr(net)
    net.eval()
    assert not net.training and not net.body[0].training
    net.train()
    assert net.body[2].training
    with pytest.raises(AttributeError, match="super\\(\\).__init__\\(\\)"):
        class Broken(nn.Module):
            def __init__(self):
                self.x = nn.Linear(1, 1)
        Broken()


def test_zero_grad_and_requires_grad():
    m = mlp()
    m(nb.tensor(np.ones((2, 4), np.float32))).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_state_dict_roundtrip_and_checked_loading():
    a, b = mlp(), mlp()
    b.load_state_dict(a.state_dict())
    x = nb.tensor(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    sd = a.state_dict()
    sd["2.weight"] = np.zeros((3, 7), np.float32)
    before = b.state_dict()["0.weight"].copy()
    with pytest.raises(RuntimeError, match=r"size mismatch for 2.weight: the checkpoint has shape \(3, 7\), "
                                           r"the model has \(3, 8\)"):
        b.load_state_dict(sd)
    np.testing.assert_array_equal(b.state_dict()["0.weight"], before)  # untouched
    sd = a.state_dict()
    del sd["0.bias"]
    sd["junk"] = np.zeros(1)
    with pytest.raises(RuntimeError, match="missing keys: 0.bias[\\s\\S]*unexpected keys: junk"):
        b.load_state_dict(sd)
    res = b.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["0.bias"] and res.unexpected_keys == ["junk"]
    sd = {k: v.astype(np.float64) for k, v in a.state_dict().items()}
    with pytest.raises(RuntimeError, match="dtype mismatch for 0.weight: the checkpoint has float64"):
        b.load_state_dict(sd)
    b.load_state_dict(sd, strict=False)
    assert b.state_dict()["0.weight"].dtype == np.float32


def test_to_dtype_keeps_parameter_identity():
    m = mlp()
    p = next(m.parameters())
    m.double()
    assert next(m.parameters()) is p and p.dtype == np.float64


def test_linear_matches_torch_and_checks_input():
    lin = nn.Linear(4, 3).double()
    x = np.random.default_rng(1).standard_normal((6, 4))
    if torch is not None:
        tl = torch.nn.Linear(4, 3).double()
        with torch.no_grad():
            tl.weight.copy_(torch.tensor(lin.weight.numpy()))
            tl.bias.copy_(torch.tensor(lin.bias.numpy()))
        np.testing.assert_allclose(lin(nb.tensor(x)).numpy(), tl(torch.tensor(x)).detach().numpy(), atol=1e-12)
    with pytest.raises(ValueError, match=r"Linear\(4, 3\): input has shape \(2, 5\)"):
        lin(nb.tensor(np.ones((2, 5))))
    assert nb.gradcheck(lambda w, b, x: nb.functional.linear(x, w, b), lin.weight.numpy(), lin.bias.numpy(), x)


def test_linear_default_init_bounds():
    nb.manual_seed(0)
    lin = nn.Linear(100, 50)
    bound = 1 / math.sqrt(100)
    assert np.abs(lin.weight.numpy()).max() <= bound and np.abs(lin.bias.numpy()).max() <= bound
    assert lin.weight.numpy().std() == pytest.approx(bound / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("scheme,expected_std", [
    (lambda w: nn.init.xavier_uniform_(w), math.sqrt(2 / (300 + 200))),
    (lambda w: nn.init.xavier_normal_(w, gain=2.0), 2 * math.sqrt(2 / (300 + 200))),
    (lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"), math.sqrt(2 / 300)),
    (lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 200)),
    (lambda w: nn.init.normal_(w, 0.0, 0.3), 0.3),
    (lambda w: nn.init.uniform_(w, -1, 1), 1 / math.sqrt(3)),
])
def test_initialisers_have_the_right_variance(scheme, expected_std):
    w = nn.Parameter(np.empty((200, 300), np.float32))
    scheme(w)
    assert w.dtype == np.float32
    assert w.numpy().std() == pytest.approx(expected_std, rel=0.03)


def test_initialisers_are_seeded_and_gains_match_torch():
    nb.manual_seed(5)
    a = nn.Linear(3, 3).weight.numpy()
    nb.manual_seed(5)
    np.testing.assert_array_equal(a, nn.Linear(3, 3).weight.numpy())
    w = nn.Parameter(np.empty((2, 2), np.float32))
    nn.init.constant_(w, 0.25)
    assert (w.numpy() == 0.25).all()
    if torch is not None:
        for n, p in [("relu", None), ("tanh", None), ("leaky_relu", 0.2), ("sigmoid", None), ("selu", None)]:
            assert nn.init.calculate_gain(n, p) == pytest.approx(torch.nn.init.calculate_gain(n, p))
    with pytest.raises(ValueError, match="unknown nonlinearity 'swish'"):
        nn.init.calculate_gain("swish")


@pytest.mark.parametrize("name,kw", [("ReLU", {}), ("LeakyReLU", {"negative_slope": 0.2}), ("ELU", {"alpha": 0.5}),
                                     ("GELU", {}), ("Sigmoid", {}), ("Tanh", {}), ("SiLU", {}), ("SELU", {}),
                                     ("Softplus", {}), ("Softplus", {"beta": 2.0}), ("Mish", {})])
def test_activation_modules_match_torch(name, kw):
    if torch is None:
        pytest.skip("torch not installed")
    x = np.random.default_rng(2).standard_normal((3, 4))
    ours = getattr(nn, name)(**kw)(nb.tensor(x)).numpy()
    theirs = getattr(torch.nn, name)(**kw)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    s = nn.Softmax(axis=1)(nb.tensor(x)).numpy()
    np.testing.assert_allclose(s, torch.softmax(torch.tensor(x), 1).numpy(), atol=1e-12)


def test_flatten_identity_sequential_indexing():
    x = nb.tensor(np.ones((2, 3, 4), np.float32))
    assert nn.Flatten()(x).shape == (2, 12)
    assert nn.Identity()(x) is x
    m = mlp()
    assert isinstance(m[0], nn.Linear) and len(m) == 3 and len(m[:2]) == 2
    m.append(nn.Softmax())
    assert len(m) == 4


def test_new_activation_modules_are_chapter_02_functions_with_gradients():
    from neuralbook.tensor_methods import F as chapter02   # chapter 03's module (99 rebinds F.softplus, see report)
    pts = np.linspace(-3, 3, 6)   # (no point at SELU's kink, 0)
    x = nb.tensor(pts, requires_grad=True)
    for mod, fn in [(nn.SiLU(), chapter02.silu), (nn.SELU(), chapter02.selu), (nn.Mish(), chapter02.mish),
                    (nn.Softplus(beta=2.0), lambda t: chapter02.Softplus()(t * 2.0) / 2.0)]:
        np.testing.assert_array_equal(mod(x).numpy(), fn(x).numpy())
        assert nb.gradcheck(lambda t: mod(t), pts)
    assert repr(nn.Softplus(beta=2.0)) == "Softplus(beta=2.0)"


def test_trunc_normal_bounds_and_moments():
    "nn.init.trunc_normal_ (PyTorch's absolute bounds) and the Keras truncated normal share chapter 04's sampler."
    from neuralbook import nn
    from neuralbook.backend import Generator
    t = nn.Parameter(np.zeros((200, 300), np.float32))
    nn.init.trunc_normal_(t, mean=1.0, std=2.0, a=0.0, b=3.0, generator=Generator(0))
    assert t.dtype == np.float32 and 0.0 <= t.data.min() and t.data.max() <= 3.0
    # a normal N(1, 4) truncated to [0, 3] = [mean - 0.5 std, mean + std] has mean 1 + 2 (φ(-.5) - φ(1)) / (Φ(1) - Φ(-.5))
    from math import erf, exp, pi, sqrt
    phi = lambda x: exp(-x * x / 2) / sqrt(2 * pi)
    Phi = lambda x: 0.5 * (1 + erf(x / sqrt(2)))
    assert abs(t.data.mean() - (1 + 2 * (phi(-0.5) - phi(1)) / (Phi(1) - Phi(-0.5)))) < 0.01
    from neuralbook.keras.initializers import TruncatedNormal
    k = TruncatedNormal(mean=0.0, stddev=1.0, seed=3)((1000, 50))
    assert np.abs(k).max() <= 2.0 and np.array_equal(k, TruncatedNormal(mean=0.0, stddev=1.0, seed=3)((1000, 50)))


def test_module_is_built_in_stages_without_patching():
    "Chapter 04 grows Module in stages (issue 12): each public method lives in exactly one class body of the MRO."
    from neuralbook.nn import _ModuleBase, _ModuleLoading, _ModuleModes, _ModuleRegistry, _ModuleState, _ModuleTraversal
    stages = [nn.Module, _ModuleLoading, _ModuleState, _ModuleModes, _ModuleTraversal, _ModuleRegistry, _ModuleBase]
    assert list(nn.Module.__mro__[:len(stages)]) == stages
    names = ["__setattr__", "register_buffer", "named_parameters", "train", "to", "state_dict", "load_state_dict",
             "register_forward_hook", "__call__", "__repr__"]
    for name in names:
        owners = [c.__name__ for c in stages if name in vars(c)]
        assert len(owners) == 1, (name, owners)
        assert getattr(nn.Module, name).__module__ == "neuralbook.nn"
    assert isinstance(nn.Linear(2, 2), _ModuleBase)


def test_buffers_submodules_hooks_and_apply():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("count", np.zeros(1))
            self.register_buffer("cache", np.zeros(3), persistent=False)
        def forward(self, x): return self.lin(x)
    net = Net()
    assert list(net.state_dict()) == ["count", "lin.weight", "lin.bias"]      # module by module, as PyTorch
    assert "cache" not in net.state_dict() and [n for n, _ in net.named_buffers()] == ["count", "cache"]
    net.count = np.ones(1)                                   # assigning to a buffer keeps it a buffer
    assert isinstance(net.count, nb.Tensor) and "count" in net._buffers
    seen = []
    remove = net.lin.register_forward_hook(lambda m, inp, out: seen.append(tuple(out.shape)))
    net(np.ones((3, 2), np.float32)); remove(); net(np.ones((1, 2), np.float32))
    assert seen == [(3, 2)]
    order = []
    net.apply(lambda m: order.append(type(m).__name__))
    assert order == ["Linear", "Net"]
    del net.lin
    assert list(net.parameters()) == [] and not hasattr(net, "lin")
    shared = nn.Linear(2, 2)
    tree = nn.Sequential(shared, nn.Sequential(shared))
    assert [n for n, _ in tree.named_modules()] == ["", "0", "1"]


def test_embedding_lookup_and_gradient_of_repeated_ids():
    emb = nn.Embedding(5, 3)
    ids = np.array([[1, 1, 4]])
    out = emb(ids)
    assert out.shape == (1, 3, 3) and np.array_equal(out.numpy()[0, 2], emb.weight.numpy()[4])
    out.sum().backward()
    assert np.array_equal(emb.weight.grad.numpy()[:, 0], [0, 2, 0, 0, 1])   # id 1 twice: gradients add up


def test_frozen_linear_keeps_no_input_and_gives_the_same_input_gradient():
    "chapter 04: a Linear whose weight is frozen records _FrozenLinear, which stubs its input (x is freed)"
    from neuralbook.nn import Linear, _FrozenLinear
    rng = np.random.default_rng(0)
    x0 = nb.tensor(rng.normal(size=(8, 32, 64)), requires_grad=True)          # 128 KiB: over the stub size
    a, b = Linear(64, 5, dtype=np.float64), Linear(64, 5, dtype=np.float64).requires_grad_(False)
    b.weight.data[...], b.bias.data[...] = a.weight.data, a.bias.data
    g = rng.normal(size=(8, 32, 5))
    out = []
    for layer in (a, b):
        x0.grad = None
        y = layer(x0 * 2.0)
        out.append(y.numpy())
        y.backward(nb.tensor(g))
        out.append(x0.grad.numpy())
    assert np.array_equal(out[0], out[2]) and np.array_equal(out[1], out[3])
    y = b(x0 * 2.0)
    assert type(y.creator) is _FrozenLinear and y.creator.x_data[0].strides == (0, 0, 0)
    b.bias.requires_grad_(True)                                  # BitFit: a trainable bias needs no x either
    b(x0 * 2.0).sum().backward()
    assert b.weight.grad is None and np.allclose(b.bias.grad.numpy(), 8 * 32)
    assert nb.gradcheck(lambda t: b(t), nb.tensor(rng.normal(size=(3, 64)), requires_grad=True))
