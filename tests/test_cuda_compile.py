"""Chapter 31 without a GPU.

1. NVRTC compiles every CUDA source of neuralbook.cuda for sm_80 and sm_90, and rejects a broken kernel (needs CuPy
   and nvidia-cuda-nvrtc, not a GPU; skipped with the reason when they are missing, except in CI where it fails).
2. Everything around the kernels, with NumPy: launch configuration, dtype → C type, source rendering, lazy compiling
   and caching (with a fake CuPy), dispatch to the twins, twin signatures, fallbacks, layouts.
3. The fused bias + activation kernels and `linear_act`: gradcheck, PyTorch, errors.
4. Bad input: asking for 'cuda' without CuPy or without a GPU is a clear DeviceError; TF32 switch.
"""
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import neuralbook as nb
import neuralbook.backend as B
import neuralbook.cuda as CU
import neuralbook.functional as F
from neuralbook import conv, losses, norm, optim, regularization
from neuralbook.backend import KERNELS

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("check_cuda_kernels", ROOT / "tools" / "check_cuda_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tool = _load_tool()


# ------------------------------------------------------------------------------------------- 1. NVRTC compile checks
@pytest.fixture(scope="module")
def nvrtc():
    ok, why = tool.nvrtc_status()
    if not ok:
        if os.environ.get("CI") or os.environ.get("NEURALBOOK_REQUIRE_NVRTC"):
            pytest.fail(f"the CUDA compile check must run in CI: {why}")
        pytest.skip(why)
    return why


@pytest.mark.parametrize("arch", tool.ARCHS)
@pytest.mark.parametrize("src", CU.kernel_sources(), ids=lambda s: f"{s[0]}-{'-'.join(s[1])}")
def test_every_kernel_compiles_with_nvrtc(nvrtc, src, arch):
    name, _, code, kernels = src
    cubin = CU.compile_source(code, kernels, arch, name=f"{name}.cu")
    assert len(cubin) > 1000


def test_the_check_rejects_a_broken_kernel(nvrtc):
    rejected, log = tool.broken_kernel_rejected("sm_90")
    assert rejected, log
    assert "undefined_identifier" in log


def test_the_check_rejects_a_kernel_name_that_is_not_defined(nvrtc):
    code = CU.SOURCES["splitmix"].render("float")
    with pytest.raises(Exception, match="splitmix_uniforn"):
        CU.compile_source(code, ("splitmix_uniforn",), "sm_80")


def test_tool_main_and_exit_status(nvrtc, monkeypatch, capsys):
    assert tool.main(["--arch", "sm_90", "--only", "splitmix"]) == 0
    broken = [("broken", ("float",), tool.BROKEN_KERNEL, ("broken",))]
    monkeypatch.setattr(tool, "_sources", lambda only=None: broken)
    assert tool.main(["--arch", "sm_90"]) == 1
    out = capsys.readouterr().out
    assert "FAIL broken" in out and "undefined_identifier" in out


def test_nvrtc_comes_from_the_wheel_without_a_device(nvrtc):
    # this machine may have no GPU at all: compiling must not have asked for one
    assert "NVRTC" in nvrtc
    if sys.platform.startswith("linux") and tool.nvrtc_library_dirs():
        assert tool.preload_nvrtc() is not None


# ------------------------------------------------------------------------- 2. around the kernels, tested with NumPy
def test_launch_config():
    assert CU.launch_config(0) == ((1,), (256,))
    assert CU.launch_config(1) == ((1,), (256,))
    assert CU.launch_config(257) == ((2,), (256,))
    assert CU.launch_config(10**10) == ((CU.MAX_BLOCKS,), (256,))
    for n in [1, 31, 255, 256, 1000, 123457]:
        (g,), (b,) = CU.launch_config(n, threads=128)
        assert b == 128 and g * b >= n and (g - 1) * b < n
    with pytest.raises(ValueError, match="multiple of 32"):
        CU.launch_config(10, threads=100)
    with pytest.raises(ValueError, match="n must be >= 0"):
        CU.launch_config(-1)


def test_reduction_threads_and_column_config():
    assert [CU.reduction_threads(r) for r in (0, 1, 32, 33, 100, 10**6)] == [32, 32, 32, 64, 128, 256]
    for M, N in [(1, 1), (7, 33), (4096, 4096), (10**6, 3), (3, 10**5)]:
        (gx, gy), (bx, by), G = CU.column_config(M, N)
        assert (bx, by) == (32, 8) and gy == G and 1 <= G <= CU.MAX_GRID_Y
        assert gx * 32 >= N and (gx - 1) * 32 < N
        assert G <= -(-M // 8)                        # never a block row without a row to visit


def test_ctype_mapping():
    assert [CU.ctype(d) for d in (np.float32, "float64", np.int64, np.int32, np.uint64, bool)] == \
        ["float", "double", "long long", "int", "unsigned long long", "bool"]
    with pytest.raises(TypeError, match="no C type for dtype float16"):
        CU.ctype(np.float16)


def test_sources_render_self_contained_with_every_kernel_defined():
    assert set(CU.SOURCES) == {"bias_act", "softmax_xent", "optim", "splitmix", "dropout", "conv", "norm"}
    for src in CU.SOURCES.values():
        for sig in src.signatures:
            code = src.render(*sig)
            head = code.splitlines()[:len(sig)]
            assert head == [f"typedef {c} {p};" for p, c in zip(src.params, sig)]
            assert "#include" not in code                 # self-contained: NVRTC needs no headers
            assert CU.COMMON in code
            for k in src.kernels:
                assert f'extern "C" __global__ void {k}(' in code
    with pytest.raises(TypeError, match="has no kernels for \\('half',\\)"):
        CU.SOURCES["norm"].render("half")
    with pytest.raises(ValueError, match="does not match the type parameters"):
        CU.CudaSource("x", "", ("k",), signatures=[("float", "float")])


def test_every_kernel_has_a_twin_with_its_exact_signature():
    assert CU.MISSING_TWINS == []
    assert set(KERNELS) <= set(CU.TWINS), f"CPU kernels without a GPU twin: {set(KERNELS) - set(CU.TWINS)}"
    for name, twin in CU.TWINS.items():
        k = KERNELS[name]
        assert k.impls["cuda"] is twin
        cpu = inspect.signature(k.impls["cpu"]).parameters
        gpu = inspect.signature(twin).parameters
        assert [(p.name, p.default, p.kind) for p in cpu.values()] == \
            [(p.name, p.default, p.kind) for p in gpu.values()], name


class _FakeArray(np.ndarray):
    "Stands for a cupy.ndarray in dispatch tests."


class _FakeModule:
    def __init__(self, log, code=None):
        self.log, self.code = log, code

    def get_function(self, name):
        self.log.append(("get_function", name))
        return lambda grid, block, args: self.log.append(("launch", name, grid, block, len(args)))


class _FakeCupy:
    "Just enough of CuPy for get_kernel: RawModule records what it was asked to compile."
    ndarray = _FakeArray

    def __init__(self):
        self.log = []
        fake = self

        class Device:
            id = 0

        class cuda:
            pass
        cuda.Device = Device
        self.cuda = cuda

        def RawModule(code, options):
            fake.log.append(("compile", code.splitlines()[0], options))
            return _FakeModule(fake.log, code)
        self.RawModule = RawModule


@pytest.fixture
def fake_cupy(monkeypatch):
    cp = _FakeCupy()
    monkeypatch.setattr(CU, "_cp", lambda: cp)
    monkeypatch.setattr(CU, "_MODULES", {})
    monkeypatch.setattr(CU, "_FUNCTIONS", {})
    return cp


def test_kernels_compile_lazily_once_per_source_dtype_and_device(fake_cupy):
    log = fake_cupy.log
    f1 = CU.get_kernel("bias_act", "bias_act_fwd", np.float32)
    assert CU.get_kernel("bias_act", "bias_act_fwd", np.float32) is f1
    CU.get_kernel("bias_act", "bias_act_bwd", np.float32)        # same module, another function
    CU.get_kernel("bias_act", "bias_act_fwd", np.float64)        # another dtype: another module
    compiles = [e for e in log if e[0] == "compile"]
    assert compiles == [("compile", "typedef float T;", CU.NVRTC_OPTIONS), ("compile", "typedef double T;", CU.NVRTC_OPTIONS)]
    assert [e[1] for e in log if e[0] == "get_function"] == ["bias_act_fwd", "bias_act_bwd", "bias_act_fwd"]
    fake_cupy.cuda.Device.id = 1                                 # another GPU: compiled again there
    CU.get_kernel("bias_act", "bias_act_fwd", np.float32)
    assert len([e for e in log if e[0] == "compile"]) == 3
    with pytest.raises(KeyError, match="has no kernel 'nope'"):
        CU.get_kernel("bias_act", "nope", np.float32)
    with pytest.raises(TypeError, match="no C type for dtype float16"):
        CU.get_kernel("bias_act", "bias_act_fwd", np.float16)


def test_launch_uses_the_grid_stride_configuration_and_skips_empty_work(fake_cupy):
    CU._launch("optim", "sgd_update", (np.float64,), 0, ())
    assert fake_cupy.log == []
    CU._launch("optim", "sgd_update", (np.float64,), 1000, (1, 2, 3))
    assert fake_cupy.log[-1] == ("launch", "sgd_update", (4,), (256,), 3)


def test_dispatch_picks_the_twin_for_device_arrays(monkeypatch):
    fake = _FakeCupy()
    monkeypatch.setattr(B, "_cupy", fake)
    x = np.ones((2, 3), np.float32)
    gx = x.view(_FakeArray)
    for name in CU.TWINS:
        assert KERNELS[name].impl_for(x) is KERNELS[name].impls["cpu"]
        assert KERNELS[name].impl_for(gx) is CU.TWINS[name]
        assert KERNELS[name].impl_for(1, None, gx) is CU.TWINS[name]


def test_twins_fall_back_to_the_cpu_kernel_for_what_they_do_not_handle(monkeypatch):
    # float16, non-contiguous in-place arrays, shapes the kernels do not take: the CPU code, which also runs on CuPy
    rng = np.random.default_rng(0)
    calls = []
    monkeypatch.setattr(CU, "_launch", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(CU, "get_kernel", lambda *a, **k: calls.append(a))
    z, b = rng.standard_normal((4, 3)).astype(np.float16), rng.standard_normal(3).astype(np.float16)
    np.testing.assert_array_equal(CU._bias_act_fwd_gpu(z, b, "relu"), CU.bias_act_fwd(z, b, "relu"))
    gz, _ = CU._bias_act_bwd_gpu(z, z, "tanh")
    np.testing.assert_array_equal(gz, CU.bias_act_bwd(z, z, "tanh")[0])
    p = rng.standard_normal((6, 4))[:, ::2]                                 # not contiguous: cannot be updated in place
    p2, g = p.copy(), rng.standard_normal((6, 2))
    CU._sgd_gpu(p, g, None, 0.1, 0.0, 0.0, 0.0, False, False, False)
    optim.sgd_update(p2, g, None, 0.1, 0.0, 0.0, 0.0, False, False, False)
    np.testing.assert_array_equal(p, p2)
    x16 = rng.standard_normal((2, 3, 5, 5)).astype(np.float16)
    np.testing.assert_array_equal(CU._im2col_gpu(x16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
                                  conv.im2col(x16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)))
    m, _ = CU._bn_stats_gpu(x16, (0, 2, 3))
    np.testing.assert_array_equal(m, norm.batchnorm_stats(x16, (0, 2, 3))[0])
    assert calls == []
    with pytest.raises(ValueError, match="activation must be one of"):
        CU._bias_act_fwd_gpu(z, b, "gelu")


def test_layout_helpers():
    x = np.zeros((4, 3, 5, 6))
    xb = np.zeros((3, 5, 6, 4)).transpose(3, 0, 1, 2)
    assert not CU.batch_innermost(x) and CU.batch_innermost(xb)
    assert not CU.batch_innermost(np.zeros((1, 3, 5, 6)).transpose(0, 1, 2, 3))
    assert not CU.batch_innermost(x[:, :, ::2])                 # neither layout: copied to NCHW by the twin
    assert np.shares_memory(CU._in_layout(xb, True), xb)       # free when already laid out
    assert CU._from_layout(CU._in_layout(xb, True), True).shape == xb.shape


@pytest.mark.parametrize("case", [
    ((8, 3, 5, 5), None, (0, 2, 3)),              # batch norm, NCHW: (N, C, HW)
    ((3, 5, 5, 8), (3, 0, 1, 2), (0, 2, 3)),      # batch norm, chapter 12's batch-innermost buffer: (1, C, HWN)
    ((16, 7), None, (0,)),                         # BatchNorm1d: (N, C) -> outer N, inner 1
    ((16, 7), None, (1,)),                         # layer norm
    ((4, 6, 10), None, (1, 2)),                    # layer norm over two axes
    ((7, 16), (1, 0), (1,)),                       # a transposed input: no view, the twin copies
    ((2, 3, 4), None, (0, 1, 2)),                  # everything
    ((2, 3, 4, 5), None, (1, 3)),                  # kept axes not a block: copied
])
def test_rows_layout_reproduces_the_statistics(case):
    shape, perm, axes = case
    a = np.random.default_rng(0).standard_normal(shape)
    x = a.transpose(perm) if perm else a
    lay = CU.rows_layout(x.shape, x.strides, x.itemsize, axes)
    if lay is None:
        kept = [i for i in range(x.ndim) if i not in axes]
        xs = np.ascontiguousarray(x.transpose(kept + list(axes)))
        outer, K, inner = 1, int(np.prod([x.shape[i] for i in kept])), int(np.prod([x.shape[i] for i in axes]))
    else:
        p, outer, K, inner = lay
        xs = x.transpose(p)
        assert xs.flags.c_contiguous and np.shares_memory(xs, x)
    v = xs.reshape(outer, K, inner)                                   # the kernel's (outer, K, inner) indexing
    keep = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
    np.testing.assert_allclose(v.mean(axis=(0, 2)).reshape(keep), x.mean(axis=axes, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(v.var(axis=(0, 2)).reshape(keep), x.var(axis=axes, keepdims=True), atol=1e-12)
    assert (lay is None) == (axes == (1, 3))


# The twins' Python side, run on NumPy: a stand-in for CuPy, and a launcher that checks every argument against the
# kernel's C parameter list (count, pointer vs scalar, exact C type, contiguity) and the launch shape.
class _NumpyAsCupy:
    "NumPy posing as CuPy for the twins' host code."
    ndarray = np.ndarray

    def __init__(self):
        class Device:
            id = 0
        self.cuda = type("cuda", (), {"Device": Device})

    def __getattr__(self, name):
        return getattr(np, name)


def _c_params(source, kernel, ctypes_):
    src = CU.SOURCES[source]
    m = re.search(r'extern "C" __global__ void ' + kernel + r"\((.*?)\)\s*\{", src.code, re.S)
    types = dict(zip(src.params, ctypes_))
    out = []
    for p in m.group(1).split(","):
        words = p.replace("const ", "").replace("*", " * ").split()
        ptr, base = "*" in words, " ".join(w for w in words[:-1] if w != "*")
        out.append((words[-1], types.get(base, base), ptr))
    return out


@pytest.fixture
def checked_launches(monkeypatch):
    fake, launches = _NumpyAsCupy(), []
    monkeypatch.setattr(CU, "_cp", lambda: fake)

    def get_kernel(source, name, *dtypes):
        params = _c_params(source, name, tuple(CU.ctype(d) for d in dtypes))

        def launch(grid, block, args):
            assert len(args) == len(params), f"{name}: {len(args)} arguments for {len(params)} parameters"
            for (pname, ctype_, ptr), a in zip(params, args):
                if ptr:
                    assert isinstance(a, np.ndarray), f"{name}({pname}): needs an array, got {type(a).__name__}"
                    assert a.flags.c_contiguous, f"{name}({pname}): the kernel indexes it linearly: must be contiguous"
                else:
                    assert isinstance(a, np.generic), f"{name}({pname}): pass a NumPy scalar, not {type(a).__name__}"
                assert CU.ctype(a.dtype) == ctype_, f"{name}({pname}): {a.dtype} for a C {ctype_}"
            threads = int(np.prod(block))
            assert threads % 32 == 0 and threads <= 1024 and all(g >= 1 for g in grid) and len(grid) <= 3
            launches.append(name)
        return launch
    monkeypatch.setattr(CU, "get_kernel", get_kernel)
    return launches


def _twin_calls(dt):
    r = np.random.default_rng(0)
    f = lambda *s: r.standard_normal(s).astype(dt)
    x4, xb = f(2, 3, 7, 6), np.ascontiguousarray(f(3, 7, 6, 2)).transpose(3, 0, 1, 2)
    geom = ((3, 3), (2, 1), (1, 1, 0, 2), (1, 2))
    cols = conv.im2col(x4, *geom)
    pool = ((2, 2), (2, 2), (0, 1, 0, 0), (1, 1))
    y4 = conv.maxpool2d_fwd(x4, *pool, (4, 3))
    div = np.full((4, 3), 4, dt)
    p, t = np.abs(f(6, 5)) / 5, r.integers(0, 5, 6)
    return [
        ("bias_act_fwd", (f(5, 3), f(3), "sigmoid")), ("bias_act_fwd", (f(2, 5, 3), None, "relu")),
        ("bias_act_bwd", (f(7, 3), f(7, 3), "tanh")), ("bias_act_bwd", (f(7, 3), f(7, 3), "relu", False)),
        ("softmax_cross_entropy_fwd", (f(6, 5), t, None, -100, 0.0)),
        ("softmax_cross_entropy_fwd", (f(6, 5), t.astype(np.int32), np.abs(f(5)), -100, 0.1)),
        ("softmax_cross_entropy_bwd", (p, t, np.abs(f(5)), f(6), -100, 0.1)),
        ("softmax_cross_entropy_bwd", (p, t, None, dt(1.0), -100, 0.0)),
        ("sgd_update", (f(9), f(9), f(9), 0.1, 0.9, 0.1, 0.01, True, False, False)),
        ("sgd_update", (f(9), f(9), None, 0.1, 0.0, 0.0, 0.0, False, True, False)),
        ("adam_update", (f(9), f(9), f(9), np.abs(f(9)), np.abs(f(9)), 2, 1e-3, 0.9, 0.999, 1e-8, 0.1, True, False)),
        ("adam_update", (f(9), f(9), f(9), np.abs(f(9)), None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, True)),
        ("dropout_mask_apply", (f(4, 5), r.uniform(size=(4, 5)).astype(np.float32), 0.3)),
        ("im2col", (x4,) + geom), ("im2col", (xb,) + geom),
        ("col2im", (cols, x4.shape) + geom),
        ("maxpool2d_fwd", (x4,) + pool + ((4, 3),)), ("maxpool2d_fwd", (xb,) + pool + ((4, 3),)),
        ("maxpool2d_bwd", (x4, y4, f(*y4.shape)) + pool),
        ("avgpool2d_fwd", (x4,) + pool[:3] + (div,)), ("avgpool2d_bwd", (f(*y4.shape), x4.shape) + pool[:3] + (div,)),
        ("batchnorm_stats", (x4, (0, 2, 3))), ("batchnorm_stats", (xb, (0, 2, 3))), ("batchnorm_stats", (f(6, 4), (1,))),
        ("batchnorm_stats", (f(2, 3, 4, 5), (1, 3))),
    ]


def _structure(a):
    if a is None: return None
    if isinstance(a, tuple): return tuple(_structure(v) for v in a)
    return (a.shape, a.dtype.str)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_twins_host_code_matches_the_kernel_signatures(checked_launches, dt):
    calls = _twin_calls(dt)
    for name, args in calls:
        cpu = KERNELS[name].impls["cpu"]
        copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        ref = cpu(*copies)
        n = len(checked_launches)
        out = CU.TWINS[name](*args)
        assert len(checked_launches) == n + 1, f"{name}: expected exactly one kernel launch"
        assert checked_launches[-1] in CU.SOURCES[next(s for s in CU.SOURCES if checked_launches[-1] in
                                                       CU.SOURCES[s].kernels)].kernels
        assert _structure(out) == _structure(ref), f"{name}: output shapes/dtypes differ from the CPU kernel's"
    assert {n for n, _ in calls} | {"splitmix_uniform"} == set(CU.TWINS)
    fake = CU._cp()
    u = CU.TWINS["splitmix_uniform"](12345, 7, 11, xp=fake, dtype=dt)
    assert checked_launches[-1] == "splitmix_uniform" and u.shape == (11,) and u.dtype == dt


# --------------------------------------------------------------------- 3. bias + activation, and the fused layer
def test_bias_act_cpu_kernels():
    rng = np.random.default_rng(9)
    z, b = rng.standard_normal((6, 4)), rng.standard_normal(4)
    ref = {"identity": z + b, "relu": np.maximum(z + b, 0), "sigmoid": 1 / (1 + np.exp(-(z + b))), "tanh": np.tanh(z + b)}
    dref = {"identity": lambda y: 1.0, "relu": lambda y: (y > 0) * 1.0, "sigmoid": lambda y: y * (1 - y),
            "tanh": lambda y: 1 - y * y}
    gy = rng.standard_normal((6, 4))
    for act in CU.ACTIVATIONS:
        y = CU.bias_act_fwd(z, b, act)
        np.testing.assert_allclose(y, ref[act], rtol=1e-12, atol=1e-15)
        zc = z.copy()
        assert CU.bias_act_fwd(zc, b, act, out=zc) is zc and np.allclose(zc, y)
        np.testing.assert_allclose(CU.bias_act_fwd(z, None, act), CU.bias_act_fwd(z, np.zeros(4), act))
        gz, gb = CU.bias_act_bwd(gy, y, act)
        np.testing.assert_allclose(gz, gy * dref[act](y), rtol=1e-12)
        np.testing.assert_allclose(gb, (gy * dref[act](y)).sum(0), rtol=1e-12)
        assert CU.bias_act_bwd(gy, y, act, need_bias=False)[1] is None
    y32 = CU.bias_act_fwd(z.astype(np.float32), b.astype(np.float32), "sigmoid")
    assert y32.dtype == np.float32 and CU.bias_act_bwd(y32, y32, "sigmoid")[1].dtype == np.float32
    with pytest.raises(ValueError, match="bias_act_fwd: activation must be one of 'identity', 'relu'"):
        CU.bias_act_fwd(z, b, "gelu")


@pytest.mark.parametrize("act", list(CU.ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_linear_act_gradcheck(act, bias):
    rng = np.random.default_rng(10)
    args = [rng.standard_normal((5, 4)), rng.standard_normal((3, 4))] + ([rng.standard_normal(3)] if bias else [])
    f = lambda *t: CU.linear_act(*t, activation=act)
    assert nb.gradcheck(f, *args)
    assert nb.gradgradcheck(f, *args)


@pytest.mark.parametrize("act", list(CU.ACTIVATIONS))
def test_linear_act_matches_torch(act):
    torch = pytest.importorskip("torch")
    from tests.helpers import compare_with_torch
    tf = {"identity": lambda v: v, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act]
    rng = np.random.default_rng(11)
    x, W, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    compare_with_torch(lambda x, W, b: CU.linear_act(x, W, b, act), lambda x, W, b: tf(torch.nn.functional.linear(x, W, b)),
                       x, W, b)


def test_linear_act_float32_and_errors():
    rng = np.random.default_rng(12)
    x = nb.tensor(rng.standard_normal((4, 3)), dtype="float32", requires_grad=True)
    W = nb.tensor(rng.standard_normal((2, 3)), dtype="float32", requires_grad=True)
    y = CU.linear_act(x, W)
    y.sum().backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32 and W.grad.dtype == np.float32
    with pytest.raises(ValueError, match=r"linear_act: input of shape \(4, 3\) and weight of shape \(3, 2\) do not fit"):
        CU.linear_act(x, W.T)
    with pytest.raises(ValueError, match=r"linear_act: bias of shape \(3,\) should have shape \(2,\)"):
        CU.linear_act(x, W, nb.tensor(np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="linear_act: activation must be one of"):
        CU.linear_act(x, W, activation="softmax")


# ---------------------------------------------------------------------------------------------- 4. bad input, TF32
def test_cuda_without_cupy_is_a_clear_device_error(monkeypatch):
    monkeypatch.setattr(B, "_cupy", None)
    monkeypatch.setattr(B, "_cupy_error", ImportError("No module named 'cupy'"))
    for make in (lambda: nb.tensor([1.0], device="cuda"), lambda: nb.nn.Linear(2, 2).to("cuda"),
                 lambda: nb.tensor([1.0]).to("cuda")):
        with pytest.raises(nb.DeviceError, match=r"device 'cuda' needs CuPy, which could not be imported .*"
                                                 r"pip install \"neuralbook\[gpu\]\""):
            make()


def test_cuda_without_a_visible_gpu_is_a_clear_device_error(monkeypatch):
    from neuralbook.learner import Learner
    monkeypatch.setattr(B, "_cupy", _FakeCupy())
    monkeypatch.setattr(B, "_gpu_count", lambda: 0)
    model = nb.nn.Linear(2, 2)
    for make in (lambda: nb.tensor([1.0], device="cuda:0"), lambda: model.to("cuda"),
                 lambda: Learner(model, F.mse_loss if hasattr(F, "mse_loss") else losses.mse_loss,
                                 optim.SGD(model.parameters(), lr=0.1), [], device="cuda")):
        with pytest.raises(nb.DeviceError, match="CuPy is installed but no CUDA GPU is visible"):
            make()


def test_this_machine_reports_what_is_missing():
    if nb.cuda_is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(nb.DeviceError, match="needs CuPy|no CUDA GPU is visible"):
        nb.tensor([1.0], device="cuda")


def test_tensors_on_two_devices_error_names_both(monkeypatch):
    import neuralbook.autograd as ag
    a, b = nb.tensor([1.0, 2.0]), nb.tensor([3.0, 4.0])
    b.data = b.data.view(_FakeArray)       # (nb.tensor would turn it back into a plain ndarray)
    monkeypatch.setattr(ag.Tensor, "device", property(lambda t: "cuda:0" if type(t.data) is _FakeArray else "cpu"))
    with pytest.raises(RuntimeError, match=r"Mul: expected all tensors on one device, got cpu and cuda:0"):
        a * b


def test_set_tf32_is_an_opt_in(monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "0")
    monkeypatch.setattr(CU, "_tf32", False)
    assert CU.tf32_enabled() is False
    assert CU.set_tf32(True) is False and CU.tf32_enabled() and os.environ["CUPY_TF32"] == "1"
    assert CU.set_tf32(False) is True and not CU.tf32_enabled() and os.environ["CUPY_TF32"] == "0"
