"""Chapter 24's benchmarks (loaded by bench/run.py, see `_load_workload_modules`): all-MiniLM-L6-v2 forward
(batch 32 × 128 tokens) against Hugging Face transformers, and a LoRA fine-tune step against PyTorch + PEFT.

Run as a script, it is the chapter's fine-tuning comparison on the census-names task (TF-IDF + logistic regression,
frozen encoder + head, full fine-tune, LoRA, and the same LoRA in PyTorch + PEFT: test accuracy, seconds per step,
peak memory) and writes bench/results/minilm_finetune.json:

    python bench/wl_minilm.py [--epochs 3] [--out bench/results/minilm_finetune.json]
"""
import json
import os
import platform
import re
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import neuralbook as nb  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

RANK, ALPHA, LORA_DROPOUT, DECAY, WARMUP = 8, 16.0, 0.1, 0.8, 0.1


def _hf_model():
    from transformers import AutoModel
    from neuralbook.pretrained import minilm_folder
    return AutoModel.from_pretrained(str(minilm_folder()), local_files_only=True)


def minilm_forward_b32_t128():
    "all-MiniLM-L6-v2 forward, batch 32 x 128 tokens (padding in 8 of the rows), no gradients"
    from neuralbook.pretrained import load_minilm
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 29000, (32, 128))
    mask = np.ones_like(ids)
    mask[::4, 96:] = 0
    ids[mask == 0] = 0
    bert = load_minilm().bert.eval()
    hf = _hf_model().eval()
    tids, tmask = torch.tensor(ids), torch.tensor(mask)

    def ours():
        with nb.no_grad():
            bert(ids, mask)

    def theirs():
        with torch.no_grad():
            hf(input_ids=tids, attention_mask=tmask)
    return ours, theirs


class _TorchClassifier(torch.nn.Module if torch is not None else object):
    "PEFT-wrapped Hugging Face encoder + mean pooling + dropout + linear head: the PyTorch twin of BertClassifier."
    def __init__(self, num_classes, rank=RANK):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        self.bert = get_peft_model(_hf_model(), LoraConfig(r=rank, lora_alpha=ALPHA, lora_dropout=LORA_DROPOUT,
                                                           target_modules=["query", "value"]))
        self.dropout = torch.nn.Dropout(0.1)
        self.classifier = torch.nn.Linear(384, num_classes)
        torch.nn.init.normal_(self.classifier.weight, std=0.02)
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, ids, mask):
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].to(h.dtype)
        return self.classifier(self.dropout((h * m).sum(1) / m.sum(1).clamp(min=1e-9)))


def _torch_groups(model, lr, decay=DECAY, L=6):
    groups = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = re.search(r"encoder\.layer\.(\d+)\.", n)
        groups.setdefault(L - int(m.group(1)) if m else 0, []).append(p)
    return [{"params": ps, "lr": lr * decay ** d} for d, ps in sorted(groups.items())]


def _lora_pair(N=32, T=32, K=3):
    from neuralbook import losses, optim
    from neuralbook.pretrained import BertClassifier, layerwise_param_groups, load_minilm, prepare_finetune
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 29000, (N, T))
    mask = np.ones_like(ids)
    y = rng.integers(0, K, N)
    clf = BertClassifier(load_minilm().bert, K)
    prepare_finetune(clf, "lora", RANK, ALPHA, LORA_DROPOUT)
    opt = optim.AdamW(layerwise_param_groups(clf, 2e-3), lr=2e-3, weight_decay=0.01)

    def ours():
        loss = losses.cross_entropy(clf(ids, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tclf = _TorchClassifier(K)
    topt = torch.optim.AdamW(_torch_groups(tclf, 2e-3), lr=2e-3, weight_decay=0.01)
    tids, tmask, ty = torch.tensor(ids), torch.tensor(mask), torch.tensor(y)

    def theirs():
        loss = torch.nn.functional.cross_entropy(tclf(tids, tmask), ty)
        topt.zero_grad()
        loss.backward()
        topt.step()
    return ours, theirs


def minilm_lora_step_b32_t32():
    "LoRA fine-tune step (r=8 on query/value + head; fwd, bwd, AdamW) of all-MiniLM-L6-v2, batch 32 x 32 tokens, vs PEFT"
    return _lora_pair()


WORKLOADS = {"minilm_forward_b32_t128": minilm_forward_b32_t128, "minilm_lora_step_b32_t32": minilm_lora_step_b32_t32}
MEMORY = {"minilm_forward_b32_t128", "minilm_lora_step_b32_t32"}


# ------------------------------------------------------------------ the fine-tuning comparison (run as a script)
def _peak_ours(step):
    tracemalloc.start()
    tracemalloc.reset_peak()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def _peak_torch(step):
    from torch.profiler import ProfilerActivity, profile
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    cur = peak = 0
    for e in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def _tfidf(texts, y, tr, te):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    t0 = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True)
    X = vec.fit_transform([texts[i] for i in tr])
    lr = LogisticRegression(max_iter=2000, C=10.0).fit(X, y[tr])
    acc = float((lr.predict(vec.transform([texts[i] for i in te])) == y[te]).mean())
    return {"method": "tfidf", "framework": "scikit-learn", "test_accuracy": acc,
            "train_seconds": time.perf_counter() - t0, "trainable_parameters": int(lr.coef_.size + lr.intercept_.size)}


def _ours(method, etr, ete, ytr, yte, epochs, seed):
    from neuralbook.pretrained import BertClassifier, fit_classifier, load_minilm, predict
    nb.manual_seed(seed)
    clf = BertClassifier(load_minilm().bert, 3)
    t0 = time.perf_counter()
    learn = fit_classifier(clf, (etr, ytr), None, method, epochs, seed=seed, rank=RANK, alpha=ALPHA)
    secs = time.perf_counter() - t0
    acc = float((predict(clf, ete).argmax(1) == yte).mean())
    # peak memory of one more training step of the same kind, on a batch of the training data
    from neuralbook import losses
    b = slice(0, 32)
    if method == "head":
        from neuralbook.pretrained import pooled_features
        feats = pooled_features(clf, {k: v[b] for k, v in etr.items()})
        net = learn.model

        def step():
            loss = losses.cross_entropy(net(feats), ytr[b])
            learn.opt.zero_grad(); loss.backward(); learn.opt.step()
    else:
        T = int(etr["attention_mask"][b].sum(1).max())

        def step():
            loss = losses.cross_entropy(clf(etr["input_ids"][b, :T], etr["attention_mask"][b, :T]), ytr[b])
            learn.opt.zero_grad(); loss.backward(); learn.opt.step()
    step()
    return {"method": method, "framework": "neuralbook", "test_accuracy": acc, "train_seconds": secs,
            "steps": learn.train_iter, "seconds_per_step": secs / max(1, learn.train_iter),
            "peak_memory_bytes": _peak_ours(step), "losses": learn.recorder.losses,
            "trainable_parameters": int(sum(p.size for p in clf.parameters() if p.requires_grad))}


def _peft(etr, ete, ytr, yte, epochs, seed, batch_size=32):
    torch.manual_seed(seed)
    model = _TorchClassifier(3)
    lr = 2e-3
    opt = torch.optim.AdamW(_torch_groups(model, lr), lr=lr, weight_decay=0.01)
    n = len(ytr)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    w = WARMUP * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: t / w if t < w else max(0.0, (steps - t) / (steps - w)))
    rng = np.random.default_rng(seed)
    T = int(etr["attention_mask"].sum(1).max())
    ids, mask, y = (torch.tensor(a) for a in (etr["input_ids"][:, :T], etr["attention_mask"][:, :T], ytr))
    losses = []
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for b in np.array_split(rng.permutation(n), (n + batch_size - 1) // batch_size):
            b = torch.tensor(b)
            loss = torch.nn.functional.cross_entropy(model(ids[b], mask[b]), y[b])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            losses.append(float(loss))
    secs = time.perf_counter() - t0
    model.eval()
    Te = int(ete["attention_mask"].sum(1).max())
    with torch.no_grad():
        pred = model(torch.tensor(ete["input_ids"][:, :Te]), torch.tensor(ete["attention_mask"][:, :Te])).argmax(1)
    model.train()
    b = torch.arange(32)

    def step():
        loss = torch.nn.functional.cross_entropy(model(ids[b], mask[b]), y[b])
        opt.zero_grad(); loss.backward(); opt.step()
    step()
    return {"method": "lora", "framework": "pytorch+peft", "test_accuracy": float((pred.numpy() == yte).mean()),
            "train_seconds": secs, "steps": len(losses), "seconds_per_step": secs / len(losses),
            "peak_memory_bytes": _peak_torch(step), "losses": losses,
            "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad))}


def compare(epochs=3, seed=0, out=Path(__file__).parent / "results" / "minilm_finetune.json"):
    "The four methods and PEFT's LoRA on the census-names task, one thread each; writes `out` (JSON)."
    from threadpoolctl import threadpool_limits
    from neuralbook.data import train_test_split
    from neuralbook.pretrained import load_minilm
    from neuralbook.text import load_names
    texts, y, classes = load_names(seed=seed)
    tr, te = train_test_split(np.arange(len(texts)), test_size=0.2, seed=seed, stratify=y)
    tok = load_minilm().tokenizer
    etr, ete = (tok([texts[i] for i in idx], max_length=64) for idx in (tr, te))
    rows = [_tfidf(texts, y, tr, te)]
    print(rows[-1]["method"], rows[-1]["test_accuracy"], flush=True)
    with threadpool_limits(1):
        if torch is not None: torch.set_num_threads(1)
        for method in ("head", "full", "lora"):
            rows.append(_ours(method, etr, ete, y[tr], y[te], epochs, seed))
            print(method, rows[-1]["test_accuracy"], round(rows[-1]["seconds_per_step"], 3), flush=True)
        if torch is not None:
            rows.append(_peft(etr, ete, y[tr], y[te], epochs, seed))
            print("peft", rows[-1]["test_accuracy"], round(rows[-1]["seconds_per_step"], 3), flush=True)
    result = {"task": "census names: male first / female first / surname", "classes": classes,
              "train": len(tr), "test": len(te), "epochs": epochs, "rank": RANK, "alpha": ALPHA, "threads": 1,
              "machine": platform.platform(), "numpy": np.__version__,
              "torch": getattr(torch, "__version__", None), "rows": rows}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    return result


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "minilm_finetune.json"))
    a = ap.parse_args()
    compare(a.epochs, a.seed, a.out)
    sys.exit(0)
