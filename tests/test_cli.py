"""Chapter 35: the command line — `neuralbook train`, `chapters`, `--version`, the plugin hook for subcommands."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import cli

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    status = cli.main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_train_iris_writes_curves_confusion_matrix_and_checkpoint(tmp_path, capsys):
    import matplotlib.pyplot as plt
    figs = plt.get_fignums()
    status, out, err = run(capsys, "train", "iris", "--epochs", "5", "--hidden", "16,8", "--quiet",
                           "--out", str(tmp_path / "iris"))
    assert status == 0 and err == ""                                    # --quiet: no progress bar
    assert "iris: 120 training / 30 test samples, 4 features, 3 classes; MLP 4-16-8-3" in out
    assert "test accuracy 0." in out and "macro F1 0." in out
    assert "confusion matrix (rows: true class, columns: predicted):" in out
    rows = out.split("predicted):\n")[1].splitlines()[1:4]
    cm = np.array([[int(v) for v in r.split()[1:]] for r in rows])
    assert cm.shape == (3, 3) and cm.sum() == 30 and list(cm.sum(1)) == [10, 10, 10]     # stratified test split
    files = sorted(p.name for p in (tmp_path / "iris").iterdir())
    assert files == ["confusion_matrix.png", "model.json", "model.safetensors", "training_curves.png"]
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (tmp_path / "iris" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((tmp_path / "iris" / "model.json").read_text())
    assert meta["dataset"] == "iris" and meta["weights"] == "model.safetensors"
    assert meta["arch"]["config"]["class_name"] == "Sequential"
    assert len(meta["preprocessing"]["standardize"]["mean"]) == 4
    assert len(meta["metrics"]["history"]["loss"]) == 5
    assert plt.get_fignums() == figs                                    # the caller's figures are untouched


def test_checkpoint_reloads_to_the_same_model(tmp_path):
    r = cli.train("wine", epochs=3, quiet=True, out=tmp_path, print_fn=lambda *a: None)
    model, meta = cli.load_trained(tmp_path)
    from neuralbook.datasets import load_wine
    X, _ = load_wine()
    std = meta["preprocessing"]["standardize"]
    Z = ((X - np.array(std["mean"])) / np.array(std["scale"])).astype(np.float32)
    np.testing.assert_array_equal(model.predict(Z, verbose=0), r["model"].predict(Z, verbose=0))
    assert meta["metrics"]["test_accuracy"] == r["accuracy"]
    from neuralbook.learner import load_safetensors                    # the learner's reader understands the file
    tensors, meta2 = load_safetensors(tmp_path / "model.safetensors")
    assert sorted(tensors) == sorted(r["model"].state_dict()) and meta2["dataset"] == "wine"
    assert cli.load_trained(tmp_path / "model.json")[1]["dataset"] == "wine"


EPOCH_LINE = r"epoch {}/{} loss \d+\.\d{{4}} accuracy \d\.\d{{4}} val_loss \d+\.\d{{4}} val_accuracy \d\.\d{{4}}"


def test_train_is_reproducible_and_reports_one_line_per_epoch_off_a_terminal(tmp_path, capsys):
    import re
    a = cli.train("iris", epochs=4, seed=3, out=tmp_path / "a", print_fn=lambda *a: None)
    err = capsys.readouterr().err                                        # capsys' stderr is not a terminal
    assert "%|" not in err and "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 4 and all(re.fullmatch(EPOCH_LINE.format(i, 4), l) for i, l in enumerate(lines, 1)), err
    b = cli.train("iris", epochs=4, seed=3, quiet=True, out=tmp_path / "b", print_fn=lambda *a: None)
    assert capsys.readouterr().err == ""
    assert a["history"] == b["history"] and a["accuracy"] == b["accuracy"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_train_as_a_program_writes_no_bar_into_pipes(tmp_path):
    "`neuralbook train iris > out.txt`: no tqdm bar, no carriage return, one clean line per epoch on stderr."
    import re
    r = subprocess.run([sys.executable, "-c", "import sys; from neuralbook.cli import main; sys.exit(main())",
                        "train", "iris", "--epochs", "6", "--out", str(tmp_path / "iris")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    for stream in (r.stdout, r.stderr):
        assert "%|" not in stream and "\r" not in stream and "training:" not in stream
    lines = r.stderr.splitlines()
    assert len(lines) == 6 and all(re.fullmatch(EPOCH_LINE.format(i, 6), l) for i, l in enumerate(lines, 1)), r.stderr
    assert "test accuracy 0." in r.stdout or "test accuracy 1." in r.stdout
    assert not re.search(r"^epoch ", r.stdout, re.M)                      # the report on stdout stays clean


def test_progress_keeps_the_bar_on_a_terminal(tmp_path):
    import io
    class Terminal(io.StringIO):
        def isatty(self): return True
    term = Terminal()
    cb = cli._progress_bar(3, stream=term)
    cb.on_train_begin()
    for e in range(3): cb.on_epoch_end(e, {"loss": 0.5})
    cb.on_train_end()
    text = term.getvalue()
    assert "training:" in text and "%|" in text and "\r" in text and "epoch 1/3 loss" not in text


def test_digits_default_recipe_is_good(tmp_path):
    r = cli.train("digits", epochs=15, quiet=True, out=tmp_path, print_fn=lambda *a: None)
    assert r["accuracy"] >= 0.95 and r["f1_macro"] >= 0.95


def test_bad_arguments_are_reported(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "cifar"])
    assert e.value.code == 2 and "invalid choice: 'cifar'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "iris", "--hidden", "64,x"])
    assert "--hidden must be comma-separated layer sizes such as 64,64, got '64,x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "iris", "--epochs", "0"])
    assert "must be > 0, got 0" in capsys.readouterr().err


def test_chapters_and_help(capsys):
    status, out, _ = run(capsys, "chapters")
    lines = out.splitlines()
    assert status == 0 and len(lines) >= 17
    assert any(l.split(None, 1) == ["24", "A pretrained transformer: MiniLM loaded, checked and fine-tuned with LoRA"]
               for l in lines)
    # the static table (for an installed package without nbs/) is the notebooks' own list, in reading order
    assert cli.CHAPTERS == cli.chapter_titles()
    status, out, _ = run(capsys)                                         # no command: help
    assert status == 0 and "train" in out and "chapters" in out


def test_version_in_process_and_as_a_program(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"neuralbook {nb.__version__}"
    r = subprocess.run([sys.executable, "-c", "import sys; from neuralbook.cli import main; sys.exit(main())",
                        "--version"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"neuralbook {nb.__version__}"
    exe = shutil.which("neuralbook")
    if exe:                                                              # the console script, where it is installed
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == f"neuralbook {nb.__version__}"


def test_plugins_add_subcommands(tmp_path, monkeypatch, capsys):
    (tmp_path / "nb_plugin_demo.py").write_text(
        "def add(sub):\n"
        "    p = sub.add_parser('hello', help='say hello')\n"
        "    p.add_argument('name')\n"
        "    p.set_defaults(func=lambda a: print('hello', a.name) or 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "PLUGINS", cli.PLUGINS + ["nb_plugin_demo:add", "not_installed_anywhere:add"])
    status, out, _ = run(capsys, "hello", "world")
    assert status == 3 and out == "hello world\n"
    import importlib.util
    if importlib.util.find_spec("neuralbook.finetune") and hasattr(__import__("neuralbook.finetune").finetune,
                                                                     "add_finetune_parser"):
        assert "finetune" in cli.build_parser().format_help()


# ------------------------------------------------------------- issue 21: the command line checks before it trains
@pytest.mark.parametrize("argv, fragment", [
    (["--lr", "inf"], "argument --lr: must be finite, got inf"),
    (["--lr", "nan"], "argument --lr: must be finite, got nan"),
    (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
    (["--validation-split", "1.5"], "argument --validation-split: must be in [0, 1), got 1.5"),
    (["--dropout", "1.5"], "argument --dropout: must be in [0, 1), got 1.5"),
    (["--dropout", "-0.1"], "argument --dropout: must be in [0, 1), got -0.1"),
    (["--test-size", "2"], "argument --test-size: must be in (0, 1), got 2"),
    (["--test-size", "0"], "argument --test-size: must be in (0, 1), got 0"),
    (["--epochs", "x"], "argument --epochs: must be a int, got 'x'"),
])
def test_bad_values_are_usage_errors(capsys, argv, fragment):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "iris", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and "Traceback" not in err


def test_unwritable_out_is_refused_before_training(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(cli, "_fit_mlp", lambda *a, **k: pytest.fail("trained although --out cannot be written"))
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "iris", "--out", str(blocker / "runs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--out {blocker / 'runs'}: cannot write there" in err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_fit_mlp", interrupted)
    status, out, err = run(capsys, "train", "iris", "--out", str(tmp_path))
    assert status == 130 and err.strip().count("\n") == 0
    assert "interrupted (Ctrl-C)" in err and "nothing was saved" in err
    with pytest.raises(KeyboardInterrupt):          # --debug shows what happened
        cli.main(["--debug", "train", "iris", "--out", str(tmp_path)])


def test_missing_checkpoint_is_one_line_and_exit_1(tmp_path, capsys):
    status, out, err = run(capsys, "finetune", "--from", str(tmp_path / "missing"), "iris")
    assert status == 1 and err.strip().count("\n") == 0 and "does not exist" in err and "Traceback" not in err


def test_ctrl_c_as_a_program(tmp_path):
    "A real SIGINT to a running `neuralbook train`: one line on stderr, exit status 130, no traceback."
    import signal, time
    code = ("import sys, time; from neuralbook import cli\n"
            "cli._fit_mlp = lambda *a, **k: (print('training', flush=True), time.sleep(60))\n"
            "sys.exit(cli.main())")
    # as a shell starts it: SIGINT at its default, whatever an earlier test left in this process (an ignored SIGINT is
    # inherited, and Python then installs no KeyboardInterrupt handler)
    p = subprocess.Popen([sys.executable, "-c", code, "train", "iris", "--out", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout.readline().strip() == "training"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "interrupted" in err


# ------------------------------------------------------------- issue 12: one registry; the pretrained-model hook

def test_train_accepts_registry_specs(tmp_path, capsys):
    status, out, _ = run(capsys, "train", "iris:0,1", "--epochs", "2", "--quiet", "--out", str(tmp_path))
    assert status == 0 and "2 classes" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "cifar:0,1"])
    assert e.value.code == 2 and "invalid choice: 'cifar'" in capsys.readouterr().err


def test_finetune_hands_a_pretrained_model_to_its_module(tmp_path, monkeypatch, capsys):
    import sys, types
    fake = types.ModuleType("neuralbook.pretrained")
    fake.MODELS = {"minilm": object()}
    seen = []
    fake.finetune_command = lambda args: seen.append((args.model, args.data, args.method, args.rank, args.epochs,
                                                      args.lr, args.out)) or 0
    monkeypatch.setitem(sys.modules, "neuralbook.pretrained", fake)
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "neuralbook.pretrained" else real_find(name, *a))
    status, _, _ = run(capsys, "finetune", "minilm", "--data", "reviews.csv", "--method", "head", "--rank", "4")
    assert status == 0 and seen == [("minilm", "reviews.csv", "head", 4, None, None, None)]   # its own defaults
    status, _, err = run(capsys, "finetune", "minilm", "--data", "x.csv", "--epochs", "2")   # defaults: lora, rank 8
    assert seen[-1] == ("minilm", "x.csv", "lora", 8, 2, None, None)
    with pytest.raises(SystemExit) as e:                                              # not a model: --from is needed
        cli.main(["finetune", "digits"])
    assert e.value.code == 2 and "--from" in capsys.readouterr().err


def test_plugins_without_their_function_are_skipped(tmp_path, monkeypatch):
    (tmp_path / "nb_plugin_empty.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "PLUGINS", ["nb_plugin_empty:add_embed_parser", "neuralbook.cli_finetune:add_finetune_parser"])
    assert "finetune" in cli.build_parser().format_help()


def test_plugin_list():
    assert cli.PLUGINS == ["neuralbook.cli_finetune:add_finetune_parser", "neuralbook.pretrained:add_embed_parser"]
