"""Chapter 32: the CUDA emulator itself — that it runs CUDA's semantics, and that it catches what it claims to.

The GPU suite (tests/test_gpu.py) runs on the emulated device; these tests make sure that device is worth trusting:
shuffles, barriers and atomics behave as CUDA defines them, every kind of bug the chapter lists is reported, the
twins give bit-identical results under the forward, reverse and random schedules, and NumPy posing as CuPy is as strict
as CuPy about host arrays.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import neuralbook as nb
import neuralbook.backend as B
import neuralbook.cuda as CU
from neuralbook import cuda_emu as E
from neuralbook.backend import KERNELS


@pytest.fixture(scope="module", autouse=True)
def cxx():
    if E.compiler() is None:
        if os.environ.get("CI"): pytest.fail("the CUDA emulator must run in CI: no C++ compiler found")
        pytest.skip("no C++ compiler")


def module(code, T="float"):
    return E.EmulatedModule(f"typedef {T} T;\n" + CU.COMMON + code)


def run(code, name, grid, block, args, schedule="forward", T="float"):
    m = module(code, T)
    m.schedule = schedule
    m.get_function(name)(grid, block, args)


# ----------------------------------------------------------------------------------------- CUDA semantics
SHUFFLES = r"""
extern "C" __global__ void shuffles(const int* x, int* down, int* bcast, int* xr, int* down16, long long d) {
  const int t = threadIdx.x;
  down[t] = __shfl_down_sync(0xffffffffu, x[t], (unsigned)d);
  bcast[t] = __shfl_sync(0xffffffffu, x[t], 5);
  xr[t] = __shfl_xor_sync(0xffffffffu, x[t], 3);
  down16[t] = __shfl_down_sync(0xffffffffu, x[t], 2, 16);     // two segments of 16 lanes
}"""


@pytest.mark.parametrize("d", [1, 5, 31])
def test_warp_shuffles_follow_cuda(d):
    T = 96                                          # three warps
    x = np.random.default_rng(0).integers(-1000, 1000, T).astype(np.int32)
    outs = [np.zeros(T, np.int32) for _ in range(4)]
    run(SHUFFLES, "shuffles", (1,), (T,), (x, *outs, np.int64(d)))
    lane, base = np.arange(T) % 32, np.arange(T) // 32 * 32
    np.testing.assert_array_equal(outs[0], np.where(lane + d < 32, x[np.minimum(np.arange(T) + d, T - 1)], x))
    np.testing.assert_array_equal(outs[1], x[base + 5])
    np.testing.assert_array_equal(outs[2], x[base + (lane ^ 3)])
    seg = lane % 16
    np.testing.assert_array_equal(outs[3], np.where(seg + 2 < 16, x[np.minimum(np.arange(T) + 2, T - 1)], x))


BLOCK_REDUCE = r"""
extern "C" __global__ void reduce(const T* x, T* s, T* m, long long n) {
  __shared__ T shm[32];
  for (long long row = blockIdx.x; row < 4; row += gridDim.x) {
    T v = T(0), w = neg_inf(T(0));
    for (long long i = threadIdx.x; i < n; i += blockDim.x) { v += x[row * n + i]; w = nan_max(w, x[row * n + i]); }
    v = block_sum(v, shm); w = block_max(w, shm);
    if (threadIdx.x == 7) { s[row] = v; m[row] = w; }        // every thread holds the result
  }
}"""


@pytest.mark.parametrize("threads", [32, 64, 256, 1024])
@pytest.mark.parametrize("schedule", ["forward", "reverse", "random"])
def test_block_reductions_and_barriers(threads, schedule):
    x = np.random.default_rng(1).integers(-50, 50, (4, 1000)).astype(np.float64)
    s, m = np.zeros(4), np.zeros(4)
    run(BLOCK_REDUCE, "reduce", (3,), (threads,), (x, s, m, np.int64(1000)), schedule, T="double")
    np.testing.assert_array_equal(s, x.sum(1))
    np.testing.assert_array_equal(m, x.max(1))


def test_grid_and_block_indices_in_three_dimensions():
    code = r"""extern "C" __global__ void ids(int* out) {
      const int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
      const int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
      const int nt = blockDim.x * blockDim.y * blockDim.z;
      out[b * nt + t] = b * 1000 + t;
    }"""
    out = np.full(2 * 3 * 2 * 64, -1, np.int32)
    run(code, "ids", (2, 3, 2), (4, 8, 2), (out,))
    np.testing.assert_array_equal(out, (np.arange(out.size) // 64) * 1000 + np.arange(out.size) % 64)


def test_atomic_add_and_bit_casts():
    code = r"""extern "C" __global__ void k(T* acc, int* bits, long long* dbits) {
      atomicAdd(acc, T(1));
      if (blockIdx.x == 0 && threadIdx.x == 0) {
        bits[0] = __float_as_int(__int_as_float(0x3f800000)); bits[1] = __float_as_int(neg_inf(0.0f));
        dbits[0] = __double_as_longlong(quiet_nan(0.0));
      }
    }"""
    acc, bits, dbits = np.zeros(1, np.float32), np.zeros(2, np.int32), np.zeros(1, np.int64)
    run(code, "k", (5,), (128,), (acc, bits, dbits))
    assert acc[0] == 640
    assert bits.tolist() == [0x3F800000, np.array(0xFF800000, np.uint32).view(np.int32)]
    assert dbits[0] == 0x7FF8000000000000


# ------------------------------------------------------------------------------------ what the emulator catches
FILL = r"""extern "C" __global__ void fill(T* x, long long lo, long long hi) {
  GRID_STRIDE_LOOP(i, hi - lo) x[lo + i] = T(1);
}"""


@pytest.mark.parametrize("lo,hi,side", [(0, 11, "after"), (-1, 10, "before"), (0, 70, "after")])
def test_writes_out_of_bounds_are_reported(lo, hi, side):
    x = np.zeros(10, np.float32)
    with pytest.raises(RuntimeError, match=f"fill .emulated. wrote .* byte.s. {side} the array passed as 'x' "
                                           r"\(shape \(10,\), float32\): an index out of bounds"):
        run(FILL, "fill", (1,), (32,), (x, np.int64(lo), np.int64(hi)))


@pytest.mark.parametrize("lo,hi,where", [(0, 5000, "3800 bytes after the end of"), (-500, 0, "2000 bytes before"),
                                         (1 << 40, (1 << 40) + 1, "not near any array argument")])
def test_wild_accesses_fault_cleanly_instead_of_corrupting_memory(lo, hi, where):
    x = np.zeros(10, np.float32)
    with pytest.raises(RuntimeError, match=r"fill \(emulated\) failed: segmentation fault at address 0x[0-9a-f]+ in "
                                           r"block \(0, 0, 0\), thread \(\d+, 0, 0\): a wild memory access .*" + where):
        run(FILL, "fill", (1,), (32,), (x, np.int64(lo), np.int64(hi)))
    assert (x == 0).all()                                  # nothing copied back from a failed launch
    run(FILL, "fill", (1,), (32,), (x, np.int64(0), np.int64(10)))     # and the emulator still works
    assert (x == 1).all()


def test_reads_out_of_bounds_read_nan():
    code = r"""extern "C" __global__ void shift(const T* x, T* y, long long n) { GRID_STRIDE_LOOP(i, n) y[i] = x[i + 1]; }"""
    for T, dt in (("float", np.float32), ("double", np.float64)):
        x, y = np.arange(5, dtype=dt), np.zeros(5, dt)
        run(code, "shift", (1,), (32,), (x, y, np.int64(5)), T=T)
        assert y[:4].tolist() == [1, 2, 3, 4] and np.isnan(y[4])


def test_a_divergent_barrier_is_a_reported_deadlock():
    code = r"""extern "C" __global__ void k(T* x) { if (threadIdx.x % 3 == 0) return; __syncthreads(); x[0] = T(1); }"""
    with pytest.raises(RuntimeError, match=r"deadlock in block \(0, 0, 0\): 42 threads wait at __syncthreads\(\), "
                                           r"0 at a warp shuffle, 22 have returned"):
        run(code, "k", (1,), (64,), (np.zeros(1, np.float32),))
    code = r"""extern "C" __global__ void k(T* x) { if (threadIdx.x < 31) x[0] = warp_sum(x[0]); }"""
    with pytest.raises(RuntimeError, match="31 at a warp shuffle, 33 have returned"):
        run(code, "k", (1,), (64,), (np.zeros(1, np.float32),))


def test_reading_shared_memory_before_it_is_written_reads_nan():
    racy = CU.COMMON.replace("  if (lane == 0) shm[warp] = v;\n  __syncthreads();", "  if (lane == 0) shm[warp] = v;")
    assert racy != CU.COMMON
    code = racy + r"""extern "C" __global__ void total(const T* x, T* s, long long n) {
      __shared__ T shm[32];
      T v = T(0);
      for (long long i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
      v = block_sum(v, shm);
      if (threadIdx.x == 0) s[blockIdx.x] = v;
    }"""
    x = np.arange(1000, dtype=np.float32)
    for schedule in E.SCHEDULES:
        m = E.EmulatedModule("typedef float T;\n" + code)
        m.schedule = schedule
        s = np.zeros(2, np.float32)
        m.get_function("total")((2,), (256,), (x, s, np.int64(1000)))
        assert np.isnan(s).all(), schedule                 # poisoned again for the second block too


RACE = r"""extern "C" __global__ void race(int* out) {
  __shared__ int flag[1];
  if (threadIdx.x == 0) flag[0] = 0;
  __syncthreads();
  if (threadIdx.x == 5) flag[0] = 1;                     // no barrier between this write and the reads
  out[threadIdx.x] = flag[0];
}"""


def test_a_race_shows_as_a_schedule_dependent_result():
    outs = {}
    for schedule, seed in (("forward", 0), ("reverse", 0), ("random", 1), ("random", 2)):
        m = module(RACE)
        m.schedule, m.seed = schedule, seed
        out = np.zeros(32, np.int32)
        m.get_function("race")((1,), (32,), (out,))
        outs[schedule, seed] = out
    # the last thread to reach the barrier releases it and runs on at once: it reads before thread 5 writes
    assert outs["forward", 0].tolist() == [0] * 5 + [1] * 26 + [0]
    assert outs["reverse", 0].tolist() == [0] + [1] * 5 + [0] * 26
    assert len({tuple(o) for o in outs.values()}) == 4                # every schedule sees another interleaving


def test_shuffles_need_the_full_mask_and_whole_warps():
    code = r"""extern "C" __global__ void k(T* x) { x[threadIdx.x] = __shfl_down_sync(0xffffu, x[threadIdx.x], 1); }"""
    with pytest.raises(RuntimeError, match="only the full mask 0xffffffff is emulated, got 0xffff"):
        run(code, "k", (1,), (32,), (np.zeros(32, np.float32),))
    code = r"""extern "C" __global__ void k(T* x) { x[threadIdx.x] = warp_sum(x[threadIdx.x]); }"""
    with pytest.raises(RuntimeError, match="partial warp .block of 40 threads is not a multiple of 32"):
        run(code, "k", (1,), (40,), (np.zeros(40, np.float32),))


def test_writing_a_const_parameter_is_reported():
    code = r"""extern "C" __global__ void k(const T* x) { if (threadIdx.x == 0) const_cast<T*>(x)[0] = T(5); }"""
    with pytest.raises(RuntimeError, match="changed 'x', a const parameter"):
        run(code, "k", (1,), (32,), (np.zeros(3, np.float32),))


@pytest.mark.parametrize("args,match", [
    ((np.zeros(10, np.float32), np.int64(0), 10), r"argument 2 \(long long hi\) needs a NumPy scalar of dtype int64, got int"),
    ((np.zeros(10, np.float32), np.int64(0), np.int32(10)), r"argument 2 \(long long hi\) got a int32 scalar; it needs int64"),
    ((np.zeros(10, np.float64), np.int64(0), np.int64(10)), r"argument 0 \(T\* x\) got a float64 array; it needs float32"),
    ((np.zeros((10, 2), np.float32)[:, 0], np.int64(0), np.int64(10)), "indexes it linearly; pass a C-contiguous array"),
    ((np.zeros(10, np.float32), np.int64(0)), r"2 arguments for 3 parameters \(x, lo, hi\)"),
    (([0.0] * 10, np.int64(0), np.int64(10)), r"argument 0 \(T\* x\) needs a device array, got list"),
])
def test_arguments_are_checked_against_the_c_parameters(args, match):
    with pytest.raises((TypeError, ValueError), match=match):
        run(FILL, "fill", (1,), (32,), args)


def test_aliased_arguments_share_memory_and_partial_overlaps_are_refused():
    code = r"""extern "C" __global__ void twice(const T* x, T* y, long long n) { GRID_STRIDE_LOOP(i, n) y[i] = 2 * x[i]; }"""
    x = np.arange(6, dtype=np.float32)
    run(code, "twice", (1,), (32,), (x, x, np.int64(6)))               # in place, like bias_act_fwd(out=z)
    assert x.tolist() == [0, 2, 4, 6, 8, 10]
    with pytest.raises(ValueError, match="overlaps another one in part"):
        run(code, "twice", (1,), (32,), (x[:4], x[2:], np.int64(4)))


@pytest.mark.parametrize("grid,block,match", [((1,), (2048,), r"invalid block \(2048, 1, 1\)"),
                                              ((1,), (0,), "invalid block"), ((1, 70000), (32,), "invalid grid"),
                                              ((1,), (32, 1, 65), "z <= 64")])
def test_launch_limits_as_the_driver_checks_them(grid, block, match):
    with pytest.raises(RuntimeError, match=match):
        run(FILL, "fill", grid, block, (np.zeros(1, np.float32), np.int64(0), np.int64(1)))


def test_compile_errors_carry_the_compiler_message():
    with pytest.raises(RuntimeError, match="rejected the kernel source(.|\n)*undefined_identifier"):
        module(r"""extern "C" __global__ void k(T* x) { x[0] = undefined_identifier; }""")
    m = module(FILL)
    with pytest.raises(KeyError, match=r"no kernel 'fil'; it defines \['fill'\]"):
        m.get_function("fil")


def test_compiled_libraries_are_cached(monkeypatch):
    module(FILL)                                                        # compiled (or already cached)

    def no_compiler(*a, **k):
        raise AssertionError("compiled again")
    monkeypatch.setattr(subprocess, "run", no_compiler)
    module(FILL).get_function("fill")((1,), (32,), (np.zeros(3, np.float32), np.int64(0), np.int64(3)))


def test_the_kernel_cache_must_be_private(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("NEURALBOOK_EMU_CACHE", str(shared))
    with pytest.raises(PermissionError, match="is not this user's alone .* mode 0o777"):
        E.compile_emulated("typedef float T;\n" + CU.COMMON + FILL)
    monkeypatch.setenv("NEURALBOOK_EMU_CACHE", str(tmp_path / "mine"))
    E.compile_emulated("typedef float T;\n" + CU.COMMON + FILL)
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o700 and list((tmp_path / "mine").glob("*.so"))


def test_kernel_params_parses_declarations():
    code = CU.SOURCES["dropout"].render("double", "float")
    ps = E.kernel_params(code, "dropout_mask_apply")
    assert [(p[1], p[2], p[3], p[4]) for p in ps] == [
        ("x", "double", True, True), ("u", "float", True, True), ("y", "double", True, False),
        ("keep", "bool", True, False), ("n", "long long", False, False), ("p", "float", False, False),
        ("scale", "double", False, False), ("all_dropped", "int", False, False)]
    assert E.kernel_names(CU.SOURCES["conv"].render("float")) == list(CU.SOURCES["conv"].kernels)
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        E.kernel_params(code, "nope")


# ------------------------------------------------------------------------ the twins: schedule-independent results
def _twin_cases(dt):
    rng = np.random.default_rng(3)
    f = lambda *s: rng.standard_normal(s).astype(dt)
    x4 = f(3, 2, 9, 8)
    geom, pool = ((3, 2), (2, 3), (1, 0, 0, 1), (2, 1)), ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    y4 = KERNELS["maxpool2d_fwd"].impls["cpu"](x4, *pool, (5, 4))
    cols = KERNELS["im2col"].impls["cpu"](x4, *geom)
    p, t = np.abs(f(37, 11)) + 0.1, rng.integers(0, 11, 37)
    t[3] = -100
    return [
        ("bias_act_fwd", (f(37, 129), f(129), "sigmoid")), ("bias_act_bwd", (f(70, 33), np.tanh(f(70, 33)), "tanh")),
        ("softmax_cross_entropy_fwd", (f(37, 300) * 30, t, np.abs(f(300)), -100, 0.1)),
        ("softmax_cross_entropy_bwd", (p / p.sum(1, keepdims=True), t, None, f(37), -100, 0.1)),
        ("sgd_update", (f(1001), f(1001), f(1001), 0.1, 0.9, 0.1, 1e-2, True, False, False)),
        ("adam_update", (f(1001), f(1001), f(1001), np.abs(f(1001)), np.abs(f(1001)), 3, 1e-3, 0.9, 0.999, 1e-8,
                         0.1, True, False)),
        ("dropout_mask_apply", (f(33, 31), rng.uniform(size=(33, 31)).astype(dt), 0.3)),
        ("im2col", (x4,) + geom), ("col2im", (f(*cols.shape), x4.shape) + geom),
        ("maxpool2d_fwd", (x4,) + pool + ((5, 4),)), ("maxpool2d_bwd", (x4, y4, f(*y4.shape)) + pool),
        ("avgpool2d_fwd", (x4,) + pool[:3] + (np.full((5, 4), 9, dt),)),
        ("avgpool2d_bwd", (f(3, 2, 5, 4), x4.shape) + pool[:3] + (np.full((5, 4), 9, dt),)),
        ("batchnorm_stats", (f(16, 7, 5, 5) * 3 + 2, (0, 2, 3))), ("batchnorm_stats", (f(9, 600), (1,))),
    ]


def _run_all(schedule, max_blocks, dt):
    outs = []
    with E.emulated_gpu(schedule=schedule, max_blocks=max_blocks, seed=7) as cp:
        for name, args in _twin_cases(dt):
            dev = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            out = KERNELS[name](*dev)
            out = out if isinstance(out, tuple) else (out,)
            outs.append([o.get() for o in out if o is not None] + [a.get() for a in dev if isinstance(a, cp.ndarray)])
        outs.append([CU.TWINS["splitmix_uniform"](99, 5, 777, xp=cp, dtype=dt).get()])
    return outs


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_twins_give_bit_identical_results_under_every_schedule(dt):
    # a race (a missing barrier, an atomicAdd whose order matters) shows as a difference between the schedules;
    # a different grid may legitimately change how a reduction is split into partial sums, so that is compared
    # to rounding only
    names = [n for n, _ in _twin_cases(dt)] + ["splitmix_uniform"]
    full = {}
    for max_blocks in (None, 3):
        fwd = _run_all("forward", max_blocks, dt)
        for schedule in ("reverse", "random"):
            other = _run_all(schedule, max_blocks, dt)
            for name, a, b in zip(names, fwd, other):
                for u, v in zip(a, b):
                    np.testing.assert_array_equal(u, v, err_msg=f"{name}: forward vs {schedule}, max_blocks={max_blocks}")
        full[max_blocks] = fwd
    tol = dict(rtol=1e-5, atol=1e-5) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for name, a, b in zip(names, full[None], full[3]):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, err_msg=f"{name}: full grid vs 3 blocks", **tol)


# ----------------------------------------------------------------------------------- NumPy posing as CuPy
def test_emulated_cupy_keeps_arrays_on_the_device_and_refuses_host_arrays():
    with E.emulated_gpu() as cp:
        assert E.is_emulated(cp) and B.cuda_is_available() and B.get_array_module(cp.zeros(2)) is cp
        h = np.arange(4.0)
        d = cp.asarray(h)
        d[0] = 7
        assert h[0] == 0                                   # a transfer copies
        assert cp.asarray(d) is d
        for r in (d.sum(), d[1], d.max(), cp.exp(d), np.exp(d), d * 2, cp.concatenate([d, d])):
            assert isinstance(r, cp.ndarray)               # 0-d results stay device arrays, as in CuPy
        with pytest.raises(TypeError, match="got a NumPy .host. array of shape .4,. among device arrays"):
            d + h
        with pytest.raises(TypeError, match="cupy.concatenate: got a NumPy"):
            cp.concatenate([d, h])
        e = cp.empty((3,), np.float32)
        assert np.isnan(e.get()).all()                     # poisoned: an unwritten element cannot pass
        assert (cp.empty(2, np.int64).get() == -1).all()
        assert d.device.id == 0 and isinstance(d.get(), np.ndarray) and not isinstance(d.get(), cp.ndarray)


def test_emulated_gpu_restores_everything(monkeypatch):
    before = (B._cupy, B._cupy_error, dict(CU._MODULES), CU.MAX_BLOCKS, CU.COLUMN_BLOCKS, sys.modules.get("cupyx"))
    with pytest.raises(ZeroDivisionError):
        with E.emulated_gpu(max_blocks=2):
            assert CU.MAX_BLOCKS == 2 and CU.COLUMN_BLOCKS == 2
            nb.tensor([1.0, 2.0], device="cuda") * 2
            1 / 0
    assert (B._cupy, B._cupy_error, dict(CU._MODULES), CU.MAX_BLOCKS, CU.COLUMN_BLOCKS,
            sys.modules.get("cupyx")) == before
    with pytest.raises(ValueError, match="schedule must be one of .'forward', 'reverse', 'random'., got 'backward'"):
        with E.emulated_gpu(schedule="backward"): pass
    monkeypatch.setattr(E, "compiler", lambda: None)
    with pytest.raises(B.DeviceError, match="needs a C\\+\\+ compiler"):
        with E.emulated_gpu(): pass


def test_the_device_error_names_both_devices_on_the_emulated_gpu():
    with E.emulated_gpu():
        a = nb.tensor(np.ones(3, np.float32), device="cuda")
        b = nb.tensor(np.ones(3, np.float32))
        assert a.device == "cuda:0" and b.device == "cpu"
        with pytest.raises(RuntimeError, match="cpu and cuda:0|cuda:0 and cpu"):
            a + b
        assert (a.to("cpu") + b).device == "cpu"


def test_the_gpu_benchmark_script_runs_end_to_end_on_the_emulated_gpu(tmp_path, capsys):
    # bench/gpu.py only runs where a GPU is; its --smoke mode checks the script itself here (timings mean nothing)
    import importlib.util
    import json
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).resolve().parents[1] / "bench" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 2             # no GPU: a clear message, exit 2
    assert "needs a GPU" in capsys.readouterr().out
    assert bench.main(["--smoke", "--emulated", "--out", str(tmp_path)]) == 0
    assert not E.is_emulated(B._cupy)                                         # the emulated GPU is gone again
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["device"] == "emulated GPU (neuralbook.cuda_emu)" and res["cupy"] == "emulated"
    assert len(res["kernels"]) == 13 and all(r["fused_ms"] > 0 for r in res["kernels"].values())
    assert len(res["training"]) == 2 and all(r["neuralbook"] > 0 for r in res["training"].values())
    assert "neuralbook fused" in next(r for k, r in res["training"].items() if k.startswith("MLP"))
    assert "| fused kernel |" in (tmp_path / "gpu.md").read_text()
