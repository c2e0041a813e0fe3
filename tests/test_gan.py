"""Chapter 28: GAN losses, the GANTrainer callback (two optimisers in the Learner's one loop), the DCGAN networks,
distillation_loss (gradcheck, PyTorch formula) and the DistillationCallback."""
import numpy as np
import pytest

import neuralbook as nb
from neuralbook.backend import Generator, manual_seed
from neuralbook.data import DataLoader, TensorDataset
from neuralbook.gan import (GAN, DCDiscriminator, DCGenerator, DistillationCallback, GANTrainer, discriminator_loss,
                            distillation_loss, gan_learner, generator_loss)
from neuralbook.learner import Callback, Learner
from neuralbook.losses import cross_entropy
from neuralbook.nn import LeakyReLU, Linear, ReLU, Sequential, Tanh
from neuralbook.optim import SGD, Adam

rng = np.random.default_rng(0)


def softplus(v): return np.logaddexp(0, v)


def test_gan_losses_closed_form_and_gradcheck():
    ar, af = rng.standard_normal((6, 1)) * 5, rng.standard_normal((6, 1)) * 5
    assert np.isclose(discriminator_loss(ar, af), softplus(-ar).mean() + softplus(af).mean())
    assert np.isclose(generator_loss(af), softplus(-af).mean())
    assert nb.gradcheck(lambda a, b: discriminator_loss(a, b), ar, af)
    assert nb.gradcheck(lambda a: generator_loss(a), af)
    # non-saturating: the gradient stays near -1/N for confidently rejected fakes
    a = nb.tensor(np.full((4, 1), -20.0), requires_grad=True)
    generator_loss(a).backward()
    assert np.allclose(a.grad.data, -0.25, atol=1e-8)


def test_gan_losses_match_torch():
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    ar, af = rng.standard_normal((5, 1)), rng.standard_normal((5, 1))
    tr, tf = torch.tensor(ar, requires_grad=True), torch.tensor(af, requires_grad=True)
    want = tF.binary_cross_entropy_with_logits(tr, torch.ones_like(tr)) + \
        tF.binary_cross_entropy_with_logits(tf, torch.zeros_like(tf))
    r, f = nb.tensor(ar, requires_grad=True), nb.tensor(af, requires_grad=True)
    got = discriminator_loss(r, f)
    got.backward(); want.backward()
    assert np.isclose(got.item(), want.item(), rtol=1e-12)
    assert np.allclose(r.grad.data, tr.grad.numpy()) and np.allclose(f.grad.data, tf.grad.numpy())


def _pair(nz=4):
    manual_seed(0)
    return (Sequential(Linear(nz, 8), ReLU(), Linear(8, 6), Tanh()),
            Sequential(Linear(6, 8), LeakyReLU(0.2), Linear(8, 1)))


def test_gan_trainer_equals_hand_written_steps():
    nz, X = 4, rng.uniform(-1, 1, (10, 6)).astype(np.float32)
    G1, D1 = _pair(nz)
    og, od = Adam(list(G1.parameters()), lr=1e-2, betas=(0.5, 0.999)), Adam(list(D1.parameters()), lr=1e-2, betas=(0.5, 0.999))
    r = Generator(3)
    for i in range(0, 10, 5):           # two batches of 5, unshuffled
        real = nb.tensor(X[i:i + 5])
        with nb.no_grad(): fake = G1(nb.tensor(r.normal((5, nz))))
        od.zero_grad(); discriminator_loss(D1(real), D1(fake)).backward(); od.step()
        og.zero_grad(); generator_loss(D1(G1(nb.tensor(r.normal((5, nz)))))).backward(); og.step()
    G2, D2 = _pair(nz)
    learn = gan_learner(G2, D2, DataLoader(TensorDataset(X), batch_size=5), nz, lr=1e-2, seed=3)
    learn.fit(1)
    for a, b in zip(list(G1.parameters()) + list(D1.parameters()), list(G2.parameters()) + list(D2.parameters())):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
    h = learn.recorder.history
    assert list(h) == ["epoch", "train_loss", "d_loss"] and np.isfinite(h["d_loss"][0])
    assert all(p.requires_grad for p in D2.parameters())
    assert len(learn.gan_trainer.samples) == 1 and learn.gan_trainer.samples[0].shape == (16, 6)


def test_gan_trainer_n_disc_and_sampling_schedule():
    G, D = _pair()
    X = rng.uniform(-1, 1, (8, 6)).astype(np.float32)
    steps = []

    class Count(Callback):
        def after_step(self): steps.append(self.learn.train_iter)

    opt_d = SGD(list(D.parameters()), lr=0.0)
    calls = []
    orig = opt_d.step
    opt_d.step = lambda: (calls.append(1), orig())[1]
    learn = Learner(GAN(G, D, 4), generator_loss, SGD(list(G.parameters()), lr=0.01),
                    DataLoader(TensorDataset(X), batch_size=4),
                    callbacks=[GANTrainer(opt_d, n_disc=3, sample_every=2), Count()])
    learn.fit(4)
    assert len(calls) == 3 * 2 * 4 and len(steps) == 2 * 4      # 3 D steps per G step
    assert len(learn.gan_trainer.samples) == 2                  # epochs 2 and 4


def test_gan_trainer_validation_uses_noise_and_leaves_d_alone():
    G, D = _pair()
    X = rng.uniform(-1, 1, (8, 6)).astype(np.float32)
    before = [p.data.copy() for p in D.parameters()]
    learn = gan_learner(G, D, DataLoader(TensorDataset(X), batch_size=4), 4)
    out = learn.validate(DataLoader(TensorDataset(X), batch_size=4))
    assert np.isfinite(out["valid_loss"])
    assert all(np.array_equal(a, p.data) for a, p in zip(before, D.parameters()))


def test_gan_bad_input():
    G, D = _pair()
    with pytest.raises(TypeError, match=r"GANTrainer: disc_opt must be an optimiser"):
        GANTrainer(object())
    with pytest.raises(ValueError, match=r"GANTrainer: n_disc .* must be an int >= 1, got 0"):
        GANTrainer(SGD(list(D.parameters()), lr=0.1), n_disc=0)
    with pytest.raises(ValueError, match=r"GAN: noise_shape must be a positive int"):
        GAN(G, D, 0)
    learn = Learner(G, generator_loss, SGD(list(G.parameters()), lr=0.1),
                    DataLoader(TensorDataset(np.zeros((4, 4), np.float32)), batch_size=2),
                    callbacks=[GANTrainer(SGD(list(D.parameters()), lr=0.1))])
    with pytest.raises(TypeError, match=r"GANTrainer: the Learner's model must be a GAN\(generator, discriminator"):
        learn.fit(1)


@pytest.mark.parametrize("start,size", [(2, 8), (7, 28)])
def test_dcgan_shapes(start, size):
    manual_seed(0)
    G, D = DCGenerator(8, (8, 4), start=start), DCDiscriminator((8, 4), start=start)
    z = nb.tensor(rng.standard_normal((3, 8)).astype(np.float32))
    x = G(z)
    assert x.shape == (3, 1, size, size) and D(x).shape == (3, 1)
    assert np.abs(x.data).max() <= 1


def _torch_distill(torch, s, t, y, T, alpha):
    tF = torch.nn.functional
    soft = tF.kl_div(tF.log_softmax(s / T, dim=1), tF.softmax(t / T, dim=1), reduction="batchmean") * T * T
    return soft if y is None else alpha * soft + (1 - alpha) * tF.cross_entropy(s, y)


@pytest.mark.parametrize("T,alpha,labels", [(4.0, 0.9, True), (1.0, 0.5, True), (10.0, 1.0, False), (2.0, 0.0, True)])
def test_distillation_loss_matches_torch(T, alpha, labels):
    torch = pytest.importorskip("torch")
    s, t, y = rng.standard_normal((6, 5)), rng.standard_normal((6, 5)) * 3, rng.integers(0, 5, 6)
    ts = torch.tensor(s, requires_grad=True)
    want = _torch_distill(torch, ts, torch.tensor(t), torch.tensor(y) if labels else None, T, alpha)
    want.backward()
    ns = nb.tensor(s, requires_grad=True)
    got = distillation_loss(ns, t, y if labels else None, T=T, alpha=alpha)
    got.backward()
    assert np.isclose(got.item(), want.item(), rtol=1e-10)
    np.testing.assert_allclose(ns.grad.data, ts.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_distillation_loss_gradcheck_and_teacher_constant():
    s, t, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    assert nb.gradcheck(lambda a: distillation_loss(a, t, y, T=3.0, alpha=0.7), s)
    teacher = nb.tensor(t, requires_grad=True)
    student = nb.tensor(s, requires_grad=True)
    distillation_loss(student, teacher, y).backward()
    assert teacher.grad is None and student.grad is not None
    assert distillation_loss(nb.tensor(t), t).item() == pytest.approx(0.0, abs=1e-12)   # KL(q‖q) = 0
    assert distillation_loss(nb.tensor(s, dtype=np.float32), t).dtype == np.float32


def test_distillation_bad_input():
    s = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"distillation_loss: the temperature T must be a number > 0, got 0"):
        distillation_loss(s, s, T=0)
    with pytest.raises(ValueError, match=r"distillation_loss: alpha .* must be in \[0, 1\], got 1.5"):
        distillation_loss(s, s, alpha=1.5)
    with pytest.raises(ValueError, match=r"distillation_loss: student and teacher logits .* got \(4, 3\) and \(4, 5\)"):
        distillation_loss(s, np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"DistillationCallback: the temperature T"):
        DistillationCallback(Linear(2, 2), T=-1)
    with pytest.raises(TypeError, match=r"DistillationCallback: teacher must be a model"):
        DistillationCallback("teacher")


def test_distillation_callback_trains_on_the_distillation_loss():
    X, y = rng.standard_normal((12, 4)).astype(np.float32), rng.integers(0, 3, 12)
    manual_seed(0)
    teacher = Sequential(Linear(4, 3))
    seen = []

    class Spy(Callback):
        order = 50
        def after_loss(self): seen.append((self.learn.training, self.learn.loss.item(), self.learn.pred.data.copy(),
                                           self.learn.xb[0].data.copy(), self.learn.yb[0].data.copy()))

    manual_seed(1)
    student = Sequential(Linear(4, 3))
    dl = DataLoader(TensorDataset(X, y), batch_size=6)
    learn = Learner(student, cross_entropy, SGD(list(student.parameters()), lr=0.1), dl, valid_dl=dl,
                    callbacks=[DistillationCallback(teacher, T=2.0, alpha=0.6), Spy()])
    learn.fit(1)
    for training, loss, pred, xb, yb in seen:
        with nb.no_grad(): t = teacher(nb.tensor(xb)).data
        want = (distillation_loss(nb.tensor(pred), t, yb, T=2.0, alpha=0.6) if training
                else cross_entropy(nb.tensor(pred), yb))
        assert np.isclose(loss, want.item(), rtol=1e-6)
    assert [s[0] for s in seen] == [True, True, False, False] and not teacher.training
    assert all(p.grad is None for p in teacher.parameters())


def test_gan_and_distillation_on_gpu(cp):
    "One epoch of the GAN and of a distilled student on the GPU (real or emulated) gives the CPU's weights."
    X = rng.uniform(-1, 1, (8, 6)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    weights = {}
    for device in ("cpu", "cuda"):
        G, D = _pair()
        learn = gan_learner(G, D, DataLoader(TensorDataset(X), batch_size=4), 4, lr=1e-2, seed=1, device=device)
        learn.fit(1)
        manual_seed(2)
        teacher, student = Sequential(Linear(6, 3)), Sequential(Linear(6, 3))
        learn_s = Learner(student, cross_entropy, SGD(list(student.parameters()), lr=0.1),
                          DataLoader(TensorDataset(X, y), batch_size=4), device=device,
                          callbacks=[DistillationCallback(teacher, T=2.0, alpha=0.5)])
        learn_s.fit(1)
        weights[device] = [p.numpy() for p in list(G.parameters()) + list(D.parameters()) + list(student.parameters())]
    for a, b in zip(weights["cuda"], weights["cpu"]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
