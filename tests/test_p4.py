"""Problem 4: the STFT against librosa, the IBM, SNR and SI-SDR, the training mixtures, causality of the model and
of its running statistics, streaming == whole file, the folder form of `denoise`, bf16 training, the listening
examples, the te zip, and the dry run (once per module, shared by the tests that read it)."""
import fcntl
import signal
import subprocess
import sys
import threading
import time
import zipfile

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

import p4_denoise as p4
from common.speech import audio, denoise as denoiser, listening, stft as dsp
from common.speech import data as speech_data
from common.cli import UserError
from common.precision import resolve_precision, torch_threads
from common.speech.gru import GRUFunction, gru
from common.speech.stft import BINS, HOP, RATE
from common.train import save_checkpoint, seed_everything
from conftest import AUTO_PRECISION, read_json, run_main, run_script


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one thread is fastest, and on a busy machine a second one mostly waits."""
    with torch_threads(1):
        yield


def sine(freq, seconds=1.0, amp=0.3, rate=RATE):
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def tiny_gru(seed=0, hidden=16, bias=None, **kw):
    torch.manual_seed(seed)
    model = p4.GRUMasker(hidden=hidden, proj=12, dropout=0.0, **kw).eval()
    if bias is not None:  # a constant mask: every logit = bias
        with torch.no_grad():
            for layer in (model.out, model.skip):
                layer.weight.zero_()
                layer.bias.fill_(bias / 2)
    return model


TINY_CONFIG = {"kind": "gru", "hidden": 16, "proj": 12, "dropout": 0.0, "alpha": 0.98, "running_mean": True}


def make_data(root, counts=None, seconds=1.0, seed=0):
    """A tiny data folder in the homework's layout: tr/ and v/ with x = s + n, te/ with x only."""
    rng = np.random.default_rng(seed)
    counts = counts or {"tr": 20, "v": 10, "te": 5}
    for split, count in counts.items():
        (root / split).mkdir(parents=True)
        for i in range(count):
            t = np.arange(round(seconds * RATE)) / RATE
            f0 = 120 + 15 * (i // 10)  # one "sentence" per group of ten, as in the course's data
            s = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) * (0.1 + 0.1 * np.sin(3 * t) ** 2)
            n = 0.05 * (1 + i % 10) / 5 * rng.standard_normal(len(t))
            parts = {"x": s + n, "s": s, "n": n} if split != "te" else {"x": s + n}
            for tag, y in parts.items():
                sf.write(root / split / f"{split}{tag}{i:04d}.wav", y.astype(np.float32), RATE, subtype="FLOAT")
    return root


# ----------------------------------------------------------------------------- the signal path

@pytest.mark.filterwarnings("ignore:n_fft=1024 is too large")
@pytest.mark.parametrize("length", [1, 511, 512, 1500, 4097])  # short signals: the same code at every length
def test_stft_is_librosas_on_whole_hops_and_inverts(length):
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    X = dsp.stft(x)
    assert X.shape == (1 + -(-length // HOP), BINS) and X.dtype == np.complex64
    padded = np.pad(x, (0, -length % HOP))  # ours pads to whole hops first (see common/speech/stft.py)
    np.testing.assert_allclose(X, librosa.stft(padded, n_fft=1024, hop_length=512, window="hann").T, atol=2e-4)
    np.testing.assert_allclose(dsp.istft(X, length), x, atol=1e-5)


def test_window_is_librosas():
    np.testing.assert_allclose(dsp.hann(), librosa.filters.get_window("hann", 1024, fftbins=True), atol=1e-7)


@pytest.mark.parametrize("length", [1, 700, 16000, 40001])
def test_stft_and_istft_stream_block_by_block(length):
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    stream = dsp.STFT()
    X = np.concatenate([stream.push(x[i:i + 700]) for i in range(0, length, 700)] + [stream.finish()])
    np.testing.assert_array_equal(X, dsp.stft(x))
    inverse = dsp.ISTFT()
    y = np.concatenate([inverse.push(X[i:i + 3]) for i in range(0, len(X), 3)] + [inverse.finish()])
    np.testing.assert_allclose(y[:length], dsp.istft(X, length), atol=1e-6)


def test_ideal_binary_mask_shape_and_values():
    s, n = sine(1000), sine(3000, amp=0.6)  # 1 kHz and 3 kHz sit exactly on bins 64 and 192 (15.625 Hz apart)
    M = p4.ideal_binary_mask(dsp.stft(s), dsp.stft(n))
    assert M.shape == (1 + -(-16000 // HOP), BINS) and M.dtype == np.float32
    assert set(np.unique(M)) <= {0.0, 1.0}
    assert (M[:, 64] == 1).all() and (M[:, 192] == 0).all()
    zeros = dsp.stft(np.zeros(4000, np.float32))
    assert (p4.ideal_binary_mask(zeros, zeros) == 0).all()  # ties go to the noise


def test_an_all_ones_mask_returns_the_input():
    x = np.random.default_rng(1).standard_normal(12345).astype(np.float32)
    X = dsp.stft(x)
    np.testing.assert_allclose(p4.apply_mask(np.ones(X.shape, np.float32), X, len(x)), x, atol=1e-5)
    # the streaming path with a model whose mask is 1 everywhere (sigmoid(40) == 1 in float32)
    np.testing.assert_allclose(denoiser.denoise(tiny_gru(bias=40.0), x, block=3000), x, atol=1e-5)


def test_a_masked_file_ends_without_a_click():
    x = np.random.default_rng(5).standard_normal(5 * 512 + 500).astype(np.float32) * 0.1  # ends mid-hop
    mask = (np.random.default_rng(6).random((7, 513)) > 0.5).astype(np.float32)
    X_literal = librosa.stft(x, n_fft=1024, hop_length=512, window="hann").T  # the last 500 samples: one window
    literal = librosa.istft((mask[:len(X_literal)] * X_literal).T, n_fft=1024, hop_length=512, length=len(x))
    assert np.abs(literal[-500:]).max() > 10 * np.abs(x).max()
    ours = p4.apply_mask(mask, dsp.stft(x), len(x))  # padded to 6 whole hops: every sample under two
    assert len(ours) == len(x) and np.abs(ours).max() < 2 * np.abs(x).max()


def test_snr_and_si_sdr_against_hand_computations():
    s = np.array([1.0, 2.0, 3.0, 4.0])
    assert dsp.snr_db(s, [1, 2, 3, 3]) == pytest.approx(10 * np.log10(30 / 1))  # 14.77 dB
    assert dsp.snr_db(s, 0.5 * s) == pytest.approx(10 * np.log10(30 / 7.5))  # 6.02 dB
    assert dsp.snr_db(s, 0 * s) == pytest.approx(0.0)  # silence as the estimate: 0 dB
    # SI-SDR: the best-scaled target for [1, 2, 3, 3] is (26/30) s (26 = its dot product with s); the rest is error
    target = 26 / 30 * s
    expected = 10 * np.log10((target ** 2).sum() / ((np.array([1, 2, 3, 3]) - target) ** 2).sum())
    assert dsp.si_sdr_db(s, [1, 2, 3, 3]) == pytest.approx(expected)
    assert dsp.si_sdr_db(s, 0.5 * s + [0, 0, 0, 0.1]) == pytest.approx(dsp.si_sdr_db(s, 2 * s + [0, 0, 0, 0.4]))


# ----------------------------------------------------------------------------- training data and loss

def complex_randn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)).to(torch.complex128)


def test_mixture_is_the_stft_of_the_mixture_at_a_drawn_snr():
    rng = np.random.default_rng(0)
    s, n = [rng.standard_normal((3, 8000)).astype(np.float32) * a for a in (0.1, 0.2)]
    S, N = (torch.from_numpy(np.stack([dsp.stft(row) for row in sig])) for sig in (s, n))  # (3, 17, 513)
    lengths = torch.tensor([17, 17, 12])
    S[2, 12:] = 0  # as pad_batch leaves a shorter window (the noise is drawn full length and cut by `mixture`)
    torch.manual_seed(0)
    noisy_mag, mask, valid = p4.mixture(S, N, lengths)
    assert valid[:, :, 0].sum(1).tolist() == [17, 17, 12]
    for i in range(3):
        T = lengths[i]
        # |X| must be |S + g N| for one gain g > 0 per mixture: solve sum |X|^2 = |S|^2 + 2 g Re(S N*) + g^2 |N|^2
        # for g, then check every bin, the SNR it gives, and the IBM
        power_S, power_N = (S[i, :T].abs() ** 2).sum(), (N[i, :T].abs() ** 2).sum()
        cross = (S[i, :T] * N[i, :T].conj()).real.sum()
        total = (noisy_mag[i, :T].double() ** 2).sum()
        gain = ((-cross + torch.sqrt(cross ** 2 - power_N * (power_S - total))) / power_N).item()
        torch.testing.assert_close(noisy_mag[i, :T].double(), (S[i, :T] + gain * N[i, :T]).abs().double(),
                                   rtol=1e-4, atol=1e-4)
        snr = 10 * np.log10(power_S.item() / (gain ** 2 * power_N.item()))
        assert -5 - 1e-3 <= snr <= 5 + 1e-3
        assert torch.equal(mask[i, :T], (S[i, :T].abs() > gain * N[i, :T].abs()).float())
        assert (noisy_mag[i, T:] == 0).all()  # nothing beyond the end


def test_band_limited_mixtures_keep_the_ibm_where_the_band_passes():
    S, N = complex_randn(64, 4, 513, seed=1), complex_randn(64, 4, 513, seed=2)
    torch.manual_seed(3)
    full_mag, full_mask, _ = p4.mixture(S, N, torch.full((64,), 4))
    torch.manual_seed(3)
    band_mag, band_mask, _ = p4.mixture(S, N, torch.full((64,), 4), band_fraction=1.0)
    assert torch.equal(band_mask[:, :, :250], full_mask[:, :, :250])  # every cutoff lies above 4 kHz (bin 256)
    assert (band_mag[:, :, -1] < 0.5 * full_mag[:, :, -1]).float().mean() > 0.9  # the top bin is (mostly) gone


def test_the_real_and_imaginary_planes_give_the_complex_magnitude_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    X = torch.complex(torch.randn(4, 50, 513, generator=g), torch.randn(4, 50, 513, generator=g))
    X = X * torch.logspace(-6, 4, 513)  # quiet to loud bins, as in a spectrum
    X[0, :7] = 0  # padded frames
    assert torch.equal(torch.hypot(*dsp.planes(X)), X.abs())
    assert torch.equal(torch.complex(*dsp.planes(X)), X)


def test_noise_pool_draws_stretches_of_real_recordings():
    lengths = (5, 3, 7)
    spectra = [np.zeros((n, BINS), np.complex64) for n in lengths]
    for k, S in enumerate(spectra):
        S[:, 0] = 100 * k + np.arange(len(S))  # each frame says which recording and which frame it is
    torch.manual_seed(0)
    drawn = speech_data.NoisePool(spectra).draw(40, 9)
    assert drawn.shape == (40, 9, BINS)
    used = set()
    for row in drawn.real.numpy()[:, :, 0].astype(int):
        k, frames = row[0] // 100, row % 100
        assert (row // 100 == k).all()  # one recording per mixture
        assert ((frames[1:] - frames[:-1]) % lengths[k] == 1 % lengths[k]).all()  # consecutive, wrapping around
        used.add(k)
    assert used == {0, 1, 2}


def test_distinct_speech_drops_scaled_copies_and_at_speed_changes_the_voice():
    a, b = sine(200, 0.5), sine(300, 0.5)
    files = [{"s": a}, {"s": 0.5 * a}, {"s": b}, {"s": np.round(a * 3000) / 3000}, {"s": a[:4000]}]
    kept = speech_data.distinct_speech(files)
    assert len(kept) == 3  # a (and its scaled and rounded copies), b, and the shorter a
    fast = speech_data.at_speed(sine(200, 1.0), 1.25)
    assert abs(len(fast) - RATE / 1.25) <= 2
    spectrum = np.abs(np.fft.rfft(fast[1000:-1000]))
    assert abs(np.argmax(spectrum) * RATE / len(fast[1000:-1000]) - 250) < 3  # 200 Hz played 1.25 x faster


@pytest.mark.parametrize("frames", [1, 47, 48, 49, 96, 118, 187])
def test_training_windows_cover_every_frame_and_are_full(frames):
    starts = speech_data.window_starts(frames, 48)
    covered = np.zeros(frames, bool)
    for t in starts:
        assert t + min(48, frames) <= frames
        covered[t:t + 48] = True
    assert covered.all() and starts == sorted(set(starts))
    assert len(starts) == max(1, -(-frames // 48))


def test_weighted_loss_counts_loud_bins_more():
    # one frame: bin 0 is wrong (logit 0 against target 1: BCE log 2), the other 512 are right (BCE ~ 2e-9)
    logits, target = torch.full((1, 1, 513), -20.0), torch.zeros(1, 1, 513)
    logits[0, 0, 0], target[0, 0, 0] = 0.0, 1.0
    mag, valid = torch.full((1, 1, 513), 0.01), torch.ones(1, 1, 1, dtype=torch.bool)
    plain = p4.masked_bce(logits, target, valid, p4.loss_weight(mag, 0))
    mag[0, 0, 0] = 100.0  # the wrong bin is the loud one
    weighted = p4.masked_bce(logits, target, valid, p4.loss_weight(mag, 1))
    assert plain.item() == pytest.approx(np.log(2) / 513, rel=1e-5)
    assert weighted.item() == pytest.approx(np.log(2) * 100 / (100 + 512 * 0.01), rel=1e-5)


def test_padded_frames_change_neither_the_loss_nor_its_gradient():
    model = tiny_gru().double()
    mags = [torch.rand(5, 513, dtype=torch.float64) + 0.1, torch.rand(3, 513, dtype=torch.float64) + 0.1]
    targets = [(torch.rand(len(m), 513) > 0.5).double() for m in mags]

    def loss_and_grad(pad_mag):
        model.zero_grad()
        mag = torch.nn.utils.rnn.pad_sequence(mags, batch_first=True)
        mag[1, 3:] = pad_mag
        target = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)
        valid = (torch.arange(5)[None] < torch.tensor([5, 3])[:, None])[..., None]
        loss = p4.masked_bce(model(mag)[0], target, valid, p4.loss_weight(mag, 1.0))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, grads = loss_and_grad(torch.zeros(2, 513, dtype=torch.float64))
    garbage_loss, garbage_grads = loss_and_grad(1e3 * torch.rand(2, 513, dtype=torch.float64))
    assert garbage_loss.item() == loss.item()
    for g, g2 in zip(grads, garbage_grads):
        torch.testing.assert_close(g, g2, rtol=0, atol=0)
    # and the padded batch's loss is the |X|-weighted mean of each file's own loss
    alone = [p4.masked_bce(model(m[None])[0], t[None], torch.ones(1, len(m), 1, dtype=torch.bool),
                           p4.loss_weight(m[None], 1.0)).item() for m, t in zip(mags, targets)]
    weights = [m.sum().item() for m in mags]
    assert loss.item() == pytest.approx(np.dot(alone, weights) / sum(weights), rel=1e-12)


# ----------------------------------------------------------------------------- the model is causal

def test_running_mean_matches_a_direct_computation_and_streams():
    z = torch.randn(2, 30, 513, dtype=torch.float64)
    alpha = 0.9
    mean, _ = p4.RunningMean(alpha)(z)
    for t in (0, 1, 17, 29):
        w = alpha ** torch.arange(t, -1, -1, dtype=torch.float64)  # a^(t-k), k = 0..t
        torch.testing.assert_close(mean[:, t], (w[None, :, None] * z[:, :t + 1]).sum(1) / w.sum())
    first, state = p4.RunningMean(alpha)(z[:, :11])
    rest, _ = p4.RunningMean(alpha)(z[:, 11:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), mean)
    changed = z.clone()
    changed[:, 20:] += 1  # causal: a change at frame 20 leaves the means before it as they were
    torch.testing.assert_close(p4.RunningMean(alpha)(changed)[0][:, :20], mean[:, :20], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["gru", "fc"])
def test_a_change_at_frame_t_leaves_earlier_masks_unchanged(kind):
    model = tiny_gru() if kind == "gru" else p4.FCMasker(hidden=8, layers=1, dropout=0.0).eval()
    mag = torch.rand(2, 20, 513)
    later = mag.clone()
    later[:, 12:] = torch.rand(2, 8, 513)  # change the future only
    with torch.no_grad():
        a, b = model(mag)[0], model(later)[0]
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert not torch.allclose(a[:, 12:], b[:, 12:])
    if kind == "fc":  # the FC sees one frame only: a change at frame 12 changes frame 12 alone
        torch.testing.assert_close(a[:, 13:], model(torch.cat([later[:, :13], mag[:, 13:]], 1))[0][:, 13:])


# ----------------------------------------------------------------------------- the GRU under bf16

def test_the_gru_function_is_torchs_gru_and_its_gradient():
    """GRUFunction in float64 (exact math): nn.GRU's states and last state, nn.GRU's gradients, and gradcheck."""
    torch.manual_seed(0)
    rnn = torch.nn.GRU(5, 4, batch_first=True).double()
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    out, last = GRUFunction.apply(x, h0, *weights)
    ref, ref_last = rnn(x, h0[None])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(last, ref_last[0], rtol=0, atol=1e-14)
    g = torch.randn_like(out)
    inputs = (x, h0, *weights)
    ours = torch.autograd.grad((out * g).sum() + last.sum(), inputs)
    theirs = torch.autograd.grad((ref * g).sum() + ref_last.sum(), inputs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(GRUFunction.apply, inputs)


def test_under_bf16_autocast_the_gru_runs_in_bf16_close_to_fp32_and_outside_it_is_the_gru_itself():
    torch.manual_seed(0)
    rnn = torch.nn.GRU(12, 16, batch_first=True)
    x = torch.randn(4, 30, 12)
    plain, plain_state = rnn(x)
    out, state = gru(rnn, x)  # no autocast: nn.GRU itself, the same numbers
    assert torch.equal(out, plain) and torch.equal(state, plain_state)
    grads = {}
    for precision in ("fp32", "bf16"):
        rnn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, state = gru(rnn, x)
            head, _ = gru(rnn, x[:, :11])
            tail, _ = gru(rnn, x[:, 11:], _)  # continued from a state
        assert out.dtype == state.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        torch.testing.assert_close(torch.cat([head, tail], 1), out, rtol=0, atol=0)
        (out.float() ** 2).sum().backward()
        assert all(p.grad.dtype == torch.float32 for p in rnn.parameters())  # the fp32 master weights
        grads[precision] = [p.grad.clone() for p in rnn.parameters()]
        if precision == "bf16":
            torch.testing.assert_close(out.float(), plain, rtol=0, atol=0.03)  # bf16: 8 bits of mantissa
    for bf16, fp32 in zip(grads["bf16"], grads["fp32"]):
        assert (bf16 - fp32).norm() < 0.05 * fp32.norm()


# ----------------------------------------------------------------------------- streaming == whole file

def test_streaming_equals_whole_file_and_the_batched_path():
    model = tiny_gru(hidden=32)
    x = np.random.default_rng(2).standard_normal(3 * RATE + 123).astype(np.float32) * 0.1
    whole = denoiser.denoise(model, x)
    assert whole.shape == x.shape
    for block in (1, 700, 8000):
        np.testing.assert_allclose(denoiser.denoise(model, x, block=block), whole, rtol=1e-5, atol=1e-6)
    # the batched path that training's validation and the scores use: the same numbers
    X = dsp.stft(x)
    others = [dsp.stft(np.random.default_rng(k).standard_normal(n).astype(np.float32))
              for k, n in ((7, 900), (8, 60000))]
    masks = denoiser.predict_masks(model, [np.abs(X)] + [np.abs(Y) for Y in others])
    np.testing.assert_allclose(p4.apply_mask(masks[0], X, len(x)), whole, atol=1e-5)


def test_streaming_memory_is_bounded_by_the_block():
    model = tiny_gru()
    seen = []
    model.rnn.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0].shape[1]))
    denoiser.denoise(model, np.zeros(20 * RATE, np.float32), block=RATE // 4)
    assert len(seen) >= 80 and max(seen) <= RATE // 4 // HOP + 2  # frames per call, not the whole 20 s


def test_denoise_file_any_rate_and_stereo(tmp_path):
    model = tiny_gru(hidden=32)
    x = np.random.default_rng(3).standard_normal(2 * 44100 + 77).astype(np.float32) * 0.1
    sf.write(tmp_path / "in.wav", np.stack([x, -0.5 * x], axis=1), 44100, subtype="PCM_16")
    denoiser.denoise_file(model, tmp_path / "in.wav", tmp_path / "streamed.wav", block_seconds=0.1)
    denoiser.denoise_file(model, tmp_path / "in.wav", tmp_path / "whole.wav", block_seconds=10.0)
    streamed, rate = sf.read(tmp_path / "streamed.wav", always_2d=True)
    whole, _ = sf.read(tmp_path / "whole.wav", always_2d=True)
    assert rate == 44100 and streamed.shape == (len(x), 2)  # the input's rate and channels
    np.testing.assert_allclose(streamed, whole, atol=1.5 / 32768)  # equal up to the 16-bit rounding
    assert np.abs(streamed).max() > 0.001
    # one mask for both channels: R = -L / 2 in, R = -L / 2 out (up to the 16-bit rounding of each)
    np.testing.assert_allclose(streamed[:, 1], -0.5 * streamed[:, 0], atol=4 / 32768)  # (each channel rounded twice)
    # 16 kHz mono: the file path is the in-memory path, up to 16-bit rounding
    y = (0.5 * sine(440, 2.0) + 0.05 * np.random.default_rng(4).standard_normal(32000)).astype(np.float32)
    sf.write(tmp_path / "mono.wav", y, RATE, subtype="FLOAT")
    denoiser.denoise_file(model, tmp_path / "mono.wav", tmp_path / "mono_out.wav")
    np.testing.assert_allclose(sf.read(tmp_path / "mono_out.wav")[0], denoiser.denoise(model, y), atol=1.5 / 32768)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "denoiser.pt"
    save_checkpoint(path, model=tiny_gru(hidden=16).state_dict(), config={"model": TINY_CONFIG})
    return path


def test_denoise_folder_form_equals_single_files_and_names_bad_ones(tmp_path, model_file, capsys):
    (tmp_path / "in").mkdir()
    for k, rate in enumerate((16000, 22050, 16000)):
        sf.write(tmp_path / "in" / f"rec{k}.wav", sine(200 + 100 * k, 1.2, rate=rate), rate, subtype="PCM_16")
    (tmp_path / "in" / "broken.wav").write_text("not a sound file\n" * 50)
    sf.write(tmp_path / "extra.flac", sine(500, 0.7), RATE)
    proc = run_script("p4_denoise.py", "denoise", tmp_path / "in", tmp_path / "extra.flac", "--out-dir",
                      tmp_path / "out", "--model", model_file)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "broken.wav" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "4 of 5 recordings denoised" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["extra.wav", "rec0.wav", "rec1.wav", "rec2.wav"]
    for name in ("rec0", "rec1", "extra"):  # the IN OUT form, in this process
        src = tmp_path / "in" / f"{name}.wav" if name != "extra" else tmp_path / "extra.flac"
        code, err = run_main(p4.main, ["denoise", src, tmp_path / f"single_{name}.wav", "--model", model_file], capsys)
        assert code == 0, err
        assert (tmp_path / "out" / f"{name}.wav").read_bytes() == (tmp_path / f"single_{name}.wav").read_bytes()


# ----------------------------------------------------------------------------- data errors

def test_training_data_errors_name_the_file(tmp_path):
    make_data(tmp_path / "d", {"tr": 2, "v": 1, "te": 1})
    sf.write(tmp_path / "d" / "tr" / "trn0001.wav", np.zeros(15999, np.float32), RATE)
    with pytest.raises(UserError, match=r"trx0001\.wav: x, s, n have different lengths"):
        p4.load_split(tmp_path / "d", "tr")
    sf.write(tmp_path / "d" / "tr" / "trn0001.wav", np.zeros(16000, np.float32), 8000)
    with pytest.raises(UserError, match=r"trn0001\.wav is sampled at 8000 Hz"):
        p4.load_split(tmp_path / "d", "tr")
    (tmp_path / "d" / "tr" / "trn0001.wav").unlink()
    with pytest.raises(UserError, match=r"trn0001\.wav not found"):
        p4.load_split(tmp_path / "d", "tr")
    with pytest.raises(UserError, match="no vx"):
        p4.load_split(tmp_path / "d" / "tr", "v")


def test_silent_speech_or_noise_is_refused_never_a_nan_score(tmp_path, capsys):
    """A `v` file whose speech is silent has no SNR (0 / 0 or -inf): the run is refused, naming the file, before any
    training, and no metrics.json is written; so is a file whose noise is silent (an infinite input SNR)."""
    make_data(tmp_path / "d", {"tr": 20, "v": 10, "te": 1})
    sf.write(tmp_path / "d" / "v" / "vs0003.wav", np.zeros(RATE, np.float32), RATE, subtype="FLOAT")
    code, err = run_main(p4.main, ["--dry-run", "--quiet", "--data-dir", tmp_path / "d", "--out", tmp_path / "out",
                                   "--ckpt-dir", tmp_path / "ckpt"], capsys)
    assert code == 2 and err.count("\n") == 1 and "vs0003.wav: the speech is silent, so its SNR is undefined" in err
    assert not (tmp_path / "out" / "metrics.json").exists() and not list((tmp_path / "ckpt").glob("*.pt"))
    sf.write(tmp_path / "d" / "tr" / "trn0001.wav", np.full(RATE, 1e-5, np.float32), RATE, subtype="FLOAT")
    with pytest.raises(UserError, match=r"trn0001\.wav: the noise is silent"):
        p4.load_split(tmp_path / "d", "tr")


def test_data_folder_missing_or_built(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="data folder .* not found"):
        speech_data.ensure_data(tmp_path / "nowhere")
    monkeypatch.setattr(speech_data, "DEFAULT_DATA", tmp_path / "data" / "hw3")
    monkeypatch.setenv("HW3_SPEECH_SOURCE", str(tmp_path / "no_source"))
    with pytest.raises(UserError, match="HW3_SPEECH_SOURCE"):
        speech_data.ensure_data(None)
    # a stand-in builder: the data step runs it with this Python and moves its folder into place
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "build_hw3.py").write_text(
        "import sys, pathlib\nfor d in ('tr', 'v', 'te'): (pathlib.Path(sys.argv[1]) / d).mkdir(parents=True)\n")
    monkeypatch.setenv("HW3_SPEECH_SOURCE", str(tmp_path / "source"))
    assert speech_data.ensure_data(None) == tmp_path / "data" / "hw3"
    assert sorted(p.name for p in (tmp_path / "data" / "hw3").iterdir()) == ["te", "tr", "v"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".hw3.lock", "hw3"]  # no half-built folder


def test_a_stop_while_the_data_builds_removes_the_half_built_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(speech_data, "DEFAULT_DATA", tmp_path / "data" / "hw3")
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "build_hw3.py").write_text(  # a build that takes long, half done when the stop comes
        "import sys, pathlib, time\nout = pathlib.Path(sys.argv[1])\n(out / 'tr').mkdir(parents=True)\n"
        "(out / 'tr' / 'trx0000.wav').write_bytes(bytes(10**6))\ntime.sleep(120)\n")
    monkeypatch.setenv("HW3_SPEECH_SOURCE", str(tmp_path / "source"))
    main = threading.main_thread().ident

    def stop_once_half_built():
        deadline = time.time() + 60
        while not list((tmp_path / "data").glob(".hw3.building-*/tr/trx0000.wav")) and time.time() < deadline:
            time.sleep(0.02)
        signal.pthread_kill(main, signal.SIGTERM)  # to the main thread, as a `kill` would stop the command

    threading.Thread(target=stop_once_half_built, daemon=True).start()
    code, err = run_main(lambda argv: speech_data.ensure_data(None), [], capsys)
    assert code == 143 and err == "error: stopped by SIGTERM; nothing half-written was left behind\n", err
    assert [p.name for p in (tmp_path / "data").iterdir()] == [".hw3.lock"]  # what it said: nothing half-built


def test_two_first_runs_at_once_one_builds_the_other_waits(tmp_path, monkeypatch, capsys):
    """The second run waits on the lock the first holds, then uses what the first built (it builds nothing)."""
    data = tmp_path / "data" / "hw3"
    monkeypatch.setattr(speech_data, "DEFAULT_DATA", data)
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "build_hw3.py").write_text("raise SystemExit('the second run must not build')\n")
    monkeypatch.setenv("HW3_SPEECH_SOURCE", str(tmp_path / "source"))
    data.parent.mkdir()
    waiting = tmp_path / "waiting"  # the second run is about to wait on the lock: the first may finish
    first = subprocess.Popen([sys.executable, "-c", (  # the first run, holding the lock while it builds
        "import fcntl, os, pathlib, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('building', flush=True)\n"
        "while not os.path.exists(sys.argv[3]): time.sleep(0.01)\n"
        "for d in ('tr', 'v', 'te'): (pathlib.Path(sys.argv[2]) / d).mkdir(parents=True)\n"),
        data.with_name(".hw3.lock"), data, waiting], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline() == "building\n"
    flock = fcntl.flock

    def blocking_flock(fd, operation):
        if not operation & fcntl.LOCK_NB:
            waiting.touch()
        return flock(fd, operation)
    monkeypatch.setattr(fcntl, "flock", blocking_flock)
    capsys.readouterr()
    assert speech_data.ensure_data(None) == data and first.wait(30) == 0
    assert "waiting for another run that is building" in capsys.readouterr().out
    assert sorted(p.name for p in data.iterdir()) == ["te", "tr", "v"]


# ----------------------------------------------------------------------------- the script

@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """p4_denoise.py --dry-run on a tiny data folder, once for this module: (data, out, ckpt, metrics, stdout)."""
    base = tmp_path_factory.mktemp("p4_dry")
    data, out, ckpt = make_data(base / "hw3"), base / "out", base / "ckpt"
    proc = run_script("p4_denoise.py", "--dry-run", "--quiet", "--data-dir", data, "--out", out, "--ckpt-dir", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data, out, ckpt, read_json(out / "metrics.json")


def test_dry_run_writes_every_result(dry_run):
    data, out, _, metrics = dry_run
    assert metrics["dry_run"] is True and metrics["data"]["files"] == {"tr": 20, "v": 10, "te": 5}
    assert metrics["data"]["distinct_training_sentences"] == 2  # make_data: one sentence per group of ten
    systems = metrics["v"]["systems"]
    assert set(systems) == {"noisy", "fc", "gru", "oracle_ibm"}
    assert set(systems["gru"]) == {"snr_db", "si_sdr_db", "stoi", "pesq"}
    assert systems["gru"]["snr_db"].keys() == {"mean", "std", "sem", "median", "n"}
    assert systems["gru"]["snr_db"]["n"] == 10
    assert systems["oracle_ibm"]["snr_db"]["mean"] > systems["noisy"]["snr_db"]["mean"]
    assert len(metrics["per_file"]["snr_db"]["gru"]) == 10
    for name in ("training_curves", "snr_histogram", "snr_gain_vs_input", "snr_by_noise", "spectrograms"):
        assert (out / f"{name}.png").stat().st_size > 0, name
    # the dry run's small models, one epoch, in what auto means here: where the reuse decision and the report see it
    gru = metrics["models"]["gru"]["config"]
    assert (gru["model"]["hidden"], gru["model"]["proj"], gru["epochs"], gru["repeats"]) == (32, 32, 1, 2)
    precisions = (gru["precision"], metrics["machine"]["precision"], read_json(out / "config.json")["precision"])
    assert precisions == (AUTO_PRECISION,) * 3
    assert metrics["models"]["fc"]["config"]["model"] == {"kind": "fc", "hidden": 64, "layers": 2, "dropout": 0.1,
                                                          "layer_norm": False}
    assert torch.load(out / "denoiser.pt", weights_only=True)["config"] == gru
    context = metrics["data_context"]
    noisy = metrics["per_file"]["snr_db"]["noisy"]
    assert (context["input_snr_db"]["min"], context["input_snr_db"]["max"]) == pytest.approx((min(noisy), max(noisy)),
                                                                                              abs=1e-4)
    assert set(context["share_of_oracle_gain"]) == {"fc", "gru"}
    assert metrics["required"]["gru_beats_fc"]["why"] and metrics["goals"]["gru_snr_db"]["at_least"] == 9.5


def test_dry_run_listening_examples(dry_run):
    _, out, _, metrics = dry_run
    examples = metrics["examples"]
    assert [len(e["clips"]) for e in examples["v"]] == [5] * 3 and [len(e["clips"]) for e in examples["te"]] == [2] * 3
    assert len({e["file"] for e in examples["v"]}) == 3
    per_file = dict(zip(metrics["per_file"]["names"], range(10)))
    for example in examples["v"]:
        clips = {clip["system"]: clip for clip in example["clips"]}
        assert list(clips) == ["noisy", "fc", "gru", "oracle_ibm", "clean"] and clips["clean"]["snr_db"] is None
        for system in ("noisy", "fc", "gru", "oracle_ibm"):  # each clip says the SNR that clip has
            assert clips[system]["snr_db"] == pytest.approx(
                metrics["per_file"]["snr_db"][system][per_file[example["file"]]], abs=1e-4)
            assert clips[system]["label"] and (out / clips[system]["path"]).is_file()
    assert [c["system"] for e in examples["te"] for c in e["clips"]] == ["noisy", "gru"] * 3
    written = {c["path"] for split in ("v", "te") for e in examples[split] for c in e["clips"]}
    assert {f"audio/{p.name}" for p in (out / "audio").iterdir()} == written


def test_example_choice_spreads_over_speakers_and_sentences():
    lengths = [100 + (i * 37) % 50 for i in range(400)]  # 4 speakers x 10 sentences x 10 noises, as in data/hw3
    chosen = listening.example_indices(lengths)
    assert len({i // 100 for i in chosen}) == 3 and len({i % 10 for i in chosen}) == 3
    assert all(lengths[i] <= sorted(lengths)[40] for i in chosen)  # short ones
    assert len(set(listening.example_indices([5, 3, 9, 1, 7]))) == 3  # one sentence only: three files still


def test_te_examples_read_only_the_chosen_files(tmp_path, monkeypatch):
    data = make_data(tmp_path / "hw3", {"te": 8})
    read = []
    monkeypatch.setattr(listening, "read_audio", lambda path, rate: read.append(path) or audio.read_audio(path, rate))
    examples = listening.write_examples([], {}, {}, speech_data.split_paths(data, "te"), tiny_gru(), tmp_path / "o")
    assert len(read) == 3 and [e["file"] for e in examples["te"]] == [p.name for p in read]  # lengths from headers


def test_dry_run_te_zip_is_what_the_commands_write(dry_run, tmp_path, capsys):
    data, out, _, metrics = dry_run
    names = [f"tex{i:04d}.wav" for i in range(5)]
    with zipfile.ZipFile(out / "te_denoised.zip") as z:
        assert sorted(z.namelist()) == names
        one = z.read("tex0003.wav")
    code, err = run_main(p4.main, ["denoise", data / "te" / "tex0003.wav", tmp_path / "one.wav", "--model",
                                   out / "denoiser.pt"], capsys)
    assert code == 0, err
    assert (tmp_path / "one.wav").read_bytes() == one
    # `te-zip` from the saved model: the same zip, byte for byte (the model the run held = the model it saved)
    code, err = run_main(p4.main, ["te-zip", tmp_path / "again.zip", "--data-dir", data, "--model",
                                   out / "denoiser.pt"], capsys)
    assert code == 0, err
    assert (tmp_path / "again.zip").read_bytes() == (out / "te_denoised.zip").read_bytes()
    assert metrics["te_output"]["files"] == 5
    assert metrics["te_output"]["command"].startswith("python p4_denoise.py te-zip")


def tiny_args(tmp_path, *flags):
    args, flags_of = p4.get_args(["--hidden", "16", "--proj", "8", "--epochs", "2", "--batch-size", "2", "--crop", "8",
                                  "--repeats", "2", "--quiet", "--ckpt-dir", str(tmp_path), "--out", str(tmp_path),
                                  *flags])
    args.precision = resolve_precision(args.precision, "cpu")
    tmp_path.mkdir(exist_ok=True)
    return args, flags_of


def test_training_is_deterministic_and_a_finished_run_is_reused(tmp_path, capsys):
    data_dir = make_data(tmp_path / "hw3", {"tr": 10, "v": 4, "te": 1})
    tr, v = (p4.load_split(data_dir, split) for split in ("tr", "v"))
    sentences = speech_data.distinct_speech(tr)
    stats = p4.log_spectrum_stats(tr)
    runs = []
    for name in ("a", "b", "a"):  # the second "a" finds a's finished checkpoint with the same config
        args, flags = tiny_args(tmp_path / name, "--repeats", "4")
        noise = speech_data.NoisePool([dsp.stft(f["n"]) for f in tr])
        model, config, history = p4.train_masker("gru", args, flags["gru"], sentences, noise, stats, v, "test-data",
                                                 torch.device("cpu"))
        runs.append(([{k: x for k, x in h.items() if k != "train_seconds"} for h in history], model.state_dict()))
    assert runs[0][0] == runs[1][0] == runs[2][0] and len(runs[0][0]) == 2
    assert capsys.readouterr().out.count("reusing the finished run") == 1
    for key, value in runs[0][1].items():
        torch.testing.assert_close(value, runs[1][1][key], rtol=0, atol=0)
        torch.testing.assert_close(value, runs[2][1][key], rtol=0, atol=0)


def test_bf16_training_runs_and_its_loss_is_finite(tmp_path):
    data_dir = make_data(tmp_path / "hw3", {"tr": 2, "v": 1, "te": 1})
    tr, v = (p4.load_split(data_dir, split) for split in ("tr", "v"))
    noise = speech_data.NoisePool([dsp.stft(f["n"]) for f in tr])
    sentences, stats = speech_data.distinct_speech(tr)[:1], p4.log_spectrum_stats(tr)
    for kind in ("gru", "fc"):
        args, flags = tiny_args(tmp_path / kind, "--precision", "bf16", "--epochs", "1", "--fc-epochs", "1", "--crop",
                                "16", "--fc-crop", "16", "--repeats", "1", "--fc-hidden", "8")
        model, config, history = p4.train_masker(kind, args, flags[kind], sentences, noise, stats, v, "test-data",
                                                 torch.device("cpu"))
        assert config["precision"] == "bf16" and len(history) == 1  # three 16-frame windows, batches of 2: 2 steps
        assert np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["val_snr"])
        seed_everything(config["seed"])  # train_masker's initialisation, again
        start = p4.build_masker(config["model"]).state_dict()
        for name, t in model.state_dict().items():
            assert t.dtype == torch.float32, name  # the fp32 master weights
            assert name.startswith("log_spectrum") or not torch.equal(t, start[name]), name  # every weight moved


def test_the_flags_that_define_a_model_are_its_config():
    args, flags = p4.get_args(["--fc-hidden", "100", "--alpha", "0.9"])
    gru, fc = (p4.training_config(kind, {n: getattr(args, n) for n in flags[kind]}, "data") for kind in ("gru", "fc"))
    assert gru["model"] == {"kind": "gru", "hidden": 256, "proj": 256, "dropout": 0.1, "alpha": 0.9,
                            "running_mean": True}
    assert fc["model"] == {"kind": "fc", "hidden": 100, "layers": 2, "dropout": 0.1, "layer_norm": False}
    assert (gru["epochs"], gru["crop"], gru["lr"], fc["epochs"], fc["crop"], fc["lr"]) == (28, 96, 5e-3, 14, 48, 3e-3)
    shared = {"speeds", "repeats", "band_fraction", "loss_power", "batch_size", "weight_decay", "seed", "precision"}
    assert set(gru) == set(fc) == shared | {"model", "epochs", "crop", "lr", "data"}
    p4.build_masker(gru["model"]), p4.build_masker(fc["model"])  # what `denoise` builds from a checkpoint


def test_benchmark_dry_run_times_the_right_work(tmp_path, model_file):
    proc = run_script("benchmarks/p4_realtime.py", "--dry-run", "--model", model_file, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_json(tmp_path / "benchmark.json")
    assert report["dry_run"] is True and report["threads"] == 1
    assert {"stream_16k_mono_1s_blocks", "file_16k_mono_wav", "file_44.1k_stereo_wav"} <= set(report["cases"])
    assert report["check"]["max_abs_difference_streamed_vs_whole"] < 1e-5
    assert report["check"]["max_abs_difference_file_vs_whole"] <= 1 / 32768  # the 16-bit rounding
    command = report["cases"]["file_16k_mono_wav"]
    rtf = report["goals"]["rtf"]
    assert rtf["measured"] == command["rtf_cpu"] and rtf["met"] == (command["rtf_cpu"] <= rtf["at_most"])


def test_hw3_data_moves_the_speech_data_too(tmp_path):
    """HW3_DATA moves data/ (README): MNIST's folder and the speech data's, data/hw3, alike."""
    proc = run_script("-c", "from common.speech.data import DEFAULT_DATA; from common.mnist.data import DATA_DIR; "
                      "print(DEFAULT_DATA, DATA_DIR)", env={"HW3_DATA": str(tmp_path)})
    assert proc.stdout.split() == [str(tmp_path / "hw3"), str(tmp_path)], proc.stderr


@pytest.mark.slow  # two interpreters that import torch
def test_perceptual_scores_in_two_processes_are_those_of_one(monkeypatch):
    """Above PARALLEL_SECONDS of audio, STOI and PESQ are scored in two processes (common.processes.run_jobs): the
    same numbers, in the same order, as in this one."""
    from common.speech import scores
    clean = [sine(300 + 50 * k, 2.0) for k in range(3)]
    noise = np.random.default_rng(0).standard_normal(len(clean[0])).astype(np.float32)
    outputs = {"noisy": [s + 0.05 * noise for s in clean], "gru": [s + 0.01 * noise for s in clean]}
    alone = scores.score_systems(clean, outputs)
    monkeypatch.setattr(scores, "PARALLEL_SECONDS", 0)
    assert scores.score_systems(clean, outputs) == alone
