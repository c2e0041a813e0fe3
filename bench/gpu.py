#!/usr/bin/env python
"""GPU benchmark (chapter 31): neuralbook on CUDA against PyTorch CUDA on the same GPU, and every fused CUDA kernel
against the unfused CuPy code it replaces. Needs an NVIDIA GPU and CuPy; the PyTorch column needs a CUDA build of
torch (it is left empty otherwise).

    python bench/gpu.py                  # everything → bench/results/gpu.json and bench/results/gpu.md
    python bench/gpu.py --quick          # 3 rounds instead of 9
    python bench/gpu.py --only adam      # workloads whose name contains 'adam'
    python bench/gpu.py --tf32           # allow TF32 matrix products in both libraries (default: off in both)
    python bench/gpu.py --smoke --emulated   # tiny sizes, one round, on chapter 32's emulated GPU: checks the
                                             # script itself without a GPU (the timings mean nothing)

Method: each workload is warmed up (kernels compile on first use), then timed in rounds that alternate the two
contenders (which one goes first alternates too); each timing runs the step enough times to last ~50 ms and ends
with a device synchronisation; the median over rounds is reported. Before timing, each fused kernel is checked
against its unfused version on the same inputs, so a broken kernel cannot produce a fast but wrong figure.
"Unfused" is the CPU implementation of the same kernel name (NumPy code written with `xp`), run on CuPy arrays:
the code the GPU would run without the twin. Ratios > 1 mean the fused kernel (or neuralbook) is faster.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import neuralbook as nb  # noqa: E402
import neuralbook.cuda as CU  # noqa: E402
from neuralbook import conv, losses, nn, optim  # noqa: E402
from neuralbook.backend import KERNELS  # noqa: E402


# ------------------------------------------------------------------------------------------------------ timing
def _sync():
    nb.backend.cupy_or_none().cuda.Device().synchronize()
    if _torch_cuda():
        import torch
        torch.cuda.synchronize()


def _torch_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def _time(fn, k):
    _sync()
    t0 = time.perf_counter()
    for _ in range(k): fn()
    _sync()
    return (time.perf_counter() - t0) / k


def compare(a, b, rounds, warmup=3, target=0.05):
    "Median seconds per call of a() and b(), alternating (b may be None)."
    for _ in range(warmup):
        a()
        if b: b()
    ka = max(1, int(target / max(_time(a, 1), 1e-6)))
    kb = max(1, int(target / max(_time(b, 1), 1e-6))) if b else 0
    ta, tb = [], []
    for r in range(rounds):
        order = [(a, ka, ta), (b, kb, tb)] if r % 2 == 0 else [(b, kb, tb), (a, ka, ta)]
        for fn, k, out in order:
            if fn: out.append(_time(fn, k))
    return statistics.median(ta), (statistics.median(tb) if tb else None)


SMOKE = dict(warmup=1, target=0.0)      # --smoke: each contender runs a few times, the timings mean nothing


# ------------------------------------------------------------------------------------------ kernels: fused vs not
def kernel_workloads(cp, smoke=False):
    """name -> (fused(), unfused(), check()) on CuPy arrays. The first three names are those of chapter 31's
    bytes-moved model, so the chapter's figure can put measurement beside prediction. `smoke`: tiny sizes."""
    rng = np.random.default_rng(0)
    f32 = np.float32

    def g(*shape, scale=1.0):
        return cp.asarray((rng.standard_normal(shape) * scale).astype(f32))

    def pair(name, *args, inplace=False, **kw):
        k = KERNELS[name]
        fused, unfused = (lambda: k.impls["cuda"](*args, **kw)), (lambda: k.impls["cpu"](*args, **kw))
        def check():
            if inplace: return  # in-place updates are checked by tests/test_gpu.py; here both would mutate the state
            a, b = fused(), unfused()
            for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                if x is None: continue
                y = cp.asnumpy(y)
                np.testing.assert_allclose(cp.asnumpy(x), y, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(y).max())),
                                           err_msg=f"{name}: the fused kernel disagrees with the unfused code")
        return fused, unfused, check

    M = N = 64 if smoke else 4096
    z, b, gy = g(M, N), g(N), g(M, N)
    y = CU.bias_act_fwd(z, b, "relu")
    w = {}
    w["bias+ReLU forward"] = pair("bias_act_fwd", z, b, "relu")
    w["bias+ReLU backward"] = pair("bias_act_bwd", gy, y, "relu")
    n = M * N
    p, gr, m, v = g(n), g(n), cp.zeros(n, f32), cp.zeros(n, f32)
    w["Adam"] = pair("adam_update", p, gr, m, v, None, 10, 1e-3, 0.9, 0.999, 1e-8, 0.01, True, False, inplace=True)
    buf = cp.zeros(n, f32)
    w["SGD momentum"] = pair("sgd_update", p, gr, buf, 0.01, 0.9, 0.0, 0.0, False, False, False, inplace=True)
    R, C = (32, 100) if smoke else (4096, 1000)
    x, t = g(R, C, scale=5), cp.asarray(rng.integers(0, C, R))
    _, prob = CU.TWINS["softmax_cross_entropy_fwd"](x, t, None, -100, 0.0)
    w["softmax cross-entropy forward"] = pair("softmax_cross_entropy_fwd", x, t, None, -100, 0.1)
    w["softmax cross-entropy backward"] = pair("softmax_cross_entropy_bwd", prob, t, None, g(R), -100, 0.1)
    u = cp.asarray(rng.uniform(size=(M, N)).astype(f32))
    w["dropout"] = pair("dropout_mask_apply", z, u, 0.5)
    B, Ch, S = (4, 3, 8) if smoke else (64, 64, 56)
    img = cp.ascontiguousarray(g(B, Ch, S, S).transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)  # batch-innermost
    geom = ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    cols = CU.TWINS["im2col"](img, *geom)
    w["im2col"] = pair("im2col", img, *geom)
    w["col2im"] = pair("col2im", cols, img.shape, *geom)
    pool = ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1))
    yp = CU.TWINS["maxpool2d_fwd"](img, *pool, (S // 2, S // 2))
    w["max_pool2d forward"] = pair("maxpool2d_fwd", img, *pool, (S // 2, S // 2))
    w["max_pool2d backward"] = pair("maxpool2d_bwd", img, yp, g(*yp.shape), *pool)
    w["batch-norm statistics"] = pair("batchnorm_stats", img, (0, 2, 3))
    w["layer-norm statistics"] = pair("batchnorm_stats", g(*((16, 64) if smoke else (8192, 1024))), (1,))
    return w


# -------------------------------------------------------------------------------------------- training steps
class FusedMLP(nn.Module):
    "The MLP with chapter 31's fused linear + ReLU layers."
    def __init__(self, d_in, width, d_out):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(d_in, width), nn.Linear(width, width), nn.Linear(width, d_out)

    def forward(self, x):
        h = CU.linear_act(x, self.l1.weight, self.l1.bias)
        return self.l3(CU.linear_act(h, self.l2.weight, self.l2.bias))


def _nb_step(model, opt, X, y):
    def step():
        loss = losses.cross_entropy(model(X), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return step


def _torch_step(model, opt, X, y):
    import torch.nn.functional as TF
    def step():
        loss = TF.cross_entropy(model(X), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return step


def training_workloads(smoke=False):
    "name -> list of (label, builder of a step function) with labels 'neuralbook', 'neuralbook fused', 'pytorch'."
    Conv2d = getattr(nn, "Conv2d", conv.Conv2d)
    MaxPool2d = getattr(nn, "MaxPool2d", conv.MaxPool2d)
    rng = np.random.default_rng(1)
    B, D, H, K = (32, 16, 32, 10) if smoke else (4096, 4096, 4096, 10)
    NC = 8 if smoke else 256
    Xm, ym = rng.standard_normal((B, D)).astype(np.float32), rng.integers(0, K, B)
    Xc, yc = rng.standard_normal((NC, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, NC)

    def nb_mlp(fused):
        def build():
            model = (FusedMLP(D, H, K) if fused else
                     nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, K))).to("cuda")
            return _nb_step(model, optim.Adam(model.parameters(), lr=1e-4), nb.tensor(Xm, device="cuda"),
                            nb.tensor(ym, device="cuda"))
        return build

    def nb_cnn():
        model = nn.Sequential(Conv2d(1, 32, 3, padding=1), nn.ReLU(), MaxPool2d(2), Conv2d(32, 64, 3, padding=1),
                              nn.ReLU(), MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 10)).to("cuda")
        return _nb_step(model, optim.Adam(model.parameters(), lr=1e-4), nb.tensor(Xc, device="cuda"),
                        nb.tensor(yc, device="cuda"))

    def torch_mlp():
        import torch
        tn = torch.nn
        model = tn.Sequential(tn.Linear(D, H), tn.ReLU(), tn.Linear(H, H), tn.ReLU(), tn.Linear(H, K)).cuda()
        return _torch_step(model, torch.optim.Adam(model.parameters(), lr=1e-4),
                           torch.tensor(Xm, device="cuda"), torch.tensor(ym, device="cuda"))

    def torch_cnn():
        import torch
        tn = torch.nn
        model = tn.Sequential(tn.Conv2d(1, 32, 3, padding=1), tn.ReLU(), tn.MaxPool2d(2), tn.Conv2d(32, 64, 3, padding=1),
                              tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(), tn.Linear(64 * 7 * 7, 10)).cuda()
        return _torch_step(model, torch.optim.Adam(model.parameters(), lr=1e-4),
                           torch.tensor(Xc, device="cuda"), torch.tensor(yc, device="cuda"))

    return {
        f"MLP {D}-{H}-{H}-{K}, batch {B}, Adam": [("neuralbook", nb_mlp(False)), ("neuralbook fused", nb_mlp(True)),
                                                   ("pytorch", torch_mlp)],
        "CNN conv32-pool-conv64-pool-fc, batch 256 × 1×28×28, Adam": [("neuralbook", nb_cnn), ("pytorch", torch_cnn)],
    }


# ------------------------------------------------------------------------------------------------------ output
def write_atomic(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def table(results) -> str:
    lines = [f"# GPU benchmark — {results['device']}", "",
             f"TF32 {'on' if results['tf32'] else 'off'}; median of {results['rounds']} alternating rounds; "
             f"CuPy {results['cupy']}, PyTorch {results['torch'] or '—'}", "",
             "| fused kernel | fused (ms) | unfused CuPy (ms) | speed-up |", "|---|---:|---:|---:|"]
    for k, r in results["kernels"].items():
        lines.append(f"| {k} | {r['fused_ms']:.3f} | {r['unfused_ms']:.3f} | {r['speedup']:.2f}× |")
    lines += ["", "| training step | " + " | ".join(["neuralbook (ms)", "neuralbook fused (ms)", "PyTorch (ms)",
                                                      "neuralbook / PyTorch"]) + " |", "|---|---:|---:|---:|---:|"]
    for k, r in results["training"].items():
        cells = [r.get(c) for c in ("neuralbook", "neuralbook fused", "pytorch")]
        best = min(c for c in cells[:2] if c is not None)
        ratio = f"{best / cells[2]:.2f}" if cells[2] else "—"
        lines.append(f"| {k} | " + " | ".join("—" if c is None else f"{c:.2f}" for c in cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 9")
    ap.add_argument("--only", help="only workloads whose name contains this (case-insensitive)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matrix products in both libraries")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and one round: a check of the script, no timing")
    ap.add_argument("--emulated", action="store_true", help="run on chapter 32's emulated GPU (with --smoke)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    if args.emulated:
        if not args.smoke: ap.error("--emulated runs CUDA threads as CPU fibers: use it with --smoke")
        from neuralbook.cuda_emu import emulated_gpu
        with emulated_gpu(max_blocks=3):
            return run(args)
    return run(args)


def run(args):
    if not nb.cuda_is_available():
        try: nb.tensor([0.0], device="cuda")
        except nb.DeviceError as e: print(f"bench/gpu.py needs a GPU: {e}")
        return 2
    cp = nb.backend.cupy_or_none()          # CuPy (or, under chapter 32's emulated_gpu(), its stand-in)
    rounds = 1 if args.smoke else 3 if args.quick else 9
    CU.set_tf32(args.tf32)
    torch_version = None
    if _torch_cuda():
        import torch
        torch_version = torch.__version__
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    results = dict(device=name, tf32=args.tf32, rounds=rounds, cupy=cp.__version__, torch=torch_version,
                   numpy=np.__version__, python=platform.python_version(), kernels={}, training={})
    want = (lambda s: args.only is None or args.only.lower() in s.lower())

    for k, (fused, unfused, check) in kernel_workloads(cp, args.smoke).items():
        if not want(k): continue
        check()
        tf, tu = compare(fused, unfused, rounds, **SMOKE if args.smoke else {})
        results["kernels"][k] = dict(fused_ms=tf * 1e3, unfused_ms=tu * 1e3, speedup=tu / tf)
        print(f"{k:34s} fused {tf * 1e3:8.3f} ms   unfused {tu * 1e3:8.3f} ms   {tu / tf:5.2f}x", flush=True)

    for k, contenders in training_workloads(args.smoke).items():
        if not want(k): continue
        steps = {label: build() for label, build in contenders if label != "pytorch" or torch_version}
        ours = [l for l in steps if l != "pytorch"]
        row = {}
        for label in ours:
            a, b = compare(steps[label], steps.get("pytorch"), rounds, **SMOKE if args.smoke else {})
            row[label] = a * 1e3
            if b is not None: row["pytorch"] = b * 1e3
        results["training"][k] = row
        print(f"{k}: " + ", ".join(f"{l} {t:.2f} ms" for l, t in row.items()), flush=True)

    out = args.out
    write_atomic(out / "gpu.json", json.dumps(results, indent=1) + "\n")
    write_atomic(out / "gpu.md", table(results))
    print("\n" + table(results))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
