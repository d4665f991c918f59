"""`denoise` never writes garbage with exit code 0, and every failure is one line (issue 11).

The fuzz test corrupts a wav, a flac and an mp3 (written here) in many seeded ways and runs the command in-process
(the same `run_cli` as the command line) on each: the outcome must be either a finite output of the input's
length and rate (exit 0) or exactly one `error: ...` line (exit 2), with no file left behind.
"""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import p4_denoise as p4
from common import denoiser
from common.audio import decoder_warnings_silenced
from common.train import save_checkpoint
from common.utils import ROOT, run_cli

CONFIG = {"kind": "gru", "hidden": 8, "proj": 8, "dropout": 0.0, "alpha": 0.98, "running_mean": True}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "denoiser.pt"
    save_checkpoint(path, model=denoiser.build_masker(CONFIG).state_dict(), config={"model": CONFIG})
    return path


def denoise(argv, capfd):
    """Run `p4_denoise.py denoise ARGV` in-process as the command line would: (exit code, stdout, stderr lines)."""
    try:
        run_cli(lambda: p4.main(["denoise", *map(str, argv)]))
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # run_cli installs its handlers; give pytest its own back
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    out, err = capfd.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(code, err, *words):
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    for word in words:
        assert word in err[0], err[0]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- the cases the issue lists

def test_a_nan_or_inf_sample_is_refused(tmp_path, model_file, capfd):
    for bad in (np.nan, np.inf, -np.inf):
        x = np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32)
        x[1000] = bad
        sf.write(tmp_path / "bad.wav", x, 16000, subtype="FLOAT")
        code, _, err = denoise([tmp_path / "bad.wav", tmp_path / "out.wav", "--model", model_file], capfd)
        assert_one_line_error(code, err, "bad.wav", "non-finite sample", "0.062 s")
        assert not (tmp_path / "out.wav").exists() and leftovers(tmp_path) == []


def test_a_cut_mp3_is_an_error_not_uninitialised_memory(tmp_path, model_file, capfd):
    sf.write(tmp_path / "a.mp3", np.random.default_rng(0).normal(0, 0.1, 26000), 16000)
    data = (tmp_path / "a.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[:len(data) // 2])
    code, _, err = denoise([tmp_path / "cut.mp3", tmp_path / "out.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, "cut.mp3", "ends after", "26,000")  # and no decoder warnings around it
    assert not (tmp_path / "out.wav").exists() and leftovers(tmp_path) == []


def test_a_damaged_or_non_finite_model_is_refused(tmp_path, model_file, capfd):
    sf.write(tmp_path / "in.wav", np.zeros(8000, np.float32), 16000)
    data = bytearray(model_file.read_bytes())
    rng = np.random.default_rng(0)
    middle = len(data) // 2
    for i in rng.integers(middle - 2000, middle + 2000, 500):
        data[i] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", tmp_path / "flipped.pt"], capfd)
    assert_one_line_error(code, err, "flipped.pt")
    assert "damaged" in err[0] or "not a readable checkpoint" in err[0]
    weights = denoiser.build_masker(CONFIG).state_dict()
    weights["out.bias"][3] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", model=weights, config={"model": CONFIG})
    code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", tmp_path / "nan.pt"], capfd)
    assert_one_line_error(code, err, "nan.pt", "non-finite weights")
    for bad in ({**CONFIG, "hidden": -5}, {**CONFIG, "hidden": "abc"}, {**CONFIG, "kind": "transformer"},
                {**CONFIG, "colour": "blue"}):
        save_checkpoint(tmp_path / "odd.pt", model=weights, config={"model": bad})
        code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", tmp_path / "odd.pt"], capfd)
        assert_one_line_error(code, err, "odd.pt" if bad.get("kind") == "gru" and "colour" not in bad else "")
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_denoise_with_one_line_and_nothing_half_written(tmp_path, model_file, sig, code):
    sf.write(tmp_path / "long.wav", np.random.default_rng(0).normal(0, 0.1, 16000 * 600).astype(np.float32), 16000)
    (tmp_path / "out.wav").write_bytes(b"the previous result")
    proc = subprocess.Popen([sys.executable, "p4_denoise.py", "denoise", tmp_path / "long.wav", tmp_path / "out.wav",
                             "--model", model_file, "--block-seconds", "0.5"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not leftovers(tmp_path) and time.time() < deadline:  # wait until it writes its temporary file
        time.sleep(0.05)
    assert leftovers(tmp_path), "denoise never started writing"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stopped by"), err
    assert leftovers(tmp_path) == [] and (tmp_path / "out.wav").read_bytes() == b"the previous result"


def test_flags_and_headers_that_would_explode_are_refused(tmp_path, model_file, capfd):
    sf.write(tmp_path / "in.wav", np.zeros(8000, np.float32), 16000)
    for flags, words in ((["--block-seconds", "inf"], "--block-seconds"), (["--block-seconds", "1e9"], "0.01 to 60"),
                         (["--threads", "100000"], "--threads"), (["--threads", "0"], "--threads")):
        code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", model_file, *flags], capfd)
        assert_one_line_error(code, err, words)
    # a 32 KB file whose header says 1 Hz: refused at once, not upsampled 16,000 times
    sf.write(tmp_path / "slow.wav", np.zeros(16000, np.int16), 8000, subtype="PCM_16")
    data = bytearray((tmp_path / "slow.wav").read_bytes())
    data[24:28] = (1).to_bytes(4, "little")  # the sample rate field of the fmt chunk
    (tmp_path / "slow.wav").write_bytes(bytes(data))
    started = time.time()
    code, _, err = denoise([tmp_path / "slow.wav", tmp_path / "out.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, "slow.wav", "1 Hz")
    assert time.time() - started < 5
    assert not (tmp_path / "out.wav").exists()


def test_small_things(tmp_path, model_file, capfd):
    x = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    sf.write(tmp_path / "in.wav", x, 16000)
    original = (tmp_path / "in.wav").read_bytes()
    # OUT == IN is refused unless asked for
    code, _, err = denoise([tmp_path / "in.wav", tmp_path / "in.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, "is the input itself", "--overwrite-input")
    assert (tmp_path / "in.wav").read_bytes() == original
    code, _, _ = denoise([tmp_path / "in.wav", tmp_path / "in.wav", "--model", model_file, "--overwrite-input"], capfd)
    assert code == 0 and sf.info(tmp_path / "in.wav").frames == 8000
    # a folder given as the input of the IN OUT form
    code, _, err = denoise([tmp_path, tmp_path / "out.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, "is a folder")
    # float input far outside [-1, 1] is refused; slightly outside is clipped, and the output says so
    sf.write(tmp_path / "loud.wav", 100 * x, 16000, subtype="FLOAT")
    code, _, err = denoise([tmp_path / "loud.wav", tmp_path / "out.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, "loud.wav", "far outside [-1, 1]")
    ones = denoiser.build_masker(CONFIG).state_dict()
    ones["out.weight"].zero_(), ones["skip.weight"].zero_(), ones["out.bias"].fill_(20), ones["skip.bias"].fill_(20)
    save_checkpoint(tmp_path / "ones.pt", model=ones, config={"model": CONFIG})  # a mask of 1: the input comes back
    sf.write(tmp_path / "hot.wav", 1.5 * x / np.abs(x).max(), 16000, subtype="FLOAT")
    code, out, err = denoise([tmp_path / "hot.wav", tmp_path / "out.wav", "--model", tmp_path / "ones.pt"], capfd)
    assert code == 0 and err == [] and "samples clipped to [-1, 1]" in out


def test_script_flags_fail_in_one_line(capfd):
    import make_report
    import p1_svd
    import p2_factorized
    import p3_svd_ste
    import p5_draw
    cases = [(p4.main, ["--seed", "4294967296"], "--seed"), (p4.main, ["--seed", "-1"], "--seed"),
             (p4.main, ["--dropout", "1"], "--dropout"), (p4.main, ["--speeds", "0.9,x"], "--speeds"),
             (p4.main, ["--lr", "nan"], "--lr"), (p4.main, ["--epochs", "inf"], "--epochs"),
             (p5_draw.main, ["--dry-run", "--seed", "4294967296"], "4294967296"),
             (p1_svd.main, ["--seeds", "0"], "--seeds"),
             (p2_factorized.main, ["--lr", "inf"], "--lr"), (p3_svd_ste.main, ["--rank", "-3"], "--rank"),
             (make_report.main, ["--results", "/nonexistent/folder"], "/nonexistent/folder")]
    for main, argv, word in cases:
        try:
            run_cli(lambda: main(argv))
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and word in err[0], (argv, err)


# ----------------------------------------------------------------------------- the fuzz test

def corruptions(path, rng, count):
    """`count` seeded corruptions of the bytes of `path`: (name, bytes)."""
    data = path.read_bytes()
    is_wav = data[:4] == b"RIFF"
    for k in range(count):
        kind = k % 6
        d = bytearray(data)
        if kind == 0:  # cut anywhere, header included
            d = d[:rng.integers(0, len(d))]
        elif kind == 1:  # a few flipped bytes anywhere
            for i in rng.integers(0, len(d), rng.integers(1, 20)):
                d[i] ^= 1 << rng.integers(0, 8)
        elif kind == 2:  # flipped bytes in the header
            for i in rng.integers(0, min(64, len(d)), rng.integers(1, 6)):
                d[i] = rng.integers(0, 256)
        elif kind == 3 and is_wav:  # a header that lies: rate, channels, or data size
            field = rng.choice(["rate", "channels", "size"])
            if field == "rate":
                rate = rng.choice([0, 1, 100, 3999, 384001, 2**31 - 1, rng.integers(0, 2**32)])
                d[24:28] = int(rate).to_bytes(4, "little")
            elif field == "channels":
                d[22:24] = int(rng.choice([0, 3, 65, 1000, 65535])).to_bytes(2, "little")
            else:
                d[40:44] = int(rng.integers(0, 2**32)).to_bytes(4, "little")
        elif kind == 4:  # a long run of garbage in the middle
            start = rng.integers(0, len(d))
            d[start:start + 2000] = rng.integers(0, 256, min(2000, len(d) - start), dtype=np.uint8).tobytes()
        else:  # bytes appended, or the file doubled
            d = d + (d if rng.random() < 0.5 else rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
        yield f"{path.stem}_{k:03d}{path.suffix}", bytes(d)


def float_oddities(folder, rng):
    """Float wavs with NaN, Inf, huge values, and many channels; and extreme rates written honestly."""
    base = rng.normal(0, 0.1, 8000).astype(np.float32)
    cases = {"nan.wav": np.where(rng.random(8000) < 0.01, np.nan, base),
             "inf.wav": np.where(rng.random(8000) < 0.001, np.inf, base),
             "huge.wav": base * 1e6, "denormal.wav": base * 1e-40}
    for name, x in cases.items():
        sf.write(folder / name, x.astype(np.float32), 16000, subtype="FLOAT")
    sf.write(folder / "channels40.wav", np.tile(base[:, None], (1, 40)), 16000, subtype="FLOAT")
    sf.write(folder / "channels70.wav", np.tile(base[:, None], (1, 70)), 16000, subtype="FLOAT")
    for rate in (4000, 8000, 96000, 192000, 384000):
        sf.write(folder / f"rate{rate}.wav", base, rate, subtype="PCM_16")
    return sorted(folder.glob("*.wav"))


def test_fuzz_every_corruption_ends_in_a_good_file_or_one_line(tmp_path, model_file, capfd):
    rng = np.random.default_rng(1234)
    originals = tmp_path / "originals"
    originals.mkdir()
    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(12000) / 16000) + rng.normal(0, 0.05, 12000)).astype(np.float32)
    sf.write(originals / "a.wav", x, 16000, subtype="PCM_16")
    sf.write(originals / "a.flac", x, 16000)
    sf.write(originals / "a.mp3", x, 16000)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = []
    for original, count in ((originals / "a.wav", 90), (originals / "a.flac", 60), (originals / "a.mp3", 60)):
        for name, data in corruptions(original, rng, count):
            (inputs / name).write_bytes(data)
            paths.append(inputs / name)
    paths += float_oddities(inputs, rng)
    assert len(paths) >= 200
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    started, outcomes = time.time(), {0: 0, 2: 0}
    for path in paths:
        out = outputs / f"{path.name}.wav"
        code, _, err = denoise([path, out, "--model", model_file], capfd)
        outcomes[code] = outcomes.get(code, 0) + 1
        if code == 0:
            assert err == [], (path.name, err)
            with decoder_warnings_silenced():  # reading a damaged mp3 here would print to this test's stderr
                info = sf.info(path)
            y = sf.read(out, dtype="float32", always_2d=True)[0]
            written = sf.info(out)
            assert (written.samplerate, written.channels, written.frames) == (info.samplerate, 1, info.frames), \
                path.name
            assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
        else:
            assert_one_line_error(code, err, path.name)
            assert not out.exists(), path.name
        assert leftovers(outputs) == [], path.name
    assert set(outcomes) == {0, 2} and min(outcomes.values()) > 20, outcomes  # both outcomes really happen
    assert time.time() - started < 60
