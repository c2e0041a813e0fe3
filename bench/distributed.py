#!/usr/bin/env python
"""Data-parallel scaling on this machine (chapter 34): 1 vs 2 MPI processes.

    python bench/distributed.py            # writes bench/results/distributed.json (the chapter's figure reads it)
    python bench/distributed.py --quick    # a smoke run (CI): fewer sizes and steps, output to a temporary folder

Measures (a) the time of one in-place `Allreduce` on 2 ranks against the message size, and fits the ring model
T(N) = 2(p-1)·alpha + 2(p-1)/p · N/beta; (b) training throughput in samples/s of an MLP (784-256-256-10) and a
LeNet-style CNN at a fixed global batch, on 1 process and on 2 (each process pinned to 1 BLAS thread).
Benchmarks are not tests: nothing here fails on a slow figure.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args):
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from threadpoolctl import threadpool_limits
    import neuralbook as nb
    import neuralbook.functional as F
    from neuralbook import nn
    import neuralbook.distributed as dist
    from neuralbook.optim import Adam
    c = dist.init()
    out = {"ranks": c.size}
    with threadpool_limits(1):
        if c.size > 1:                                            # (a) allreduce time against message size
            sizes = [2 ** k for k in range(8, 25 if not args.quick else 17, 2)]
            secs = []
            for n in sizes:
                a = np.ones(n // 4, np.float32)
                reps = max(3, min(200, (1 << 22) // n))
                c.barrier(); c.allreduce_(a)
                t0 = time.perf_counter()
                for _ in range(reps): c.allreduce_(a)
                t = np.array([(time.perf_counter() - t0) / reps]); c.allreduce_(t, "max")
                secs.append(float(t[0]))
            # least squares of T = 2(p-1) alpha + 2(p-1)/p N / beta in relative error (each row divided by its T),
            # so that the microsecond latencies of small messages weigh as much as the milliseconds of large ones
            A = np.stack([np.full(len(sizes), 2.0 * (c.size - 1)), 2.0 * (c.size - 1) / c.size * np.array(sizes)], 1)
            t = np.array(secs)
            (alpha, inv_beta), *_ = np.linalg.lstsq(A / t[:, None], np.ones(len(t)), rcond=None)
            out["allreduce"] = {"bytes": sizes, "seconds": secs, "alpha": float(max(alpha, 1e-9)),
                                "beta": float(1.0 / max(inv_beta, 1e-15))}
        rng = np.random.default_rng(0)
        models = {"mlp_784_256_256_10": (lambda: nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                                                               nn.ReLU(), nn.Linear(256, 10)), (784,), 128),
                  "lenet_cnn": (lambda: nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                                      nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                                      nn.Linear(84, 10)), (1, 28, 28), 64)}
        out["throughput"] = {}
        steps = 4 if args.quick else 30
        for name, (make, shape, global_batch) in models.items():
            nb.manual_seed(0)
            m = make()
            ddp = dist.DistributedDataParallel(m, c)
            opt = Adam(m.parameters(), lr=1e-3)
            B = global_batch // c.size
            X = nb.tensor(rng.normal(size=(B, *shape)).astype(np.float32))
            y = nb.tensor(rng.integers(0, 10, B))
            def step():
                opt.zero_grad(); F.cross_entropy(ddp(X), y).backward(); ddp.sync(); opt.step()
            for _ in range(2): step()
            c.barrier()
            t0 = time.perf_counter()
            for _ in range(steps): step()
            t = np.array([time.perf_counter() - t0]); c.allreduce_(t, "max")
            out["throughput"][name] = {"global_batch": global_batch, "samples_per_s": global_batch * steps / float(t[0])}
    if c.rank == 0:
        Path(args.worker).write_text(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="output folder (default bench/results; --quick: a temporary one)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    if not Path(mpiexec).exists():
        sys.exit("bench/distributed.py needs mpiexec: pip install 'neuralbook[distributed]' (mpich + mpi4py)")
    out_dir = Path(args.out or (tempfile.mkdtemp() if args.quick else ROOT / "bench" / "results"))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            res = Path(tmp) / f"r{n}.json"
            cmd = [mpiexec, "-n", str(n), sys.executable, __file__, "--worker", str(res)] + (["--quick"] if args.quick else [])
            subprocess.run(cmd, check=True, env=env, timeout=600)
            runs[n] = json.loads(res.read_text())
    result = {"allreduce": runs[2]["allreduce"], "throughput": {}, "machine": os.cpu_count()}
    print(f"{'workload':22s} {'1 process':>12s} {'2 processes':>12s} {'speed-up':>9s}   (samples/s)")
    for name in runs[1]["throughput"]:
        a, b = runs[1]["throughput"][name]["samples_per_s"], runs[2]["throughput"][name]["samples_per_s"]
        result["throughput"][name] = {"1": a, "2": b, "speedup": b / a, "global_batch": runs[1]["throughput"][name]["global_batch"]}
        print(f"{name:22s} {a:12.0f} {b:12.0f} {b / a:8.2f}x")
    ar = result["allreduce"]
    print(f"allreduce on 2 ranks: alpha = {ar['alpha'] * 1e6:.1f} us, beta = {ar['beta'] / 1e9:.2f} GB/s")
    for n, t in zip(ar["bytes"], ar["seconds"]):
        print(f"  {n:>10d} bytes  {t * 1e6:10.1f} us")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "distributed.json.tmp"
    tmp.write_text(json.dumps(result, indent=1)); os.replace(tmp, out_dir / "distributed.json")
    print("wrote", out_dir / "distributed.json")


if __name__ == "__main__":
    main()
