"""Chapter 20: checkpoints (atomic, checked, bit-identical resume), PyTorch weights, freezing, new heads,
discriminative rates, gradual unfreezing, LoRA, the LR finder and the `finetune` command."""
import argparse
import json
import os
import re
from collections import OrderedDict

import numpy as np
import pytest

import neuralbook as nb
import neuralbook.io as nio
import neuralbook.learner as L
from neuralbook import finetune as ft
from neuralbook.data import DataLoader, TensorDataset
from neuralbook.finetune import (GradualUnfreezing, LoRALinear, TrainingCheckpoint, find_head,
                                 freeze, inject_lora, layer_groups, load_checkpoint, load_lora, load_training_state,
                                 load_weights, lora_state_dict, lr_find, merge_lora, param_groups_by_depth,
                                 read_safetensors, replace_head, save_checkpoint, save_lora, save_weights,
                                 torch_to_neuralbook, unfreeze)
from neuralbook.learner import Learner, LRSchedulerCallback
from neuralbook.losses import cross_entropy
from neuralbook.nn import Linear, ReLU, Sequential
from neuralbook.optim import SGD, Adam, AdamW
from neuralbook.optim.lr_scheduler import CosineAnnealingLR, LinearLR, OneCycleLR, SequentialLR, StepLR

RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 6)).astype(np.float32)
Y = ((X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)).astype(np.int64)


def mlp(seed=0, dropout=0.0, num_classes=3):
    nb.manual_seed(seed)
    return ft.build_model("mlp", in_features=6, hidden=[16, 8], num_classes=num_classes, dropout=dropout)


def weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def conv_available():
    try:
        from neuralbook.conv import Conv2d, MaxPool2d  # noqa: F401
        from neuralbook.norm import BatchNorm2d  # noqa: F401
        return True
    except ImportError:
        return False


needs_conv = pytest.mark.skipif(not conv_available(), reason="chapter 12's Conv2d/MaxPool2d/BatchNorm2d modules")


def train_steps(model, opt, steps=3, X=X, Y=Y):
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        cross_entropy(model(nb.tensor(X)), nb.tensor(Y)).backward()
        opt.step()


# ---------------------------------------------------------------- weights and checkpoints

def test_weights_roundtrip_with_metadata_and_arch(tmp_path):
    a, b = mlp(0), mlp(1)
    path = save_weights(tmp_path / "w.safetensors", a, metadata={"note": "hi"})
    meta = load_weights(path, b)
    assert same(weights(a), weights(b))
    assert meta["extra"] == {"note": "hi"} and meta["kind"] == "weights" and meta["arch"]["name"] == "mlp"
    assert meta["missing_keys"] == [] and meta["unexpected_keys"] == []
    # the same names as Learner.save: files are interchangeable
    tensors, _ = L.load_safetensors(path)
    assert sorted(tensors) == sorted(a.state_dict())
    # a checkpoint's model part loads with load_weights too
    save_checkpoint(tmp_path / "c.safetensors", a)
    c = mlp(2)
    load_weights(tmp_path / "c.safetensors", c)
    assert same(weights(a), weights(c))


def test_no_pickle_anywhere(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", mlp(), Adam(mlp().parameters()), epoch=0)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    json.loads(raw[8:8 + n])  # the header is plain JSON
    assert b"\x80\x04" not in raw[:8 + n] and b"pickle" not in raw


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="save_checkpoint: the metadata must be JSON-serialisable"):
        save_checkpoint(tmp_path / "c.safetensors", mlp(), extra={"f": object()})
    assert not (tmp_path / "c.safetensors").exists()


def test_crash_half_way_through_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = mlp(0)
    opt = Adam(model.parameters(), lr=0.01)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, epoch=0)
    before = path.read_bytes()
    good = weights(model)
    train_steps(model, opt)  # new values to save

    def half_then_crash(f, blob):
        f.write(blob[: len(blob) // 2])
        f.flush()
        raise OSError("simulated crash: disk full half-way")

    monkeypatch.setattr(nio, "_write_blob", half_then_crash)  # the writer moved to chapter 30's neuralbook.io
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, model, opt, epoch=1)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the previous checkpoint, byte for byte
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary file left behind
    fresh = mlp(5)
    meta = load_checkpoint(path, fresh, Adam(fresh.parameters(), lr=0.01))
    assert meta["epoch"] == 0 and same(weights(fresh), good)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "truncated"),
    (lambda raw: raw[:5], "fewer than the 8-byte header length"),
    (lambda raw: b"", "empty or truncated"),
    (lambda raw: raw[:8] + b"{not json" + raw[17:], "header is not the JSON"),
    (lambda raw: raw[:-3] + bytes([raw[-3] ^ 0xFF]) + raw[-2:], "does not match the SHA-256 digest"),
    (lambda raw: (10 ** 12).to_bytes(8, "little") + raw[8:], "header claims"),
])
def test_corrupted_or_truncated_file_is_a_clear_error_and_the_model_is_untouched(tmp_path, damage, message):
    path = save_checkpoint(tmp_path / "c.safetensors", mlp(0), epoch=3)
    path.write_bytes(damage(path.read_bytes()))
    model = mlp(1)
    before = weights(model)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        load_checkpoint(path, model)
    with pytest.raises(ValueError, match="load_weights: .*" + re.escape(message)):
        load_weights(path, model)
    assert same(weights(model), before)


def test_missing_file_and_wrong_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors", mlp())
    w = save_weights(tmp_path / "w.safetensors", mlp())
    with pytest.raises(ValueError, match="not a training checkpoint; load it with load_weights"):
        load_checkpoint(w, mlp())


def test_load_checkpoint_is_all_or_nothing(tmp_path):
    a = mlp(0)
    opt = Adam(a.parameters(), lr=0.01)
    sched = StepLR(opt, 2)
    train_steps(a, opt)
    path = save_checkpoint(tmp_path / "c.safetensors", a, opt, sched, epoch=1)
    b = mlp(1)
    before = weights(b)
    # another optimiser class: refused before anything is loaded
    with pytest.raises(ValueError, match="holds the state of a Adam optimizer, not of a SGD"):
        load_checkpoint(path, b, SGD(b.parameters(), lr=0.1))
    # the model loads fine but the optimiser has another number of parameters: the model is rolled back
    opt_b = Adam(list(b.parameters())[:2], lr=0.5)
    with pytest.raises(ValueError, match="nothing was loaded"):
        load_checkpoint(path, b, opt_b)
    assert same(weights(b), before) and opt_b.param_groups[0]["lr"] == 0.5 and not opt_b.state
    # saved without a scheduler / asked for one
    p2 = save_checkpoint(tmp_path / "d.safetensors", a, opt)
    with pytest.raises(ValueError, match="was saved without a scheduler"):
        load_checkpoint(p2, b, scheduler=StepLR(Adam(b.parameters()), 2))
    assert same(weights(b), before)


def test_strict_false_reports_keys_and_shape_mismatch_names_both_shapes(tmp_path):
    pre = mlp(0, num_classes=10)  # "pretrained" with a 10-class head
    path = save_weights(tmp_path / "pre.safetensors", pre)
    target = mlp(1, num_classes=5)  # the new task has 5 classes
    before = weights(target)
    with pytest.raises(RuntimeError, match=r"size mismatch for 4\.weight: the checkpoint has shape \(10, 8\), the "
                                           r"model has \(5, 8\)"):
        load_weights(path, target, strict=False)
    assert same(weights(target), before)
    # fine-tuning recipe: drop the head from the file, load the backbone with strict=False
    arrays, _ = read_safetensors(path)
    backbone = {k: v for k, v in arrays.items() if not k.startswith("4.")}
    backbone["extra.weight"] = np.zeros(3, np.float32)
    keys = target.load_state_dict(backbone, strict=False)
    assert keys.missing_keys == ["4.weight", "4.bias"] and keys.unexpected_keys == ["extra.weight"]
    assert np.array_equal(target.state_dict()["0.weight"], pre.state_dict()["0.weight"])
    with pytest.raises(RuntimeError, match="missing keys: 4.weight, 4.bias"):
        target.load_state_dict(backbone)


def test_checkpoint_roundtrips_optimizer_scheduler_and_generators(tmp_path):
    model = mlp(0)
    opt = AdamW(param_groups_by_depth(model, 0.01), weight_decay=0.1, amsgrad=True)
    sched = CosineAnnealingLR(opt, T_max=10)
    dl = DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True, seed=3)
    train_steps(model, opt)
    sched.step(); sched.step()
    list(dl)
    nb.manual_seed(7); nb.backend.get_generator().uniform((3,))
    path = save_checkpoint(tmp_path / "c.safetensors", model, opt, sched, epoch=2, extra={"a": [1, 2]},
                           dataloaders={"train": dl})
    st_default, st_dl = nb.backend.get_generator().get_state(), dl.generator.get_state()
    m2 = mlp(9)
    o2 = AdamW(param_groups_by_depth(m2, 0.01), weight_decay=0.1, amsgrad=True)
    s2 = CosineAnnealingLR(o2, T_max=10)
    dl2 = DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True, seed=3)
    nb.manual_seed(99)
    meta = load_checkpoint(path, m2, o2, s2, dataloaders={"train": dl2})
    assert meta["epoch"] == 2 and meta["extra"] == {"a": [1, 2]}
    assert nb.backend.get_generator().get_state() == st_default and dl2.generator.get_state() == st_dl
    a, b = opt.state_dict(), o2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert np.array_equal(v, b["state"][i][k]) if isinstance(v, np.ndarray) else v == b["state"][i][k]
    assert s2.state_dict() == sched.state_dict() and s2.get_last_lr() == sched.get_last_lr()
    with pytest.raises(ValueError, match=r"no generator state for dataloader\(s\) \['valid'\]"):
        load_checkpoint(path, m2, dataloaders={"valid": dl2})


@pytest.mark.parametrize("make", [
    lambda o: StepLR(o, 2, 0.5),
    lambda o: CosineAnnealingLR(o, T_max=7, eta_min=1e-4),
    lambda o: OneCycleLR(o, max_lr=0.1, total_steps=10),
    lambda o: SequentialLR(o, [LinearLR(o, 0.1, total_iters=3), CosineAnnealingLR(o, T_max=5)], milestones=[3]),
], ids=["step", "cosine", "onecycle", "sequential"])
def test_schedules_survive_the_json_roundtrip(tmp_path, make):
    model = mlp(0)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = make(opt)
    for _ in range(4):
        train_steps(model, opt, 1); sched.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model, opt, sched, epoch=3)
    m2 = mlp(1)
    o2 = SGD(m2.parameters(), lr=0.1, momentum=0.9)
    s2 = make(o2)
    load_checkpoint(path, m2, o2, s2)
    for _ in range(4):
        train_steps(model, opt, 1); sched.step()
        train_steps(m2, o2, 1); s2.step()
        assert o2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        assert o2.param_groups[0].get("momentum") == opt.param_groups[0].get("momentum")
    assert same(weights(m2), weights(model))


def make_learner(seed):
    nb.manual_seed(seed)  # a different seed scrambles everything a resumed run must restore
    model = ft.build_model("mlp", in_features=6, hidden=[16], num_classes=3, dropout=0.3)
    opt = Adam(model.parameters(), lr=0.02)
    sched = StepLR(opt, step_size=5, gamma=0.5)
    train = DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True, seed=1)
    valid = DataLoader(TensorDataset(X, Y), batch_size=32)
    return Learner(model, cross_entropy, opt, train, valid, metrics=["accuracy"], callbacks=[LRSchedulerCallback(sched)])


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full = make_learner(0)
    full.fit(4)
    half = make_learner(0)
    half.fit(2, callbacks=[TrainingCheckpoint(tmp_path / "ck-{epoch}.safetensors")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck-0.safetensors", "ck-1.safetensors"]
    del half
    resumed = make_learner(123)  # "a new process": everything rebuilt, other random state
    meta = load_training_state(tmp_path / "ck-1.safetensors", resumed)
    resumed.fit(4, start_epoch=meta["epoch"] + 1)
    assert resumed.recorder.history["train_loss"] == full.recorder.history["train_loss"][2:]
    assert resumed.recorder.history["valid_loss"] == full.recorder.history["valid_loss"][2:]
    assert resumed.recorder.losses == full.recorder.losses[-len(resumed.recorder.losses):]
    assert same(weights(resumed.model), weights(full.model))
    assert resumed.opt.param_groups[0]["lr"] == full.opt.param_groups[0]["lr"]


def test_resume_with_a_hand_written_loop(tmp_path):
    def run(model, opt, sched, dl, epochs):
        losses = []
        for _ in range(epochs):
            model.train()
            for xb, yb in dl:
                opt.zero_grad()
                loss = cross_entropy(model(xb), yb)
                loss.backward(); opt.step(); sched.step()
                losses.append(loss.item())
        return losses

    def build(seed):
        model = mlp(seed, dropout=0.25)
        opt = Adam(model.parameters(), lr=0.01)
        return model, opt, CosineAnnealingLR(opt, T_max=20), DataLoader(TensorDataset(X, Y), 16, shuffle=True)

    nb.manual_seed(0)
    m, o, s, d = build(0)
    straight = run(m, o, s, d, 4)
    m1, o1, s1, d1 = build(0)  # d1 draws its permutations from the default generator (no seed)
    first = run(m1, o1, s1, d1, 2)
    save_checkpoint(tmp_path / "c.safetensors", m1, o1, s1, epoch=1)
    m2, o2, s2, d2 = build(42)
    load_checkpoint(tmp_path / "c.safetensors", m2, o2, s2)
    assert first + run(m2, o2, s2, d2, 2) == straight
    assert same(weights(m2), weights(m))


# ---------------------------------------------------------------- PyTorch weights

def test_torch_mlp_weights_give_torch_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                             torch.nn.Linear(8, 3))
    st.save_file(tm.state_dict(), str(tmp_path / "torch.safetensors"))
    model = mlp(1)
    assert ft.load_torch_weights(model, tmp_path / "torch.safetensors") == ([], [])
    want = tm(torch.tensor(X)).detach().numpy()
    np.testing.assert_allclose(model(nb.tensor(X)).numpy(), want, atol=1e-5, rtol=1e-5)
    # from an in-memory state dict of torch tensors, too
    model2 = mlp(2)
    model2.load_state_dict(torch_to_neuralbook(tm.state_dict()))
    np.testing.assert_allclose(model2(nb.tensor(X)).numpy(), want, atol=1e-5, rtol=1e-5)
    # and fine-tuning it from there works
    opt = Adam(model.parameters(), lr=0.01)
    train_steps(model, opt, 5)
    assert not np.allclose(model(nb.tensor(X)).numpy(), want)


def test_torch_names_mapping_and_errors(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(OrderedDict(hidden=torch.nn.Linear(6, 4), act=torch.nn.ReLU(), out=torch.nn.Linear(4, 2)))
    model = Sequential(Linear(6, 4), ReLU(), Linear(4, 2))
    sd = torch_to_neuralbook(tm.state_dict(), mapping=[(r"^hidden\.", "0."), (r"^out\.", "2.")])
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    model.load_state_dict(sd)
    np.testing.assert_allclose(model(nb.tensor(X)).numpy(), tm(torch.tensor(X)).detach().numpy(), atol=1e-6)
    assert list(torch_to_neuralbook(tm.state_dict(), mapping={"out.bias": "b"})) == \
        ["hidden.weight", "hidden.bias", "out.weight", "b"]
    assert list(torch_to_neuralbook(tm.state_dict(), mapping=lambda n: None if n.startswith("out") else n)) == \
        ["hidden.weight", "hidden.bias"]
    with pytest.raises(ValueError, match="renamed to 'x', which another entry already took"):
        torch_to_neuralbook(tm.state_dict(), mapping=lambda n: "x")
    with pytest.raises(RuntimeError, match="(?s)load_torch_weights: state_dict: .*missing keys"):
        ft.load_torch_weights(model, tm.state_dict())
    kern = torch_to_neuralbook(tm.state_dict(), transpose="*.weight")
    assert kern["hidden.weight"].shape == (6, 4)  # Keras layout: kernel = weight.T
    np.testing.assert_array_equal(kern["hidden.weight"], tm.state_dict()["hidden.weight"].numpy().T)
    assert ft.keras_layout(np.zeros((5, 3, 2, 4))).shape == (2, 4, 3, 5)


@needs_conv
def test_torch_cnn_weights_give_torch_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    tn = torch.nn
    torch.manual_seed(0)
    def block(ci, co): return tn.Sequential(tn.Conv2d(ci, co, 3, padding=1), tn.BatchNorm2d(co), tn.ReLU(), tn.MaxPool2d(2))
    tm = tn.Sequential(OrderedDict(block1=block(1, 8), block2=block(8, 16), flatten=tn.Flatten(),
                                   fc=tn.Sequential(tn.Linear(64, 32), tn.ReLU()), head=tn.Linear(32, 5)))
    tm.train()
    for _ in range(3): tm(torch.randn(16, 1, 8, 8))  # non-trivial running statistics
    tm.eval()
    st.save_file(tm.state_dict(), str(tmp_path / "cnn.safetensors"))
    model = ft.build_model("cnn", num_classes=5)
    assert "block1.1.num_batches_tracked" not in torch_to_neuralbook(tm.state_dict())  # dropped by default …
    assert "block1.1.num_batches_tracked" in torch_to_neuralbook(tm.state_dict(), like=model)  # … kept if ours has it
    assert ft.load_torch_weights(model, tmp_path / "cnn.safetensors") == ([], [])
    model.eval()
    x = np.random.default_rng(1).random((10, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model(nb.tensor(x)).numpy(), tm(torch.tensor(x)).detach().numpy(), atol=1e-5, rtol=1e-5)


@needs_conv
def test_cnn_with_batch_norm_roundtrips(tmp_path):
    nb.manual_seed(0)
    model = ft.build_model("cnn", num_classes=5)
    model.train()
    model(nb.tensor(np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32)))  # updates running stats
    assert model.state_dict()["block1.1.num_batches_tracked"].shape == ()  # a 0-d buffer stays 0-d in the file
    path = save_checkpoint(tmp_path / "cnn.safetensors", model, Adam(model.parameters()), epoch=0)
    rebuilt, _ = ft.model_from_checkpoint(path)
    assert same(weights(rebuilt), weights(model))


def test_torch_weights_into_a_keras_dense_model():
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("neuralbook.keras")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    inp = keras.Input((6,))
    out = keras.layers.Dense(2)(keras.layers.Dense(4, activation="relu")(inp))
    km = keras.Model(inputs=inp, outputs=out)
    names = list(km.state_dict())
    assert len(names) == 4, names
    mapping = dict(zip(["0.weight", "0.bias", "2.weight", "2.bias"], names))
    sd = torch_to_neuralbook(tm.state_dict(), mapping=mapping, transpose=[n for n in names if "kernel" in n])
    km.load_state_dict(sd)
    np.testing.assert_allclose(np.asarray(km.predict(X, verbose=0)), tm(torch.tensor(X)).detach().numpy(), atol=1e-5)


# ---------------------------------------------------------------- freezing

def test_freeze_patterns_and_errors():
    model = mlp()
    names = [n for n, _ in model.named_parameters()]
    assert freeze(model, "0.*") == ["0.weight", "0.bias"]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["0.weight", "0.bias"]
    assert unfreeze(model) == names
    assert freeze(model, model[2]) == ["2.weight", "2.bias"]; unfreeze(model)
    assert freeze(model, re.compile(r"bias$")) == ["0.bias", "2.bias", "4.bias"]; unfreeze(model)
    assert freeze(model, lambda n, p: p.ndim == 2) == ["0.weight", "2.weight", "4.weight"]; unfreeze(model)
    assert freeze(model, ["0", "2"]) == names[:4]; unfreeze(model)
    assert freeze(model, "backbone") == names[:4]
    assert model.num_parameters(trainable_only=True) == 8 * 3 + 3  # the head: what the optimiser will move
    with pytest.raises(ValueError, match=r"freeze: pattern 'conv\*' selects no parameter of Sequential; its "
                                         r"parameters are \['0.weight'"):
        freeze(model, "conv*")
    with pytest.raises(TypeError, match="a pattern is a glob string, a compiled regex"):
        freeze(model, 3)


def test_frozen_parameters_get_no_gradient_and_no_update_even_with_weight_decay():
    model = mlp(0)
    freeze(model, "backbone")
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    head = model[4].weight.data.copy()
    opt = AdamW(model.parameters(), lr=0.05, weight_decay=0.5)  # every parameter handed to the optimiser
    train_steps(model, opt, 10)
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and np.array_equal(p.data, frozen[n]), n  # bitwise unchanged
    assert not np.array_equal(model[4].weight.data, head)
    assert all(p not in opt.state for p in model.parameters() if not p.requires_grad)


def test_keras_trainable_maps_onto_freeze():
    keras = pytest.importorskip("neuralbook.keras")
    inp = keras.Input((6,))
    d1, d2 = keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2, activation="softmax")
    km = keras.Model(inputs=inp, outputs=d2(d1(inp)))
    freeze(km, d1)  # by module
    assert d1.trainable is False and d2.trainable is True
    assert all(not w.requires_grad for w in d1.weights)
    assert km.trainable_weights == d2.weights
    km.compile(optimizer="adam", loss="sparse_categorical_crossentropy")  # compile agrees: d1 stays frozen
    assert [w.requires_grad for w in km.weights] == [False, False, True, True]
    unfreeze(km, d1)
    assert d1.trainable is True and all(w.requires_grad for w in d1.weights)
    freeze(km, f"{d2.name}.*")  # by name: every weight of d2 selected, so d2.trainable follows
    assert d2.trainable is False and km.trainable_weights == d1.weights
    # and the other way round: Keras' own switch, applied by compile(), freezes like freeze() does
    unfreeze(km)
    d1.trainable = False
    km.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert [w.requires_grad for w in km.weights] == [False, False, True, True]
    w0 = [w.data.copy() for w in d1.weights]
    km.fit(X, Y % 2, epochs=2, batch_size=16, verbose=0)
    assert all(np.array_equal(a, w.data) for a, w in zip(w0, d1.weights))


# ---------------------------------------------------------------- heads, discriminative rates, gradual unfreezing

def test_replace_head_sequential_and_named():
    model = mlp(0, num_classes=10)
    assert find_head(model)[0] == "4"
    freeze(model)
    head = replace_head(model, 5)
    assert model[4] is head and head.weight.shape == (5, 8) and head.weight.requires_grad
    assert model(nb.tensor(X)).shape == (64, 5)
    cnn_like = Sequential(OrderedDict(body=Sequential(Linear(6, 8), ReLU()), head=Linear(8, 3)))
    new = replace_head(cnn_like, 7, name="head")
    assert cnn_like.head is new and cnn_like(nb.tensor(X)).shape == (64, 7)
    with pytest.raises(ValueError, match="replace_head: 'body' is Sequential, not a Linear layer"):
        replace_head(cnn_like, 3, name="body")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        replace_head(cnn_like, 0)
    with pytest.raises(ValueError, match="find_head: ReLU has no Linear layer"):
        find_head(ReLU())
    adapted = mlp(0)
    inject_lora(adapted, rank=2)
    new = replace_head(adapted, 4)  # the head's adapter goes with the old head
    assert adapted[4] is new and adapted(nb.tensor(X)).shape == (64, 4)


def test_param_groups_by_depth():
    model = mlp()
    assert [n for n, _ in layer_groups(model)] == ["0", "2", "4"]
    groups = param_groups_by_depth(model, 0.1, multiplier=0.5)
    assert [g["lr"] for g in groups] == [0.025, 0.05, 0.1] and [g["name"] for g in groups] == ["0", "2", "4"]
    assert [g["lr"] for g in param_groups_by_depth(model, 1.0, [0.0, 0.1, 1.0])] == [0.0, 0.1, 1.0]
    opt = Adam(groups)
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.05, 0.1]
    before = model[0].weight.data.copy()
    train_steps(model, opt, 1)
    step0 = np.abs(model[0].weight.data - before).max()
    assert 0.02 < step0 <= 0.025 + 1e-7  # Adam's first step is ~lr per coordinate
    with pytest.raises(ValueError, match=r"2 multipliers for 3 layer groups \['0', '2', '4'\]"):
        param_groups_by_depth(model, 0.1, [1, 2])
    with pytest.raises(ValueError, match=r"parameters \['4.weight', '4.bias'\] are in no group"):
        param_groups_by_depth(model, 0.1, groups=["0", "2"])
    with pytest.raises(ValueError, match="groups must not overlap"):
        param_groups_by_depth(model, 0.1, groups=["0", "0.weight", "2", "4"])
    nested = Sequential(Sequential(Linear(2, 3), ReLU(), Linear(3, 1)))
    assert [n for n, _ in layer_groups(nested)] == ["0.0", "0.2"]

    class WithOwn(nb.nn.Module):  # a parameter on the root module itself lands in a last group
        def __init__(self):
            super().__init__()
            self.body, self.scale = Linear(2, 2), nb.nn.Parameter(np.ones(1, np.float32))
    assert [g["name"] for g in param_groups_by_depth(WithOwn(), 1.0)] == ["body", "(rest)"]


def test_gradual_unfreezing_one_group_per_epoch():
    nb.manual_seed(0)
    model = mlp()
    opt = Adam(param_groups_by_depth(model, 0.01))
    snap = []

    class Snap(L.Callback):
        order = 0
        def after_epoch(self): snap.append(weights(model))

    gu = GradualUnfreezing()
    learn = Learner(model, cross_entropy, opt, DataLoader(TensorDataset(X, Y), 16, shuffle=True), callbacks=[gu, Snap()])
    start = weights(model)
    trainable = []

    class Watch(L.Callback):
        order = 1
        def before_train(self): trainable.append([n for n, p in model.named_parameters() if p.requires_grad])

    learn.fit(4, callbacks=[Watch()])
    assert trainable[0] == ["4.weight", "4.bias"] and trainable[1] == ["2.weight", "2.bias", "4.weight", "4.bias"]
    assert len(trainable[2]) == len(trainable[3]) == 6
    assert np.array_equal(snap[0]["0.weight"], start["0.weight"]) and np.array_equal(snap[1]["0.weight"], start["0.weight"])
    assert np.array_equal(snap[0]["2.weight"], start["2.weight"]) and not np.array_equal(snap[1]["2.weight"], start["2.weight"])
    assert not np.array_equal(snap[2]["0.weight"], start["0.weight"])
    gu2 = GradualUnfreezing([0, 2])
    gu2._gs = layer_groups(model)
    gu2._gs = [(n, list(m.parameters())) for n, m in gu2._gs]
    assert [gu2.unfrozen_at(e) for e in range(4)] == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="schedule must be a positive int or a list"):
        GradualUnfreezing(0)
    only_head = Adam(model[4].parameters())
    with pytest.raises(ValueError, match=r"the optimiser does not hold the parameters of group\(s\) \['0', '2'\]"):
        Learner(model, cross_entropy, only_head, DataLoader(TensorDataset(X, Y), 16)).fit(1, callbacks=[GradualUnfreezing()])


# ---------------------------------------------------------------- LoRA

def test_lora_starts_at_the_base_and_trains_only_adapters():
    model = mlp(0)
    x = nb.tensor(X)
    base_out = model(x).numpy()
    names = inject_lora(model, rank=2, alpha=4)
    assert names == ["0", "2", "4"] and isinstance(model[0], LoRALinear)
    np.testing.assert_array_equal(model(x).numpy(), base_out)  # B = 0: exactly the base model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B", "4.lora_A", "4.lora_B"]
    assert model.num_parameters(trainable_only=True) == 2 * (6 + 16) + 2 * (16 + 8) + 2 * (8 + 3)
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    opt = AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    train_steps(model, opt, 5)
    assert all(np.array_equal(p.data, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not np.allclose(model(x).numpy(), base_out)
    with pytest.raises(ValueError, match=r"inject_lora: pattern 'nope' matches no Linear layer of Sequential"):
        inject_lora(mlp(), "nope")
    with pytest.raises(ValueError, match="LoRALinear: rank must be a positive int, got 0"):
        LoRALinear(Linear(3, 2), rank=0)
    with pytest.raises(TypeError, match="LoRALinear: base must be a Linear layer, got ReLU"):
        LoRALinear(ReLU())


def test_lora_gradients_by_gradcheck():
    nb.manual_seed(0)
    lin = Linear(5, 3).double()
    lora = LoRALinear(lin, rank=2, alpha=3.0)
    lora.lora_B.data[...] = np.random.default_rng(0).standard_normal((3, 2))
    x = nb.tensor(np.random.default_rng(1).standard_normal((4, 5)), requires_grad=True)

    def f(x, A, B):
        lora.lora_A, lora.lora_B = A, B
        return lora(x)

    A = nb.tensor(lora.lora_A.data.copy(), requires_grad=True)
    B = nb.tensor(lora.lora_B.data.copy(), requires_grad=True)
    assert nb.gradcheck(f, x, A, B)


def test_lora_merge_gives_the_same_outputs():
    model = mlp(0)
    inject_lora(model, "[02]", rank=3, alpha=6)
    assert isinstance(model[2], LoRALinear) and isinstance(model[4], Linear)
    unfreeze(model, "4")
    train_steps(model, Adam(model.parameters(), lr=0.02), 8)
    model.eval()
    x = nb.tensor(X)
    adapted = model(x).numpy()
    merged = merge_lora(model)
    assert merged is model and type(model[0]) is Linear and type(model[2]) is Linear
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    np.testing.assert_allclose(model(x).numpy(), adapted, atol=1e-5, rtol=1e-5)
    assert not model[0].weight.requires_grad and model[4].weight.requires_grad  # flags as before injection
    # float64: equal to rounding
    m64 = mlp(1).double()
    inject_lora(m64, rank=2)
    for m in m64.modules():
        if isinstance(m, LoRALinear): m.lora_B.data[...] = np.random.default_rng(2).standard_normal(m.lora_B.shape)
    x64 = nb.tensor(X.astype(np.float64))
    want = m64(x64).numpy()
    np.testing.assert_allclose(merge_lora(m64)(x64).numpy(), want, atol=1e-12)


def test_lora_files_are_small_and_reload(tmp_path):
    nb.manual_seed(0)
    big = ft.build_model("mlp", in_features=64, hidden=[256, 256], num_classes=10)
    full = save_weights(tmp_path / "full.safetensors", big)
    inject_lora(big, rank=2, dropout=0.1)
    for m in big.modules():
        if isinstance(m, LoRALinear): m.lora_B.data[...] = 0.01
    small = save_lora(tmp_path / "lora.safetensors", big)
    assert list(lora_state_dict(big)) == [f"{i}.lora_{ab}" for i in (0, 2, 4) for ab in "AB"]
    assert os.path.getsize(small) < os.path.getsize(full) / 15
    x = nb.tensor(np.random.default_rng(0).random((5, 64)).astype(np.float32))
    big.eval()
    want = big(x).numpy()
    # a fresh copy of the base model: adapters injected from the file, then loaded
    other = ft.build_model("mlp", in_features=64, hidden=[256, 256], num_classes=10)
    load_weights(full, other)
    assert load_lora(small, other) == ["0", "2", "4"]
    other.eval()
    np.testing.assert_array_equal(other(x).numpy(), want)
    assert other[0].p == 0.1 and other[0].rank == 2
    # the wrong model: a clear error, nothing changed
    wrong = ft.build_model("mlp", in_features=64, hidden=[128, 256], num_classes=10)
    before = weights(wrong)
    with pytest.raises(ValueError, match=r"load_lora: size mismatch for 0.lora_B: the file has shape \(256, 2\), "
                                         r"the layer needs \(128, 2\)"):
        load_lora(small, wrong)
    assert same(weights(wrong), before) and type(wrong[0]) is Linear
    with pytest.raises(ValueError, match="not LoRA adapters"):
        load_lora(full, other)
    with pytest.raises(ValueError, match="has no LoRA adapter; call inject_lora first"):
        save_lora(tmp_path / "x.safetensors", mlp())


# ---------------------------------------------------------------- LR finder

def test_lr_find_restores_everything_and_suggests_a_rate():
    model = mlp(0, dropout=0.2)
    opt = Adam(model.parameters(), lr=0.003)
    train_steps(model, opt, 2)
    w, o = weights(model), opt.state_dict()
    nb.manual_seed(5)
    g = nb.backend.get_generator().get_state()
    dl = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True, seed=4)
    d = dl.generator.get_state()
    model.eval()
    res = lr_find(model, cross_entropy, dl, optimizer=opt, start_lr=1e-5, end_lr=10, num_iter=60)
    lrs, losses, suggested = res
    assert same(weights(model), w) and not model.training
    assert nb.backend.get_generator().get_state() == g and dl.generator.get_state() == d
    o2 = opt.state_dict()
    assert o2["param_groups"] == o["param_groups"]
    assert all(np.array_equal(o["state"][i]["exp_avg"], o2["state"][i]["exp_avg"]) for i in o["state"])
    assert len(lrs) == len(losses) <= 60 and lrs[0] == 1e-5
    np.testing.assert_allclose(np.diff(np.log(lrs)), np.log(10 / 1e-5) / 59)
    assert 1e-5 <= suggested <= 10 and res.min_lr_div10 == lrs[np.argmin(res.smoothed)] / 10
    assert res.suggested_lr == res.steepest_lr
    assert lr_find(model, cross_entropy, (X, Y), num_iter=20, suggestion="min/10").suggested_lr > 0
    ax = res.plot()
    assert ax.get_xscale() == "log"


def test_lr_find_stops_when_the_loss_diverges_and_works_on_a_learner():
    model = mlp(0)
    learn = Learner(model, cross_entropy, SGD(model.parameters(), lr=0.1), DataLoader(TensorDataset(X, Y), 16))
    res = lr_find(learn, start_lr=1e-3, end_lr=1e6, num_iter=100)
    assert len(res.lrs) < 100  # stopped early: diverged
    assert learn.opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="need 0 < start_lr < end_lr"):
        lr_find(learn, start_lr=1, end_lr=0.1)
    with pytest.raises(ValueError, match="give a Learner, or a model with loss_fn= and data="):
        lr_find(model)


# ---------------------------------------------------------------- architectures and the finetune command

def test_build_model_and_model_from_checkpoint(tmp_path):
    model = mlp(0)
    assert model.arch == {"name": "mlp", "config": {"in_features": 6, "hidden": [16, 8], "num_classes": 3,
                                                    "dropout": 0.0}}
    path = save_checkpoint(tmp_path / "c.safetensors", model, epoch=0)
    rebuilt, meta = ft.model_from_checkpoint(path)
    assert same(weights(rebuilt), weights(model)) and meta["epoch"] == 0
    plain = save_weights(tmp_path / "p.safetensors", Sequential(Linear(2, 2)))
    with pytest.raises(ValueError, match="does not record its architecture"):
        ft.model_from_checkpoint(plain)
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        ft.build_model("resnet")


def test_load_dataset_subsets_and_npz(tmp_path):
    X59, y59 = ft.load_dataset("digits:5-9")
    assert sorted(set(y59.tolist())) == [0, 1, 2, 3, 4] and X59.shape[1] == 64
    _, y = ft.load_dataset("iris:2,0")
    assert np.bincount(y).tolist() == [50, 50]
    np.savez(tmp_path / "d.npz", X=np.ones((4, 3)), y=np.array([0, 1, 0, 1]))
    Xn, yn = ft.load_dataset(str(tmp_path / "d.npz"))
    assert Xn.dtype == np.float32 and yn.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        ft.load_dataset("cifar")
    with pytest.raises(ValueError, match=r"classes \[10, 11, 12\] do not occur"):
        ft.load_dataset("digits:5-12")
    with pytest.raises(ValueError, match="bad class list 'a-b'"):
        ft.load_dataset("digits:a-b")


def pretrained_digits(tmp_path, arch="mlp"):
    "A tiny pretraining run on digits 0-4, saved as a checkpoint with its architecture."
    Xd, yd = ft.load_dataset("digits:0-4")
    nb.manual_seed(0)
    model = ft.build_model("mlp", in_features=64, hidden=[32], num_classes=5)
    opt = Adam(model.parameters(), lr=0.01)
    for _ in range(20): train_steps(model, opt, 1, Xd, yd)
    return save_checkpoint(tmp_path / "pre.safetensors", model, opt, epoch=19)


def cli(*argv):
    parser = argparse.ArgumentParser(prog="neuralbook")
    ft.add_finetune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_finetune_command_frozen_backbone(tmp_path, capsys):
    pre = pretrained_digits(tmp_path)
    out = tmp_path / "out"
    assert cli("finetune", "--from", str(pre), "digits:5-9", "--freeze", "backbone", "--epochs", "8", "--lr", "0.05",
               "--per-class", "20", "--out", str(out), "--seed", "1") == 0
    text = capsys.readouterr().out
    assert "frozen: 2 parameter tensors (backbone)" in text and "trainable parameters: 165 of 2,245" in text
    assert "100 training" in text and text.count("epoch ") == 8
    model, meta = ft.model_from_checkpoint(out / "model.safetensors")
    pre_model, _ = ft.model_from_checkpoint(pre)
    assert np.array_equal(model.state_dict()["0.weight"], pre_model.state_dict()["0.weight"])  # frozen
    report = json.loads((out / "metrics.json").read_text())
    assert report["valid_accuracy"] == meta["extra"]["valid_accuracy"] > 0.5
    assert report["trainable_parameters"] == 165 and len(report["history"]["train_loss"]) == 8


def test_finetune_command_lora_and_new_head(tmp_path, capsys):
    pre = pretrained_digits(tmp_path)
    out = tmp_path / "lora"
    assert cli("finetune", "--from", str(pre), "digits:0-2", "--lora-rank", "2", "--epochs", "2", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "new head: 3 classes" in text and "LoRA rank 2 on ['0']" in text
    model, meta = ft.model_from_checkpoint(out / "model.safetensors")  # merged: a plain MLP again
    assert model.arch["config"]["num_classes"] == 3 and type(model[0]) is Linear
    arrays, lmeta = read_safetensors(out / "lora.safetensors")
    assert sorted(arrays) == ["0.lora_A", "0.lora_B", "2.bias", "2.weight"] and lmeta["layers"]["0"]["rank"] == 2
    # the merged model predicts like base + adapters
    base, _ = ft.model_from_checkpoint(pre)
    replace_head(base, 3)
    load_lora(out / "lora.safetensors", base)
    x = nb.tensor(ft.load_dataset("digits:0-2")[0][:20])
    model.eval(); base.eval()
    np.testing.assert_allclose(model(x).numpy(), base(x).numpy(), atol=1e-5)


def test_finetune_from_a_neuralbook_train_run(tmp_path, capsys):
    cli_mod = pytest.importorskip("neuralbook.cli")
    run = cli_mod.train("wine", epochs=3, hidden=(16, 8), dropout=0.1, out=tmp_path / "run", quiet=True,
                        print_fn=lambda *a: None)
    kmodel, meta = cli_mod.load_trained(tmp_path / "run")
    model, _ = ft.model_from_checkpoint(tmp_path / "run")  # a run directory works too
    assert model.arch["config"] == {"in_features": 13, "hidden": [16, 8], "num_classes": 3, "dropout": 0.1}
    Xw = np.random.default_rng(0).standard_normal((20, 13)).astype(np.float32)
    probs = kmodel.predict(Xw, verbose=0)
    model.eval()
    logits = model(nb.tensor(Xw)).numpy()
    ours = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(ours / ours.sum(1, keepdims=True), probs, atol=1e-5)  # softmax(ours) == Keras
    assert cli("finetune", "--from", str(tmp_path / "run"), "wine:0,1", "--freeze", "backbone", "--epochs", "2",
               "--out", str(tmp_path / "ft")) == 0
    assert "new head: 2 classes" in capsys.readouterr().out
    _, out_meta = ft.model_from_checkpoint(tmp_path / "ft")
    assert out_meta["extra"]["preprocessing"] == meta["preprocessing"]  # standardisation carried along
    with pytest.raises(ValueError, match="keras_mlp_to_neuralbook: cannot convert layer"):
        keras = pytest.importorskip("neuralbook.keras")
        inp = keras.Input((4,))
        ft.keras_mlp_to_neuralbook(keras.Model(inputs=inp, outputs=keras.layers.Dense(2, activation="tanh")(inp)))


def test_finetune_command_errors(tmp_path):
    pre = pretrained_digits(tmp_path)
    with pytest.raises(ValueError, match=r"finetune: iris has samples of shape \(4,\), the model takes \(64,\)"):
        cli("finetune", "--from", str(pre), "iris", "--out", str(tmp_path / "o"))
    with pytest.raises(SystemExit):
        cli("finetune", "digits")  # --from is required


# ---------------------------------------------------------------- issue 12: one home per idea

def test_every_old_name_is_importable_from_finetune_and_lives_in_one_place():
    import neuralbook.cli_finetune as cf
    import neuralbook.callbacks as cb
    import neuralbook.datasets as D
    import neuralbook.lora as lo
    import neuralbook.torch_import as ti
    import neuralbook.zoo as zoo
    homes = {"zoo": (zoo, ["FORMAT", "VERSION", "ARCHITECTURES", "PARAMETER_COUNTS", "read_safetensors",
                            "register_architecture", "mlp", "small_cnn", "input_shape", "build_model",
                            "architecture_parameters", "keras_mlp_to_neuralbook", "model_from_checkpoint",
                            "save_weights", "load_weights"]),
             "torch_import": (ti, ["keras_layout", "torch_to_neuralbook", "load_torch_weights"]),
             "lora": (lo, ["LoRALinear", "inject_lora", "merge_lora", "unmerge_lora", "lora_state_dict", "save_lora",
                           "load_lora"]),
             "cli_finetune": (cf, ["add_finetune_parser", "finetune_main"]),
             "datasets": (D, ["load_dataset"]), "callbacks": (cb, ["LRFindResult"])}
    for where, (mod, names) in homes.items():
        for n in names:
            assert getattr(ft, n) is getattr(mod, n), (where, n)
            assert n in ft.__all__, n
    for n in ("save_checkpoint", "load_checkpoint", "save_training_state", "load_training_state", "TrainingCheckpoint",
              "find_head", "select_parameters", "freeze", "unfreeze", "replace_head", "layer_groups",
              "param_groups_by_depth", "GradualUnfreezing", "lr_find"):
        assert getattr(ft, n).__module__ == "neuralbook.finetune", n


def test_fresh_imports_of_each_module():
    import subprocess, sys
    for mod in ("neuralbook.lora", "neuralbook.zoo", "neuralbook.torch_import", "neuralbook.cli_finetune",
                "neuralbook.callbacks", "neuralbook.finetune"):
        r = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]


def test_unmerge_lora_undoes_merge(tmp_path):
    model = mlp(0)
    inject_lora(model, rank=2)
    for m in model.modules():
        if isinstance(m, LoRALinear): m.lora_B.data[...] = nb.Generator(1).normal(m.lora_B.shape, std=0.3)
    path = save_lora(tmp_path / "a.safetensors", model)
    x = nb.tensor(X[:10])
    before = model(x).numpy()
    base_w = {n: m.base.weight.data.copy() for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    names = ft.unmerge_lora(model, path)
    assert names == sorted(base_w) or sorted(names) == sorted(base_w)
    mods = dict(model.named_modules())
    for n in names:
        assert isinstance(mods[n], LoRALinear)
        np.testing.assert_allclose(mods[n].base.weight.data, base_w[n], atol=1e-6)
    np.testing.assert_allclose(model(x).numpy(), before, atol=1e-5)
    with pytest.raises(ValueError, match="unmerge_lora: layers .* still have their adapters"):
        ft.unmerge_lora(model, path)


def test_one_mlp_builder_for_keras_and_core():
    keras = pytest.importorskip("neuralbook.keras")
    from neuralbook import cli
    km = cli.build_mlp(6, 3, hidden=(16, 8), dropout=0.1, name="m")
    assert [l.name for l in km.layers] == ["hidden_1", "dropout_1", "hidden_2", "dropout_2", "output"]
    core = ft.build_model("mlp", in_features=6, hidden=[16, 8], num_classes=3, dropout=0.1)
    assert km.count_params() == core.num_parameters() == ft.architecture_parameters("mlp", core.arch["config"])
    conv = ft.keras_mlp_to_neuralbook(km)
    assert conv.arch == {"name": "mlp", "config": {"in_features": 6, "hidden": [16, 8], "num_classes": 3,
                                                   "dropout": 0.1}}


def test_transfer_results_of_chapter_13d():
    "bench/results/transfer.json (13d's slow sweep): its shape, and the claims the chapter prints from it."
    from pathlib import Path
    run = json.loads((Path(__file__).parents[1] / "bench" / "results" / "transfer.json").read_text())
    assert run["n_pretrain"] == 30000 and run["n_test"] == 5000
    for key in ("accuracy", "accuracy_50_steps"):
        assert set(run[key]) == {"scratch", "fine-tune", "frozen", "lora"}
        for by_k in run[key].values():
            assert [int(k) for k in by_k] == [5, 10, 20, 50, 100, 200, 500]
            assert all(len(v) == 3 and all(0.2 < x <= 1 for x in v) for v in by_k.values())
    a = {m: {int(k): np.array(v) for k, v in by_k.items()} for m, by_k in run["accuracy"].items()}
    wins = {k: int((a["fine-tune"][k] > a["scratch"][k]).sum()) for k in a["scratch"]}
    assert wins == {5: 2, 10: 1, 20: 2, 50: 3, 100: 3, 200: 2, 500: 3}
    assert all(a["fine-tune"][k].mean() > a["scratch"][k].mean() for k in a["scratch"] if k != 10)
    assert all(a["scratch"][k].mean() - a["frozen"][k].mean() > 0.1 for k in a["scratch"])
