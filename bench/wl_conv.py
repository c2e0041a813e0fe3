"""Chapter 12's benchmarks at realistic widths (issue 22), loaded by bench/run.py (see `_load_workload_modules`).

- `conv_wide_b128`: the 4-conv network of the issue on 28×28 digits, batch 128: Conv 1→64, Conv 64→64 (3×3, no
  padding, ReLU after each), MaxPool 2, Conv 64→128, Conv 128→128 (ReLU after each), Flatten, Linear 8192→10.
  Without padding the spatial sizes are 28 → 26 → 24 → 12 → 10 → 8, and 128·8·8 = 8192 is the issue's Linear; with
  padding=1 the flatten would be 128·14·14 = 25088.
- `conv_resblock_b64`: a ResNet basic block, 64 channels on 32×32, batch 64: a 3→64 stem (conv, BN, ReLU), then
  conv-BN-ReLU-conv-BN + identity, ReLU, global average pooling, Linear 64→10.

Each is a training step (forward, backward, Adam), float32, against the same model in PyTorch.
"""
import numpy as np

try:
    import torch
except ImportError:
    torch = None


def _pair(build_ours, build_torch, x, y):
    "bench/run.py's `_train_step_pair`: Adam steps of both models on one batch."
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import _train_step_pair
    return _train_step_pair(build_ours, build_torch, x, y)


def _wide(T):
    "The issue's network in the namespace T (neuralbook.nn or torch.nn)."
    return T.Sequential(T.Conv2d(1, 64, 3), T.ReLU(), T.Conv2d(64, 64, 3), T.ReLU(), T.MaxPool2d(2),
                        T.Conv2d(64, 128, 3), T.ReLU(), T.Conv2d(128, 128, 3), T.ReLU(), T.Flatten(),
                        T.Linear(8192, 10))


def conv_wide_b128():
    "training step (fwd, bwd, Adam) of a 4-conv net 64/64/128/128 (3x3) + Linear 8192-10, batch 128 on 28x28"
    from neuralbook import nn
    rng = np.random.default_rng(0)
    return _pair(lambda: _wide(nn), lambda: _wide(torch.nn), rng.standard_normal((128, 1, 28, 28)).astype(np.float32),
                 rng.integers(0, 10, 128))


def _resnet(T, bn2d):
    class Block(T.Module):
        def __init__(self, c=64):
            super().__init__()
            self.c1, self.b1 = T.Conv2d(c, c, 3, padding=1, bias=False), bn2d(c)
            self.c2, self.b2 = T.Conv2d(c, c, 3, padding=1, bias=False), bn2d(c)
            self.relu = T.ReLU()
        def forward(self, x):
            return self.relu(self.b2(self.c2(self.relu(self.b1(self.c1(x))))) + x)

    return T.Sequential(T.Conv2d(3, 64, 3, padding=1, bias=False), bn2d(64), T.ReLU(), Block(),
                        T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(64, 10))


def conv_resblock_b64():
    "training step (fwd, bwd, Adam) of a stem + ResNet basic block (64 ch, BN) on 32x32, batch 64"
    from neuralbook import nn
    from neuralbook.norm import BatchNorm2d
    rng = np.random.default_rng(0)
    return _pair(lambda: _resnet(nn, BatchNorm2d), lambda: _resnet(torch.nn, torch.nn.BatchNorm2d),
                 rng.standard_normal((64, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 64))


WORKLOADS = {"conv_wide_b128": conv_wide_b128, "conv_resblock_b64": conv_resblock_b64}
MEMORY = {"conv_wide_b128", "conv_resblock_b64"}


# ---------------------------------------------------------------- `python bench/wl_conv.py`: the chapter's table
def _variants():
    """The rows of chapter 12b's table: 'im2col' (chapter 12 alone: conv.FAST emptied), 'winograd2' (F(2×2, 3×3)),
    'winograd' (F(4×4, 3×3), the library's default)."""
    from neuralbook import conv, conv_fast
    def tile(m):
        def set_():
            conv.FAST["conv2d"], conv_fast.TILE = conv_fast.FastConv2dFn, m
        return set_
    return {"im2col": lambda: conv.FAST.pop("conv2d", None), "winograd2": tile(2), "winograd": tile(4)}


def _instrument():
    "Wrap the pieces of a step in thread-CPU timers; returns the dict of seconds per category (cleared by the caller)."
    import time
    from neuralbook import activations, conv, conv_fast, norm, optim
    acc = {}

    def timed(owner, name, cat):
        f = getattr(owner, name)
        def g(*a, **k):
            t = time.thread_time()
            try: return f(*a, **k)
            finally: acc[cat] = acc.get(cat, 0.0) + time.thread_time() - t
        setattr(owner, name, g)
    for name in ("_matmul_into", "_mm"): timed(conv, name, "im2col path: GEMM")
    timed(conv, "im2col", "im2col path: im2col copies")
    timed(conv, "_add_cols", "im2col path: col2im strided adds")
    timed(conv_fast, "_sandwich", "winograd: transforms (small GEMMs)")
    timed(conv_fast, "_add_tiles", "winograd: tile adds (backward)")
    timed(conv_fast, "winograd_forward", "winograd: all")
    timed(conv_fast, "winograd_backward", "winograd: all")
    timed(conv, "maxpool2d_fwd", "max-pool"); timed(conv, "maxpool2d_bwd", "max-pool")
    timed(activations.ReLU, "forward", "ReLU"); timed(activations.ReLU, "backward", "ReLU")
    timed(optim.Adam, "step", "Adam")
    timed(norm.NormalizeFn, "forward", "BatchNorm (chapter 13)"); timed(norm.NormalizeFn, "backward", "BatchNorm (chapter 13)")
    return acc


def main():
    import argparse, json, os, statistics, sys, time
    from pathlib import Path
    from threadpoolctl import threadpool_limits
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import neuralbook as nb
    ap = argparse.ArgumentParser(description="chapter 12b's before/after table and profile")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--profile-only", action="store_true", help="keep the stored table, redo the profile")
    args = ap.parse_args()
    spec = __import__("importlib.util").util.spec_from_file_location("bench_run", Path(__file__).parent / "run.py")
    run = __import__("importlib.util").util.module_from_spec(spec); spec.loader.exec_module(run)
    variants = _variants()
    res = {"machine": run.platform.platform(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
           "rounds": args.rounds, "rows": [], "profile": {}}
    if args.profile_only:
        res.update({k: v for k, v in json.loads((Path(args.out) / "conv_speed.json").read_text()).items()
                    if k in ("rows", "rounds", "loadavg_start", "gemm_1024_gflops_1thread")})
    for name, make in WORKLOADS.items() if not args.profile_only else ():
        for nt in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(nt)
            with threadpool_limits(nt):
                nb.manual_seed(0); torch.manual_seed(0)
                ours, theirs = make()
                for v in variants.values(): v(); ours()
                theirs(); theirs()
                wall = {k: [] for k in list(variants) + ["torch"]}
                cpu = {k: [] for k in wall}
                # alternate every variant and torch each round; with 2 threads, in blocks of rounds/2 steps after an
                # untimed one (idle threads spin after a call and slow whatever runs next: run.py's `measure`)
                passes, per = (2, -(-args.rounds // 2)) if nt > 1 else (args.rounds, 1)
                for _ in range(passes):
                    for k in wall:
                        if k in variants: variants[k]()
                        fn = theirs if k == "torch" else ours
                        if nt > 1: fn()
                        for _ in range(per):
                            t0, c0 = time.perf_counter(), time.thread_time(); fn()
                            wall[k].append(time.perf_counter() - t0); cpu[k].append(time.thread_time() - c0)
                row = {"workload": name, "threads": nt, "doc": make.__doc__, "loadavg": os.getloadavg()}
                for k in wall:
                    row[f"{k}_ms"] = statistics.median(wall[k]) * 1e3
                    row[f"{k}_cpu_ms"] = statistics.median(cpu[k]) * 1e3
                for k in variants: row[f"{k}_ratio"] = row[f"{k}_ms"] / row["torch_ms"]
                if nt == 1:
                    row["torch_peak_bytes"] = run.peak_memory_torch(theirs)
                    for k in variants:
                        variants[k](); row[f"{k}_peak_bytes"] = run.peak_memory_ours(ours)
                        row[f"{k}_memory_ratio"] = row[f"{k}_peak_bytes"] / row["torch_peak_bytes"]
                res["rows"].append(row)
                print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items() if k != "doc"}, flush=True)
    # the profile: one step of each variant at 1 thread, thread-CPU time per category
    acc = _instrument()
    with threadpool_limits(1):
        torch.set_num_threads(1)
        for name, make in WORKLOADS.items():
            nb.manual_seed(0)
            ours, _ = make()
            for k, v in variants.items():
                v(); ours(); acc.clear()
                reps = []
                for _ in range(3):
                    acc.clear(); t = time.thread_time(); ours(); total = time.thread_time() - t
                    reps.append((total, dict(acc)))
                total, cats = sorted(reps, key=lambda r: r[0])[1]          # the median step
                if "winograd: all" in cats:
                    cats["winograd: α² GEMMs, tile copies"] = cats.pop("winograd: all") - cats.get(
                        "winograd: transforms (small GEMMs)", 0) - cats.get("winograd: tile adds (backward)", 0)
                cats["other (autograd, loss, Linear, bias, layouts)"] = total - sum(cats.values())
                res["profile"][f"{name}/{k}"] = {"total_ms": total * 1e3, "ms": {c: s * 1e3 for c, s in cats.items()}}
                print(name, k, f"{total * 1e3:.0f} ms:", {c: round(s * 1e3, 1) for c, s in cats.items()}, flush=True)
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    with threadpool_limits(1):
        a @ a; t = time.thread_time(); [a @ a for _ in range(5)]
        res["gemm_1024_gflops_1thread"] = 5 * 2 * 1024 ** 3 / (time.thread_time() - t) / 1e9
    res["loadavg_end"] = os.getloadavg()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / "conv_speed.json").write_text(json.dumps(res, indent=1))
    print("GEMM 1024³, 1 thread (CPU time):", round(res["gemm_1024_gflops_1thread"], 1), "GFLOP/s; wrote", out / "conv_speed.json")


def band_threads(repeats=5, rounds=6, out=None):
    """Chapter 12b's band threads at 2 threads: each conv workload against PyTorch in two fresh processes, one as
    installed and one started with OPENBLAS_THREAD_TIMEOUT=4 (OpenBLAS's idle threads sleep at once, so
    `_band_threads` runs the bands on 2 threads). Writes bench/results/conv_band_threads.json."""
    import json, os, subprocess, sys
    from pathlib import Path
    res = {"loadavg_start": os.getloadavg(), "rounds": rounds, "repeats": repeats, "runs": {}}
    for label, extra in (("default", {}), ("OPENBLAS_THREAD_TIMEOUT=4", {"OPENBLAS_THREAD_TIMEOUT": "4"})):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"} | extra
        cmd = [sys.executable, __file__, "--band-threads-child", str(repeats), str(rounds)]
        res["runs"][label] = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                                       text=True).stdout.splitlines()[-1])
        for name, r in res["runs"][label].items():
            print(f"{label:26} {name:18} band threads {r['band_threads']}: ratios",
                  " ".join(f"{x:.2f}" for x in r["ratios"]), flush=True)
    res["loadavg_end"] = os.getloadavg()
    out = Path(out or Path(__file__).parent / "results" / "conv_band_threads.json")
    out.write_text(json.dumps(res, indent=1))


def _band_threads_child(repeats, rounds):
    import json, sys
    from pathlib import Path
    from threadpoolctl import threadpool_limits
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run
    from neuralbook import conv_fast
    torch.set_num_threads(2)
    res = {}
    with threadpool_limits(2):
        for name, make in WORKLOADS.items():
            ours, theirs = make()
            ours()
            times = [run.measure(ours, theirs, rounds, blocks=True) for _ in range(repeats)]
            res[name] = {"band_threads": conv_fast._band_threads(), "ours_ms": [o * 1e3 for o, _ in times],
                         "torch_ms": [t * 1e3 for _, t in times], "ratios": [o / t for o, t in times]}
    print(json.dumps(res))


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] == ["--band-threads-child"]: _band_threads_child(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["--band-threads"]: band_threads()
    else: main()
