"""`denoise` never writes garbage with exit code 0, never touches an input, and every failure is one line.

Each listed case of a careful user's session has a test here: outputs that would replace another input, paths the
user may not search or read, writes that fail, a stdout that dies, names at the file system's limit, stereo and
antiphase recordings, checkpoints whose config asks for gigabytes, files cut short, permissions of a replaced
file, temporary files a SIGKILL left, misleading messages. The fuzz test corrupts a wav, a flac and an mp3 in many
seeded ways and runs the command in-process (the same `run_cli` as the command line) on each: the outcome must be
either a finite output of the input's length, rate and channels (exit 0) or exactly one `error: ...` line (exit 2),
with no file left behind and no input changed. Cases that need a process of their own (dropped capabilities, a
file size limit, a dead stdout, peak memory) run through `DRIVER`, one process for many cases.
"""
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import p4_denoise as p4
from common.speech import data as speech_data
from common.cli import run_cli
from common.files import ROOT
from common.speech import denoise as denoise_module
from common.speech.audio import decoder_warnings_silenced
from common.train import save_checkpoint
from conftest import UNPRIVILEGED, needs_setpriv

CONFIG = {"kind": "gru", "hidden": 8, "proj": 8, "dropout": 0.0, "alpha": 0.98, "running_mean": True}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "denoiser.pt"
    save_checkpoint(path, model=p4.build_masker(CONFIG).state_dict(), config={"model": CONFIG})
    return path


def denoise(argv, capfd):
    """Run `p4_denoise.py denoise ARGV` in-process as the command line would: (exit code, stdout, stderr lines)."""
    try:
        run_cli(lambda: p4.main(["denoise", *map(str, argv)]))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(code, err, *words):
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    for word in words:
        assert word in err[0], err[0]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def noise(seconds, channels=1, seed=0, rate=16000):
    x = np.random.default_rng(seed).normal(0, 0.1, (round(seconds * rate), channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def digest(*paths):
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


# Runs `p4_denoise.py denoise` cases in one process, as the command line would, and reports for each the exit code
# (or "traceback"), its stderr lines and, at the end, this process's peak memory. A case may give the command a
# dead stdout (a pipe whose reader is gone: `| head -0`; or /dev/full) or a file size limit (`ulimit -f`).
DRIVER = r"""
import contextlib, io, json, os, resource, sys
sys.path.insert(0, os.getcwd())
import p4_denoise as p4
from common.cli import run_cli
cases, results = json.loads(sys.argv[1]), []
for case in cases:
    saved, err = os.dup(1), io.StringIO()
    if case.get("stdout") == "closed":
        reader, writer = os.pipe()
        os.close(reader)
        os.dup2(writer, 1)
        os.close(writer)
    elif case.get("stdout") == "full":
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, 1)
        os.close(full)
    else:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if case.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], limit[1]))
    try:
        with contextlib.redirect_stderr(err):
            run_cli(lambda: p4.main(case["argv"]))
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code = "traceback"
        err.write(f"{type(e).__name__}: {e}")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    results.append({"code": code, "err": [line for line in err.getvalue().splitlines() if line.strip()]})
# VmHWM: this process's own peak. (ru_maxrss would also count the parent's: Linux keeps the largest resident set
# of the memory a process replaced at exec, and subprocess's vfork makes that pytest's, gigabytes late in a suite.)
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak = int(status.split()[0]) * 1024
with open(os.environ["DRIVER_OUT"], "w") as f:
    json.dump({"results": results, "peak_bytes": peak}, f)
"""


def drive(cases, tmp_path, prefix=()):
    """Run the `denoise` cases [{"argv": [...], "stdout": None | "closed" | "full", "fsize": bytes}] in one driver
    process (behind `prefix`, e.g. setpriv): ([{"code", "err"}], peak memory in bytes)."""
    for case in cases:
        case["argv"] = ["denoise", *map(str, case["argv"])]
    report = tmp_path / "driver.json"
    proc = subprocess.run([*prefix, sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "DRIVER_OUT": str(report)})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    result = json.loads(report.read_text())
    return result["results"], result["peak_bytes"]


def assert_error(result, *words):
    assert result["code"] == 2 and len(result["err"]) == 1 and result["err"][0].startswith("error: "), result
    for word in words:
        assert word in result["err"][0], (word, result["err"][0])


# ----------------------------------------------------------------------------- no input is ever written

def test_no_output_replaces_another_input(tmp_path, model_file, capfd):
    d = tmp_path / "D"
    d.mkdir()
    sf.write(d / "song.wav", noise(0.5, seed=1), 16000, subtype="PCM_16")
    sf.write(d / "song.flac", noise(0.7, seed=2), 16000)
    before = digest(d / "song.wav", d / "song.flac")
    code, out, err = denoise([d, "--out-dir", d, "--model", model_file], capfd)  # both would be D/song.wav
    assert code == 2 and len(err) == 2 and all(line.startswith("error: ") for line in err), err
    assert "would replace the input" in err[0] and "is the input itself" in err[1]
    assert digest(d / "song.wav", d / "song.flac") == before and sorted(p.name for p in d.iterdir()) == \
        ["song.flac", "song.wav"]
    # with --overwrite-input, song.wav may become its own denoised version, never song.flac's
    code, out, err = denoise([d, "--out-dir", d, "--model", model_file, "--overwrite-input"], capfd)
    assert code == 2 and len(err) == 1 and "song.flac" in err[0] and "would replace the input" in err[0]
    assert sf.info(d / "song.wav").frames == 8000 and digest(d / "song.flac") == before[1:]
    # X/a.flac Y/a.wav --out-dir Y: X/a.flac's output is Y's input
    (tmp_path / "X").mkdir(), (tmp_path / "Y").mkdir()
    sf.write(tmp_path / "X" / "a.flac", noise(0.5, seed=3), 16000)
    sf.write(tmp_path / "Y" / "a.wav", noise(0.5, seed=4), 16000, subtype="PCM_16")
    before = digest(tmp_path / "Y" / "a.wav")
    code, _, err = denoise([tmp_path / "X" / "a.flac", tmp_path / "Y" / "a.wav", "--out-dir", tmp_path / "Y",
                            "--model", model_file], capfd)
    assert code == 2 and len(err) == 2 and digest(tmp_path / "Y" / "a.wav") == before
    # another spelling of the same folder (a symbolic link) is the same folder
    (tmp_path / "Ylink").symlink_to(tmp_path / "Y")
    code, _, err = denoise([tmp_path / "X" / "a.flac", tmp_path / "Y" / "a.wav", "--out-dir", tmp_path / "Ylink",
                            "--model", model_file], capfd)
    assert code == 2 and "would replace the input" in err[0] and "is the input itself" in err[1]
    assert digest(tmp_path / "Y" / "a.wav") == before and leftovers(tmp_path / "Y") == []
    # two outputs in one place: the first is written, the second refused, before anything is written
    code, out, err = denoise([tmp_path / "X" / "a.flac", tmp_path / "D" / "song.flac", tmp_path / "X" / "a.flac",
                              "--out-dir", tmp_path / "out", "--model", model_file], capfd)
    assert code == 2 and len(err) == 1 and "would both be written to" in err[0] and "2 of 3" in out


# ----------------------------------------------------------------------------- one line, never a traceback

@needs_setpriv
@pytest.mark.slow  # subprocesses as an unprivileged user
def test_paths_the_user_may_not_search_or_read(tmp_path, model_file):
    sf.write(tmp_path / "in.wav", noise(0.3), 16000, subtype="PCM_16")
    for folder in ("locked", "model_locked", "readonly"):
        (tmp_path / folder).mkdir()
    shutil.copy(tmp_path / "in.wav", tmp_path / "locked" / "in.wav")
    shutil.copy(model_file, tmp_path / "model_locked" / "denoiser.pt")
    shutil.copy(tmp_path / "in.wav", tmp_path / "noread.wav")
    shutil.copy(model_file, tmp_path / "noread.pt")
    for path, mode in (("locked", 0), ("model_locked", 0), ("noread.wav", 0), ("noread.pt", 0), ("readonly", 0o555)):
        os.chmod(tmp_path / path, mode)
    m = ["--model", model_file]
    cases = [{"argv": [tmp_path / "locked" / "in.wav", tmp_path / "o1.wav", *m]},
             {"argv": [tmp_path / "in.wav", tmp_path / "locked" / "out.wav", *m]},
             {"argv": [tmp_path / "in.wav", "--out-dir", tmp_path / "locked" / "o", *m]},
             {"argv": [tmp_path / "locked", tmp_path / "in.wav", "--out-dir", tmp_path / "o4", *m]},
             {"argv": [tmp_path / "in.wav", tmp_path / "o5.wav", "--model", tmp_path / "model_locked" / "denoiser.pt"]},
             {"argv": [tmp_path / "noread.wav", tmp_path / "o6.wav", *m]},
             {"argv": [tmp_path / "in.wav", tmp_path / "o7.wav", "--model", tmp_path / "noread.pt"]},
             {"argv": [tmp_path / "in.wav", "--out-dir", tmp_path / "readonly", *m]}]
    try:
        results, _ = drive(cases, tmp_path, prefix=UNPRIVILEGED)
    finally:
        for path in ("locked", "model_locked", "readonly"):
            os.chmod(tmp_path / path, 0o755)
    assert_error(results[0], "locked/in.wav", "permission denied")
    assert_error(results[1], "locked/out.wav", "permission denied")
    assert_error(results[2], "locked/o", "permission denied")
    assert_error(results[3], "cannot list folder", "locked")  # and the other input is still done:
    assert (tmp_path / "o4" / "in.wav").is_file()
    assert_error(results[4], "model_locked/denoiser.pt", "permission denied")
    assert_error(results[5], "cannot read", "noread.wav", "Permission denied")
    assert_error(results[6], "cannot read model", "noread.pt", "Permission denied")
    assert_error(results[7], "cannot write", "readonly/in.wav", "Permission denied")
    assert not any((tmp_path / f"o{k}.wav").exists() for k in (1, 5, 6, 7))


@pytest.mark.slow  # three subprocesses
def test_a_failing_write_a_dead_stdout_and_an_oversized_model_config(tmp_path, model_file):
    (tmp_path / "in").mkdir()
    for k in range(4):
        sf.write(tmp_path / "in" / f"r{k}.wav", noise(0.3, seed=k), 16000, subtype="PCM_16")
    sf.write(tmp_path / "big.wav", noise(10), 16000, subtype="PCM_16")  # 320 KB of output
    (tmp_path / "mix").mkdir()
    shutil.copy(tmp_path / "big.wav", tmp_path / "mix" / "big.wav")
    shutil.copy(tmp_path / "in" / "r0.wav", tmp_path / "mix" / "small.wav")
    (tmp_path / "old.wav").write_bytes(b"the previous result")
    # a checkpoint of a small model whose config says hidden = proj = 12000 (a 4 GB model)
    weights = torch.load(model_file, weights_only=True)["model"]
    save_checkpoint(tmp_path / "huge.pt", model=weights, config={"model": {**CONFIG, "hidden": 12000, "proj": 12000}})
    m = ["--model", model_file]
    results, peak = drive([
        {"argv": [tmp_path / "big.wav", tmp_path / "old.wav", *m], "fsize": 100_000},
        {"argv": [tmp_path / "mix", "--out-dir", tmp_path / "mix_out", *m], "fsize": 100_000},
        {"argv": [tmp_path / "in", "--out-dir", tmp_path / "pipe_out", *m], "stdout": "closed"},
        {"argv": [tmp_path / "in", "--out-dir", tmp_path / "full_out", *m], "stdout": "full"},
        {"argv": [tmp_path / "in" / "r0.wav", tmp_path / "huge_out.wav", "--model", tmp_path / "huge.pt"]},
    ], tmp_path)
    assert_error(results[0], "cannot write", "old.wav", "file size limit")
    assert (tmp_path / "old.wav").read_bytes() == b"the previous result" and leftovers(tmp_path) == []
    assert_error(results[1], "mix_out/big.wav")  # and the other file is still done
    assert (tmp_path / "mix_out" / "small.wav").is_file() and leftovers(tmp_path / "mix_out") == []
    for result, folder in ((results[2], "pipe_out"), (results[3], "full_out")):  # every file, then one line
        assert_error(result, "stdout failed", "4 of 4 recordings denoised")
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [f"r{k}.wav" for k in range(4)]
    assert_error(results[4], "huge.pt", "proj.1.weight")
    assert peak < 1.5e9, f"peak memory {peak / 1e9:.2f} GB"


def test_names_at_the_file_system_limit(tmp_path, model_file, capfd):
    sf.write(tmp_path / "in.wav", noise(0.3), 16000, subtype="PCM_16")
    longest = tmp_path / ("n" * 251 + ".wav")  # 255 bytes: legal, and its temporary name must be too
    code, _, err = denoise([tmp_path / "in.wav", longest, "--model", model_file], capfd)
    assert code == 0 and err == [] and sf.info(longest).frames == 4800 and leftovers(tmp_path) == []
    too_long = "o" * 252 + ".wav"  # 256 bytes
    for args in ([tmp_path / too_long, tmp_path / "out.wav"], [tmp_path / "in.wav", tmp_path / too_long]):
        code, _, err = denoise([*args, "--model", model_file], capfd)
        assert_one_line_error(code, err, "too long")
    # the folder form: an input of 255 bytes whose output name would be 256
    shutil.copy(tmp_path / "in.wav", tmp_path / ("a" * 252 + ".au"))
    (tmp_path / "ok").mkdir()
    code, _, err = denoise([tmp_path / ("a" * 252 + ".au"), tmp_path / "in.wav", "--out-dir", tmp_path / "ok",
                            "--model", model_file], capfd)
    assert code == 2 and len(err) == 1 and "too long" in err[0] and [p.name for p in (tmp_path / "ok").iterdir()] == \
        ["in.wav"]


def test_misleading_messages_are_fixed(tmp_path, model_file, capfd):
    sf.write(tmp_path / "in.wav", noise(0.3), 16000, subtype="PCM_16")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for model, words in ((tmp_path / "fifo", "is a FIFO"), ("/dev/null", "is a device"),
                         (tmp_path / "loop", "symbolic link loop"), (tmp_path, "is a folder"),
                         (tmp_path / "in.wav", "is a sound file")):
        code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", model], capfd)
        assert_one_line_error(code, err, str(model), words)
        assert "not found" not in err[0] and "delete it" not in err[0]
    code, _, err = denoise([tmp_path / "fifo", tmp_path / "out.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, "fifo", "is a FIFO")
    code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", model_file, "--thread", "2"], capfd)
    assert_one_line_error(code, err, "--thread")  # no prefix matching: --thread is not --threads
    code, err = 0, []
    try:
        run_cli(lambda: p4.main(["--epoch", "2"]))
    except SystemExit as e:
        code, err = e.code, [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert_one_line_error(code, err, "--epoch")
    assert not (tmp_path / "out.wav").exists()


# ----------------------------------------------------------------------------- channels

def test_channels_are_kept_and_antiphase_stereo_comes_back(tmp_path, model_file, capfd):
    t = np.arange(16000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    x = speech + noise(1.0, seed=5) * 0.3
    for name, recording in (("mono", x), ("stereo", np.stack([x, 0.5 * x], 1)), ("antiphase", np.stack([x, -x], 1)),
                            ("three", np.stack([x, x, -x], 1))):
        sf.write(tmp_path / f"{name}.wav", recording, 16000, subtype="FLOAT")
        code, out, err = denoise([tmp_path / f"{name}.wav", tmp_path / f"{name}_out.wav", "--model", model_file],
                                 capfd)
        assert code == 0 and err == [], err
    mono = sf.read(tmp_path / "mono_out.wav", always_2d=True)[0][:, 0]
    outputs = {name: sf.read(tmp_path / f"{name}_out.wav", always_2d=True)[0]
               for name in ("stereo", "antiphase", "three")}
    assert [y.shape for y in outputs.values()] == [(16000, 2), (16000, 2), (16000, 3)]
    # one mask for every channel: the channels keep their balance and sign ...
    np.testing.assert_allclose(outputs["stereo"][:, 1], 0.5 * outputs["stereo"][:, 0], atol=1 / 32768)
    # ... and where every channel has the same magnitudes, each is the mono result (antiphase: not silence)
    for name, gains in (("antiphase", [1, -1]), ("three", [1, 1, -1])):
        for channel, gain in enumerate(gains):
            np.testing.assert_allclose(outputs[name][:, channel], gain * mono, atol=1 / 32768)
    snr = {name: 10 * np.log10((speech ** 2).sum() / ((speech - y) ** 2).sum())
           for name, y in (("mono", mono), ("antiphase", outputs["antiphase"][:, 0]))}
    assert abs(snr["antiphase"] - snr["mono"]) < 1.0, snr


@pytest.mark.skipif(not (ROOT / "results" / "p4" / "denoiser.pt").is_file(),
                    reason="needs the committed model results/p4/denoiser.pt")
def test_the_trained_model_gives_antiphase_speech_back(tmp_path, capfd):
    v = speech_data.ensure_data(None) / "v"  # a clean clone builds data/hw3 from ../shared here
    x, s = sf.read(v / "vx0001.wav", dtype="float32")[0], sf.read(v / "vs0001.wav", dtype="float32")[0]
    sf.write(tmp_path / "mono.wav", x, 16000, subtype="FLOAT")
    sf.write(tmp_path / "anti.wav", np.stack([x, -x], 1), 16000, subtype="FLOAT")
    for name in ("mono", "anti"):
        code, _, err = denoise([tmp_path / f"{name}.wav", tmp_path / f"{name}_out.wav"], capfd)
        assert code == 0, err
    snr = {name: [10 * np.log10((s ** 2).sum() / ((gain * s - y) ** 2).sum()) for gain, y in zip(
        (1, -1), sf.read(tmp_path / f"{name}_out.wav", always_2d=True)[0].T)] for name in ("mono", "anti")}
    assert snr["mono"][0] > 3 and all(abs(value - snr["mono"][0]) < 1.0 for value in snr["anti"]), snr


# ----------------------------------------------------------------------------- files cut short, permissions, leftovers

@pytest.mark.parametrize("fmt, subtype, name", [("WAV", "PCM_16", "cut.wav"), ("OGG", "VORBIS", "cut.ogg"),
                                                ("AIFF", "PCM_16", "cut.aiff"), ("AU", "PCM_16", "cut.au"),
                                                ("W64", "PCM_16", "cut.w64")])
def test_a_file_cut_short_is_an_error_not_a_shorter_recording(tmp_path, model_file, capfd, fmt, subtype, name):
    sf.write(tmp_path / "whole", noise(10, channels=2), 16000, format=fmt, subtype=subtype)
    data = (tmp_path / "whole").read_bytes()
    (tmp_path / name).write_bytes(data[:len(data) // 2])
    code, _, err = denoise([tmp_path / name, tmp_path / "out.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, name, "cut short")
    assert not (tmp_path / "out.wav").exists() and leftovers(tmp_path) == []


def test_a_replaced_output_keeps_its_permissions_and_a_read_only_one_is_refused(tmp_path, model_file, capfd):
    sf.write(tmp_path / "in.wav", noise(0.3), 16000, subtype="PCM_16")
    for mode in (0o600, 0o640):
        (tmp_path / "out.wav").write_bytes(b"old")
        os.chmod(tmp_path / "out.wav", mode)
        code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", model_file], capfd)
        assert code == 0 and stat.S_IMODE(os.stat(tmp_path / "out.wav").st_mode) == mode
    os.chmod(tmp_path / "out.wav", 0o444)
    before = digest(tmp_path / "out.wav")
    code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, "out.wav", "read-only")
    assert digest(tmp_path / "out.wav") == before
    code, _, err = denoise([tmp_path / "in.wav", tmp_path / "new.wav", "--model", model_file], capfd)
    umask = os.umask(0)
    os.umask(umask)
    assert code == 0 and stat.S_IMODE(os.stat(tmp_path / "new.wav").st_mode) == 0o666 & ~umask


def test_temporary_files_of_a_killed_run_are_removed(tmp_path, model_file, capfd):
    sf.write(tmp_path / "long.wav", noise(600), 16000)
    proc = subprocess.Popen([sys.executable, "p4_denoise.py", "denoise", tmp_path / "long.wav",
                             tmp_path / "o" / "a.wav", "--model", model_file, "--block-seconds", "0.5"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not ((tmp_path / "o").is_dir() and leftovers(tmp_path / "o")) and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, the temporary file stays
    proc.wait()
    assert leftovers(tmp_path / "o"), "denoise never started writing"
    live = tmp_path / "o" / f".denoise-{os.getpid()}-inprogress.tmp"  # a live writer's file (this process) stays
    live.write_bytes(b"")
    sf.write(tmp_path / "short.wav", noise(0.3), 16000)
    code, _, err = denoise([tmp_path / "short.wav", tmp_path / "o" / "b.wav", "--model", model_file], capfd)
    assert code == 0 and leftovers(tmp_path / "o") == [live.name]


# ----------------------------------------------------------------------------- earlier cases

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
    weights = p4.build_masker(CONFIG).state_dict()
    weights["out.bias"][3] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", model=weights, config={"model": CONFIG})
    code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", tmp_path / "nan.pt"], capfd)
    assert_one_line_error(code, err, "nan.pt", "non-finite weights")
    for bad in ({**CONFIG, "hidden": -5}, {**CONFIG, "hidden": "abc"}, {**CONFIG, "kind": "transformer"},
                {**CONFIG, "colour": "blue"}):
        save_checkpoint(tmp_path / "odd.pt", model=weights, config={"model": bad})
        code, _, err = denoise([tmp_path / "in.wav", tmp_path / "out.wav", "--model", tmp_path / "odd.pt"], capfd)
        assert_one_line_error(code, err, "odd.pt")  # every config error names the checkpoint
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("sig, code, form", [pytest.param(signal.SIGTERM, 143, "in-out", marks=pytest.mark.slow),
                                             (signal.SIGTERM, 143, "out-dir"),
                                             pytest.param(signal.SIGINT, 130, "in-out", marks=pytest.mark.slow)])
def test_a_signal_ends_denoise_with_one_line_and_nothing_half_written(tmp_path, model_file, sig, code, form):
    sf.write(tmp_path / "long.wav", np.random.default_rng(0).normal(0, 0.1, 16000 * 600).astype(np.float32), 16000)
    sf.write(tmp_path / "short.wav", noise(0.3), 16000)
    (tmp_path / "long_out.wav").write_bytes(b"the previous result")
    if form == "in-out":
        folder, paths = tmp_path, [tmp_path / "long.wav", tmp_path / "long_out.wav"]
    else:  # long.wav, then short.wav: the signal comes during the first
        folder, paths = tmp_path / "out", [tmp_path / "long.wav", tmp_path / "short.wav", "--out-dir", tmp_path / "out"]
        folder.mkdir()
    proc = subprocess.Popen([sys.executable, "p4_denoise.py", "denoise", *paths, "--model", model_file,
                             "--block-seconds", "0.5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not leftovers(folder) and time.time() < deadline:  # wait until it writes its temporary file
        time.sleep(0.05)
    assert leftovers(folder), "denoise never started writing"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code  # the folder form stops too: the signal is not one file's error
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stopped by"), err
    assert leftovers(folder) == [] and (tmp_path / "long_out.wav").read_bytes() == b"the previous result"
    assert not (tmp_path / "out" / "short.wav").exists()


def test_a_symlink_loop_in_a_folder_fails_alone_and_a_name_that_is_not_utf8_is_read(tmp_path, model_file, capfd):
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", noise(0.3), 16000, subtype="PCM_16")
    odd = tmp_path / "in" / os.fsdecode(b"caf\xe9.wav")  # Latin-1, as an old system names it
    shutil.copy(tmp_path / "in" / "a.wav", odd)
    os.symlink("loop.wav", tmp_path / "in" / "loop.wav")
    code, out, err = denoise([tmp_path / "in", "--out-dir", tmp_path / "out", "--model", model_file], capfd)
    assert code == 2 and len(err) == 1 and "loop.wav: it is a symbolic link loop" in err[0], err
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["a.wav", odd.name]) and "2 of 3 recordings denoised" in out
    code, out, err = denoise([odd, tmp_path / "one.wav", "--model", model_file], capfd)
    assert code == 0 and err == [] and sf.info(tmp_path / "one.wav").frames == 4800, err
    assert (tmp_path / "one.wav").read_bytes() == (tmp_path / "out" / "a.wav").read_bytes()


def test_a_te_zip_at_a_folder_is_refused_before_any_denoising(tmp_path, model_file, capfd, monkeypatch):
    (tmp_path / "d" / "te").mkdir(parents=True)
    sf.write(tmp_path / "d" / "te" / "tex0000.wav", noise(0.3), 16000, subtype="PCM_16")
    (tmp_path / "te.zip").mkdir()
    denoised = []
    monkeypatch.setattr(denoise_module, "denoise_file", lambda *args: denoised.append(args))
    try:
        run_cli(lambda: p4.main(["te-zip", str(tmp_path / "te.zip"), "--data-dir", str(tmp_path / "d"), "--model",
                                 str(model_file)]))
        code = 0
    except SystemExit as e:
        code = e.code
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert_one_line_error(code, err, "te.zip: it is a folder")
    assert not denoised and (tmp_path / "te.zip").is_dir()


def test_flags_and_headers_that_would_explode_are_refused(tmp_path, model_file, capfd, monkeypatch):
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
    resampled = []  # refused from its header: no resampler is ever built for it, and no sample decoded
    monkeypatch.setattr(denoise_module.soxr, "ResampleStream", lambda *a, **k: resampled.append(a))
    code, _, err = denoise([tmp_path / "slow.wav", tmp_path / "out.wav", "--model", model_file], capfd)
    assert_one_line_error(code, err, "slow.wav", "1 Hz")
    assert resampled == []
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
    ones = p4.build_masker(CONFIG).state_dict()
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
    before = digest(*paths)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    outcomes = {0: 0, 2: 0}
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
            assert (written.samplerate, written.channels, written.frames) == (info.samplerate, info.channels,
                                                                              info.frames), path.name
            assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
        else:
            assert_one_line_error(code, err, path.name)
            assert not out.exists(), path.name
        if path.stem.startswith("a_") and int(path.stem[2:]) % 6 == 0:  # cut short (see `corruptions`): an error
            assert code == 2, path.name
        assert leftovers(outputs) == [], path.name
    assert digest(*paths) == before  # no input changed
    assert set(outcomes) == {0, 2} and min(outcomes.values()) > 20, outcomes  # both outcomes really happen
