"""Devices, dtype policy, kernel twins and seeding."""
import numpy as np
import pytest

import neuralbook as nb
from neuralbook import backend as B


def test_get_array_module_and_devices():
    x = np.zeros(3)
    assert B.get_array_module(x) is np
    assert B.device_of(x) == "cpu"
    assert B.parse_device("cuda") == "cuda:0" and B.parse_device("CUDA:1") == "cuda:1"
    assert B.to_device(x, "cpu") is x
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        B.parse_device("tpu")


@pytest.mark.skipif(B.cuda_is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(B.DeviceError, match=r"pip install \"neuralbook\[gpu\]\"|no CUDA GPU is visible"):
        B.to_device(np.zeros(2), "cuda")
    with pytest.raises(nb.DeviceError):
        nb.tensor([1.0]).to("cuda")
    with pytest.raises(nb.DeviceError):
        nb.nn.Linear(2, 2).to("cuda")


def test_missing_cupy_message(monkeypatch):
    monkeypatch.setattr(B, "_cupy", None)
    monkeypatch.setattr(B, "_cupy_error", ImportError("No module named 'cupy'"))
    with pytest.raises(B.DeviceError, match=r"needs CuPy.*pip install \"neuralbook\[gpu\]\""):
        B.require_cuda()


def test_default_dtype():
    assert B.get_default_dtype() == np.float32
    B.set_default_dtype("float64")
    try:
        assert nb.tensor([1.0]).dtype == np.float64
    finally:
        B.set_default_dtype("float32")
    with pytest.raises(TypeError, match="float16 is not supported"):
        B.set_default_dtype("float16")


def test_kernel_dispatches_to_gpu_twin_for_cuda_arrays(monkeypatch):
    calls = []

    @B.kernel("test_scale")
    def scale(x, a):
        calls.append("cpu")
        return x * a

    try:
        assert np.array_equal(scale(np.ones(2), 3.0), [3.0, 3.0]) and calls == ["cpu"]

        @scale.gpu
        def _scale_gpu(x, a):
            calls.append("cuda")
            return x * a

        # with no GPU we pretend: a stand-in "cupy" whose ndarray is a NumPy subclass
        class FakeGpuArray(np.ndarray):
            pass
        import types
        fake = types.SimpleNamespace(ndarray=FakeGpuArray)
        monkeypatch.setattr(B, "_cupy", fake)
        scale(np.ones(2).view(FakeGpuArray), 2.0)
        scale(np.ones(2), 2.0)
        scale.impl_for(np.ones(2), xp=fake)(np.ones(2), 1.0)  # an `xp=cupy` keyword also selects the twin
        assert calls == ["cpu", "cuda", "cpu", "cuda"]
        assert "test_scale" in B.KERNELS and "cuda" in repr(scale)
        with pytest.raises(ValueError, match="registered twice"):
            B.kernel("test_scale")(lambda x: x)

        def scale(x, a):  # the same definition again (a re-run cell): replaces the CPU side, keeps the twin
            return x * a * 1.0
        again = B.kernel("test_scale")(scale)
        assert again is B.KERNELS["test_scale"] and again.impls["cpu"] is scale and "cuda" in again.impls
    finally:
        del B.KERNELS["test_scale"]


def test_manual_seed_reproduces_draws_and_state_roundtrip():
    nb.manual_seed(3)
    a = B.default_generator.normal((4,))
    u = B.default_generator.counter_uniform((5,))
    nb.manual_seed(3)
    np.testing.assert_array_equal(a, B.default_generator.normal((4,)))
    np.testing.assert_array_equal(u, B.default_generator.counter_uniform((5,)))
    g = B.Generator(11)
    g.normal((3,)); g.counter_uniform((7,))
    state = g.get_state()
    import json
    state = json.loads(json.dumps(state))  # JSON-serialisable, for checkpoints
    x1, u1 = g.normal((3,)), g.counter_uniform((4,))
    h = B.Generator(0)
    h.set_state(state)
    np.testing.assert_array_equal(x1, h.normal((3,)))
    np.testing.assert_array_equal(u1, h.counter_uniform((4,)))


def test_counter_uniform_is_uniform_and_splits_consistently():
    g = B.Generator(1)
    u = g.counter_uniform((200_000,), dtype=np.float64)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    # counter-based: drawing 10 then 20 equals drawing 30 at once
    g1, g2 = B.Generator(5), B.Generator(5)
    np.testing.assert_array_equal(np.concatenate([g1.counter_uniform((10,)), g1.counter_uniform((20,))]),
                                  g2.counter_uniform((30,)))
    with pytest.raises(ValueError, match="non-negative integer"):
        B.Generator(-1)
