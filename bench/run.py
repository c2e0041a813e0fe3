#!/usr/bin/env python
"""neuralbook against PyTorch (CPU), measured in one process: alternating the two, median of several rounds,
threads pinned with threadpoolctl and torch.set_num_threads. Prints a table, writes JSON and a bar chart.

    python bench/run.py                 # full run, 1 and 2 threads, results in bench/results/
    python bench/run.py --quick         # a few rounds: CI runs this so the benchmark cannot rot
    python bench/run.py --only mlp      # workloads whose name contains 'mlp'

Ratios < 1 mean neuralbook is faster. Benchmarks are not tests: nothing here fails on a slow figure.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import neuralbook as nb  # noqa: E402
import neuralbook.functional as F  # noqa: E402
from neuralbook import nn  # noqa: E402

try:
    import torch
except ImportError:
    torch = None


# ---------------------------------------------------------------- workloads: each returns (ours, theirs) steps
def chain20():
    "forward+backward of 20 small elementwise ops on a 10-element float32 array"
    x = nb.tensor(np.linspace(-1, 1, 10, dtype=np.float32), requires_grad=True)

    def ours():
        y = x
        for _ in range(5):
            y = (y * 1.01 + 0.1).tanh() - 0.05
        x.grad = None
        y.sum().backward()

    tx = torch.linspace(-1, 1, 10, requires_grad=True)

    def theirs():
        y = tx
        for _ in range(5):
            y = (y * 1.01 + 0.1).tanh() - 0.05
        tx.grad = None
        y.sum().backward()
    return ours, theirs


def _train_step_pair(build_ours, build_torch, x, y):
    from neuralbook import losses, optim
    model = build_ours()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    xb, yb = nb.tensor(x), nb.tensor(y)

    def ours():
        loss = losses.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    tmodel = build_torch()
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    txb, tyb = torch.tensor(x), torch.tensor(y)

    def theirs():
        loss = torch.nn.functional.cross_entropy(tmodel(txb), tyb)
        topt.zero_grad()
        loss.backward()
        topt.step()
    return ours, theirs


def _mlp(sizes):
    def build_ours():
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        return nn.Sequential(*layers)

    def build_torch():
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
        return torch.nn.Sequential(*layers)
    return build_ours, build_torch


def mlp_784_256_256_10():
    "training step (fwd, bwd, Adam) of an MLP 784-256-256-10 at batch 128"
    rng = np.random.default_rng(0)
    return _train_step_pair(*_mlp([784, 256, 256, 10]), rng.standard_normal((128, 784)).astype(np.float32),
                            rng.integers(0, 10, 128))


def mlp_4_10_3():
    "training step (fwd, bwd, Adam) of an MLP 4-10-3 at batch 32"
    rng = np.random.default_rng(0)
    return _train_step_pair(*_mlp([4, 10, 3]), rng.standard_normal((32, 4)).astype(np.float32),
                            rng.integers(0, 3, 32))


def _lenet_ours():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(784, 10))


def _lenet_torch():
    T = torch.nn
    return T.Sequential(T.Conv2d(1, 8, 3, padding=1), T.ReLU(), T.MaxPool2d(2), T.Conv2d(8, 16, 3, padding=1),
                        T.ReLU(), T.MaxPool2d(2), T.Flatten(), T.Linear(784, 10))


def lenet_cnn():
    "training step (fwd, bwd, Adam) of a LeNet-style CNN at batch 64 on 28x28"
    if not hasattr(nn, "Conv2d"):
        raise NotImplementedError("nn.Conv2d is not available yet")
    rng = np.random.default_rng(0)
    return _train_step_pair(_lenet_ours, _lenet_torch, rng.standard_normal((64, 1, 28, 28)).astype(np.float32),
                            rng.integers(0, 10, 64))


def iris_fit_step():
    "Keras-style fit of the 4-10-3 iris model at batch 32, per step, against a plain PyTorch loop"
    from neuralbook import keras
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    n_steps = int(np.ceil(len(X) / 32))
    inp = keras.Input(shape=(4,))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(10, activation="relu")(inp))
    model = keras.Model(inputs=inp, outputs=out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    def ours():
        model.fit(X, y, epochs=1, batch_size=32, verbose=0)

    tmodel = torch.nn.Sequential(torch.nn.Linear(4, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    tX, ty = torch.tensor(X), torch.tensor(y)

    def theirs():
        perm = torch.randperm(len(tX))
        for i in range(0, len(tX), 32):
            idx = perm[i:i + 32]
            loss = torch.nn.functional.cross_entropy(tmodel(tX[idx]), ty[idx])
            topt.zero_grad()
            loss.backward()
            topt.step()
    ours.steps = theirs.steps = n_steps
    return ours, theirs


def iris_fit_vs_keras3():
    "the same Keras-style fit per step, against Keras 3 on its torch backend (when keras is installed)"
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras as k3  # noqa: the real Keras; raises ImportError when absent and the workload is skipped
    if k3.backend.backend() != "torch":
        raise RuntimeError(f"Keras 3 runs on {k3.backend.backend()}, not torch (set KERAS_BACKEND=torch)")
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    ours, _ = iris_fit_step()
    inp = k3.Input(shape=(4,))
    out = k3.layers.Dense(3, activation="softmax")(k3.layers.Dense(10, activation="relu")(inp))
    kmodel = k3.Model(inputs=inp, outputs=out)
    kmodel.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    def theirs():
        kmodel.fit(X, y, epochs=1, batch_size=32, verbose=0)
    theirs.steps = ours.steps
    return ours, theirs


WORKLOADS = {"chain20_ops": chain20, "mlp_784_256_256_10": mlp_784_256_256_10, "mlp_4_10_3": mlp_4_10_3,
             "lenet_cnn": lenet_cnn, "iris_fit_step": iris_fit_step, "iris_fit_vs_keras3": iris_fit_vs_keras3}
MEMORY = {"lenet_cnn"}  # workloads whose peak memory is measured too (1 thread)


def _load_workload_modules():
    """Each `bench/wl_*.py` adds its own `WORKLOADS` (name -> function returning (ours, theirs)) and `MEMORY` (names
    whose peak memory is measured), so that a chapter's benchmarks live beside each other, not in this file."""
    import importlib.util
    for path in sorted(Path(__file__).parent.glob("wl_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        WORKLOADS.update(getattr(mod, "WORKLOADS", {}))
        MEMORY.update(getattr(mod, "MEMORY", ()))


_load_workload_modules()


# ---------------------------------------------------------------- measurement
def _time(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _calibrate(fn, target=0.05):
    fn(); fn()
    n, t = 1, _time(fn, 1)
    while t * n < target and n < 10_000:
        n *= 2
    return n


def measure(ours, theirs, rounds, blocks=False):
    """Median seconds per call of each, alternating the two in every round; blocks=True (for several threads)
    alternates blocks of rounds/2 calls, each after one untimed call. With several threads a library leaves its idle
    threads spinning after each call (OpenBLAS's for ~0.1 s, measured), which takes a core from whatever runs next:
    call by call that slowed PyTorch's next step by 35 % and ours erratically by up to 90 %. In a block each library
    runs step after step, as in a training loop."""
    n_o, n_t = _calibrate(ours), _calibrate(theirs)
    to, tt = [], []
    for _ in range(2 if blocks else rounds):
        for fn, n, out in ((ours, n_o, to), (theirs, n_t, tt)):
            if blocks: fn()
            out += [_time(fn, n) for _ in range(-(-rounds // 2) if blocks else 1)]
    return statistics.median(to) / getattr(ours, "steps", 1), statistics.median(tt) / getattr(theirs, "steps", 1)


def peak_memory_ours(fn):
    fn()
    conv_fast = sys.modules.get("neuralbook.conv_fast")
    if conv_fast is not None: conv_fast._LOCAL.__dict__.clear()   # its reused work buffers count in the step's peak
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def peak_memory_torch(fn):
    "Peak of PyTorch's CPU allocations during one step, from its profiler's memory events."
    from torch.profiler import ProfilerActivity, profile
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    fn()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # each event's *self* memory is what it allocated (+) or freed (−) itself; their running sum in time order is
    # the live memory of the step, and its maximum the peak
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def chain_backward_vs_forward(n=100_000):
    "Backward of a 100,000-op chain against its forward (ours only)."
    x = nb.tensor(1.0, dtype="float64", requires_grad=True)
    t0 = time.perf_counter()
    y = x
    for _ in range(n):
        y = y * 1.0
    t1 = time.perf_counter()
    y.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1 thread: a smoke run")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if torch is None:
        sys.exit("bench/run.py needs PyTorch as the reference: pip install torch==2.13.0")
    from threadpoolctl import threadpool_limits
    rounds = 2 if args.quick else args.rounds
    threads = [1] if args.quick else [int(t) for t in args.threads.split(",")]
    results = {"machine": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
               "torch": torch.__version__, "rounds": rounds, "workloads": []}
    print(f"{'workload':24s} {'threads':>7s} {'ours ms':>9s} {'ref ms':>9s} {'ratio':>6s}   (ref: PyTorch, or Keras 3)")
    for nt in threads:
        torch.set_num_threads(nt)
        with threadpool_limits(nt):
            for name, make in WORKLOADS.items():
                if args.only and args.only not in name:
                    continue
                try:
                    nb.manual_seed(0); torch.manual_seed(0)
                    ours, theirs = make()
                    to, tt = measure(ours, theirs, rounds, blocks=nt > 1)
                except Exception as e:  # a workload whose pieces are missing is reported, not fatal
                    print(f"{name:24s} {nt:7d}   skipped: {type(e).__name__}: {e}")
                    results["workloads"].append({"name": name, "threads": nt, "skipped": str(e)})
                    continue
                row = {"name": name, "threads": nt, "ours_ms": to * 1e3, "ref_ms": tt * 1e3, "ratio": to / tt,
                       "doc": make.__doc__}
                if name in MEMORY and nt == 1:
                    row["ours_peak_bytes"] = peak_memory_ours(ours)
                    row["torch_peak_bytes"] = peak_memory_torch(theirs)
                    row["memory_ratio"] = row["ours_peak_bytes"] / max(row["torch_peak_bytes"], 1)
                results["workloads"].append(row)
                mem = f"  memory {row['memory_ratio']:.2f}x" if "memory_ratio" in row else ""
                print(f"{name:24s} {nt:7d} {to*1e3:9.3f} {tt*1e3:9.3f} {to/tt:6.2f}{mem}", flush=True)
    fwd, bwd = chain_backward_vs_forward(10_000 if args.quick else 100_000)
    results["chain_100k"] = {"forward_s": fwd, "backward_s": bwd, "ratio": bwd / fwd}
    print(f"chain of {'10k' if args.quick else '100k'} ops: forward {fwd:.3f} s, backward {bwd:.3f} s, "
          f"backward/forward {bwd / fwd:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "cpu.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out / "cpu.json")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = [r for r in results["workloads"] if "ratio" in r]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        labels = [f"{r['name']}\n{r['threads']} thr" for r in rows]
        ax.bar(range(len(rows)), [r["ratio"] for r in rows], color=["tab:blue" if r["ratio"] <= 1 else "tab:red"
                                                                      for r in rows])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=30)
        ax.set_ylabel("time / PyTorch time")
        ax.set_title("neuralbook vs PyTorch (CPU), lower is better")
        fig.tight_layout()
        fig.savefig(out / "cpu.png", dpi=110)
    except Exception as e:
        print("no plot:", e)


if __name__ == "__main__":
    main()
