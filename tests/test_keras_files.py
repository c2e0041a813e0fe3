"""Keras files meet chapter 30 (issue 21): a table of bad `.keras` archives and weights files (one row per probe: how
to make it, the call, the expected exception and a fragment of its message), the digest and its `verify=False`
escape, and a zip bomb refused under a memory cap."""
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import neuralbook as nb
from neuralbook import keras
from neuralbook.io import safetensors_bytes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_io import flip, zeros_deflate, zip_with_member  # chapter 30's bad-file makers


def tiny():
    keras.backend.clear_session()
    nb.manual_seed(0)
    m = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax", name="dense")],
                         name="tiny")
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return m


def config_of(model) -> dict:
    from neuralbook.keras.saving import _model_config
    return {"format": "neuralbook.keras", "format_version": 1, **_model_config(model), "compile_config": None}


def keras_zip(path, config=None, weights=None, raw_config=None):
    "A .keras archive with the given members (a member left None is left out)."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        if raw_config is not None: z.writestr("config.json", raw_config)
        elif config is not None: z.writestr("config.json", json.dumps(config))
        if weights is not None: z.writestr("model.weights.safetensors", weights)
    return path


def huge_dense_config(width=100_000):
    "A Sequential config claiming Dense(width) on a width-wide input."
    c = config_of(tiny())
    c["config"]["input_layer"]["batch_shape"] = [None, width]
    c["config"]["layers"][0]["config"]["units"] = width
    return c


FOUR = safetensors_bytes({"dense.kernel": np.zeros(4, np.float32)})


# ---------------------------------------------------------------- the table

def _huge_dense(t):
    return keras.models.load_model(keras_zip(t / "huge.keras", huge_dense_config(), FOUR))


def _dense_beyond_weights(t):
    return keras.models.load_model(keras_zip(t / "big.keras", huge_dense_config(1000), FOUR))


def _huge_dense_under_a_ceiling(t):
    return keras.models.load_model(keras_zip(t / "c.keras", huge_dense_config(1000), FOUR), max_parameters=10)


def _missing_config(t):
    return keras.models.load_model(keras_zip(t / "noconf.keras", None, FOUR))


def _bad_json(t):
    return keras.models.load_model(keras_zip(t / "j.keras", raw_config=b'{"class_name": ', weights=FOUR))


def _config_a_list(t):
    return keras.models.load_model(keras_zip(t / "l.keras", raw_config=b"[1, 2]", weights=FOUR))


def _garbage_weights(t):
    return keras.models.load_model(keras_zip(t / "g.keras", config_of(tiny()), b"\xff" * 64))


def _missing_weights(t):
    return keras.models.load_model(keras_zip(t / "nw.keras", config_of(tiny())))


def _weights_metadata_a_list(t):
    import struct
    h = json.dumps({"__metadata__": {"neuralbook": "[1, 2]"}}).encode()
    return keras.models.load_model(keras_zip(t / "ml.keras", config_of(tiny()), struct.pack("<Q", len(h)) + h))


def _weights_bit_flipped(t):
    m = tiny()
    m.save(t / "m.keras")
    with zipfile.ZipFile(t / "m.keras") as z: w = z.read("model.weights.safetensors")
    return keras.models.load_model(keras_zip(t / "f.keras", config_of(m), flip(w, len(w) - 3)))


def _config_not_neuralbook(t):
    return keras.models.load_model(keras_zip(t / "o.keras", {"format": "keras", "class_name": "Sequential"}, FOUR))


def _config_missing_fields(t):
    return keras.models.load_model(keras_zip(t / "mf.keras", {"format": "neuralbook.keras"}, FOUR))


def _unknown_layer(t):
    c = config_of(tiny())
    c["config"]["layers"][0]["class_name"] = "Evil"
    return keras.models.load_model(keras_zip(t / "u.keras", c, FOUR))


def _weights_do_not_fit(t):
    return keras.models.load_model(keras_zip(t / "n.keras", config_of(tiny()),
                                             safetensors_bytes({"dense.kernel": np.zeros((4, 3), np.float32),
                                                                "x": np.zeros(3, np.float32)})))


def bomb_archive(path, declared):
    "A .keras archive: a valid config.json beside weights that inflate to 2 GiB of zeros, declaring `declared` bytes."
    import zlib
    c = json.dumps(config_of(tiny())).encode()
    d = zlib.compressobj(9, zlib.DEFLATED, -15)
    return zip_with_member(path, "model.weights.safetensors", zeros_deflate(2**31), declared,
                           more=[("config.json", d.compress(c) + d.flush(), len(c), zlib.crc32(c))])


def _zip_bomb_declared(t):
    return keras.models.load_model(bomb_archive(t / "bomb.keras", 2**31))


def _zip_bomb_liar(t):
    return keras.models.load_model(bomb_archive(t / "liar.keras", 1000))


def _not_a_zip(t):
    (t / "x.keras").write_bytes(b"not a zip")
    return keras.models.load_model(t / "x.keras")


def _missing_file(t):
    return keras.models.load_model(t / "nope.keras")


def _weights_file_flipped(t):
    m = tiny()
    m.save_weights(t / "w.safetensors")
    raw = (t / "w.safetensors").read_bytes()
    (t / "w.safetensors").write_bytes(flip(raw, len(raw) - 3))
    return tiny().load_weights(t / "w.safetensors")


def _weights_file_without_digest(t):
    from safetensors.numpy import save
    m = tiny()
    (t / "old.safetensors").write_bytes(save({k: p.numpy() for k, p in m._weight_paths()}))
    return tiny().load_weights(t / "old.safetensors")


def _weights_file_truncated(t):
    tiny().save_weights(t / "w.safetensors")
    (t / "w.safetensors").write_bytes((t / "w.safetensors").read_bytes()[:-5])
    return tiny().load_weights(t / "w.safetensors")


def _weights_file_order_hostile(t):
    from neuralbook.io import save_safetensors
    save_safetensors(t / "o.safetensors", {"a": np.zeros((4, 3), np.float32)}, {"order": {"x": 1}})
    return tiny().load_weights(t / "o.safetensors")


BAD = [
    ("config claims Dense(100000) on 100000 inputs", _huge_dense, ValueError,
     r"load_model: .*huge\.keras: member 'config\.json' \(at weight 'dense.*kernel' of shape \(100000, 100000\)\): "
     r"the architecture declares 10,000,000,000 parameters, more than the limit of 1,000,000,000"),
    ("config beyond the weights present", _dense_beyond_weights, ValueError,
     r"big\.keras: member 'config\.json' .*declares 1,000,000 parameters but the file holds only 4 numbers"),
    ("max_parameters ceiling", _huge_dense_under_a_ceiling, ValueError, r"declares 1,000,000 parameters, more than "
                                                                        r"the limit of 10 \(max_parameters\)"),
    ("missing config.json", _missing_config, ValueError, r"load_model: .*noconf\.keras: it has no member "
                                                         r"'config\.json'"),
    ("config.json bad JSON", _bad_json, ValueError, r"load_model: .*j\.keras: member 'config\.json': is not valid JSON"),
    ("config.json a JSON list", _config_a_list, ValueError, r"l\.keras: member 'config\.json': is a JSON list, "
                                                            r"expected a JSON object"),
    ("garbage weights", _garbage_weights, ValueError, r"load_model: .*g\.keras: member 'model\.weights\.safetensors': "
                                                      r"its header claims"),
    ("missing weights member", _missing_weights, ValueError, r"nw\.keras: it has no member "
                                                             r"'model\.weights\.safetensors'"),
    ("weights metadata a JSON list", _weights_metadata_a_list, ValueError,
     r"ml\.keras: member 'model\.weights\.safetensors': metadata: is a JSON list"),
    ("weights bit flipped", _weights_bit_flipped, ValueError, r"f\.keras: member 'model\.weights\.safetensors': the "
                                                              r"metadata or the tensor data does not match the SHA-256"),
    ("config not neuralbook's", _config_not_neuralbook, ValueError, r"o\.keras: member 'config\.json': the archive "
                                                                    r"was not written by neuralbook"),
    ("config missing fields", _config_missing_fields, ValueError, r"mf\.keras: member 'config\.json': the architecture "
                                                                  r"is not valid \(KeyError"),
    ("unknown layer class", _unknown_layer, ValueError, r"u\.keras: member 'config\.json': the architecture cannot be "
                                                        r"built: the file names the class 'Evil', which is not known here"),
    ("weights do not fit the model", _weights_do_not_fit, ValueError, r"load_model: .*n\.keras: the weights do not fit "
                                                                      r"model .*nothing was loaded"),
    ("zip bomb (declares 2 GiB)", _zip_bomb_declared, ValueError, r"load_model: .*bomb\.keras: member "
                                                                  r"'model\.weights\.safetensors': it declares "
                                                                  r"2,147,483,648 bytes"),
    ("zip bomb (declares 1000, inflates to 2 GiB)", _zip_bomb_liar, ValueError,
     r"liar\.keras: member 'model\.weights\.safetensors': it inflates to more than the 1,000 bytes allowed"),
    ("not a zip", _not_a_zip, ValueError, r"load_model: .*x\.keras' is not a '\.keras' archive"),
    ("missing file", _missing_file, FileNotFoundError, r"load_model: .*nope\.keras does not exist"),
    ("load_weights: tensor bit flipped", _weights_file_flipped, ValueError,
     r"load_weights: .*w\.safetensors: the metadata or the tensor data does not match the SHA-256 digest"),
    ("load_weights: no digest", _weights_file_without_digest, ValueError,
     r"load_weights: .*old\.safetensors: it has no digest .*verify=False"),
    ("load_weights: truncated", _weights_file_truncated, ValueError, r"load_weights: .*w\.safetensors: the header "
                                                                     r"describes .* truncated"),
    ("load_weights: hostile 'order'", _weights_file_order_hostile, ValueError,
     r"load_weights: .*o\.safetensors: the weights do not fit model 'tiny'"),
]


@pytest.mark.parametrize("make, exc, message", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_keras_file_table(tmp_path, make, exc, message):
    with pytest.raises(exc, match=message):
        make(tmp_path)


# ---------------------------------------------------------------- round trips, the digest, verify=False

def test_save_load_round_trip_is_bit_identical_and_has_a_digest(tmp_path):
    from neuralbook.io import DIGEST_KEY, load_safetensors
    m = tiny()
    m.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        _, meta = load_safetensors(z.read("model.weights.safetensors"))    # verified: the digest is there
    assert meta == {"keras_weights": "tiny"}
    m2 = keras.models.load_model(tmp_path / "m.keras")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(m2.predict(x, verbose=0), m.predict(x, verbose=0))
    assert m2.compiled
    m.save_weights(tmp_path / "w.safetensors")
    raw = (tmp_path / "w.safetensors").read_bytes()
    assert DIGEST_KEY.encode() in raw


def test_verify_false_loads_files_written_before_the_digest(tmp_path):
    from safetensors.numpy import save
    m = tiny()
    arrays = {k: p.numpy() + 1 for k, p in m._weight_paths()}
    (tmp_path / "old.safetensors").write_bytes(save(arrays))
    other = tiny()
    other.load_weights(tmp_path / "old.safetensors", verify=False)
    np.testing.assert_array_equal(other.get_weights()[0], arrays["dense.kernel"])
    keras_zip(tmp_path / "old.keras", config_of(m), save(arrays))          # an archive from before the digest
    with pytest.raises(ValueError, match=r"old\.keras: member 'model\.weights\.safetensors': it has no digest"):
        keras.models.load_model(tmp_path / "old.keras")
    m3 = keras.models.load_model(tmp_path / "old.keras", verify=False)
    np.testing.assert_array_equal(m3.get_weights()[1], arrays["dense.bias"])


def test_the_parameter_budget_is_released_after_a_refused_load(tmp_path):
    from neuralbook.keras.layers import layer as L
    with pytest.raises(ValueError):
        _huge_dense(tmp_path)
    assert L._BUILD_BUDGET == []
    keras.layers.Dense(100_000).build((None, 100))          # a model built in code is not limited by a file


# ---------------------------------------------------------------- memory bombs under a memory cap

_BOMB_CHILD = textwrap.dedent("""
    import resource, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    import test_keras_files as T
    from pathlib import Path
    tmp = Path({tmp!r})
    vm = int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize")][0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 100 * 2**20, resource.RLIM_INFINITY))   # 100 MB more, no further
    for name in ("zip bomb (declares 2 GiB)", "zip bomb (declares 1000, inflates to 2 GiB)",
                 "config claims Dense(100000) on 100000 inputs"):
        make = {{r[0]: r[1] for r in T.BAD}}[name]
        try: make(tmp); print("LOADED", name)
        except ValueError as e: print("refused:", name)
""")


def test_keras_memory_bombs_refused_under_a_100mb_address_space_cap(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(keras.__file__)))
    code = _BOMB_CHILD.format(root=root, tests=os.path.dirname(os.path.abspath(__file__)), tmp=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(l.startswith("refused:") for l in lines), r.stdout


def test_model_from_json_checks_depth_and_parameters_before_allocating():
    js = json.dumps(huge_dense_config())
    with pytest.raises(ValueError, match=r"model_from_json \(at weight .*kernel' of shape \(100000, 100000\)\): the "
                                         r"architecture declares 10,000,000,000 parameters, more than the limit"):
        keras.models.model_from_json(js)
    with pytest.raises(ValueError, match=r"model_from_json: the JSON nests 100,000 levels deep"):
        keras.models.model_from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"declares 1,000,000 parameters, more than the limit of 1,000"):
        keras.models.model_from_json(json.dumps(huge_dense_config(1000)), max_parameters=1000)
    m = keras.models.model_from_json(tiny().to_json())
    assert m.count_params() == 15


def test_keras_zip_bomb_peak_python_memory_under_100mb(tmp_path):
    import tracemalloc
    honest, liar = bomb_archive(tmp_path / "a.keras", 2**31), bomb_archive(tmp_path / "b.keras", 1000)
    tracemalloc.start()
    try:
        for p in (honest, liar):
            with pytest.raises(ValueError, match=r"member 'model\.weights\.safetensors'"):
                keras.models.load_model(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.1f} MiB"
