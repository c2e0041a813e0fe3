"""Optimisers, learning-rate schedules and gradient clipping (chapters 07, 07b).

Oracles: torch.optim, torch.optim.lr_scheduler and torch.nn.utils (skipped without torch). Trajectories are compared
over 50 steps of a small float64 linear regression whose gradients each framework computes with its own autograd."""
import itertools
import json

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import optim
from neuralbook.optim import SGD, Adagrad, Adam, AdamW, NAdam, RMSprop, clip_grad_norm_, clip_grad_value_
from neuralbook.optim import lr_scheduler as S

RNG = np.random.default_rng(0)
X, Y = RNG.standard_normal((20, 4)), RNG.standard_normal((20, 3))
W0, B0 = 0.5 * RNG.standard_normal((4, 3)), 0.5 * RNG.standard_normal(3)


@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # optimiser scalars (step, NAdam's mu_product) in float64, like ours
    yield torch
    torch.set_default_dtype(old)


def _groups(W, b, groups):
    "The param list, or two groups ([W], [b]) with per-group overrides."
    if groups is None: return [W, b]
    return [{"params": [W], **groups[0]}, {"params": [b], **groups[1]}]


def run_nb(cls, kw, steps=50, sign=1.0, groups=None, dtype=np.float64, sched=None):
    W, b = nb.tensor(W0.astype(dtype), requires_grad=True), nb.tensor(B0.astype(dtype), requires_grad=True)
    opt = cls(_groups(W, b, groups), **kw)
    sched = sched(S, opt) if sched else None
    Xt, Yt, out = nb.tensor(X.astype(dtype)), nb.tensor(Y.astype(dtype)), []
    for _ in range(steps):
        opt.zero_grad()
        (sign * ((Xt @ W + b - Yt) ** 2).mean()).backward()
        opt.step()
        if sched: sched.step()
        out.append(np.concatenate([W.data.ravel(), b.data]))
    return np.array(out)


def run_torch(torch, name, kw, steps=50, sign=1.0, groups=None, dtype=np.float64, sched=None):
    W = torch.tensor(W0.astype(dtype), requires_grad=True)
    b = torch.tensor(B0.astype(dtype), requires_grad=True)
    opt = getattr(torch.optim, name)(_groups(W, b, groups), foreach=False, **kw)
    sched = sched(torch.optim.lr_scheduler, opt) if sched else None
    Xt, Yt, out = torch.tensor(X.astype(dtype)), torch.tensor(Y.astype(dtype)), []
    for _ in range(steps):
        opt.zero_grad()
        (sign * ((Xt @ W + b - Yt) ** 2).mean()).backward()
        opt.step()
        if sched: sched.step()
        out.append(np.concatenate([W.detach().numpy().ravel(), b.detach().numpy()]))
    return np.array(out)


def grid(**options):
    return [dict(zip(options, v)) for v in itertools.product(*options.values())]


CASES = (
    [("SGD", dict(lr=0.05, **o)) for o in grid(momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                                              weight_decay=[0.0, 0.1], maximize=[False, True])
     if not (o["nesterov"] and (o["momentum"] == 0 or o["dampening"] != 0))]
    + [("Adagrad", dict(lr=0.1, **o)) for o in grid(lr_decay=[0.0, 0.05], weight_decay=[0.0, 0.1],
                                                   initial_accumulator_value=[0.0, 0.5], maximize=[False, True])]
    + [("RMSprop", dict(lr=1e-3, **o)) for o in grid(alpha=[0.99, 0.9], centered=[False, True], momentum=[0.0, 0.9],
                                                    weight_decay=[0.0, 0.1], maximize=[False, True])]
    + [("Adam", dict(lr=0.05, betas=(0.8, 0.95), **o)) for o in grid(amsgrad=[False, True], weight_decay=[0.0, 0.1],
                                                                     decoupled_weight_decay=[False, True],
                                                                     maximize=[False, True])]
    + [("AdamW", dict(lr=0.05, **o)) for o in grid(amsgrad=[False, True], weight_decay=[0.0, 0.01, 0.1],
                                                  maximize=[False, True])]
    + [("NAdam", dict(lr=0.005, **o)) for o in grid(weight_decay=[0.0, 0.1], momentum_decay=[4e-3, 0.1],
                                                  decoupled_weight_decay=[False, True], maximize=[False, True])]
)


def _id(case):
    name, kw = case
    return name + "-" + ",".join(f"{k}={v}" for k, v in kw.items() if k not in ("lr", "betas"))


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_trajectory_matches_torch(torch, case):
    name, kw = case
    sign = -1.0 if kw.get("maximize") else 1.0  # ascend a concave objective, so that it converges too
    ours = run_nb(getattr(optim, name), kw, sign=sign)
    ref = run_torch(torch, name, kw, sign=sign)
    assert np.abs(ours[-1] - ours[0]).max() > 1e-2  # the parameters did move
    np.testing.assert_allclose(ours, ref, atol=1e-10, rtol=0)  # stricter than needed: catches a misplaced eps


GROUP_CASES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, [{"lr": 0.1, "momentum": 0.5}, {"weight_decay": 0.2}]),
    ("Adam", {"lr": 0.05}, [{"betas": (0.8, 0.9), "amsgrad": True}, {"lr": 0.01, "weight_decay": 0.1}]),
    ("RMSprop", {"lr": 1e-3}, [{"centered": True}, {"momentum": 0.9, "alpha": 0.9}]),
    ("Adagrad", {"lr": 0.1}, [{"lr_decay": 0.1}, {"eps": 1e-3, "weight_decay": 0.1}]),  # (torch ignores a per-group initial_accumulator_value)
    ("NAdam", {"lr": 0.005}, [{"momentum_decay": 0.01}, {"lr": 0.01, "betas": (0.5, 0.9)}]),
    ("AdamW", {"lr": 0.02}, [{"weight_decay": 0.5}, {"weight_decay": 0.0, "lr": 0.1}]),
]


@pytest.mark.parametrize("name,kw,groups", GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_param_groups_match_torch(torch, name, kw, groups):
    ours = run_nb(getattr(optim, name), kw, groups=groups)
    np.testing.assert_allclose(ours, run_torch(torch, name, kw, groups=groups), atol=1e-10, rtol=0)


TRAIN_SCHED = [
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, lambda M, o: M.OneCycleLR(o, [0.1, 0.05], total_steps=50)),
    ("Adam", {"lr": 0.05, "amsgrad": True}, lambda M, o: M.OneCycleLR(o, 0.05, total_steps=50, three_phase=True)),
    ("NAdam", {"lr": 0.005}, lambda M, o: M.CosineAnnealingLR(o, 20)),
    ("RMSprop", {"lr": 1e-3, "momentum": 0.5}, lambda M, o: M.SequentialLR(o, [M.LinearLR(o, 0.1, total_iters=5),
                                                                            M.StepLR(o, 10, 0.5)], [5])),
]


@pytest.mark.parametrize("name,kw,sched", TRAIN_SCHED, ids=[c[0] for c in TRAIN_SCHED])
def test_training_with_schedule_matches_torch(torch, name, kw, sched):
    "Schedules rewrite the groups' lr (and momentum / beta1) between steps; the optimiser must pick them up."
    groups = [{}, {"lr": kw["lr"] / 2}]
    ours = run_nb(getattr(optim, name), kw, groups=groups, sched=sched)
    np.testing.assert_allclose(ours, run_torch(torch, name, kw, groups=groups, sched=sched), atol=1e-10, rtol=0)


def test_param_groups_defaults_filled():
    W, b = nb.tensor(W0, requires_grad=True), nb.tensor(B0, requires_grad=True)
    opt = Adam([{"params": [W], "lr": 0.1}, {"params": b}], lr=0.01, weight_decay=0.5)
    g0, g1 = opt.param_groups
    assert g0["lr"] == 0.1 and g1["lr"] == 0.01 and g0["weight_decay"] == g1["weight_decay"] == 0.5
    assert g1["params"] == [b] and g0["betas"] == (0.9, 0.999)
    c = nb.tensor(np.zeros(2), requires_grad=True)
    opt.add_param_group({"params": [c], "amsgrad": True})
    assert opt.param_groups[2]["amsgrad"] and opt.param_groups[2]["lr"] == 0.01


def test_float32_matches_torch(torch):
    for name, kw in [("SGD", {"lr": 0.05, "momentum": 0.9}), ("Adam", {"lr": 0.05, "amsgrad": True}),
                     ("NAdam", {"lr": 0.005}), ("RMSprop", {"lr": 1e-3, "centered": True}), ("Adagrad", {"lr": 0.1})]:
        ours = run_nb(getattr(optim, name), kw, dtype=np.float32)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, run_torch(torch, name, kw, dtype=np.float32), atol=1e-4, rtol=0)


ALL = [(SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}), (SGD, {"lr": 0.05}),
       (Adagrad, {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1}),
       (RMSprop, {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.1}),
       (Adam, {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1}), (AdamW, {"lr": 0.05, "amsgrad": True}),
       (NAdam, {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True})]
ALL_IDS = [f"{c.__name__}{i}" for i, (c, _) in enumerate(ALL)]


def _train(opt, W, b, steps):
    Xt, Yt = nb.tensor(X), nb.tensor(Y)
    for _ in range(steps):
        opt.zero_grad()
        ((Xt @ W + b - Yt) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("cls,kw", ALL, ids=ALL_IDS)
def test_state_dict_resumes_bit_identical(cls, kw):
    W, b = nb.tensor(W0.copy(), requires_grad=True), nb.tensor(B0.copy(), requires_grad=True)
    _train(cls([W, b], **kw), W, b, 50)
    W1, b1 = nb.tensor(W0.copy(), requires_grad=True), nb.tensor(B0.copy(), requires_grad=True)
    opt1 = cls([{"params": [W1]}, {"params": [b1]}], **kw)
    _train(opt1, W1, b1, 25)
    sd = opt1.state_dict()
    # the format: parameters numbered across groups, NumPy arrays, JSON for everything else
    assert sorted(sd["state"]) == ([0, 1] if sd["state"] else [])
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    for st in sd["state"].values():
        for k, v in st.items():
            assert isinstance(v, np.ndarray) or json.dumps(v), k
    sd = {"state": {str(i): st for i, st in sd["state"].items()},          # as a JSON round trip leaves it
          "param_groups": json.loads(json.dumps(sd["param_groups"]))}
    W_at, b_at = W1.data.copy(), b1.data.copy()
    _train(opt1, W1, b1, 1)  # the saved arrays are copies: later steps do not change them
    W2, b2 = nb.tensor(W_at, requires_grad=True), nb.tensor(b_at, requires_grad=True)  # "loaded from a checkpoint"
    opt2 = cls([{"params": [W2]}, {"params": [b2]}], **kw)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0].keys() == opt1.param_groups[0].keys()
    if "betas" in opt2.defaults: assert isinstance(opt2.param_groups[1]["betas"], tuple)
    _train(opt2, W2, b2, 25)
    assert np.array_equal(W2.data, W.data) and np.array_equal(b2.data, b.data)


def test_state_dict_through_safetensors(tmp_path):
    st_np = pytest.importorskip("safetensors.numpy")
    W, b = nb.tensor(W0.copy(), requires_grad=True), nb.tensor(B0.copy(), requires_grad=True)
    opt = NAdam([W, b], lr=0.05)
    _train(opt, W, b, 10)
    sd = opt.state_dict()
    st_np.save_file({f"{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()
                     if isinstance(v, np.ndarray)}, str(tmp_path / "opt.safetensors"))
    meta = json.dumps({"groups": sd["param_groups"],
                       "scalars": {i: {k: v for k, v in s.items() if not isinstance(v, np.ndarray)}
                                   for i, s in sd["state"].items()}})
    arrays, meta = st_np.load_file(str(tmp_path / "opt.safetensors")), json.loads(meta)
    state = {int(i): dict(s) for i, s in meta["scalars"].items()}
    for key, a in arrays.items():
        i, k = key.split(".", 1)
        state[int(i)][k] = a
    W2, b2 = nb.tensor(W.data.copy(), requires_grad=True), nb.tensor(b.data.copy(), requires_grad=True)
    opt2 = NAdam([W2, b2], lr=0.05)
    opt2.load_state_dict({"state": state, "param_groups": meta["groups"]})
    _train(opt, W, b, 10)
    _train(opt2, W2, b2, 10)
    assert np.array_equal(W.data, W2.data) and opt2.state[W2]["mu_product"] == opt.state[W]["mu_product"]


def test_load_state_dict_mismatch():
    W, b = nb.tensor(W0.copy(), requires_grad=True), nb.tensor(B0.copy(), requires_grad=True)
    opt = Adam([W, b], lr=0.05)
    _train(opt, W, b, 2)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="parameter group"):
        Adam([{"params": [W]}, {"params": [b]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="has 2 parameters in the saved state but 1 here"):
        Adam([W]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 0 has shape \(4, 3\).*\(3, 4\)"):
        Adam([nb.tensor(np.zeros((3, 4)), requires_grad=True), b]).load_state_dict(sd)


@pytest.mark.parametrize("cls,kw", ALL, ids=ALL_IDS)
def test_updates_in_place_and_keep_dtype(cls, kw):
    W = nb.tensor(W0.astype(np.float32), requires_grad=True)
    b = nb.tensor(B0.astype(np.float32), requires_grad=True)
    opt = cls([W, b], **kw)
    wd, bd = W.data, b.data
    Xt, Yt = nb.tensor(X, dtype="float32"), nb.tensor(Y, dtype="float32")
    bufs = None
    for _ in range(3):
        opt.zero_grad()
        ((Xt @ W + b - Yt) ** 2).mean().backward()
        g = W.grad.data.copy()
        opt.step()
        assert np.array_equal(W.grad.data, g)  # the gradient is only read
        now = {k: v for k, v in opt.state.get(W, {}).items() if isinstance(v, np.ndarray)}
        if bufs is not None: assert all(now[k] is bufs[k] for k in bufs)
        bufs = now
    assert W.data is wd and b.data is bd and W.dtype == np.float32
    assert all(v.dtype == np.float32 for v in bufs.values())
    assert not np.array_equal(W.data, W0.astype(np.float32))


@pytest.mark.parametrize("cls,kw", ALL, ids=ALL_IDS)
def test_frozen_and_gradless_params_are_skipped(cls, kw):
    W, b = nb.tensor(W0.copy(), requires_grad=True), nb.tensor(B0.copy(), requires_grad=True)
    frozen = nb.tensor(np.ones(3))                  # requires_grad=False, but given a gradient by hand
    frozen.grad = nb.tensor(np.ones(3))
    unused = nb.tensor(np.ones(2), requires_grad=True)  # never receives a gradient
    opt = cls([W, frozen, unused, b], **kw)
    _train(opt, W, b, 3)
    assert np.array_equal(frozen.data, np.ones(3)) and np.array_equal(unused.data, np.ones(2))
    assert frozen not in opt.state and unused not in opt.state
    assert sorted(opt.state_dict()["state"]) == ([0, 3] if any(opt.state.values()) else [])


def test_zero_grad_and_closure():
    W = nb.tensor(W0.copy(), requires_grad=True)
    opt = SGD([W], lr=0.1)
    (W * W).sum().backward()
    g = W.grad.data
    opt.zero_grad(set_to_none=False)
    assert W.grad.data is g and not g.any()
    opt.zero_grad()
    assert W.grad is None

    def closure():
        opt.zero_grad()
        loss = (W * W).sum()
        loss.backward()
        return loss
    with nb.no_grad():  # the closure runs with grad enabled anyway
        loss = opt.step(closure)
    assert np.isclose(loss.item(), (W0 ** 2).sum()) and np.allclose(W.data, 0.8 * W0)


def test_kernels_registered():
    from neuralbook.backend import KERNELS
    assert KERNELS["sgd_update"] is optim.sgd_update and KERNELS["adam_update"] is optim.adam_update
    p, g = np.ones(3), np.array([1.0, -2.0, 0.5])
    m, v = np.zeros(3), np.zeros(3)
    optim.adam_update(p, g, m, v, None, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, False, False)
    np.testing.assert_allclose(p, 1 - 0.1 * np.sign(g), atol=1e-7)  # Adam's first step: η·sign(g)


@pytest.mark.parametrize("make,match", [
    (lambda ps: SGD(ps, lr=-0.1), "SGD.*lr must be a number >= 0, got -0.1"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), "momentum must be"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), "nesterov=True needs momentum > 0 and dampening = 0"),
    (lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (lambda ps: Adam(ps, betas=(1.0, 0.999)), r"betas must be a pair.*0 <= beta < 1, got \(1.0, 0.999\)"),
    (lambda ps: Adam(ps, betas=(0.9, -0.1)), "betas"),
    (lambda ps: AdamW(ps, betas=(0.9,)), "betas"),
    (lambda ps: NAdam(ps, betas=(0.9, 1.5)), "betas"),
    (lambda ps: Adam(ps, lr=-1e-3), "Adam.*lr"),
    (lambda ps: Adam(ps, eps=-1.0), "eps"),
    (lambda ps: AdamW(ps, weight_decay=-0.1), "weight_decay"),
    (lambda ps: RMSprop(ps, alpha=1.5), "alpha"),
    (lambda ps: Adagrad(ps, lr_decay=-1.0), "lr_decay"),
    (lambda ps: Adagrad(ps, initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (lambda ps: NAdam(ps, momentum_decay=-1.0), "momentum_decay"),
    (lambda ps: SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": -1.0}], lr=0.1), r"param group 1\): lr"),
    (lambda ps: SGD([{"params": ps}, {"params": ps[:1]}], lr=0.1), "more than one parameter group"),
    (lambda ps: SGD(ps + ps[:1], lr=0.1), "appears more than once"),
    (lambda ps: SGD([], lr=0.1), "empty parameter list"),
    (lambda ps: SGD([ps[0] * 2.0], lr=0.1), "not a leaf"),
])
def test_bad_hyperparameters(make, match):
    ps = [nb.tensor(W0.copy(), requires_grad=True), nb.tensor(B0.copy(), requires_grad=True)]
    with pytest.raises(ValueError, match=match):
        make(ps)


def test_bad_param_types():
    p = nb.tensor(W0.copy(), requires_grad=True)
    with pytest.raises(TypeError, match="single tensor.*wrap it in a list"):
        SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="not a set"):
        SGD([{"params": {p}}], lr=0.1)
    with pytest.raises(TypeError, match="parameter 1 is a ndarray, expected a Tensor"):
        SGD([p, np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="dtype int64"):
        SGD([nb.tensor(np.arange(3))], lr=0.1)
    opt = SGD([p], lr=0.1)
    p.grad = nb.tensor(np.zeros(5))
    with pytest.raises(ValueError, match=r"shape \(4, 3\) has a gradient of shape \(5,\)"):
        opt.step()


def test_nn_parameters():
    nn = pytest.importorskip("neuralbook.nn")
    if not hasattr(nn, "Linear"): pytest.skip("neuralbook.nn has no Linear yet")
    nb.manual_seed(0)
    layer = nn.Linear(4, 3)
    opt = AdamW(layer.parameters(), lr=0.01)
    before = [p.data.copy() for p in layer.parameters()]
    layer(nb.tensor(X, dtype="float32")).sum().backward()
    opt.step()
    assert all(not np.array_equal(a, p.data) for a, p in zip(before, layer.parameters()))


def test_lr_scheduler_reachable_as_attribute():
    assert optim.lr_scheduler.StepLR is S.StepLR and optim.lr_scheduler.OneCycleLR is S.OneCycleLR


# ---------------------------------------------------------------- clipping

def _grads_pair(torch, shapes=((4, 3), (3,), (2, 2, 2)), seed=1):
    rng = np.random.default_rng(seed)
    gs = [rng.standard_normal(s) for s in shapes]
    ours = [nb.tensor(np.zeros(s), requires_grad=True) for s in shapes]
    theirs = [torch.zeros(s, requires_grad=True) for s in shapes]
    for a, t, g in zip(ours, theirs, gs):
        a.grad, t.grad = nb.tensor(g.copy()), torch.tensor(g.copy())
    return ours, theirs


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(torch, norm_type, max_norm):
    ours, theirs = _grads_pair(torch)
    arrays = [p.grad.data for p in ours]
    extra = nb.tensor(np.ones(2), requires_grad=True)  # no grad: ignored
    total = clip_grad_norm_(ours + [extra], max_norm, norm_type=norm_type)
    ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type, foreach=False)
    assert isinstance(total, float) and np.isclose(total, ref.item(), rtol=1e-12)
    for a, t, arr in zip(ours, theirs, arrays):
        assert a.grad.data is arr  # in place
        np.testing.assert_allclose(a.grad.data, t.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert extra.grad is None


def test_clip_grad_value_matches_torch(torch):
    ours, theirs = _grads_pair(torch)
    arrays = [p.grad.data for p in ours]
    assert clip_grad_value_(ours, 0.3) is None
    torch.nn.utils.clip_grad_value_(theirs, 0.3, foreach=False)
    for a, t, arr in zip(ours, theirs, arrays):
        assert a.grad.data is arr
        np.testing.assert_array_equal(a.grad.data, t.grad.numpy())


def test_clip_single_tensor_and_errors():
    p = nb.tensor(np.zeros(2), requires_grad=True)
    p.grad = nb.tensor(np.array([3.0, 4.0]))
    assert clip_grad_norm_(p, 1.0) == 5.0 and np.allclose(p.grad.data, [0.6, 0.8], atol=1e-6)
    assert clip_grad_norm_([nb.tensor(np.zeros(2), requires_grad=True)], 1.0) == 0.0  # no gradients at all
    p.grad = nb.tensor(np.array([np.inf, 1.0]))
    with pytest.raises(RuntimeError, match="non-finite|inf"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        clip_grad_norm_([p], 1.0, norm_type=0)
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        clip_grad_norm_([p], -1.0)
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        clip_grad_value_([p], -1.0)


# ---------------------------------------------------------------- schedules

def _opt_pair(torch, kind):
    "The same two-group optimiser in both frameworks."
    mk = {"sgd": lambda M, ps: M.SGD(ps, lr=0.1, momentum=0.9), "adam": lambda M, ps: M.Adam(ps, lr=0.1)}[kind]
    ours = mk(optim, [{"params": [nb.tensor(np.zeros(2), requires_grad=True)]},
                      {"params": [nb.tensor(np.zeros(3), requires_grad=True)], "lr": 0.02}])
    theirs = mk(torch.optim, [{"params": [torch.zeros(2, requires_grad=True)]},
                              {"params": [torch.zeros(3, requires_grad=True)], "lr": 0.02}])
    return ours, theirs


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


def _record(opt, sched, steps, step_opt=None):
    lrs, moms = [sched.get_last_lr()], [_momenta(opt)]
    for _ in range(steps - 1):
        if step_opt: step_opt()
        sched.step()
        lrs.append(sched.get_last_lr()); moms.append(_momenta(opt))
        assert [g["lr"] for g in opt.param_groups] == lrs[-1]
    return np.array(lrs), np.array(moms)


SCHEDULES = {
    "StepLR": lambda M, o: M.StepLR(o, 7, gamma=0.5),
    "StepLR-1": lambda M, o: M.StepLR(o, 1, gamma=0.9),
    "MultiStepLR": lambda M, o: M.MultiStepLR(o, [10, 30, 30, 60], gamma=0.3),
    "ExponentialLR": lambda M, o: M.ExponentialLR(o, 0.95),
    "CosineAnnealingLR": lambda M, o: M.CosineAnnealingLR(o, 30, eta_min=0.01),
    "CosineAnnealingLR-short": lambda M, o: M.CosineAnnealingLR(o, 7),
    "LinearLR": lambda M, o: M.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=10),
    "LinearLR-decay": lambda M, o: M.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=50),
    "LinearLR-default": lambda M, o: M.LinearLR(o),
    "LambdaLR": lambda M, o: M.LambdaLR(o, [lambda t: 0.97 ** t, lambda t: 1 / (1 + t)]),
    "SequentialLR": lambda M, o: M.SequentialLR(o, [M.LinearLR(o, 0.1, total_iters=10), M.CosineAnnealingLR(o, 40)],
                                                milestones=[10]),
    "SequentialLR-3": lambda M, o: M.SequentialLR(o, [M.LinearLR(o, 0.5, total_iters=4), M.StepLR(o, 5, 0.5),
                                                      M.ExponentialLR(o, 0.9)], milestones=[5, 30]),
}
for _a, _t, _kind in itertools.product(["cos", "linear"], [False, True], ["sgd", "adam"]):
    SCHEDULES[f"OneCycleLR-{_a}-{'3phase' if _t else '2phase'}-{_kind}"] = (
        lambda M, o, a=_a, t=_t: M.OneCycleLR(o, max_lr=[0.5, 0.1], total_steps=100, anneal_strategy=a,
                                              three_phase=t, pct_start=0.25, div_factor=10.0, final_div_factor=100.0))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_matches_torch(torch, name):
    import warnings
    kind = "adam" if name.endswith("adam") else "sgd"
    ours, theirs = _opt_pair(torch, kind)
    make = SCHEDULES[name]
    lr_ours, m_ours = _record(ours, make(S, ours), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about ordering details that do not apply here
        lr_ref, m_ref = _record(theirs, make(torch.optim.lr_scheduler, theirs), 100, step_opt=theirs.step)
    np.testing.assert_allclose(lr_ours, lr_ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(m_ours, m_ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "SequentialLR", "OneCycleLR-cos-3phase-adam",
                                  "MultiStepLR"])
def test_schedule_state_dict_resumes(name):
    def fresh():
        o = (Adam if name.endswith("adam") else SGD)([{"params": [nb.tensor(np.zeros(2), requires_grad=True)]},
                                                      {"params": [nb.tensor(np.zeros(3), requires_grad=True)],
                                                       "lr": 0.02}], lr=0.1)
        return o, SCHEDULES[name](S, o)
    o, s = fresh()
    full, _ = _record(o, s, 100)
    o1, s1 = fresh()
    for _ in range(39): s1.step()
    osd, ssd = json.loads(json.dumps(o1.state_dict())), json.loads(json.dumps(s1.state_dict()))
    o2, s2 = fresh()
    o2.load_state_dict(osd)
    s2.load_state_dict(ssd)
    assert s2.get_last_lr() == list(full[39]) == [g["lr"] for g in o2.param_groups]
    rest = [s2.step() or s2.get_last_lr() for _ in range(60)]
    np.testing.assert_array_equal(np.array(rest), full[40:])


def test_schedule_errors():
    p = nb.tensor(np.zeros(2), requires_grad=True)
    with pytest.raises(TypeError, match="expected an optimiser"):
        S.StepLR(object(), 3)
    with pytest.raises(ValueError, match="step_size must be a positive integer"):
        S.StepLR(SGD([p], lr=0.1), 0)
    with pytest.raises(ValueError, match="cycle_momentum=True needs an optimiser with momentum or betas"):
        S.OneCycleLR(Adagrad([p], lr=0.1), max_lr=0.1, total_steps=10)
    with pytest.raises(ValueError, match="total_steps, or both epochs and steps_per_epoch"):
        S.OneCycleLR(SGD([p], lr=0.1, momentum=0.9), max_lr=0.1)
    with pytest.raises(ValueError, match="max_lr has 2 values, but the optimiser has 1"):
        S.OneCycleLR(SGD([p], lr=0.1, momentum=0.9), max_lr=[0.1, 0.2], total_steps=10)
    s = S.OneCycleLR(SGD([p], lr=0.1, momentum=0.9), max_lr=0.1, total_steps=3)
    s.step(); s.step(); s.step()
    with pytest.raises(ValueError, match="tried to step 4 times, but total_steps is 3"):
        s.step()
    o = SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="2 schedulers need 1 milestone"):
        S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 3)], milestones=[])
    with pytest.raises(ValueError, match="belongs to another optimiser"):
        S.SequentialLR(o, [S.StepLR(SGD([p], lr=0.1), 2)], milestones=[])
    with pytest.raises(ValueError, match="initial_lr"):
        S.StepLR(SGD([p], lr=0.1), 3, last_epoch=5)


# ---------------------------------------------------------------- GPU (skips itself without one)

@pytest.mark.gpu
@pytest.mark.parametrize("cls,kw", ALL, ids=ALL_IDS)
def test_gpu_matches_cpu(cls, kw):
    def run(device):
        W = nb.tensor(W0.copy(), requires_grad=True, device=device)
        b = nb.tensor(B0.copy(), requires_grad=True, device=device)
        opt = cls([W, b], **kw)
        Xt, Yt = nb.tensor(X, device=device), nb.tensor(Y, device=device)
        for _ in range(20):
            opt.zero_grad()
            ((Xt @ W + b - Yt) ** 2).mean().backward()
            clip_grad_norm_([W, b], 1.0)
            opt.step()
        return W.numpy(), opt.state_dict()
    (w_cpu, sd_cpu), (w_gpu, sd_gpu) = run("cpu"), run("cuda")
    np.testing.assert_allclose(w_gpu, w_cpu, atol=1e-10, rtol=0)
    for i, st in sd_gpu["state"].items():
        for k, v in st.items():
            if isinstance(sd_cpu["state"][i][k], np.ndarray):
                assert isinstance(v, np.ndarray)  # saved state always comes back as NumPy
                np.testing.assert_allclose(v, sd_cpu["state"][i][k], atol=1e-10, rtol=0)


# ------------------------------------------------------------------ Adam's one-call path for small groups
@pytest.mark.parametrize("opts", [dict(), dict(amsgrad=True), dict(maximize=True, weight_decay=0.1),
                                  dict(weight_decay=0.05, decoupled_weight_decay=True),
                                  dict(amsgrad=True, maximize=True, weight_decay=0.02)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_foreach_path_is_bitwise_the_per_parameter_update(opts, dtype, monkeypatch):
    from neuralbook.optim import Adam
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (3,), (2, 2, 2), (7,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(6)]

    def run(foreach):
        monkeypatch.setattr(Adam, "FOREACH_MAX", 1 << 16 if foreach else 0)
        ps = [nb.tensor(a.copy(), requires_grad=True) for a in init]
        opt = Adam(ps, lr=0.01, **opts)
        for k, gs in enumerate(grads):
            for i, (p, g) in enumerate(zip(ps, gs)):
                p.grad = None if (k == 3 and i == 1) else nb.tensor(g)      # one parameter sits out a step
            opt.step()
            if k == 4:                                                      # save and resume half-way
                sd = opt.state_dict()
                opt = Adam(ps, lr=0.01, **opts)
                opt.load_state_dict(sd)
        return [p.numpy() for p in ps], opt.state_dict()

    (pf, sf), (pp, sp) = run(True), run(False)
    for a, b in zip(pf, pp):
        np.testing.assert_array_equal(a, b)
    for j in sp["state"]:
        for k, v in sp["state"][j].items():
            np.testing.assert_array_equal(np.asarray(sf["state"][j][k]), np.asarray(v), err_msg=f"{j} {k}")


def test_adam_foreach_state_is_views_into_flat_buffers():
    from neuralbook.optim import Adam
    ps = [nb.tensor(np.ones((3, 2), np.float32), requires_grad=True), nb.tensor(np.ones(4, np.float32), requires_grad=True)]
    opt = Adam(ps, lr=0.1)
    for p in ps: p.grad = nb.tensor(np.full(p.shape, 0.5, np.float32))
    opt.step()
    flat = next(iter(opt._flat.values()))
    assert flat.m.shape == (10,) and np.shares_memory(opt.state[ps[0]]["exp_avg"], flat.m)
    assert opt.state[ps[1]]["exp_avg_sq"].shape == (4,)
    np.testing.assert_allclose(ps[0].numpy(), 1 - 0.1, rtol=1e-6)                # Adam's first step has length lr


def test_adam_group_step_is_in_the_class_body():
    "Issue 12: Adam's flat-buffer group step is a method of its class body (found by grep and IDEs), not patched on."
    import inspect
    from neuralbook.optim import Adam, AdamW
    assert "_step_group" in Adam.__dict__ and "FOREACH_MAX" in Adam.__dict__
    assert "def _step_group" in inspect.getsource(Adam)
    assert AdamW._step_group is Adam._step_group
