"Data-parallel training (chapter 34): multi-rank runs under mpiexec, compared with one process."
import os, shutil, subprocess, sys, json, textwrap
from pathlib import Path
import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpich mpi4py)")
MPIEXEC = shutil.which("mpiexec") or (str(Path(sys.executable).parent / "mpiexec")
                                      if (Path(sys.executable).parent / "mpiexec").exists() else None)
if MPIEXEC is None: pytest.skip("mpiexec not found (pip install mpich)", allow_module_level=True)
ROOT = Path(__file__).resolve().parents[1]

from neuralbook.distributed import DistributedSampler, _buckets, init, SelfComm

def launch(tmp_path, n, body, timeout=60, args=()):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)

TRAIN = """
import sys, json, numpy as np
from functools import partial
import neuralbook as nb, neuralbook.functional as F
from neuralbook import nn
from neuralbook.learner import Learner, GradientClipping
from neuralbook.optim import SGD, Adam
import neuralbook.distributed as dist
opt_name, clip, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
c = dist.init()
rng = np.random.default_rng(0)
X, y = rng.normal(size=(48, 6)), rng.integers(0, 3, 48)
nb.manual_seed(c.rank + 1)                       # different inits: the broadcast must fix them
m = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 3))
for p in m.parameters(): p.data = p.data.astype(np.float64)
if c.size > 1:
    # rank r holds rows r::p of every global batch of 12
    idx = np.concatenate([np.arange(b, b + 12)[c.rank::c.size] for b in range(0, 48, 12)])
    X, y = X[idx], y[idx]
dl = nb.data.DataLoader(nb.data.TensorDataset(X, y), batch_size=12 // c.size)
opt = partial(SGD, lr=0.2, momentum=0.9) if opt_name == "sgd" else partial(Adam, lr=0.01)
cbs = [dist.DistributedCallback()] + ([GradientClipping(clip)] if clip > 0 else [])
if c.size == 1:
    nb.manual_seed(1); m = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 3))
    for p in m.parameters(): p.data = p.data.astype(np.float64)
learn = Learner(m, F.cross_entropy, opt, dl, callbacks=cbs)
learn.fit(3)
if c.rank == 0:
    json.dump({"w": [p.numpy().tolist() for p in m.parameters()], "loss": learn.recorder.history["train_loss"]},
              open(out, "w"))
if c.size > 1:
    w = np.concatenate([p.numpy().ravel() for p in m.parameters()]); w0 = w.copy(); c.bcast_(w0, 0)
    assert np.array_equal(w, w0), "ranks disagree"
"""

@pytest.mark.parametrize("opt,clip", [("sgd", 0.0), ("adam", 0.0), ("sgd", 0.05), ("adam", 0.05)])
def test_ranks_match_one_process(tmp_path, opt, clip):
    results = {}
    for n in (1, 2, 3):
        r = launch(tmp_path, n, TRAIN, args=(opt, clip, tmp_path / f"w{n}.json"))
        assert r.returncode == 0, r.stderr[-3000:]
        results[n] = json.loads((tmp_path / f"w{n}.json").read_text())
    for n in (2, 3):
        for a, b in zip(results[1]["w"], results[n]["w"]):
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(results[n]["loss"], results[1]["loss"], rtol=1e-6)
    moved = max(np.abs(np.array(a)).max() for a in results[1]["w"])
    assert moved > 0

def test_clipping_before_allreduce_would_differ(tmp_path):
    "The check above can fail: clipping per rank (before the average) gives other weights."
    body = TRAIN.replace("cbs = [dist.DistributedCallback()] + ", "cbs = [dist.DistributedCallback(order_hack)] + ")
    body = body.replace("c = dist.init()", "c = dist.init()\nclass _Late(dist.DistributedCallback): order = 5\n")
    body = body.replace("[dist.DistributedCallback(order_hack)]", "[_Late()]")
    w = {}
    for n in (1, 2):
        r = launch(tmp_path, n, body, args=("sgd", 0.05, tmp_path / f"w{n}.json"))
        assert r.returncode == 0, r.stderr[-3000:]
        w[n] = np.concatenate([np.ravel(a) for a in json.loads((tmp_path / f"w{n}.json").read_text())["w"]])
    assert not np.allclose(w[1], w[2], rtol=1e-6, atol=1e-9)

@pytest.mark.parametrize("n", [0, 1, 7, 10, 12, 13])
@pytest.mark.parametrize("p", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_covers_each_epoch(n, p, drop_last):
    if drop_last and n < p:
        with pytest.raises(ValueError, match="drop_last"): DistributedSampler(n, p, 0, drop_last=True)
        return
    for epoch in range(2):
        parts = []
        for r in range(p):
            s = DistributedSampler(n, p, r, shuffle=True, seed=3, drop_last=drop_last); s.set_epoch(epoch)
            parts.append(s.indices()); assert len(parts[-1]) == len(s)
        assert len({len(q) for q in parts}) == 1                           # equal shares
        allidx = np.concatenate(parts)
        if drop_last:
            assert len(allidx) == n - n % p and len(set(allidx.tolist())) == len(allidx)
        else:
            assert set(allidx.tolist()) == set(range(n)) and len(allidx) == -(-n // p) * p
            counts = np.bincount(allidx, minlength=n)
            if n: assert counts.min() >= 1 and counts.max() - counts.min() <= 1     # padding repeats evenly

def test_sampler_bad_rank():
    with pytest.raises(ValueError, match="rank"): DistributedSampler(10, 2, 2)

def test_sampler_under_mpi(tmp_path):
    body = """
    import numpy as np, neuralbook.distributed as dist
    c = dist.init()
    s = dist.DistributedSampler(11, seed=5); s.set_epoch(2)
    a = np.zeros(11); np.add.at(a, s.indices(), 1); c.allreduce_(a)
    if c.rank == 0: print("counts", a.astype(int).tolist(), len(s))
    """
    r = launch(tmp_path, 3, body)
    assert r.returncode == 0, r.stderr
    counts = eval(r.stdout.split("counts", 1)[1].split("]")[0] + "]")
    assert sum(counts) == 12 and min(counts) == 1

def test_raising_rank_aborts_all(tmp_path):
    body = """
    import numpy as np, time, neuralbook.distributed as dist
    c = dist.init()
    if c.rank == 1: raise ValueError("boom on rank 1")
    a = np.ones(4); c.allreduce_(a)       # rank 0 would wait here forever
    time.sleep(30)
    """
    r = launch(tmp_path, 2, body, timeout=25)
    assert r.returncode != 0
    assert "boom on rank 1" in r.stderr and "aborting all ranks" in r.stderr

def test_checkpoint_only_rank0(tmp_path):
    body = """
    import os, json, numpy as np, neuralbook as nb, neuralbook.functional as F
    from neuralbook import nn
    from functools import partial
    from neuralbook.learner import Learner, ModelCheckpoint, load_safetensors
    from neuralbook.optim import SGD
    import neuralbook.distributed as dist
    c = dist.init(); nb.manual_seed(c.rank)
    rng = np.random.default_rng(0); X, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 2, 40)
    ds = nb.data.TensorDataset(X, y)
    dl = dist.DistributedDataLoader(ds, batch_size=5, seed=0)
    vdl = dist.DistributedDataLoader(ds, batch_size=10, shuffle=False)
    m = nn.Sequential(nn.Linear(4, 2))
    ck = ModelCheckpoint("ck_{epoch}.safetensors", save_best_only=False)
    learn = Learner(m, F.cross_entropy, partial(SGD, lr=0.1), dl, vdl, metrics=["accuracy"],
                    callbacks=[dist.DistributedCallback(), ck])
    learn.fit(2)
    # one file per rank: two ranks printing at once can interleave their lines on mpiexec's stdout
    open(f"rank{c.rank}.out", "w").write(" ".join(["RANK", str(c.rank), str(len(ck.saved)),
                                                    json.dumps(learn.recorder.history["valid_loss"])]))
    """
    r = launch(tmp_path, 2, body)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [(tmp_path / f"rank{i}.out").read_text() for i in range(2)]
    assert lines[0].split()[2] == "2" and lines[1].split()[2] == "0"
    assert lines[0].split(" ", 3)[3] == lines[1].split(" ", 3)[3]          # metrics agree on both ranks
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ck") or ".tmp" in p.name)
    assert files == ["ck_0.safetensors", "ck_1.safetensors"]
    from neuralbook.learner import load_safetensors
    tensors, meta = load_safetensors(tmp_path / "ck_1.safetensors")
    assert set(tensors) == {"0.weight", "0.bias"} and meta["epoch"] == 1

def test_single_process_is_selfcomm():
    assert isinstance(init(), SelfComm) or init().size == 1

def test_buckets():
    g = [np.zeros(n, np.float32) for n in (3, 3, 1000, 2)] + [np.zeros(2, np.float64)]
    assert _buckets(g, 64) == [[0, 1], [2], [3], [4]]

def test_killed_rank_stops_the_others(tmp_path):
    "A rank killed by a signal (no Python excepthook runs) must not leave the others blocked in an allreduce."
    body = """
    import os, signal, time, numpy as np, neuralbook.distributed as dist
    c = dist.init()
    a = np.ones(4); c.allreduce_(a)
    if c.rank == 1: os.kill(os.getpid(), signal.SIGKILL)
    a = np.ones(4); c.allreduce_(a)            # rank 0 waits here for the dead rank
    time.sleep(60)
    print("rank", c.rank, "should never get here")
    """
    r = launch(tmp_path, 2, body, timeout=40)
    assert r.returncode != 0
    assert "should never get here" not in r.stdout

RESUME = """
import sys, json, numpy as np
from functools import partial
import neuralbook as nb, neuralbook.functional as F
from neuralbook import nn
from neuralbook.learner import Learner
from neuralbook.optim import Adam
from neuralbook.finetune import TrainingCheckpoint, load_training_state
import neuralbook.distributed as dist
mode, out = sys.argv[1], sys.argv[2]
c = dist.init()
rng = np.random.default_rng(0)
X, y = rng.normal(size=(40, 6)), rng.integers(0, 3, 40)
nb.manual_seed(c.rank + 1)
m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
for p in m.parameters(): p.data = p.data.astype(np.float64)
dl = dist.DistributedDataLoader(nb.data.TensorDataset(X, y), batch_size=4, seed=7)
cbs = [dist.DistributedCallback(), TrainingCheckpoint("state.safetensors")]
learn = Learner(m, F.cross_entropy, partial(Adam, lr=0.01), dl, callbacks=cbs)
if mode == "all":
    learn.fit(4)
elif mode == "first":
    learn.fit(2)
else:                                       # resume: only rank 0 reads the file; the callback broadcasts it
    learn.fit(0)                            # builds the optimiser state, as a resumed script would
    start = load_training_state("state.safetensors", learn)["epoch"] + 1 if c.rank == 0 else 0
    learn.fit(4, start_epoch=int(c.bcast_(np.array([start]), 0)[0]))
if c.rank == 0:
    json.dump([p.numpy().tolist() for p in m.parameters()], open(out, "w"))
"""

def test_resume_equals_uninterrupted(tmp_path):
    "2 ranks: 2 epochs, a checkpoint written by rank 0 only, a new run resumed from it = 4 epochs in one go."
    (tmp_path / "a").mkdir(); (tmp_path / "b").mkdir()
    for sub, modes in (("a", ["all"]), ("b", ["first", "resume"])):
        for mode in modes:
            script = tmp_path / sub / "script.py"
            script.write_text(textwrap.dedent(RESUME))
            env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
            r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), mode, "w.json"], capture_output=True,
                               text=True, timeout=90, cwd=tmp_path / sub, env=env)
            assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if "state" in p.name) == ["state.safetensors"]
    a = json.loads((tmp_path / "a" / "w.json").read_text()); b = json.loads((tmp_path / "b" / "w.json").read_text())
    for u, v in zip(a, b): np.testing.assert_array_equal(np.array(u), np.array(v))

EMULATED = """
import json, sys, numpy as np
from functools import partial
import neuralbook as nb, neuralbook.functional as F
from neuralbook import nn
from neuralbook.learner import Learner
from neuralbook.optim import SGD
from neuralbook.cuda_emu import emulated_gpu
import neuralbook.distributed as dist
device, out = sys.argv[1], sys.argv[2]
c = dist.init()
calls, _orig = [], dist._device_collective
def _spy(*a, **k): calls.append(a[2]); return _orig(*a, **k)
dist._device_collective = _spy
rng = np.random.default_rng(0)
X, y = rng.normal(size=(24, 5)).astype(np.float32), rng.integers(0, 3, 24)
def run():
    nb.manual_seed(c.rank + 3)
    m = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 3)).to(device)
    from neuralbook.backend import is_cuda_array
    assert is_cuda_array(next(iter(m.parameters())).data) == (device == "cuda")
    dl = dist.DistributedDataLoader(nb.data.TensorDataset(X, y), batch_size=3, seed=1, device=device)
    learn = Learner(m, F.cross_entropy, partial(SGD, lr=0.1, momentum=0.9), dl, callbacks=[dist.DistributedCallback()])
    learn.fit(2)
    assert (len(calls) > 0) == (device == "cuda"), calls          # device collectives ran (through the host)
    ws = [np.asarray(p.to("cpu").numpy()) for p in m.parameters()]
    m.to("cpu")
    return ws
if device == "cuda":
    with emulated_gpu():
        ws = run()
else:
    ws = run()
if c.rank == 0: json.dump([w.tolist() for w in ws], open(out, "w"))
"""

def test_emulated_gpu_gradients_go_through_the_host(tmp_path):
    "Device arrays (the emulated GPU of chapter 32, no NCCL) are reduced through host copies: same as the CPU."
    w = {}
    for device in ("cpu", "cuda"):
        r = launch(tmp_path, 2, EMULATED, timeout=240, args=(device, tmp_path / f"{device}.json"))
        assert r.returncode == 0, r.stderr[-3000:]
        w[device] = json.loads((tmp_path / f"{device}.json").read_text())
    for a, b in zip(w["cpu"], w["cuda"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)


def test_cli_train_distributed(tmp_path):
    "`mpiexec -n 2 neuralbook train iris --distributed`: one report and one set of files (rank 0), a good model."
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    code = "import sys; from neuralbook.cli import main; sys.exit(main())"
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", code, "train", "iris", "--distributed",
                        "--epochs", "40", "--quiet", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("test accuracy") == 1 and "on cpu, 2 ranks" in r.stdout
    acc = float(r.stdout.split("test accuracy")[1].split()[0])
    assert acc >= 0.8
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["confusion_matrix.png", "model.json",
                                                                    "model.safetensors", "training_curves.png"]
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["options"]["ranks"] == 2
