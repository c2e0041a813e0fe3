"""The engine: graph walking, accumulation, freed buffers, higher order, memory, gradcheck's report, bad input."""
import gc
import weakref

import numpy as np
import pytest

import neuralbook as nb
import neuralbook.functional as F


def test_chain_of_100k_ops_has_no_recursion_error():
    x = nb.tensor(1.0, dtype="float64", requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad.item() == 1.0


def test_diamond_graph_sums_both_paths():
    x = nb.tensor(3.0, dtype="float64", requires_grad=True)
    a = x * 2.0
    y = a * a + a.exp()  # a used three times
    y.backward()
    assert np.isclose(x.grad.item(), 2 * (2 * 6.0 + np.exp(6.0)))


def test_gradients_accumulate_across_backward_calls():
    x = nb.tensor([1.0, 2.0], requires_grad=True)
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])


def test_leaf_grads_never_alias_each_other():
    a = nb.tensor([1.0, 2.0], requires_grad=True)
    b = nb.tensor([1.0, 2.0], requires_grad=True)
    (a + b).sum().backward()
    a.grad.data *= 10  # an in-place change (e.g. gradient clipping) must not leak into b.grad
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])


def test_grad_none_needs_a_scalar():
    x = nb.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"single-element output, this one has shape \(2,\)"):
        (x * 2.0).backward()
    (x * 2.0).backward(np.array([1.0, 0.5], np.float32))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 1.0])


def test_backward_on_tensor_without_grad_is_a_clear_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        nb.tensor([1.0]).sum().backward()


def test_second_backward_needs_retain_graph():
    x = nb.tensor([0.5], requires_grad=True)
    y = x.exp().sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()
    x.grad = None
    y = x.exp().sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp([0.5]), rtol=1e-6)


def test_second_derivative_of_tanh():
    x = nb.tensor(np.array([-1.0, 0.3, 2.0]), requires_grad=True)
    y = F.tanh(x).sum()
    (g,) = nb.grad(y, [x], create_graph=True)
    (gg,) = nb.grad(g.sum(), [x])
    t = np.tanh(x.numpy())
    np.testing.assert_allclose(g.numpy(), 1 - t * t, rtol=1e-12)
    np.testing.assert_allclose(gg.numpy(), -2 * t * (1 - t * t), rtol=1e-12)


def test_third_derivative():
    x = nb.tensor(np.array(0.7), requires_grad=True)
    (g1,) = nb.grad(x ** 4, [x], create_graph=True)
    (g2,) = nb.grad(g1, [x], create_graph=True)
    (g3,) = nb.grad(g2, [x])
    assert np.isclose(g3.item(), 24 * 0.7)


def test_no_grad_and_detach():
    x = nb.tensor([1.0], requires_grad=True)
    with nb.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.creator is None
    assert nb.is_grad_enabled()
    z = (x * 2.0).detach()
    assert not z.requires_grad and z.creator is None
    assert (x * 2.0).requires_grad and not (nb.tensor([1.0]) * 2.0).requires_grad

    @nb.no_grad()
    def f(t):
        return t * 3.0
    assert not f(x).requires_grad and nb.is_grad_enabled()


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="only floating-point tensors can require grad.*int64"):
        nb.tensor([1, 2], requires_grad=True)


def test_dropping_the_output_frees_graph_and_arrays():
    x = nb.tensor(np.ones(10_000), requires_grad=True)
    h = x.exp()
    big = weakref.ref(h.data) if hasattr(h.data, "__weakref__") else None
    y = (h * 2.0).sum()
    node = weakref.ref(y.creator)
    hnode = weakref.ref(h.creator)
    del h
    gc.disable()  # prove it is freed by reference counting alone (no cycles)
    try:
        del y
        assert node() is None and hnode() is None
        if big is not None:
            assert big() is None
    finally:
        gc.enable()


def test_backward_frees_saved_buffers():
    x = nb.tensor(np.ones(100), requires_grad=True)
    y = x.exp()
    node = y.creator
    y.sum().backward()
    assert node.y_data is None


def _mlp_step_memory(retain_graph):
    "Bytes allocated by the forward pass of an MLP step, and bytes still held after backward with the loss kept."
    import tracemalloc
    from neuralbook import nn
    from neuralbook.losses import cross_entropy
    nb.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = nb.tensor(np.random.default_rng(0).normal(size=(128, 64)).astype(np.float32))
    t = np.random.default_rng(1).integers(0, 10, 128)
    cross_entropy(model(x), t).backward()        # a first step: the .grad arrays exist (accumulated in place later)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        loss = cross_entropy(model(x), t)
        activations = tracemalloc.get_traced_memory()[0] - base
        loss.backward(retain_graph=retain_graph)
        kept = tracemalloc.get_traced_memory()[0] - base    # no gc.collect(): reference counting alone frees it
    finally:
        tracemalloc.stop()
    return loss, activations, kept


def test_a_kept_loss_does_not_pin_the_activations():
    "Issue 21: after backward() the graph lets go of the step's activations; the kept loss costs about its own value."
    loss, activations, kept = _mlp_step_memory(retain_graph=False)
    assert activations > 200_000                           # (128×256 float32 activations, twice, and more)
    assert kept < 0.03 * activations, (kept, activations)  # was 97 % before the fix; PyTorch keeps only small nodes
    assert loss.creator.inputs is None and loss.creator.x_data is None
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        loss.backward()


def test_retain_graph_keeps_what_a_second_backward_needs():
    "The measurement is meaningful: with retain_graph=True the same kept loss holds the activations."
    loss, activations, kept = _mlp_step_memory(retain_graph=True)
    assert kept > 0.5 * activations
    loss.backward()                                         # and the second backward works


def test_tensors_the_user_holds_keep_their_values_after_backward():
    x = nb.tensor(np.ones((3, 4)), requires_grad=True)
    h = (x * 2.0).exp()
    loss = (h * 3.0).sum()
    loss.backward()
    np.testing.assert_allclose(h.numpy(), np.exp(2.0))     # only the graph dropped its edges
    np.testing.assert_allclose(x.grad.numpy(), 6 * np.exp(2.0))
    shared = (h * 1.0).sum()                                # a new graph through h's freed creator
    with pytest.raises(RuntimeError, match="second time"):
        shared.backward()


def test_default_float_dtype_and_dtype_preservation():
    assert nb.tensor([1.0]).dtype == np.float32
    assert nb.tensor(np.zeros(2)).dtype == np.float64
    assert nb.tensor([1, 2]).dtype.kind == "i"
    x = nb.tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2.5 + 1).exp() / 3
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_gradcheck_report_names_input_element_and_values():
    class Bad(nb.Function):
        def forward(self, x):
            return x * x

        def backward(self, gy):
            return gy * self.xs[0]

    with pytest.raises(nb.GradcheckError, match=r"input 0 \(shape \(2,\)\): at element \(0,\) numeric .* vs analytic"):
        nb.gradcheck(lambda x: Bad()(x), np.array([1.0, 2.0]))
    assert nb.gradcheck(lambda x: Bad()(x), np.array([1.0, 2.0]), raise_exception=False) is False
    assert nb.gradcheck(lambda x, y: x * y, np.array([1.0, 2.0]), np.array([3.0, 4.0]))


def test_tensors_on_two_devices_error_names_both(monkeypatch):
    import neuralbook.autograd as ag
    class FakeGpuArray(np.ndarray):  # stands in for a CuPy array on a machine without a GPU
        pass
    a, b = nb.tensor([1.0]), nb.tensor([2.0])
    b.data = b.data.view(FakeGpuArray)
    monkeypatch.setattr(ag.Tensor, "device", property(lambda t: "cuda:0" if t is b else "cpu"))
    with pytest.raises(RuntimeError, match=r"Add: expected all tensors on one device, got cpu and cuda:0"):
        a + b


def test_repr_and_item():
    x = nb.tensor([1.0, 2.0], requires_grad=True)
    assert "requires_grad=True" in repr(x)
    assert "grad_fn=<Mul>" in repr(x * 2.0)
    assert nb.tensor([3.5]).item() == 3.5
    with pytest.raises(ValueError, match="only a tensor with one element"):
        x.item()


def test_reflected_operators_with_arrays():
    x = nb.tensor([1.0, 2.0], requires_grad=True)
    y = np.array([2.0, 3.0], np.float32) * x + np.ones(2, np.float32)
    assert isinstance(y, nb.Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 3.0])


def test_gradient_tools_live_in_gradients_and_are_reexported():
    import neuralbook.autograd as ag
    import neuralbook.gradients as gr
    from neuralbook.autograd import GradcheckError, grad, gradcheck, gradgradcheck
    assert (gradcheck, gradgradcheck, grad, GradcheckError) == (gr.gradcheck, gr.gradgradcheck, gr.grad, gr.GradcheckError)
    assert nb.gradcheck is gr.gradcheck and nb.grad is gr.grad and ag.gradcheck is gr.gradcheck
    assert issubclass(nb.GradcheckError, RuntimeError)


def test_gradgradcheck_catches_a_backward_that_leaves_the_graph():
    class SquareNumpy(nb.Function):  # right to first order, but np.asarray drops the second derivative
        def forward(self, x):
            return x * x

        def backward(self, gy):
            return gy * 2 * np.asarray(self.xs[0])

    x = np.array([0.5, -1.0])
    assert nb.gradcheck(lambda t: SquareNumpy()(t), x)
    with pytest.raises(nb.GradcheckError, match=r"input 0 \(shape \(2,\)\)"):
        nb.gradgradcheck(lambda t: SquareNumpy()(t), x)
    assert nb.gradgradcheck(lambda t: t * t * t, x)


def test_grad_returns_gradients_and_leaves_dot_grad_alone():
    x = nb.tensor(np.array([1.0, 2.0]), requires_grad=True)
    x.grad = nb.tensor(np.array([7.0, 7.0]))
    (g,) = nb.grad((x * x * x).sum(), [x], create_graph=True)
    np.testing.assert_allclose(g.numpy(), [3.0, 12.0])
    np.testing.assert_array_equal(x.grad.numpy(), [7.0, 7.0])
    (gg,) = nb.grad(g.sum(), [x])
    np.testing.assert_allclose(gg.numpy(), [6.0, 12.0])


def test_input_stubs_free_large_intermediate_inputs_of_ops_that_keep_only_outputs():
    from neuralbook.autograd import Exp, _STUB_BYTES
    x = nb.tensor(np.full((256, 256), 0.5), requires_grad=True)   # 512 kB > _STUB_BYTES
    assert x.data.nbytes > _STUB_BYTES
    m = x * 2.0
    y = Exp()(m)
    stub = y.creator.inputs[0]
    assert stub is not m and stub.creator is m.creator and stub.shape == m.shape and stub.data.strides == (0, 0)
    assert Exp()(x).creator.inputs[0] is x   # a leaf is kept: it lives on anyway
    y.backward(np.ones(y.shape))
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp(1.0))


def test_function_records_generations_and_no_grad_records_nothing():
    x = nb.tensor([2.0], requires_grad=True)
    y = x * 3.0
    z = y * y + x
    assert (y.creator.generation, z.creator.generation) == (1, 3)
    assert z.creator.inputs[1] is x and tuple(y.creator.needs_input_grad) == (True, False)
    with nb.no_grad():
        w = x * 3.0
    assert w.creator is None and not w.requires_grad
    assert isinstance(nb.Function.__call__(nb.autograd.Mul(), np.ones(2), 2.0), np.ndarray)  # arrays in, arrays out
