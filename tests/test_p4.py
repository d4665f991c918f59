"""Problem 4: IBM, STFT round trips, SNR, padded loss, causality, streaming == whole file, bad input, the dry run."""
import zipfile

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

import p4_denoise as p4
from common.utils import UserError
from conftest import assert_clean_error, read_json, run_script


def sine(freq, seconds=1.0, amp=0.3, rate=p4.RATE):
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def tiny_gru(seed=0, hidden=16, bias=None):
    torch.manual_seed(seed)
    model = p4.GRUMasker(hidden=hidden, dropout=0.0).eval()
    if bias is not None:  # a constant mask: every logit = bias
        with torch.no_grad():
            model.out.weight.zero_()
            model.out.bias.fill_(bias)
            model.skip.weight.zero_()
            model.skip.bias.zero_()
    return model


def make_data(root, counts=None, seconds=1.0, seed=0):
    """A tiny data folder in the homework's layout: tr/ and v/ with x = s + n, te/ with x only."""
    rng = np.random.default_rng(seed)
    counts = counts or {"tr": 20, "v": 10, "te": 5}
    for split, count in counts.items():
        (root / split).mkdir(parents=True)
        for i in range(count):
            t = np.arange(round(seconds * p4.RATE)) / p4.RATE
            f0 = 120 + 15 * (i // 10)  # one "sentence" per group of ten, as in the course's data
            s = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) * (0.1 + 0.1 * np.sin(3 * t) ** 2)
            n = 0.05 * (1 + i % 10) / 5 * rng.standard_normal(len(t))
            parts = {"x": s + n, "s": s, "n": n} if split != "te" else {"x": s + n}
            for tag, y in parts.items():
                sf.write(root / split / f"{split}{tag}{i:04d}.wav", y.astype(np.float32), p4.RATE, subtype="FLOAT")
    return root


# ----------------------------------------------------------------------------- the math

def test_ideal_binary_mask_shape_and_values():
    s, n = sine(1000), sine(3000, amp=0.6)  # 1 kHz and 3 kHz sit exactly on bins 64 and 192 (15.625 Hz apart)
    M = p4.ideal_binary_mask(p4.stft(s), p4.stft(n))
    assert M.shape == (1 + 16000 // p4.HOP, p4.BINS) and M.dtype == np.float32
    assert set(np.unique(M)) <= {0.0, 1.0}
    assert (M[:, 64] == 1).all() and (M[:, 192] == 0).all()
    # ties go to the noise: where both are silent, the mask is 0
    assert (p4.ideal_binary_mask(p4.stft(np.zeros(4000, np.float32)), p4.stft(np.zeros(4000, np.float32))) == 0).all()


def test_stft_is_the_homework_stft_and_round_trips():
    x = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    X = p4.stft(x)
    assert X.shape == (1 + 20000 // 512, 513)
    np.testing.assert_allclose(X, librosa.stft(x, n_fft=1024, hop_length=512, window="hann").T)
    np.testing.assert_allclose(p4.istft(X, len(x)), x, atol=1e-5)


def test_all_ones_mask_returns_the_input():
    x = np.random.default_rng(1).standard_normal(12345).astype(np.float32)
    X = p4.analyse(x)
    np.testing.assert_allclose(p4.separate(np.ones(X.shape, np.float32), X, len(x)), x, atol=1e-5)
    # the streaming path with a model whose mask is 1 everywhere (sigmoid(40) == 1 in float32)
    np.testing.assert_allclose(p4.denoise_signal(tiny_gru(bias=40.0), x, block=3000), x, atol=1e-5)


def test_a_masked_file_ends_without_a_click():
    x = np.random.default_rng(5).standard_normal(5 * 512 + 500).astype(np.float32) * 0.1  # ends mid-hop
    mask = (np.random.default_rng(6).random((1 + len(x) // 512, 513)) > 0.5).astype(np.float32)
    literal = p4.istft(mask * p4.stft(x), len(x))  # the last 500 samples lie under one window only
    assert np.abs(literal[-500:]).max() > 10 * np.abs(x).max()
    X = p4.analyse(x)  # padded to 6 whole hops: every sample under two windows
    ours = p4.separate(mask[np.arange(len(X)) % len(mask)], X, len(x))
    assert len(ours) == len(x) and np.abs(ours).max() < 2 * np.abs(x).max()


def test_snr_against_a_hand_computation():
    s = np.array([1.0, 2.0, 3.0, 4.0])
    assert p4.snr_db(s, [1, 2, 3, 3]) == pytest.approx(10 * np.log10(30 / 1))  # 14.77 dB
    assert p4.snr_db(s, 0.5 * s) == pytest.approx(10 * np.log10(30 / 7.5))  # 6.02 dB
    assert p4.snr_db(s, 0 * s) == pytest.approx(0.0)  # silence as the estimate: 0 dB


def complex_randn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)).to(torch.complex128)


@pytest.mark.parametrize("power", [0.0, 1.0])
def test_padded_frames_do_not_change_the_loss_or_its_gradient(power):
    torch.manual_seed(0)
    model = p4.GRUMasker(hidden=8, dropout=0.0).double()
    S = [complex_randn(5, 513, seed=1), complex_randn(3, 513, seed=2)]
    N = [complex_randn(5, 513, seed=3), complex_randn(3, 513, seed=4)]

    def loss_and_grad(batch):
        model.zero_grad()
        loss = p4.mask_loss(model, batch, power)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    batch = p4.pad_batch(list(zip(S, N)))
    assert batch[0].shape == (2, 5, 513) and batch[2].tolist() == [5, 3]
    loss, grads = loss_and_grad(batch)
    # the oracle: each sequence's own (unpadded) loss, weighted by its total weight (frames x 513 if power is 0)
    alone = [p4.mask_loss(model, p4.pad_batch([(s, n)]), power).item() for s, n in zip(S, N)]
    total = [((s + n).abs() ** power).sum().item() for s, n in zip(S, N)]
    assert loss.item() == pytest.approx(np.dot(alone, total) / sum(total), rel=1e-12)
    garbage = (batch[0].clone(), batch[1].clone(), batch[2])
    garbage[0][1, 3:], garbage[1][1, 3:] = 1e3 * complex_randn(2, 513, seed=5), complex_randn(2, 513, seed=6)
    loss2, grads2 = loss_and_grad(garbage)
    assert loss2.item() == loss.item()
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2, rtol=0, atol=0)


def test_mixture_is_the_stft_of_the_mixture_and_remix_draws_new_ones():
    rng = np.random.default_rng(0)
    s, n = [rng.standard_normal((3, 8000)).astype(np.float32) * a for a in (0.1, 0.2)]
    S, N = (torch.from_numpy(np.stack([p4.stft(row) for row in sig])) for sig in (s, n))  # (3, 16, 513)
    lengths = torch.tensor([16, 16, 16])
    mag, mask = p4.mixture(S, N, lengths)
    np.testing.assert_allclose(mag[1].numpy(), np.abs(p4.stft(s[1] + n[1])), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(mask[1].numpy(), p4.ideal_binary_mask(S[1].numpy(), N[1].numpy()))
    torch.manual_seed(0)
    mag2, mask2 = p4.mixture(S, N, lengths, remix=True)
    torch.manual_seed(0)  # the same draws in the same order: noise permutation, SNRs, which windows lose bandwidth
    perm, snr = torch.randperm(3), torch.empty(3).uniform_(-5.0, 5.0)
    cut, cutoff = torch.rand(3) < 0.5, torch.empty(3).uniform_(256, 513)
    assert sorted(perm.tolist()) == [0, 1, 2] and ((-5 <= snr) & (snr <= 5)).all()
    for i in range(3):
        noise = N[perm[i]] * torch.sqrt((S[i].abs() ** 2).sum() / (N[perm[i]].abs() ** 2).sum()) * 10 ** (-snr[i] / 20)
        achieved = 10 * torch.log10((S[i].abs() ** 2).sum() / (noise.abs() ** 2).sum())
        assert achieved.item() == pytest.approx(snr[i].item(), abs=1e-3)
        band = torch.sigmoid((cutoff[i] - torch.arange(513)) / 4) if cut[i] else torch.ones(513)
        torch.testing.assert_close(mag2[i], ((S[i] + noise) * band).abs())
        ibm = (S[i].abs() > noise.abs()).float()
        assert torch.equal(mask2[i][:, :250], ibm[:, :250])  # the IBM is unchanged wherever the band passes
    assert cut.any() and not cut.all()  # this seed shows both cases


@pytest.mark.parametrize("frames", [1, 47, 48, 49, 96, 118, 187])
def test_training_windows_cover_every_frame_and_are_full(frames):
    starts = p4.window_starts(frames, 48)
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
    mag, lengths = torch.full((1, 1, 513), 0.01), torch.tensor([1])
    plain = p4.masked_bce(logits, target, lengths, p4.loss_weight(mag, 0))
    mag[0, 0, 0] = 100.0  # the wrong bin is the loud one
    weighted = p4.masked_bce(logits, target, lengths, p4.loss_weight(mag, 1))
    assert plain.item() == pytest.approx(np.log(2) / 513, rel=1e-5)
    assert weighted.item() == pytest.approx(np.log(2) * 100 / (100 + 512 * 0.01), rel=1e-5)


def test_the_gru_mask_is_causal():
    model = tiny_gru()
    mag = torch.rand(2, 20, 513)
    later = mag.clone()
    later[:, 12:] = torch.rand(2, 8, 513)  # change the future only
    with torch.no_grad():
        a, b = model(mag)[0], model(later)[0]
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


# ----------------------------------------------------------------------------- streaming

def test_streaming_window_is_librosas():
    np.testing.assert_allclose(p4.hann(), librosa.filters.get_window("hann", 1024, fftbins=True), atol=1e-7)


@pytest.mark.parametrize("length", [1, 511, 512, 1500, 16000, 40001])
def test_streaming_stft_and_istft_match_librosa(length):
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    X = p4.stft(x)
    stream = p4.StreamingSTFT()
    Xs = np.concatenate([stream.push(x[i:i + 700]) for i in range(0, length, 700)] + [stream.finish()])
    np.testing.assert_allclose(Xs, X, atol=1e-5)
    inverse = p4.StreamingISTFT()
    ys = np.concatenate([inverse.push(X[i:i + 3]) for i in range(0, len(X), 3)] + [inverse.finish()])
    np.testing.assert_allclose(ys[:length], p4.istft(X, length), atol=1e-6)


def test_streaming_equals_whole_file():
    model = tiny_gru(hidden=32)
    x = np.random.default_rng(2).standard_normal(3 * p4.RATE + 123).astype(np.float32) * 0.1
    whole = p4.denoise_signal(model, x, block=len(x))
    assert whole.shape == x.shape
    for block in (1, 700, 8000):
        np.testing.assert_allclose(p4.denoise_signal(model, x, block=block), whole, rtol=1e-5, atol=1e-6)
    # and both equal the training script's path: librosa STFT, the mask over the whole sequence, librosa iSTFT
    X = p4.analyse(x)
    M_hat = p4.predict_masks(model, [np.abs(X)])[0]
    np.testing.assert_allclose(whole, p4.separate(M_hat, X, len(x)), atol=1e-5)


def test_streaming_memory_is_bounded_by_the_block():
    model = tiny_gru()
    seen = []
    model.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0].shape[1]))
    p4.denoise_signal(model, np.zeros(60 * p4.RATE, np.float32), block=p4.RATE // 4)
    assert len(seen) > 200 and max(seen) <= p4.RATE // 4 // p4.HOP + 1  # frames per call, not the whole minute


def test_denoise_file_any_rate_and_stereo(tmp_path):
    model = tiny_gru(hidden=32)
    x = np.random.default_rng(3).standard_normal(2 * 44100 + 77).astype(np.float32) * 0.1
    sf.write(tmp_path / "in.wav", np.stack([x, -0.5 * x], axis=1), 44100, subtype="PCM_16")
    p4.denoise_file(model, tmp_path / "in.wav", tmp_path / "streamed.wav", block_seconds=0.1)
    p4.denoise_file(model, tmp_path / "in.wav", tmp_path / "whole.wav", block_seconds=10.0)
    streamed, rate = sf.read(tmp_path / "streamed.wav", always_2d=True)
    whole, _ = sf.read(tmp_path / "whole.wav", always_2d=True)
    assert rate == 44100 and streamed.shape == (len(x), 1)
    np.testing.assert_allclose(streamed, whole, atol=1.5 / 32768)  # equal up to the 16-bit rounding
    assert np.abs(streamed).max() > 0.001
    # 16 kHz mono: the file path is the in-memory path, up to 16-bit rounding
    y = (0.5 * sine(440, 2.0) + 0.05 * np.random.default_rng(4).standard_normal(32000)).astype(np.float32)
    sf.write(tmp_path / "mono.wav", y, p4.RATE, subtype="FLOAT")
    p4.denoise_file(model, tmp_path / "mono.wav", tmp_path / "mono_out.wav")
    np.testing.assert_allclose(sf.read(tmp_path / "mono_out.wav")[0], p4.denoise_signal(model, y), atol=1.5 / 32768)


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "denoiser.pt"
    p4.save_checkpoint(path, model=tiny_gru().state_dict(), config={"kind": "gru", "hidden": 16, "layers": 1,
                                                                     "dropout": 0.0})
    return path


def bad_inputs(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), p4.RATE)
    (tmp_path / "text.wav").write_text("this is not audio\n" * 100)
    sf.write(tmp_path / "good.wav", sine(300), p4.RATE, subtype="PCM_16")
    (tmp_path / "truncated.wav").write_bytes((tmp_path / "good.wav").read_bytes()[:30])
    return {"empty.wav": "no samples", "text.wav": "not a readable audio file",
            "truncated.wav": "not a readable audio file", "missing.wav": "not found"}


def test_denoise_rejects_bad_input_and_keeps_the_old_output(tmp_path, model_file):
    out = tmp_path / "out.wav"
    out.write_bytes(b"the previous result")
    for name, words in bad_inputs(tmp_path).items():
        with pytest.raises(UserError, match=words):
            p4.main(["denoise", str(tmp_path / name), str(out), "--model", str(model_file)])
        assert out.read_bytes() == b"the previous result"
    (tmp_path / "a_file").write_text("")
    for target, words in ((tmp_path / "a_file" / "out.wav", "cannot write"), (tmp_path, "cannot write"),
                          (tmp_path / "out.mp3", ".wav or .flac")):
        with pytest.raises(UserError, match=words):
            p4.main(["denoise", str(tmp_path / "good.wav"), str(target), "--model", str(model_file)])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    p4.main(["denoise", str(tmp_path / "good.wav"), str(out), "--model", str(model_file)])
    assert sf.info(out).frames == 16000


def test_denoise_cli_one_line_errors(tmp_path, model_file):
    bad_inputs(tmp_path)
    (tmp_path / "corrupt.pt").write_bytes(model_file.read_bytes()[:500])
    proc = run_script("p4_denoise.py", "denoise", tmp_path / "good.wav", tmp_path / "out.wav",
                      "--model", tmp_path / "corrupt.pt")
    assert_clean_error(proc, "corrupt.pt", "not a readable checkpoint")
    assert not (tmp_path / "out.wav").exists()
    proc = run_script("p4_denoise.py", "denoise", tmp_path / "text.wav", tmp_path / "out.wav", "--model", model_file)
    assert_clean_error(proc, "text.wav", "not a readable audio file")


def test_training_data_errors_name_the_file(tmp_path):
    make_data(tmp_path / "d", {"tr": 2, "v": 1, "te": 1})
    sf.write(tmp_path / "d" / "tr" / "trn0001.wav", np.zeros(15999, np.float32), p4.RATE)
    with pytest.raises(UserError, match=r"trx0001\.wav: x, s, n have different lengths"):
        p4.load_split(tmp_path / "d", "tr")
    sf.write(tmp_path / "d" / "tr" / "trn0001.wav", np.zeros(16000, np.float32), 8000)
    with pytest.raises(UserError, match=r"trn0001\.wav is sampled at 8000 Hz"):
        p4.load_split(tmp_path / "d", "tr")
    sf.write(tmp_path / "d" / "tr" / "trn0001.wav", np.zeros((16000, 2), np.float32), p4.RATE)
    with pytest.raises(UserError, match=r"trn0001\.wav has 2 channels"):
        p4.load_split(tmp_path / "d", "tr")
    (tmp_path / "d" / "tr" / "trn0001.wav").unlink()
    with pytest.raises(UserError, match=r"trn0001\.wav not found"):
        p4.load_split(tmp_path / "d", "tr")
    with pytest.raises(UserError, match="no vx"):
        p4.load_split(tmp_path / "d" / "tr", "v")


def test_data_folder_missing_or_built(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="data folder .* not found"):
        p4.ensure_data(tmp_path / "nowhere")
    monkeypatch.setattr(p4, "DEFAULT_DATA", tmp_path / "data" / "hw3")
    monkeypatch.setenv("HW3_SPEECH_SOURCE", str(tmp_path / "no_source"))
    with pytest.raises(UserError, match="HW3_SPEECH_SOURCE"):
        p4.ensure_data(None)
    # a stand-in builder: the data step runs it with this Python and moves its folder into place
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "build_hw3.py").write_text(
        "import sys, pathlib\nfor d in ('tr', 'v', 'te'): (pathlib.Path(sys.argv[1]) / d).mkdir(parents=True)\n")
    monkeypatch.setenv("HW3_SPEECH_SOURCE", str(tmp_path / "source"))
    assert p4.ensure_data(None) == tmp_path / "data" / "hw3"
    assert sorted(p.name for p in (tmp_path / "data" / "hw3").iterdir()) == ["te", "tr", "v"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["hw3"]  # no half-built folder left beside it


# ----------------------------------------------------------------------------- the script

def test_dry_run_end_to_end(tmp_path):
    data = make_data(tmp_path / "hw3")
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    proc = run_script("p4_denoise.py", "--dry-run", "--quiet", "--data-dir", data, "--out", out, "--ckpt-dir", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_json(out / "metrics.json")
    assert metrics["dry_run"] is True and metrics["data"]["files"] == {"tr": 20, "v": 10, "te": 5}
    assert set(metrics["v_snr_db"]) == {"noisy", "fc", "gru", "oracle_ibm"}
    assert metrics["v_snr_db"]["oracle_ibm"]["mean"] > metrics["v_snr_db"]["noisy"]["mean"]
    assert len(metrics["v_snr_db_per_file"]["gru"]) == 10
    for name in ("training_curves.png", "snr_histogram.png", "spectrograms.png", "config.json", "denoiser.pt"):
        assert (out / name).stat().st_size > 0, name
    names = sorted(p.name for p in (out / "te_denoised").iterdir())
    assert names == [f"tex{i:04d}.wav" for i in range(5)]
    assert sorted(zipfile.ZipFile(out / "te_denoised.zip").namelist()) == names
    assert sf.info(out / "te_denoised" / "tex0000.wav").samplerate == p4.RATE
    assert len(list((out / "audio").glob("*.wav"))) == 3 * 3 + 3 * 2
    ckpt_data = torch.load(out / "denoiser.pt", weights_only=True)
    assert set(ckpt_data) == {"model", "config"} and ckpt_data["config"]["kind"] == "gru"

    # the committed-model command, on a stereo 22.05 kHz recording
    sf.write(tmp_path / "talk.wav", np.stack([sine(200, 1.5, rate=22050)] * 2, axis=1), 22050)
    proc = run_script("p4_denoise.py", "denoise", tmp_path / "talk.wav", tmp_path / "clean.wav",
                      "--model", out / "denoiser.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = sf.info(tmp_path / "clean.wav")
    assert (info.samplerate, info.channels, info.frames) == (22050, 1, round(1.5 * 22050))

    # a re-run reuses both finished models and gives the same numbers
    proc = run_script("p4_denoise.py", "--dry-run", "--quiet", "--data-dir", data, "--out", out, "--ckpt-dir", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("reusing the finished") == 2
    assert read_json(out / "metrics.json")["v_snr_db"] == metrics["v_snr_db"]


def test_benchmark_dry_run(tmp_path, model_file):
    proc = run_script("benchmarks/p4_realtime.py", "--dry-run", "--model", model_file, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_json(tmp_path / "benchmark.json")
    assert report["dry_run"] is True and report["threads"] == 1
    assert {"stream_16k_mono_1s_blocks", "file_16k_mono_wav", "file_44.1k_stereo_wav"} <= set(report["cases"])
    assert all(case["rtf_cpu"] > 0 for case in report["cases"].values())


def test_training_is_deterministic(tmp_path):
    data_dir = make_data(tmp_path / "hw3", {"tr": 10, "v": 4, "te": 1})
    data = {split: p4.load_split(data_dir, split) for split in ("tr", "v")}
    runs = []
    for name in ("a", "b"):
        args = p4.get_args(["--hidden", "16", "--epochs", "2", "--batch-size", "4", "--quiet",
                            "--ckpt-dir", str(tmp_path / name), "--out", str(tmp_path / name)])
        args.ckpt_dir.mkdir()
        model, config, history = p4.train_masker("gru", data, args, torch.device("cpu"), "test-data")
        runs.append(([{k: v for k, v in h.items() if k != "train_seconds"} for h in history], model.state_dict()))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) == 2
    for key, value in runs[0][1].items():
        torch.testing.assert_close(value, runs[1][1][key], rtol=0, atol=0)
