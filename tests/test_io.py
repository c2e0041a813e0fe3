"""Chapter 30: one checked file format. A table of bad files (one row per probe: how to make it, the call, the
expected exception and a fragment of its message), round trips, atomic writes, and memory bombs refused under a
memory cap."""
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import io as nio
from neuralbook.io import (LIMITS, CheckedZip, atomic_write, check_parameter_count, count_elements, dense_parameters,
                           json_depth, load_json, load_safetensors, safetensors_bytes, save_safetensors)

TENSORS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "steps": np.array([7, 11], np.int64),
           "count": np.array(3, np.int64)}
META = {"lr": 0.01, "note": "ok"}


# ---------------------------------------------------------------- helpers that make bad files

def good_file(tmp_path, name="good.safetensors"):
    return save_safetensors(tmp_path / name, TENSORS, META)


def with_header(header) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h


def flip(raw: bytes, i: int, bit: int = 0x08) -> bytes:
    b = bytearray(raw)
    b[i] ^= bit
    return bytes(b)


def write(tmp_path, raw: bytes, name="bad.safetensors"):
    p = tmp_path / name
    p.write_bytes(raw)
    return p


def make_zip(path, members: dict):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def zeros_deflate(total: int, block: int = 2**24) -> bytes:
    """A raw deflate stream of `total` zero bytes in a few MB: one block compressed with a full flush (which resets
    the compressor, so every block compresses to the same bytes), repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    assert total % block == 0
    return one * (total // block) + c.flush()


def zip_with_member(path, name: str, deflated: bytes, declared: int, crc: int = 0, more=()):
    """A zip written by hand: a deflated member whose directory declares `declared` inflated bytes (plus `more`:
    (name, deflated, declared, crc) tuples)."""
    local, central = b"", b""
    for name, data, size, crc in [(name, deflated, declared, crc), *more]:
        n = name.encode()
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(data), size,
                               len(n), 0, 0, 0, 0, 0, len(local)) + n
        local += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), size, len(n), 0) + n + data
    count = 1 + len(more)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), len(local), 0)
    path.write_bytes(local + central + end)
    return path


def tiny_learner():
    from neuralbook.data import DataLoader, TensorDataset
    from neuralbook.learner import Learner
    from neuralbook.losses import cross_entropy
    nb.manual_seed(0)
    m = nb.nn.Sequential(nb.nn.Linear(4, 3))
    X = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    y = np.arange(12) % 3
    return Learner(m, cross_entropy, nb.optim.SGD(m.parameters(), lr=0.1), DataLoader(TensorDataset(X, y), 4))


# ---------------------------------------------------------------- the table

def _truncated(t):
    return load_safetensors(write(t, good_file(t).read_bytes()[:-7]))


def _metadata_bit(t):
    raw = good_file(t).read_bytes()
    return load_safetensors(write(t, flip(raw, raw.index(b"0.01") + 3)))  # '0.01' -> '0.09'


def _tensor_bit_learner(t):
    learn = tiny_learner()
    p = learn.save(t / "m.safetensors")
    p.write_bytes(flip(p.read_bytes(), len(p.read_bytes()) - 5))
    return tiny_learner().load(p)


def _header_too_large(t):
    n = LIMITS["max_header_bytes"] + 8
    return load_safetensors(write(t, with_header(b"{}" + b" " * (n - 2))))


def _deep(t):
    return load_safetensors(write(t, with_header(b"[" * 100_000 + b"]" * 100_000)))


def _deep_metadata(t):
    return load_safetensors(write(t, with_header({"__metadata__": {"neuralbook": "[" * 100_000 + "]" * 100_000}})))


def _header_list(t):
    return load_safetensors(write(t, with_header([1, 2])))


def _metadata_list(t):
    return load_safetensors(write(t, with_header({"__metadata__": {"neuralbook": "[1, 2]"}})))


def _metadata_not_strings(t):
    return load_safetensors(write(t, with_header({"__metadata__": {"neuralbook": {"lr": 1}}})))


def _tensor_count_bomb(t):
    entry = '"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}'
    h = ("{" + ",".join(entry % i for i in range(LIMITS["max_tensors"] + 10)) + "}").encode()
    return load_safetensors(write(t, with_header(h)))


def _beyond_file(t):
    return load_safetensors(write(t, with_header(
        {"w": {"dtype": "F32", "shape": [250_000, 1_000_000], "data_offsets": [0, 10**12]}}) + bytes(16)))


def _bytes_vs_shape(t):
    return load_safetensors(write(t, with_header({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})
                                  + bytes(20)))


def _overlap(t):
    return load_safetensors(write(t, with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})
                                  + bytes(16)))


def _bf16(t):
    return load_safetensors(write(t, with_header({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}})
                                  + bytes(4)))


def _negative_shape(t):
    return load_safetensors(write(t, with_header({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})
                                  + bytes(4)))


def _header_length_huge(t):
    return load_safetensors(write(t, (10**12).to_bytes(8, "little") + b"{}"))


def _empty(t):
    return load_safetensors(write(t, b""))


def _old_learner_file(t):  # what Learner.save wrote before the digest: the safetensors library, no digest
    from safetensors.numpy import save
    return load_safetensors(write(t, save({"w": np.ones(2, np.float32)}, metadata={"neuralbook": "{}"})))


def _missing(t):
    return load_safetensors(t / "nope.safetensors")


def _directory(t):
    return load_safetensors(t)


def _unknown_limit(t):
    return load_safetensors(good_file(t), max_headers=1)


def _zip_declares_2gib(t):
    return CheckedZip(zip_with_member(t / "bomb.keras", "model.weights.safetensors", zeros_deflate(2**31), 2**31),
                      "load_model").read("model.weights.safetensors")


def _zip_lies_about_size(t):  # declares 1000 bytes, inflates to 2 GiB
    return CheckedZip(zip_with_member(t / "liar.keras", "w", zeros_deflate(2**31), 1000), "load_model").read("w")


def _zip_bad_crc(t):
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = raw.compress(b"hello") + raw.flush()
    return CheckedZip(zip_with_member(t / "crc.zip", "a", data, 5, crc=1234)).read("a")


def _zip_dotdot(t):
    return CheckedZip(make_zip(t / "evil.keras", {"config.json": b"{}", "../../evil.py": b"x"}))


def _zip_absolute(t):
    return CheckedZip(make_zip(t / "abs.zip", {"/etc/passwd": b"x"}))


def _zip_missing_member(t):
    return CheckedZip(make_zip(t / "m.keras", {"model.weights.safetensors": b""}), "load_model").read_json("config.json")


def _zip_bad_json(t):
    return CheckedZip(make_zip(t / "j.keras", {"config.json": b'{"a": '}), "load_model").read_json("config.json")


def _zip_garbage_weights(t):
    return CheckedZip(make_zip(t / "g.keras", {"model.weights.safetensors": b"\xff" * 64}),
                      "load_model").read_safetensors("model.weights.safetensors")


def _zip_member_count(t):
    return CheckedZip(make_zip(t / "many.zip", {f"m{i}": b"" for i in range(20)}), max_members=10)


def _zip_is_a_directory(t):
    return CheckedZip(t, "load_model")


def _not_a_zip(t):
    return CheckedZip(write(t, b"not a zip at all", "x.keras"))


def _checkpoint_huge_arch(t):
    from neuralbook import finetune as ft
    save_safetensors(t / "ck.safetensors", {"0.weight": np.zeros(4, np.float32)},
                     {"kind": "weights", "arch": {"name": "mlp", "config": {"in_features": 100_000, "hidden": [],
                                                                            "num_classes": 100_000}}})
    return ft.model_from_checkpoint(t / "ck.safetensors")


def _checkpoint_arch_beyond_weights(t):
    from neuralbook import finetune as ft
    save_safetensors(t / "ck.safetensors", {"0.weight": np.zeros(4, np.float32)},
                     {"kind": "weights", "arch": {"name": "mlp", "config": {"in_features": 1000, "hidden": [],
                                                                            "num_classes": 1000}}})
    return ft.model_from_checkpoint(t / "ck.safetensors")


def _keras_checkpoint_huge_dense(t):
    from neuralbook import finetune as ft
    cfg = {"class_name": "Sequential", "config": {"input_layer": {"batch_shape": [None, 100_000]},
                                                  "layers": [{"class_name": "Dense", "config": {"units": 100_000}}]}}
    save_safetensors(t / "k.safetensors", {"dense.kernel": np.zeros(4, np.float32)},
                     {"arch": {"name": "keras", "config": cfg}})
    return ft.model_from_checkpoint(t / "k.safetensors")


def _checkpoint_bad_config(t):
    from neuralbook import finetune as ft
    save_safetensors(t / "c.safetensors", {"w": np.zeros(4, np.float32)},
                     {"arch": {"name": "mlp", "config": {"in_features": "64", "num_classes": 3}}})
    return ft.model_from_checkpoint(t / "c.safetensors")


def _npz_header_lies(t):
    from neuralbook import finetune as ft
    import io as pyio
    buf = pyio.BytesIO()
    np.save(buf, np.zeros((2, 3), np.float32))
    raw = buf.getvalue().replace(b"(2, 3)", b"(2000000000, 3)").replace(b" " * 9 + b"\n", b"\n", 1)  # 24 GB
    make_zip(t / "d.npz", {"X.npy": raw, "y.npy": buf.getvalue()})
    return ft.load_dataset(str(t / "d.npz"))


def _npz_zip_bomb(t):
    from neuralbook import finetune as ft
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    y = c.compress(b"") + c.flush()
    return ft.load_dataset(str(zip_with_member(t / "b.npz", "X.npy", zeros_deflate(2**31), 2**31,
                                               more=[("y.npy", y, 0, 0)])))


def _empty_loader(t):
    learn = tiny_learner()
    learn.train_dl = []                                  # a loader with no batch (len 0)
    return learn.fit(1)


BAD = [
    # (id, make-and-load, exception, message fragment (a regex))
    ("truncated", _truncated, ValueError, r"bad\.safetensors: the header describes 48 bytes .* holds 41.*truncated"),
    ("metadata bit flipped", _metadata_bit, ValueError, r"bad\.safetensors: the metadata or the tensor data does not "
                                                        r"match the SHA-256 digest"),
    ("tensor bit flipped (Learner.load)", _tensor_bit_learner, ValueError,
     r"Learner\.load: .*m\.safetensors: .*does not match the SHA-256 digest"),
    ("header too large", _header_too_large, ValueError, r"header claims 8,388,616 bytes, more than the limit of "
                                                        r"8,388,608 \(max_header_bytes\)"),
    ("header nested 100000 deep", _deep, ValueError, r"nests 100,000 levels deep, more than the limit of 64"),
    ("metadata nested 100000 deep", _deep_metadata, ValueError, r"metadata: the JSON nests 100,000 levels deep"),
    ("header a JSON list", _header_list, ValueError, r"header: is a JSON list, expected a JSON object"),
    ("metadata a JSON list", _metadata_list, ValueError, r"bad\.safetensors: metadata: is a JSON list, expected a JSON "
                                                         r"object"),
    ("metadata values not strings", _metadata_not_strings, ValueError, r"__metadata__ is not a JSON object of strings"),
    ("tensor count bomb", _tensor_count_bomb, ValueError, r"describes about 65,546 tensors, more than the limit of "
                                                          r"65,536 \(max_tensors\)"),
    ("declared bytes beyond the file", _beyond_file, ValueError, r"describes 1,000,000,000,000 bytes of tensor data "
                                                                 r"but the file holds 16"),
    ("declared bytes != dtype x shape", _bytes_vs_shape, ValueError, r"tensor 'w': it declares 20 bytes .* dtype F32 "
                                                                     r"x shape \[2, 3\] needs 24"),
    ("overlapping tensors", _overlap, ValueError, r"tensor 'b': data_offsets \[4, 12\] overlap the previous tensor"),
    ("bfloat16", _bf16, ValueError, r"tensor 'w': dtype 'BF16' is not one of .*bfloat16 has no NumPy dtype"),
    ("negative dimension", _negative_shape, ValueError, r"tensor 'w': the shape \[-1\] is not a list of at most 64 "
                                                        r"integers >= 0"),
    ("header length 10**12", _header_length_huge, ValueError, r"header claims 1,000,000,000,000 bytes but only 2 "
                                                              r"follow"),
    ("empty file", _empty, ValueError, r"has 0 bytes, fewer than the 8-byte header length; the file is empty"),
    ("file older than the digest", _old_learner_file, ValueError, r"has no digest .*older neuralbook.*verify=False"),
    ("missing file", _missing, FileNotFoundError, r"load_safetensors: .*nope\.safetensors does not exist"),
    ("a directory", _directory, FileNotFoundError, r"does not exist or is not a file"),
    ("unknown limit", _unknown_limit, TypeError, r"unknown limit\(s\) \['max_headers'\]"),
    ("zip member declares 2 GiB", _zip_declares_2gib, ValueError, r"load_model: .*bomb\.keras: member 'model\.weights"
                                                                  r"\.safetensors': it declares 2,147,483,648 bytes "
                                                                  r"when inflated, more than the limit"),
    ("zip member inflates past its declared size", _zip_lies_about_size, ValueError,
     r"liar\.keras: member 'w': it inflates to more than the 1,000 bytes allowed"),
    ("zip member CRC", _zip_bad_crc, ValueError, r"crc\.zip: member 'a': .*do not match its CRC-32"),
    ("zip ../ member", _zip_dotdot, ValueError, r"evil\.keras: member '\.\./\.\./evil\.py' has an unsafe name"),
    ("zip absolute member", _zip_absolute, ValueError, r"member '/etc/passwd' has an unsafe name"),
    ("zip missing member", _zip_missing_member, ValueError, r"load_model: .*m\.keras: it has no member 'config\.json' "
                                                            r"\(members: \['model\.weights\.safetensors'\]\)"),
    ("zip member bad JSON", _zip_bad_json, ValueError, r"load_model: .*j\.keras: member 'config\.json': is not valid "
                                                       r"JSON"),
    ("zip garbage weights", _zip_garbage_weights, ValueError, r"load_model: .*g\.keras: member 'model\.weights\."
                                                              r"safetensors': its header claims"),
    ("zip member count", _zip_member_count, ValueError, r"many\.zip: it declares 20 members, more than the limit of 10"),
    ("not a zip", _not_a_zip, ValueError, r"x\.keras: it is not a valid zip archive"),
    ("zip path is a directory", _zip_is_a_directory, OSError, r"load_model: cannot open .*: Is a directory"),
    ("checkpoint claims a 100000x100000 MLP", _checkpoint_huge_arch, ValueError,
     r"model_from_checkpoint: .*ck\.safetensors: the architecture declares 10,000,100,000 parameters, more than the "
     r"limit"),
    ("checkpoint arch beyond its weights", _checkpoint_arch_beyond_weights, ValueError,
     r"declares 1,001,000 parameters but the file holds only 4 numbers"),
    ("keras checkpoint claims Dense(100000) on 100000 inputs", _keras_checkpoint_huge_dense, ValueError,
     r"k\.safetensors: the architecture declares 10,000,100,000 parameters"),
    ("checkpoint config of the wrong type", _checkpoint_bad_config, ValueError,
     r"c\.safetensors: the config .* of architecture 'mlp' is not valid: in_features must be integers >= 1, got '64'"),
    ("npz header claims 24 GB", _npz_header_lies, ValueError,
     r"load_dataset: .*d\.npz: member 'X\.npy': its header declares shape \(2000000000, 3\) of float32 "
     r"\(24,000,000,000 bytes\) but 24 follow"),
    ("npz member declares 2 GiB", _npz_zip_bomb, ValueError, r"load_dataset: .*b\.npz: member 'X\.npy': it declares "
                                                             r"2,147,483,648 bytes"),
    ("fit on an empty loader", _empty_loader, ValueError, r"Learner\.fit: the training loader \(list\) yields no batch"),
]


@pytest.mark.parametrize("make, exc, message", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_table(tmp_path, make, exc, message):
    with pytest.raises(exc, match=message):
        make(tmp_path)


# ---------------------------------------------------------------- memory bombs under a memory cap

_BOMB_CHILD = textwrap.dedent("""
    import resource, sys, zlib, struct, tracemalloc
    sys.path[:0] = [{root!r}, {tests!r}]
    import test_io as T
    from pathlib import Path
    tmp = Path({tmp!r})
    rows = {{r[0]: r for r in T.BAD}}
    deflated = T.zeros_deflate(2**31)                     # 2 MB of compressed zeros, built before the cap
    vm = int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize")][0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 100 * 2**20, resource.RLIM_INFINITY))   # 100 MB more, no further
    T.zip_with_member(tmp / "a.keras", "w", deflated, 2**31)
    T.zip_with_member(tmp / "b.keras", "w", deflated, 1000)
    for path in ("a.keras", "b.keras"):
        try: T.CheckedZip(tmp / path).read("w"); print("LOADED")
        except ValueError as e: print("refused:", str(e)[-60:])
    for name in ("checkpoint claims a 100000x100000 MLP", "header too large", "tensor count bomb",
                 "declared bytes beyond the file", "header nested 100000 deep",
                 "keras checkpoint claims Dense(100000) on 100000 inputs", "npz header claims 24 GB"):
        try: rows[name][1](tmp); print("LOADED")
        except ValueError as e: print("refused:", name)
""")


def test_memory_bombs_refused_under_a_100mb_address_space_cap(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(nio.__file__)))
    code = _BOMB_CHILD.format(root=root, tests=os.path.dirname(os.path.abspath(__file__)), tmp=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 9 and all(l.startswith("refused:") for l in lines), r.stdout


def test_zip_bomb_peak_python_memory_under_100mb(tmp_path):
    deflated = zeros_deflate(2**31)
    honest = zip_with_member(tmp_path / "a.keras", "w", deflated, 2**31)   # declares 2 GiB: refused unread
    liar = zip_with_member(tmp_path / "b.keras", "w", deflated, 1000)      # declares 1000 bytes, inflates to 2 GiB
    tracemalloc.start()
    try:
        for p in (honest, liar):
            with pytest.raises(ValueError, match="member 'w'"):
                CheckedZip(p).read("w")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, peak


def test_zip_member_cap_can_be_lowered_by_the_caller(tmp_path):
    # a member may honestly declare up to max_member_bytes; a caller that knows better passes max_bytes
    liar = zip_with_member(tmp_path / "b.keras", "w", zeros_deflate(2**31), 2**30)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"declares 1,073,741,824 bytes when inflated, more than the limit of "
                                             r"10,485,760"):
            CheckedZip(liar).read("w", max_bytes=10 * 2**20)
        with pytest.raises(ValueError, match="declares 1,073,741,824 bytes when inflated"):
            CheckedZip(liar, max_member_bytes=50 * 2**20).read("w")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, peak


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                                   np.uint64, np.uint32, np.uint16, np.uint8, np.bool_])
def test_roundtrip_every_dtype_bit_identical(tmp_path, dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 5)) * 100).astype(dtype)
    tensors = {"a": a, "scalar": a[0, 0].copy().reshape(()), "empty": np.zeros((0, 4), dtype), "f64": np.ones(3)}
    p = save_safetensors(tmp_path / "x.safetensors", tensors, {"k": [1, 2.5, None, "s"]})
    out, meta = load_safetensors(p)
    assert list(out) == list(tensors) and meta == {"k": [1, 2.5, None, "s"]}
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and out[k].tobytes() == v.tobytes()
        assert out[k].flags.writeable and out[k].flags.aligned
    assert load_safetensors(p.read_bytes())[0]["a"].tobytes() == a.tobytes()      # from bytes too
    assert safetensors_bytes(tensors, {"k": [1, 2.5, None, "s"]}) == p.read_bytes()  # deterministic


def test_interoperates_with_the_safetensors_library(tmp_path):
    from safetensors.numpy import load as st_load, save as st_save
    p = save_safetensors(tmp_path / "x.safetensors", {"w": TENSORS["w"], "b": np.arange(3, dtype=np.int8)})
    theirs = st_load(p.read_bytes())
    assert np.array_equal(theirs["w"], TENSORS["w"]) and np.array_equal(theirs["b"], np.arange(3))
    foreign = st_save({"x": np.ones((2, 2), np.float32)})               # another program's file: no digest
    out, meta = load_safetensors(foreign, verify=False)
    assert np.array_equal(out["x"], np.ones((2, 2))) and meta == {}


def test_tensors_and_metadata_can_be_given_as_tensors_and_must_be_json(tmp_path):
    p = save_safetensors(tmp_path / "t.safetensors", {"w": nb.tensor([[1.0, 2.0]])}, {"k": 1})
    assert load_safetensors(p)[0]["w"].dtype == np.float32
    with pytest.raises(TypeError, match="save_safetensors: the metadata must be JSON-serialisable"):
        save_safetensors(tmp_path / "u.safetensors", {"w": np.ones(2)}, {"f": object()})
    with pytest.raises(TypeError, match="save_safetensors: the metadata must be a dict"):
        save_safetensors(tmp_path / "u.safetensors", {"w": np.ones(2)}, [1])
    big_endian = np.arange(3, dtype=">f4")                       # stored little-endian, read back equal
    p = save_safetensors(tmp_path / "be.safetensors", {"x": big_endian})
    assert np.array_equal(load_safetensors(p)[0]["x"], big_endian)
    with pytest.raises(TypeError, match="tensor 'c' has dtype complex128"):
        save_safetensors(tmp_path / "u.safetensors", {"c": np.ones(2, complex)})
    assert not (tmp_path / "u.safetensors").exists()


def test_every_single_bit_flip_in_a_small_file_is_caught(tmp_path):
    raw = good_file(tmp_path).read_bytes()
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            try:
                arrays, meta = load_safetensors(flip(raw, i, bit))
            except ValueError:
                continue
            # a flip may only touch padding or JSON whitespace/key order that carries no meaning
            assert meta == META and all(arrays[k].tobytes() == v.tobytes() for k, v in TENSORS.items()), (i, bit)


def test_atomic_write_crash_keeps_the_previous_file(tmp_path, monkeypatch):
    p = good_file(tmp_path, "ck.safetensors")
    before = p.read_bytes()

    def dies_half_way(f, blob):
        f.write(bytes(blob)[: len(blob) // 2])
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(nio, "_write_blob", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(p, {"w": np.zeros(100)}, {})
    monkeypatch.undo()
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["ck.safetensors"]
    atomic_write(tmp_path / "a.txt", lambda f: f.write("héllo"), mode="w")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"


# ---------------------------------------------------------------- the pieces

def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b"3") == 0 and json_depth(b"[]") == 1 and json_depth('{"a": [[1]]}') == 3
    assert json_depth(rb'{"a": "[[[[\"[[[", "b": {}}') == 2
    assert json_depth(b"[" * 3_000_000) == 3_000_000          # chunks: the running depth carries over
    with pytest.raises(ValueError, match=r"cfg: is a JSON int, expected a JSON object"):
        load_json(b"3", "cfg")
    assert load_json(b"[1]", "cfg", object_only=False) == [1]


def test_limits_can_be_raised_per_call(tmp_path):
    p = good_file(tmp_path)
    with pytest.raises(ValueError, match="max_header_bytes"):
        load_safetensors(p, max_header_bytes=64)
    with pytest.raises(ValueError, match=r"more than the limit of 1 \(max_tensors\)"):
        load_safetensors(p, max_tensors=1)
    assert load_safetensors(p, max_header_bytes=10**9)[1] == META


def test_checked_zip_reads_members_and_safetensors(tmp_path):
    good = safetensors_bytes(TENSORS, META)
    p = make_zip(tmp_path / "m.keras", {"config.json": b'{"a": 1}', "model.weights.safetensors": good})
    with CheckedZip(p, "load_model") as z:
        assert z.names() == ["config.json", "model.weights.safetensors"]
        assert z.read_json("config.json") == {"a": 1}
        arrays, meta = z.read_safetensors("model.weights.safetensors")
        assert meta == META and arrays["w"].tobytes() == TENSORS["w"].tobytes()
    stored = tmp_path / "s.zip"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a.bin", b"abc" * 1000)
    assert bytes(CheckedZip(stored).read("a.bin")) == b"abc" * 1000
    damaged = flip(good, len(good) - 3)
    p2 = make_zip(tmp_path / "d.keras", {"model.weights.safetensors": damaged})
    with pytest.raises(ValueError, match=r"d\.keras: member 'model\.weights\.safetensors': the metadata or the tensor"):
        CheckedZip(p2, "load_model").read_safetensors("model.weights.safetensors")


def test_parameter_count_helpers():
    assert dense_parameters([4, 10, 3]) == 4 * 10 + 10 + 10 * 3 + 3
    assert count_elements({"a": np.zeros((2, 3)), "b": np.zeros(())}) == 7
    assert check_parameter_count(83, 83, "x") == 83
    with pytest.raises(ValueError, match=r"x: the architecture declares 84 parameters but the file holds only 83"):
        check_parameter_count(84, 83, "x")
    with pytest.raises(ValueError, match=r"more than the limit of 10 \(max_parameters\)"):
        check_parameter_count(11, 100, "x", max_parameters=10)


# ---------------------------------------------------------------- save / load (PyTorch's two calls, no pickle)
def test_save_load_state_dict_nested_optimizer_state_and_tensor(tmp_path):
    from collections import OrderedDict
    sd = OrderedDict([("fc.weight", np.arange(6, dtype=np.float32).reshape(2, 3)), ("fc.bias", np.zeros(2, np.float32))])
    nb.io.save(sd, tmp_path / "model.pth")
    back = nb.io.load(tmp_path / "model.pth", weights_only=True)
    assert list(back) == ["fc.weight", "fc.bias"]
    for k in sd: np.testing.assert_array_equal(back[k], sd[k]); assert back[k].dtype == sd[k].dtype
    arrays, _ = load_safetensors(tmp_path / "model.pth")           # a plain state dict is a plain safetensors file
    assert sorted(arrays) == ["fc.bias", "fc.weight"]
    state = {"state": {0: {"step": 3, "exp_avg": nb.tensor([0.5, -0.5])}, 1: {"step": 3, "exp_avg": None}},
             "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0, 1], "nesterov": False, "name": "a.b"}],
             "nan": float("nan"), "key.with.dots": nb.tensor(1.0), "key": {"with": {"dots": nb.tensor(2.0)}}}
    nb.io.save(state, tmp_path / "opt.pth")
    got = nb.io.load(tmp_path / "opt.pth")
    assert list(got["state"]) == [0, 1] and got["state"][0]["step"] == 3 and got["state"][1]["exp_avg"] is None
    assert isinstance(got["state"][0]["exp_avg"], nb.Tensor) and got["state"][0]["exp_avg"].tolist() == [0.5, -0.5]
    assert got["param_groups"] == [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0, 1], "nesterov": False,
                                    "name": "a.b"}]
    assert np.isnan(got["nan"]) and got["key.with.dots"].item() == 1.0 and got["key"]["with"]["dots"].item() == 2.0
    t = nb.tensor([[1.0, 2.0]], requires_grad=True)
    nb.io.save(t, tmp_path / "t.pt")
    u = nb.io.load(tmp_path / "t.pt", map_location="cpu")
    assert isinstance(u, nb.Tensor) and u.requires_grad and u.tolist() == [[1.0, 2.0]] and u.device == "cpu"
    import io as pyio
    buf = pyio.BytesIO(); nb.io.save([np.int64(3), "x", (1, 2)], buf)
    assert nb.io.load(pyio.BytesIO(buf.getvalue())) == [3, "x", (1, 2)]


def test_save_load_roundtrips_a_module_and_an_optimiser(tmp_path):
    nb.manual_seed(0)
    net = nb.nn.Sequential(nb.nn.Linear(3, 4), nb.nn.ReLU(), nb.nn.Linear(4, 2))
    opt = nb.optim.Adam(net.parameters(), lr=0.01)
    loss = (net(nb.tensor(np.ones((5, 3), np.float32))) ** 2).mean()
    loss.backward(); opt.step()
    nb.io.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, tmp_path / "ckpt.pth")
    ck = nb.io.load(tmp_path / "ckpt.pth")
    nb.manual_seed(1)
    net2 = nb.nn.Sequential(nb.nn.Linear(3, 4), nb.nn.ReLU(), nb.nn.Linear(4, 2))
    opt2 = nb.optim.Adam(net2.parameters(), lr=0.01)
    net2.load_state_dict(ck["model"]); opt2.load_state_dict(ck["optimizer"])
    for p, q in zip(net.parameters(), net2.parameters()): np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert ck["epoch"] == 1


def test_load_refuses_pytorch_pickles_and_zips_with_the_conversion(tmp_path):
    import pickle
    (tmp_path / "a.pth").write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    with zipfile.ZipFile(tmp_path / "b.pth", "w") as z: z.writestr("archive/data.pkl", b"x")
    for name, kind in [("a.pth", "pickle"), ("b.pth", "zip archive")]:
        with pytest.raises(ValueError, match=rf"load: .*{name} is a {kind}.*never unpickles.*"
                                             rf"torch.load\(path, weights_only=True\).*finetune.load_torch_weights"):
            nb.io.load(tmp_path / name)
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(2)}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="c.pth is a zip archive .*load_torch_weights"):
        nb.io.load(tmp_path / "c.pth")


def test_save_refuses_code_and_odd_keys_load_checks_map_location(tmp_path):
    with pytest.raises(TypeError, match=r"save: cannot store a function \(at model.fn\).*never pickled"):
        nb.io.save({"model": {"fn": lambda x: x}}, tmp_path / "x.pth")
    with pytest.raises(TypeError, match=r"save: dict key \(1, 2\) .* keys must be strings"):
        nb.io.save({(1, 2): 1}, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    nb.io.save({"a": np.ones(2)}, tmp_path / "ok.pth")
    with pytest.raises(TypeError, match="map_location must be a device name"):
        nb.io.load(tmp_path / "ok.pth", map_location={"cuda:0": "cpu"})
    raw = bytearray((tmp_path / "ok.pth").read_bytes()); raw[-1] ^= 1
    (tmp_path / "bad.pth").write_bytes(raw)
    with pytest.raises(ValueError, match="load: .*bad.pth.*digest"):
        nb.io.load(tmp_path / "bad.pth")


def test_load_reads_other_programs_safetensors_as_a_dict_of_tensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"w": np.arange(3, dtype=np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no digest"):
        nb.io.load(tmp_path / "other.safetensors")
    got = nb.io.load(tmp_path / "other.safetensors", verify=False)
    assert isinstance(got["w"], nb.Tensor) and got["w"].tolist() == [0.0, 1.0, 2.0]
