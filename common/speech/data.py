"""Problem 4's speech data in the course's layout: tr/, v/ and te/ folders of 16 kHz wavs named by split and role
(tr/trx0000.wav the mixture, trs0000.wav its speech, trn0000.wav its noise; te holds mixtures only), as in the
course's homework3.zip. `ensure_data` builds data/hw3 from the shared recordings when it is missing.

What training draws its mixtures from: the distinct speech recordings (at some speeds) cut into windows
(`SpeechWindows`), and the noise recordings (`NoisePool`); p4_denoise.py mixes them anew at every step.
"""
import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soxr
import torch
from torch import nn

from ..cli import UserError, stops_deferred
from ..files import DATA_DIR, ROOT, file_kind
from .stft import RATE

SPLITS = ("tr", "v", "te")
DEFAULT_DATA = DATA_DIR / "hw3"
SILENT = 1e-4  # a peak below this (-80 dBFS) is silence
# files NNN0..NNN9 are one sentence under ten kinds of noise, in this order in build_hw3.py's data (its README);
# the course's own data has ten kinds of its own
NOISE_TYPES = ["babble", "birds", "boat engine", "cafe", "city street", "exercise bike", "kitchen dishes", "music",
               "rain", "wind"]


def ensure_data(data_dir):
    """The data folder; `None` means data/hw3, built from the shared recordings when it is missing.

    The build goes to a temporary folder that becomes data/hw3 only when complete; a stop or a failure removes it.
    Two first runs at once: one builds (under a lock, data/.hw3.lock), the other waits for it, then uses its result."""
    if data_dir is not None:
        if file_kind(data_dir) != "a folder":
            raise UserError(f"data folder {data_dir} not found; pass --data-dir with the homework-3 speech data "
                            f"(tr/, v/, te/), or leave it out to build data/hw3")
        return data_dir
    if file_kind(DEFAULT_DATA) == "a folder":
        return DEFAULT_DATA
    source = Path(os.environ.get("HW3_SPEECH_SOURCE", ROOT.parent / "shared" / "data" / "hw3"))
    builder = source / "build_hw3.py"
    if file_kind(builder) != "file":
        raise UserError(f"no speech data in {DEFAULT_DATA} and no {builder} to build it from; set "
                        f"HW3_SPEECH_SOURCE to the folder holding build_hw3.py, or pass --data-dir with the "
                        f"course's homework3 data")
    with _build_lock(DEFAULT_DATA.with_name(f".{DEFAULT_DATA.name}.lock")):
        if file_kind(DEFAULT_DATA) == "a folder":  # another run built it meanwhile
            return DEFAULT_DATA
        for stale in DEFAULT_DATA.parent.glob(f".{DEFAULT_DATA.name}.building-*"):  # a killed build's: the lock is ours
            shutil.rmtree(stale, ignore_errors=True)
        building = DEFAULT_DATA.with_name(f".{DEFAULT_DATA.name}.building-{os.getpid()}")
        print(f"[p4] building {DEFAULT_DATA} from {source} (about 10 s, 600 MB)", flush=True)
        try:
            proc = subprocess.run([sys.executable, str(builder), str(building)], capture_output=True, text=True)
            if proc.returncode != 0:
                reason = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
                raise UserError(f"building the speech data with {builder} failed: {reason}")
            os.replace(building, DEFAULT_DATA)  # a half-built folder never looks like data
        finally:
            with stops_deferred():  # removed whole, whatever comes meanwhile (nothing once it is data/hw3)
                shutil.rmtree(building, ignore_errors=True)
    return DEFAULT_DATA


@contextlib.contextmanager
def _build_lock(path):
    """An exclusive lock on `path` (flock): the one run holding it builds; another waits here, and a stop while it
    waits stops it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot build the speech data in {path.parent}: {e.strerror}; pass --data-dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[p4] waiting for another run that is building {DEFAULT_DATA}", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and with it the lock


def check_mixture(path, x, s, n):
    """A mixture x = s + n and its speech and noise as read from `path` (tr or v): equally long, and neither part
    silent (peak below -80 dBFS, a few 16-bit steps), since the SNR of a file with silent speech is undefined and
    that of one with silent noise infinite. Each problem is a one-line error naming the file."""
    if not len(x) == len(s) == len(n):
        raise UserError(f"{path}: x, s, n have different lengths ({len(x)}, {len(s)}, {len(n)} samples); "
                        f"each mixture needs its speech and noise of the same length")
    for role, part in (("s", s), ("n", n)):
        if not np.abs(part).max() >= SILENT:
            what = "speech is silent, so its SNR is undefined" if role == "s" else "noise is silent: no noise to remove"
            raise UserError(f"{source_path(path, role)}: the {what} (peak below -80 dBFS); remove {path.name} and its "
                            f"speech and noise from {path.parent}, or replace them")


def split_paths(data_dir, split):
    """The mixtures of one split, sorted: data_dir/split/{split}x*.wav (an error when there are none)."""
    folder = Path(data_dir) / split
    paths = sorted(folder.glob(f"{split}x*.wav")) if file_kind(folder) == "a folder" else []
    if not paths:
        raise UserError(f"no {split}x*.wav files in {folder}; the data folder needs tr/, v/ and te/ "
                        f"as in the course's homework3.zip")
    return paths


def source_path(mixture, role):
    """The speech ('s') or noise ('n') file beside a mixture: v/vx0012.wav -> v/vs0012.wav."""
    split = mixture.parent.name
    return mixture.with_name(mixture.name.replace(f"{split}x", f"{split}{role}", 1))


# ----------------------------------------------------------------------------- what training mixes

def distinct_speech(files):
    """The training set's distinct recordings of speech: the course's data has each sentence under ten kinds of
    noise (trs NNN0..NNN9 hold the same speech, some scaled down), and a speech recording used ten times in one
    epoch is worth once. Two are the same if equally long and correlated above 0.999."""
    kept = []
    for f in files:
        s = f["s"].astype(np.float64)
        if not any(len(u) == len(s) and (u @ s) ** 2 > 0.999 * (u @ u) * (s @ s) for u in kept):
            kept.append(s)
    return [s.astype(np.float32) for s in kept]


def at_speed(s, speed):
    """s played `speed` times faster (higher and shorter; soxr resampling): a new voice from a recorded one."""
    return s if speed == 1 else soxr.resample(s, RATE * speed, RATE).astype(np.float32)


def speed_list(text):
    """The argparse type of --speeds: speeds in [0.5, 2], comma-separated (see `at_speed`)."""
    try:
        speeds = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected speeds like 0.9,1.0,1.1, got {text!r}")
    if not all(0.5 <= s <= 2 for s in speeds):
        raise argparse.ArgumentTypeError(f"speeds must lie in [0.5, 2], got {text!r}")
    return speeds


def window_starts(frames, crop):
    """0, crop, 2 crop, ... and a last window that ends on the last frame: every frame covered, every window
    `crop` long (a recording shorter than that is one window)."""
    return [0] if frames <= crop else list(range(0, frames - crop, crop)) + [frames - crop]


class SpeechWindows(torch.utils.data.Dataset):
    """The speech STFTs (frames, 513) cut into windows of `crop` frames, each used `repeats` times per epoch; each
    use is one training mixture (with its own noise, drawn in `mask_loss`).

    The windows are fixed: all randomness (the shuffle, and the noise and SNR in `mixture`) comes from the seeded
    RNG that `fit` checkpoints, so a resumed run continues exactly. The models start each window from zero.
    """

    def __init__(self, spectra, crop, repeats=1):
        self.spectra = [torch.from_numpy(S) for S in spectra]
        self.windows = [(k, t) for k, S in enumerate(spectra) for t in window_starts(len(S), crop)]
        self.crop, self.repeats = crop, repeats

    def __len__(self):
        return len(self.windows) * self.repeats

    def __getitem__(self, i):
        k, t = self.windows[i % len(self.windows)]
        return self.spectra[k][t:t + self.crop]


def pad_batch(items):
    """[S of (frames_i, 513)] -> S (batch, max frames, 513) zero-padded, and the lengths (batch,)."""
    return nn.utils.rnn.pad_sequence(items, batch_first=True), torch.tensor([len(S) for S in items])


class NoisePool:
    """Every training noise recording's STFT; `draw` takes a random stretch of a random one for each mixture."""

    def __init__(self, spectra):
        self.spectra = [torch.from_numpy(N) for N in spectra]

    def draw(self, batch, frames):
        """(batch, frames, 513): from a random recording, `frames` frames from a random start, wrapping around."""
        picks = torch.randint(len(self.spectra), (batch,)).tolist()
        starts = torch.rand(batch).tolist()
        noise = []
        for k, u in zip(picks, starts):
            N = self.spectra[k]
            noise.append(N[(int(u * len(N)) + torch.arange(frames)) % len(N)])
        return torch.stack(noise)  # on the CPU: the same random draws on any device
