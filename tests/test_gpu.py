"""The GPU: every CUDA twin against its CPU kernel, every functional op on 'cuda' against 'cpu', training on 'cuda'.

    PYTHONPATH=. python -m pytest -m gpu tests          # on a machine with an NVIDIA GPU and CuPy

Needs only pytest, NumPy and CuPy (nothing here imports torch, hypothesis or scikit-learn). Tests marked `gpu` are
skipped by tests/conftest.py when no GPU is visible. Each of them also runs on chapter 32's emulated GPU (the same
CUDA sources compiled for the CPU, NumPy posing as CuPy), so that every CI build executes the kernels and the host
code of the "cuda" device; the few tests without a device check the tables that drive the others.
"""

import numpy as np
import pytest

import neuralbook as nb
import neuralbook.cuda as CU
import neuralbook.functional as F
from neuralbook import conv, losses, nn, norm, optim, regularization
from neuralbook.backend import KERNELS, Generator

gpu = pytest.mark.gpu


# the `cp` fixture (a real GPU, or chapter 32's emulated one) lives in tests/conftest.py

EMULATED_MAX = 5_000_000    # elements: larger cases run on a real GPU only


def emulated(cp) -> bool:
    return type(cp).__name__ == "EmulatedCupy"


def small_only(cp, *shapes, limit=EMULATED_MAX):
    "Skip a large case on the emulated GPU (there each CUDA thread is a CPU fiber)."
    n = max(int(np.prod(s)) for s in shapes)
    if emulated(cp) and n > limit:
        pytest.skip(f"{n:,} elements: too large for the emulated GPU; checked on a real one")


# ----------------------------------------------------------------------------------------------------- helpers
def to_gpu(a, cp):
    if isinstance(a, np.ndarray): return cp.asarray(a)
    if isinstance(a, (tuple, list)): return type(a)(to_gpu(v, cp) for v in a)
    return a


def to_cpu(a):
    if hasattr(a, "get") and hasattr(a, "device"): return a.get()
    if isinstance(a, (tuple, list)): return type(a)(to_cpu(v) for v in a)
    return a


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if np.dtype(dtype) == np.float64 else dict(rtol=2e-5, atol=2e-6)


def assert_same(gpu_out, cpu_out, what="", exact=False, **tolerance):
    "Recursively compare a GPU result with the CPU's: shapes, dtypes, values."
    if cpu_out is None:
        assert gpu_out is None, what
        return
    if isinstance(cpu_out, (tuple, list)):
        assert len(gpu_out) == len(cpu_out), what
        for i, (g, c) in enumerate(zip(gpu_out, cpu_out)): assert_same(g, c, f"{what}[{i}]", exact, **tolerance)
        return
    g = to_cpu(gpu_out)
    assert g.shape == cpu_out.shape, f"{what}: shape {g.shape} vs cpu {cpu_out.shape}"
    assert g.dtype == cpu_out.dtype, f"{what}: dtype {g.dtype} vs cpu {cpu_out.dtype}"
    if exact: np.testing.assert_array_equal(g, cpu_out, err_msg=what)
    else: np.testing.assert_allclose(g, cpu_out, err_msg=what, **tolerance)


def run_twin(cp, name, args, kwargs=None, inplace=(), exact=False, dtype=np.float64, **tolerance):
    """Call kernel `name` on NumPy copies (CPU implementation) and on CuPy copies (dispatched through the Kernel, which
    must pick the CUDA twin); compare the results and the arrays updated in place (positions `inplace`)."""
    kwargs = kwargs or {}
    k = KERNELS[name]
    c_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    g_args = [to_gpu(a, cp) for a in args]
    assert k.impl_for(*g_args) is CU.TWINS[name], f"{name}: CuPy arrays must dispatch to the CUDA twin"
    c_out = k.impls["cpu"](*c_args, **kwargs)
    g_out = k(*g_args, **kwargs)
    cp.cuda.Device().synchronize()
    t = tolerance or tol(dtype)
    assert_same(g_out, c_out, f"{name} output", exact, **t)
    for i in inplace:
        assert_same(g_args[i], c_args[i], f"{name} argument {i} (updated in place)", exact, **t)
    return g_out, c_out


DTYPES = [np.float32, np.float64]
COVERED = set()          # the twins these tests exercise: checked against CU.TWINS below


def covers(*names):
    COVERED.update(names)


# ------------------------------------------------------------------------------------- every twin vs its CPU kernel
covers("bias_act_fwd", "bias_act_bwd")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (37, 129), (1000, 4097), (4096, 1024)])
@pytest.mark.parametrize("act", list(CU.ACTIVATIONS))
def test_bias_act_twins(cp, dtype, shape, act):
    small_only(cp, shape)
    rng = np.random.default_rng(0)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    run_twin(cp, "bias_act_fwd", (z, b, act), dtype=dtype)
    run_twin(cp, "bias_act_fwd", (z, None, act), dtype=dtype)
    zg = cp.asarray(z)                                   # in place, as linear_act uses it
    assert KERNELS["bias_act_fwd"](zg, cp.asarray(b), act, out=zg) is zg
    assert_same(zg, CU.bias_act_fwd(z, b, act), "in place", **tol(dtype))
    y = CU.bias_act_fwd(z, b, act)
    gy = rng.standard_normal(shape).astype(dtype)
    # the bias gradient sums M values in another order: relative to the sum of magnitudes
    _, c_out = run_twin(cp, "bias_act_bwd", (gy, y, act, False), dtype=dtype)
    gz, gb = KERNELS["bias_act_bwd"](cp.asarray(gy), cp.asarray(y), act)
    assert_same(gz, c_out[0], "gz", **tol(dtype))
    scale = np.abs(c_out[0]).sum(0) + 1
    assert np.all(np.abs(gb.get() - CU.bias_act_bwd(gy, y, act)[1]) <= 50 * np.finfo(dtype).eps * scale)


covers("softmax_cross_entropy_fwd", "softmax_cross_entropy_bwd")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("MC", [(1, 1), (1, 2), (7, 3), (33, 1000), (4096, 10), (64, 50257)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_cross_entropy_twins(cp, dtype, MC, weighted, eps):
    small_only(cp, MC)
    small_only(cp, (MC[0],), limit=1000)                           # rows: each one is ~50 barrier rounds there
    rng = np.random.default_rng(1)
    M, C = MC
    x = (rng.standard_normal((M, C)) * 40).astype(dtype)          # large logits: the max shift must hold
    t = rng.integers(0, C, M)
    if M > 2: t[1] = -100                                        # an ignored row
    w = rng.uniform(0.5, 2.0, C).astype(dtype) if weighted else None
    (gl, _), (_, cpp) = run_twin(cp, "softmax_cross_entropy_fwd", (x, t, w, -100, eps), dtype=dtype,
                                   rtol=1e-4 if dtype == np.float32 else 1e-9, atol=1e-5 if dtype == np.float32 else 1e-12)
    assert np.isfinite(gl.get()).all()
    g = rng.standard_normal(M).astype(dtype)
    run_twin(cp, "softmax_cross_entropy_bwd", (cpp, t, w, g, -100, eps), dtype=dtype)
    run_twin(cp, "softmax_cross_entropy_bwd", (cpp, t, w, dtype(0.5), -100, eps), dtype=dtype)   # a scalar g


covers("sgd_update", "adam_update")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 1001, 1_000_003])
@pytest.mark.parametrize("opts", [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.2, weight_decay=1e-2),
                                  dict(momentum=0.9, nesterov=True, maximize=True)])
def test_sgd_twin(cp, dtype, n, opts):
    small_only(cp, (n,))
    rng = np.random.default_rng(2)
    p = rng.standard_normal(n).astype(dtype)
    buf = np.empty_like(p) if opts.get("momentum") else None
    mu = opts.get("momentum", 0.0)
    for step in range(3):
        g = rng.standard_normal(n).astype(dtype)
        args = (p, g, buf, 0.1, mu, opts.get("dampening", 0.0), opts.get("weight_decay", 0.0),
                opts.get("nesterov", False), opts.get("maximize", False), step == 0)
        c_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        run_twin(cp, "sgd_update", args, inplace=(0, 2) if mu else (0,), dtype=dtype)
        KERNELS["sgd_update"].impls["cpu"](*c_args)          # advance the CPU state for the next step
        p, buf = c_args[0], c_args[2]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 1001, 1_000_003])
@pytest.mark.parametrize("opts", [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled=True),
                                  dict(amsgrad=True), dict(maximize=True, weight_decay=0.01)])
def test_adam_twin(cp, dtype, n, opts):
    small_only(cp, (n,))
    rng = np.random.default_rng(3)
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    vmax = np.zeros_like(p) if opts.get("amsgrad") else None
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        args = (p, g, m, v, vmax, step, 1e-2, 0.9, 0.999, 1e-8, opts.get("weight_decay", 0.0),
                opts.get("decoupled", False), opts.get("maximize", False))
        c_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        run_twin(cp, "adam_update", args, inplace=(0, 2, 3) + ((4,) if vmax is not None else ()), dtype=dtype)
        KERNELS["adam_update"].impls["cpu"](*c_args)
        p, m, v, vmax = c_args[0], c_args[2], c_args[3], c_args[4]


covers("splitmix_uniform", "dropout_mask_apply")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 37, 1_000_003])
@pytest.mark.parametrize("counter", [0, 12345, 2**63 - 5])
def test_splitmix_twin_gives_identical_bits(cp, dtype, n, counter):
    small_only(cp, (n,))
    key = int(Generator(7).key)
    cpu = KERNELS["splitmix_uniform"].impls["cpu"](key, counter, n, xp=np, dtype=dtype)
    gpu_ = CU.TWINS["splitmix_uniform"](key, counter, n, xp=cp, dtype=dtype)
    assert_same(gpu_, cpu, "uniforms", exact=True)


def test_same_seed_same_dropout_mask_on_both_devices(cp):
    x = np.random.default_rng(4).standard_normal((33, 65)).astype(np.float32)
    yc = regularization.dropout(nb.tensor(x), 0.3, generator=Generator(11))
    yg = regularization.dropout(nb.tensor(x, device="cuda"), 0.3, generator=Generator(11))
    assert yg.device == "cuda:0"
    np.testing.assert_array_equal(yg.numpy(), yc.numpy())


@pytest.mark.parametrize("xdtype", DTYPES)
@pytest.mark.parametrize("udtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (5, 7), (1000, 1001)])
@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_dropout_twin(cp, xdtype, udtype, shape, p):
    small_only(cp, shape)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(xdtype)
    u = rng.uniform(size=shape).astype(udtype)
    run_twin(cp, "dropout_mask_apply", (x, u, p), exact=True)


covers("im2col", "col2im", "maxpool2d_fwd", "maxpool2d_bwd", "avgpool2d_fwd", "avgpool2d_bwd")

GEOMS = [  # x shape (N, C, H, W), kernel, stride, padding (t, b, l, r), dilation
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 2, 9, 8), (3, 2), (2, 3), (1, 0, 0, 1), (2, 1)),
    ((5, 3, 13, 11), (2, 2), (2, 2), (0, 1, 0, 1), (1, 1)),
    ((64, 32, 32, 32), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
]


def _layouts(a):
    "The same values as plain NCHW and as chapter 12's batch-innermost view."
    return {"nchw": a, "batch_innermost": np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)}


def _out_hw(shape, k, s, p, d):
    H, W = shape[2:]
    return ((H + p[0] + p[1] - d[0] * (k[0] - 1) - 1) // s[0] + 1, (W + p[2] + p[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("layout", ["nchw", "batch_innermost"])
def test_im2col_col2im_twins(cp, dtype, geom, layout):
    small_only(cp, geom[0])
    shape, k, s, p, d = geom
    x = _layouts(np.random.default_rng(6).standard_normal(shape).astype(dtype))[layout]
    _, cols = run_twin(cp, "im2col", (x, k, s, p, d), exact=True)
    g = np.random.default_rng(7).standard_normal(cols.shape).astype(dtype)
    run_twin(cp, "col2im", (g, shape, k, s, p, d), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("layout", ["nchw", "batch_innermost"])
def test_pooling_twins(cp, dtype, geom, layout):
    small_only(cp, geom[0])
    shape, k, s, p, d = geom
    out_hw = _out_hw(shape, k, s, p, d)
    rng = np.random.default_rng(8)
    # integers: many ties, so "the gradient goes to the first maximum" is really tested
    x = _layouts(rng.integers(-3, 4, shape).astype(dtype))[layout]
    _, y = run_twin(cp, "maxpool2d_fwd", (x, k, s, p, d, out_hw), exact=True)
    gy = rng.standard_normal(y.shape).astype(dtype)
    run_twin(cp, "maxpool2d_bwd", (x, y, gy, k, s, p, d), dtype=dtype)
    if d == (1, 1) and 2 * max(p) <= min(k):
        div = rng.integers(1, 10, out_hw).astype(dtype)
        run_twin(cp, "avgpool2d_fwd", (x, k, s, p, div), dtype=dtype)
        run_twin(cp, "avgpool2d_bwd", (gy, shape, k, s, p, div), dtype=dtype)


covers("batchnorm_stats")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    ((8, 3, 5, 5), None, (0, 2, 3)), ((3, 5, 5, 8), (3, 0, 1, 2), (0, 2, 3)), ((16, 7), None, (0,)),
    ((16, 7), None, (1,)), ((4, 6, 10), None, (1, 2)), ((7, 16), (1, 0), (1,)), ((2, 3, 4), None, (0, 1, 2)),
    ((2, 3, 4, 5), None, (1, 3)), ((256, 64, 32, 32), None, (0, 2, 3)), ((4096, 1023), None, (1,)),
    ((1, 1), None, (0,)),
])
def test_batchnorm_stats_twin(cp, dtype, case):
    small_only(cp, case[0])
    small_only(cp, [s for i, s in enumerate(case[0]) if i not in case[2]], limit=1000)   # one block per statistic
    shape, perm, axes = case
    a = (np.random.default_rng(9).standard_normal(shape) * 3 + 5).astype(dtype)
    x = np.ascontiguousarray(a).transpose(perm) if perm else a
    run_twin(cp, "batchnorm_stats", (x, axes), dtype=dtype,
             rtol=1e-5 if dtype == np.float32 else 1e-10, atol=1e-6 if dtype == np.float32 else 1e-12)


def test_every_twin_is_tested():
    assert COVERED == set(CU.TWINS)


# --------------------------------------------------------------------- every functional op: cuda against cpu
def _pos(rng, shape): return np.abs(rng.standard_normal(shape)) + 0.5
def _f(rng, shape): return rng.standard_normal(shape)
def _ints(rng, shape, high): return rng.integers(0, high, shape)


# name -> (function of tensors, maker of the NumPy inputs: floats get requires_grad, integers do not)
OPS = {
    "add": (lambda a, b: a + b, lambda r: [_f(r, (3, 4)), _f(r, (4,))]),
    "sub": (lambda a, b: a - b, lambda r: [_f(r, (3, 1)), _f(r, (4,))]),
    "mul": (lambda a, b: a * b, lambda r: [_f(r, (2, 3, 4)), _f(r, (3, 1))]),
    "div": (lambda a, b: a / b, lambda r: [_f(r, (3, 4)), _pos(r, (4,))]),
    "neg": (lambda a: -a, lambda r: [_f(r, (5,))]),
    "pow": (lambda a: a ** 3, lambda r: [_f(r, (3, 4))]),
    "exp": (lambda a: nb.exp(a), lambda r: [_f(r, (3, 4))]),
    "log": (lambda a: nb.log(a), lambda r: [_pos(r, (3, 4))]),
    "sum": (lambda a: F.sum(a, axis=1), lambda r: [_f(r, (3, 5, 2))]),
    "mean": (lambda a: F.mean(a, axis=(0, 2), keepdims=True), lambda r: [_f(r, (3, 5, 2))]),
    "var": (lambda a: F.var(a, axis=0, ddof=1), lambda r: [_f(r, (6, 4))]),
    "std": (lambda a: F.std(a, axis=1), lambda r: [_f(r, (6, 4))]),
    "max": (lambda a: F.max(a, axis=1), lambda r: [_f(r, (4, 7))]),
    "min": (lambda a: F.min(a), lambda r: [_f(r, (4, 7))]),
    "reshape": (lambda a: F.reshape(a, (4, -1)), lambda r: [_f(r, (2, 3, 4))]),
    "transpose": (lambda a: F.transpose(a, (2, 0, 1)), lambda r: [_f(r, (2, 3, 4))]),
    "swapaxes": (lambda a: F.swapaxes(a, 0, 2), lambda r: [_f(r, (2, 3, 4))]),
    "squeeze": (lambda a: F.squeeze(a, 1), lambda r: [_f(r, (3, 1, 4))]),
    "unsqueeze": (lambda a: F.unsqueeze(a, -1), lambda r: [_f(r, (3, 4))]),
    "flatten": (lambda a: F.flatten(a, 1), lambda r: [_f(r, (2, 3, 4))]),
    "getitem": (lambda a: F.getitem(a, (slice(1, None), [0, 2, 2])), lambda r: [_f(r, (3, 4))]),
    "concatenate": (lambda a, b: F.concatenate([a, b], axis=1), lambda r: [_f(r, (3, 2)), _f(r, (3, 4))]),
    "cat": (lambda a, b: F.cat([a, b]), lambda r: [_f(r, (2, 3)), _f(r, (1, 3))]),
    "stack": (lambda a, b: F.stack([a, b], axis=1), lambda r: [_f(r, (3, 4)), _f(r, (3, 4))]),
    "where": (lambda a, b: F.where(a > 0, a, b), lambda r: [_f(r, (3, 4)), _f(r, (4,))]),
    "maximum": (lambda a, b: F.maximum(a, b), lambda r: [_f(r, (3, 4)), _f(r, (3, 4))]),
    "minimum": (lambda a, b: F.minimum(a, b), lambda r: [_f(r, (3, 4)), _f(r, (4,))]),
    "clip": (lambda a: F.clip(a, -0.5, 0.7), lambda r: [_f(r, (5, 4))]),
    "clamp": (lambda a: F.clamp(a, lo=0.0), lambda r: [_f(r, (5, 4))]),
    "abs": (lambda a: F.abs(a), lambda r: [_f(r, (5, 4))]),
    "sqrt": (lambda a: F.sqrt(a), lambda r: [_pos(r, (5, 4))]),
    "erf": (lambda a: F.erf(a), lambda r: [_f(r, (5, 4))]),
    "matmul": (lambda a, b: F.matmul(a, b), lambda r: [_f(r, (2, 3, 4)), _f(r, (4, 5))]),
    "linear": (lambda x, w, b: F.linear(x, w, b), lambda r: [_f(r, (6, 4)), _f(r, (3, 4)), _f(r, (3,))]),
    "dense": (lambda x, k, b: F.dense(x, k, b), lambda r: [_f(r, (6, 4)), _f(r, (4, 3)), _f(r, (3,))]),
    "relu": (lambda a: F.relu(a), lambda r: [_f(r, (5, 4))]),
    "leaky_relu": (lambda a: F.leaky_relu(a, 0.1), lambda r: [_f(r, (5, 4))]),
    "elu": (lambda a: F.elu(a), lambda r: [_f(r, (5, 4))]),
    "gelu": (lambda a: F.gelu(a), lambda r: [_f(r, (5, 4))]),
    "silu": (lambda a: F.silu(a), lambda r: [_f(r, (5, 4))]),
    "selu": (lambda a: F.selu(a), lambda r: [_f(r, (5, 4))]),
    "softplus": (lambda a: F.softplus(a), lambda r: [_f(r, (5, 4)) * 5]),
    "mish": (lambda a: F.mish(a), lambda r: [_f(r, (5, 4))]),
    "sigmoid": (lambda a: F.sigmoid(a), lambda r: [_f(r, (5, 4)) * 5]),
    "tanh": (lambda a: F.tanh(a), lambda r: [_f(r, (5, 4))]),
    "softmax": (lambda a: F.softmax(a, axis=1), lambda r: [_f(r, (5, 4)) * 10]),
    "log_softmax": (lambda a: F.log_softmax(a), lambda r: [_f(r, (5, 4)) * 10]),
    "logsumexp": (lambda a: F.logsumexp(a, axis=0), lambda r: [_f(r, (5, 4)) * 10]),
    "embedding": (lambda ids, w: F.embedding(ids, w), lambda r: [_ints(r, (4, 3), 6), _f(r, (6, 5))]),
    # the fused layer of chapter 31
    "linear_act": (lambda x, w, b: CU.linear_act(x, w, b, "tanh"), lambda r: [_f(r, (6, 4)), _f(r, (3, 4)), _f(r, (3,))]),
    # losses (chapter 05)
    "mse_loss": (lambda a, b: losses.mse_loss(a, b), lambda r: [_f(r, (5, 3)), _f(r, (5, 3))]),
    "l1_loss": (lambda a, b: losses.l1_loss(a, b, reduction="sum"), lambda r: [_f(r, (5, 3)), _f(r, (5, 3))]),
    "huber_loss": (lambda a, b: losses.huber_loss(a, b, delta=0.5), lambda r: [_f(r, (5, 3)), _f(r, (5, 3))]),
    "cross_entropy": (lambda x, t: losses.cross_entropy(x, t, label_smoothing=0.1),
                      lambda r: [_f(r, (7, 5)) * 5, _ints(r, (7,), 5)]),
    "cross_entropy_2d": (lambda x, t: losses.cross_entropy(x, t, reduction="none"),
                         lambda r: [_f(r, (2, 4, 3, 3)), _ints(r, (2, 3, 3), 4)]),
    "nll_loss": (lambda x, t: losses.nll_loss(F.log_softmax(x), t), lambda r: [_f(r, (7, 5)), _ints(r, (7,), 5)]),
    "binary_cross_entropy_with_logits": (lambda x, y: losses.binary_cross_entropy_with_logits(x, y),
                                         lambda r: [_f(r, (6, 2)) * 4, r.uniform(size=(6, 2))]),
    "binary_cross_entropy": (lambda x, y: losses.binary_cross_entropy(F.sigmoid(x), y),
                             lambda r: [_f(r, (6, 2)), r.uniform(size=(6, 2))]),
    # convolution, pooling, normalisation (chapter 12)
    "conv2d": (lambda x, w, b: conv.conv2d(x, w, b, stride=2, padding=1),
               lambda r: [_f(r, (2, 3, 7, 6)), _f(r, (4, 3, 3, 3)), _f(r, (4,))]),
    "conv2d_groups": (lambda x, w: conv.conv2d(x, w, padding=1, dilation=2, groups=2),
                      lambda r: [_f(r, (2, 4, 8, 8)), _f(r, (6, 2, 3, 3))]),
    "conv_transpose2d": (lambda x, w: conv.conv_transpose2d(x, w, stride=2, padding=1),
                         lambda r: [_f(r, (2, 3, 4, 5)), _f(r, (3, 2, 3, 3))]),
    "max_pool2d": (lambda x: conv.max_pool2d(x, 3, stride=2, padding=1), lambda r: [_f(r, (2, 3, 7, 8))]),
    "avg_pool2d": (lambda x: conv.avg_pool2d(x, 2, padding=1, count_include_pad=False), lambda r: [_f(r, (2, 3, 7, 8))]),
    "adaptive_avg_pool2d": (lambda x: conv.adaptive_avg_pool2d(x, (3, 2)), lambda r: [_f(r, (2, 3, 7, 8))]),
    "batch_norm": (lambda x, w, b: norm.batch_norm(x, None, None, w, b, training=True),
                   lambda r: [_f(r, (4, 3, 5, 5)), _pos(r, (3,)), _f(r, (3,))]),
    "layer_norm": (lambda x, w, b: norm.layer_norm(x, (6,), w, b), lambda r: [_f(r, (4, 6)), _pos(r, (6,)), _f(r, (6,))]),
    # regularisation (chapter 08): the same seed gives the same mask on both devices
    "dropout": (lambda x: regularization.dropout(x, 0.4, generator=Generator(3)), lambda r: [_f(r, (9, 7))]),
}
NOT_OPS = set()          # public lowercase names of neuralbook.functional that are not differentiable ops


def test_op_table_covers_functional():
    public = {n for n in F.__all__ if n[0].islower()}
    missing = public - set(OPS) - NOT_OPS
    assert not missing, f"ops of neuralbook.functional without a GPU test: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_table_runs_on_cpu(name):
    fn, make = OPS[name]
    ins = [nb.tensor(a, requires_grad=a.dtype.kind == "f") for a in make(np.random.default_rng(0))]
    y = fn(*ins)
    y.backward(np.ones(y.shape, y.dtype))
    assert any(t.grad is not None for t in ins if t.requires_grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_on_cuda_matches_cpu(cp, name, dtype):
    fn, make = OPS[name]
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in make(np.random.default_rng(0))]
    results = {}
    for device in ("cpu", "cuda"):
        ins = [nb.tensor(a, requires_grad=a.dtype.kind == "f", device=device) for a in arrays]
        y = fn(*ins)
        assert y.device == ("cpu" if device == "cpu" else "cuda:0"), f"{name}: output on {y.device}"
        v = np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)
        y.backward(nb.tensor(v, device=device))
        results[device] = (y.numpy(), [t.grad.numpy() if t.grad is not None else None for t in ins])
    (yc, gc), (yg, gg) = results["cpu"], results["cuda"]
    t = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    assert_same(yg, yc, f"{name} forward", **t)
    for i, (a, b) in enumerate(zip(gg, gc)):
        assert_same(a, b, f"{name} gradient of input {i}", **t)


# -------------------------------------------------------------------------- models, optimisers, the Learner on cuda
def _mlp(fused):
    class FusedMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 5)
        def forward(self, x):
            return self.l3(CU.linear_act(CU.linear_act(x, self.l1.weight, self.l1.bias), self.l2.weight, self.l2.bias))
    nb.manual_seed(0)
    if fused: return FusedMLP()
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))


def _cnn():
    nb.manual_seed(0)
    Conv2d = getattr(nn, "Conv2d", conv.Conv2d)
    MaxPool2d = getattr(nn, "MaxPool2d", conv.MaxPool2d)
    BatchNorm2d = getattr(nn, "BatchNorm2d", norm.BatchNorm2d)
    Dropout = getattr(nn, "Dropout", regularization.Dropout)
    return nn.Sequential(Conv2d(1, 8, 3, padding=1), BatchNorm2d(8), nn.ReLU(), MaxPool2d(2),
                         Conv2d(8, 16, 3, padding=1), nn.ReLU(), MaxPool2d(2), nn.Flatten(),
                         Dropout(0.25, generator=Generator(5)), nn.Linear(16 * 4 * 4, 10))


def _train(build, X, y, device, make_opt, steps=6):
    model = build()
    model.to(device)
    opt = make_opt(model.parameters())
    out = []
    for _ in range(steps):
        loss = losses.cross_entropy(model(nb.tensor(X, device=device)), nb.tensor(y, device=device))
        opt.zero_grad(); loss.backward(); opt.step()
        out.append(loss.item())
    return np.array(out), model


OPTIMISERS = {"sgd_momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
              "adam": lambda ps: optim.Adam(ps, lr=1e-3), "adamw_amsgrad": lambda ps: optim.AdamW(ps, lr=1e-3, amsgrad=True)}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("opt", list(OPTIMISERS))
def test_mlp_training_on_cuda_matches_cpu(cp, fused, opt):
    rng = np.random.default_rng(10)
    X, y = rng.standard_normal((256, 20)).astype(np.float32), rng.integers(0, 5, 256)
    lc, _ = _train(lambda: _mlp(fused), X, y, "cpu", OPTIMISERS[opt])
    lg, model = _train(lambda: _mlp(fused), X, y, "cuda", OPTIMISERS[opt])
    assert all(p.device == "cuda:0" for p in model.parameters())
    np.testing.assert_allclose(lg, lc, atol=1e-4)
    assert lg[-1] < lg[0]


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
def test_cnn_training_on_cuda_matches_cpu(cp, opt):
    rng = np.random.default_rng(11)
    X, y = rng.standard_normal((32, 1, 16, 16)).astype(np.float32), rng.integers(0, 10, 32)
    lc, _ = _train(_cnn, X, y, "cpu", OPTIMISERS[opt])
    lg, _ = _train(_cnn, X, y, "cuda", OPTIMISERS[opt])
    np.testing.assert_allclose(lg, lc, atol=1e-4)


def test_model_to_cuda_and_back(cp):
    model = _mlp(False)
    sd = {k: np.array(v) for k, v in model.state_dict().items()}
    assert model.to("cuda") is model
    assert all(p.device == "cuda:0" for p in model.parameters())
    x = nb.tensor(np.ones((2, 20), np.float32), device="cuda")
    assert model(x).device == "cuda:0"
    model.to("cpu")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), sd[k])
    with pytest.raises(RuntimeError, match="expected all tensors on one device, got cpu and cuda:0"):
        model(x)


def test_learner_on_cuda_matches_cpu(cp):
    from neuralbook.data import DataLoader, TensorDataset
    from neuralbook.learner import Learner
    rng = np.random.default_rng(12)
    X, y = rng.standard_normal((200, 20)).astype(np.float32), rng.integers(0, 5, 200)
    hist = {}
    for device in ("cpu", "cuda"):
        dl = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True, seed=0)
        learn = Learner(_mlp(True), losses.cross_entropy, lambda ps: optim.Adam(ps, lr=1e-3), dl, device=device)
        learn.fit(2)
        assert all(p.device == ("cpu" if device == "cpu" else "cuda:0") for p in learn.model.parameters())
        hist[device] = np.array(learn.recorder.losses)
    np.testing.assert_allclose(hist["cuda"], hist["cpu"], atol=1e-4)


def test_tf32_switch_on_the_gpu(cp):
    if emulated(cp): pytest.skip("TF32 needs tensor cores: nothing to emulate")
    a = cp.asarray(np.random.default_rng(13).standard_normal((512, 512)).astype(np.float32))
    exact = (a.astype(cp.float64) @ a.astype(cp.float64)).get()
    prev = CU.set_tf32(False)
    try:
        err_fp32 = np.abs((a @ a).get() - exact).max()
        CU.set_tf32(True)
        err_tf32 = np.abs((a @ a).get() - exact).max()
    finally:
        CU.set_tf32(prev)
    assert err_fp32 < 1e-3 and err_tf32 >= err_fp32     # TF32 can only lose precision


def test_keras_fit_on_cuda_matches_cpu(cp):
    from neuralbook import keras
    rng = np.random.default_rng(14)
    X, y = rng.standard_normal((150, 4)).astype(np.float32), rng.integers(0, 3, 150)
    runs = {}
    for device in ("cpu", "cuda"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, activation="relu"),
                                  keras.layers.Dropout(0.2), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], device=device)
        h = model.fit(X, y, epochs=4, batch_size=32, validation_split=0.2, verbose=0).history
        assert all(w.device == ("cpu" if device == "cpu" else "cuda:0") for w in model.trainable_weights)
        runs[device] = (h, model.predict(X, verbose=0), model.evaluate(X, y, verbose=0, return_dict=True))
    (hc, pc, ec), (hg, pg, eg) = runs["cpu"], runs["cuda"]
    assert isinstance(pg, np.ndarray) and not isinstance(pg, cp.ndarray)     # predict returns host arrays
    for k in hc:
        np.testing.assert_allclose(hg[k], hc[k], atol=1e-4, err_msg=k)
    np.testing.assert_allclose(pg, pc, atol=1e-5)
    assert eg.keys() == ec.keys() and all(abs(eg[k] - ec[k]) < 1e-4 for k in ec)


def test_command_line_train_on_cuda_matches_cpu(cp, tmp_path):
    from neuralbook import cli
    res = {d: cli.train("iris", epochs=3, device=d, out=tmp_path / d, quiet=True, print_fn=lambda *a: None)
           for d in ("cpu", "cuda")}
    np.testing.assert_allclose(res["cuda"]["history"]["loss"], res["cpu"]["history"]["loss"], atol=1e-4)
    assert res["cuda"]["accuracy"] == res["cpu"]["accuracy"] and (res["cuda"]["confusion_matrix"] == res["cpu"]["confusion_matrix"]).all()
    assert (tmp_path / "cuda" / "model.safetensors").exists()


def test_mixed_precision_training_on_cuda_matches_cpu(cp):
    from neuralbook.amp import GradScaler, autocast
    rng = np.random.default_rng(15)
    X, y = rng.standard_normal((128, 20)).astype(np.float32), rng.integers(0, 5, 128)
    runs = {}
    for device in ("cpu", "cuda"):
        model = _mlp(True).to(device)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        scaler = GradScaler(init_scale=2.0 ** 12, growth_interval=2)
        out = []
        for _ in range(5):
            opt.zero_grad()
            with autocast():
                logits = model(nb.tensor(X, device=device))
                loss = losses.cross_entropy(logits, nb.tensor(y, device=device))
            assert logits.dtype == np.float16 and loss.dtype == np.float32 and logits.device == loss.device
            scaler.scale(loss).backward()
            scaler.step(opt); scaler.update()
            out.append(loss.item())
        assert all(p.grad.dtype == np.float32 for p in model.parameters())
        runs[device] = (np.array(out), scaler.get_scale())
    np.testing.assert_allclose(runs["cuda"][0], runs["cpu"][0], atol=2e-3)   # float16 rounding, summed differently
    assert runs["cuda"][1] == runs["cpu"][1] == 2.0 ** 14
