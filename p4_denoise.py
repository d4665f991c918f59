"""Problem 4: a causal GRU speech denoiser that predicts the ideal binary mask, and a `denoise` command.

Each mixture x = s + n becomes its STFT X (1024-point Hann window, hop 512: 513 bins per frame). The
target is the ideal binary mask M = 1 where |S| > |N|, else 0. A one-way GRU reads the log magnitudes
frame by frame and predicts M_hat in [0, 1], so the mask at frame t uses frames 1..t only (equation 12);
the recovered speech is the inverse STFT of M_hat (.) X. A fully-connected net that sees one frame at a
time is the homework's baseline; the noisy input and the oracle IBM (built from the true sources) bound
the scale. Score: SNR = 10 log10(sum s^2 / sum (s - s_hat)^2) per `v` file, averaged.

Both models get the same features (standardised log |X|), loss and data: binary cross-entropy against the
IBM with each bin weighted by |X| (the loud bins are the ones the SNR counts), on windows of the training
files remixed every epoch (each speech window with a random noise window at a random SNR, half of them
band-limited; see `mixture`). Validation and test run the recurrence over whole files.

    python p4_denoise.py                          # data + GRU + FC baseline + references + te output + figures
    python p4_denoise.py --dry-run                # a handful of files, one epoch each, in seconds
    python p4_denoise.py denoise IN.wav OUT.wav   # denoise any recording with results/p4/denoiser.pt

The data step builds the course's layout into data/hw3 from ../shared/data/hw3 when it is missing (or from
$HW3_SPEECH_SOURCE); with the course's own homework3 folder, pass --data-dir. Writes results/p4/
{metrics.json, config.json, *.png, audio/*.wav, denoiser.pt, te_denoised/, te_denoised.zip} and the
training checkpoints checkpoints/p4_{gru,fc}.pt (reused when finished with the same config).
`denoise` accepts any sample rate (resampled to 16 kHz and back) and mixes stereo to mono; it streams the
file in blocks that carry the GRU state and the STFT overlaps, so memory stays flat for any length and
the result equals the whole-file result.
"""
import argparse
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from torch import nn

from common.plot import plt, save_figure
from common.train import fit, init_distributed, is_main, load_checkpoint, load_finished, save_checkpoint
from common.utils import (ROOT, ArgumentParser, UserError, add_common_args, atomic_path, fraction, goal,
                          nonnegative_int, pick_device, positive_float, positive_int, resolve_dirs, run_cli, save_config,
                          save_json, seed_everything, shown_path)

RATE, N_FFT, HOP = 16000, 1024, 512
BINS = N_FFT // 2 + 1  # 513
EPS = 1e-5  # floor under |X| before the log (|X| of a full-scale sine is about 256)
SPLITS = ("tr", "v", "te")  # folders, and the files' prefixes (tr/trx0000.wav), as in the course's homework3.zip
DEFAULT_DATA = ROOT / "data" / "hw3"
# files NNN0..NNN9 are one sentence under ten kinds of noise; these are build_hw3.py's (its README),
# the course's own data has ten kinds of its own
NOISE_TYPES = ["babble", "birds", "boat engine", "cafe", "city street", "exercise bike", "kitchen dishes", "music",
               "rain", "wind"]
DEFAULT_MODEL = ROOT / "results" / "p4" / "denoiser.pt"


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0],
                       epilog="`python p4_denoise.py denoise --help` describes the denoise command.")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="homework-3 speech data with tr/, v/, te/ (default: data/hw3, built when missing)")
    p.add_argument("--hidden", type=positive_int, default=256, help="GRU state size")
    p.add_argument("--layers", type=positive_int, default=1, help="stacked GRU layers")
    p.add_argument("--dropout", type=fraction, default=0.1, help="dropout on the GRU's input and output")
    p.add_argument("--fc-hidden", type=positive_int, default=512, help="width of the FC baseline's hidden layers")
    p.add_argument("--fc-layers", type=positive_int, default=2, help="hidden layers of the FC baseline")
    p.add_argument("--epochs", type=positive_int, default=15, help="GRU training epochs")
    p.add_argument("--fc-epochs", type=positive_int, default=15, help="FC baseline training epochs")
    p.add_argument("--loss-power", type=fraction, default=1.0,
                   help="weight each bin's BCE by |X|^power (1: loud bins count more, as in the SNR; 0: plain BCE)")
    p.add_argument("--remix", action=argparse.BooleanOptionalAction, default=True,
                   help="train on new mixtures every epoch: each speech window with a random noise window of the "
                        "batch at a random SNR in [-5, 5] dB (--no-remix: the given mixtures only)")
    p.add_argument("--crop", type=positive_int, default=96,
                   help="training files are cut into windows of this many frames (validation uses whole files)")
    p.add_argument("--fc-crop", type=positive_int, default=48,
                   help="the FC baseline's windows: it sees frames one by one, so this only sets the frames per "
                        "step; 48 gives it the optimizer steps it needs (with 96 it ends about 0.3 dB lower)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="windows per mini-batch")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="peak AdamW learning rate (one-cycle schedule)")
    p.add_argument("--weight-decay", type=fraction, default=0.01, help="AdamW weight decay")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed of both models")
    add_common_args(p, out="results/p4")
    args = p.parse_args(argv)
    if args.dropout >= 1:
        p.error(f"--dropout must be below 1, got {args.dropout}")
    return args


# ----------------------------------------------------------------------------- 1. data

def ensure_data(data_dir):
    """The data folder; `None` means data/hw3, built from the shared recordings when it is missing."""
    if data_dir is not None:
        if not data_dir.is_dir():
            raise UserError(f"data folder {data_dir} not found; pass --data-dir with the homework-3 speech data "
                            f"(tr/, v/, te/), or leave it out to build data/hw3")
        return data_dir
    if DEFAULT_DATA.is_dir():
        return DEFAULT_DATA
    source = Path(os.environ.get("HW3_SPEECH_SOURCE", ROOT.parent / "shared" / "data" / "hw3"))
    builder = source / "build_hw3.py"
    if not builder.is_file():
        raise UserError(f"no speech data in {DEFAULT_DATA} and no {builder} to build it from; set "
                        f"HW3_SPEECH_SOURCE to the folder holding build_hw3.py, or pass --data-dir with the "
                        f"course's homework3 data")
    building = DEFAULT_DATA.with_name(f".{DEFAULT_DATA.name}.building-{os.getpid()}")
    print(f"[p4] building {DEFAULT_DATA} from {source} (about 10 s, 600 MB)", flush=True)
    proc = subprocess.run([sys.executable, str(builder), str(building)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        reason = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"building the speech data with {builder} failed: {reason}")
    os.replace(building, DEFAULT_DATA)  # a half-built folder never looks like data
    return DEFAULT_DATA


def read_audio(path):
    """(samples float32 (time, channels), sample rate); a one-line error for anything that is not audio."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        x, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise UserError(f"{path} is not a readable audio file ({str(e).strip().splitlines()[-1][:100]})")
    if len(x) == 0:
        raise UserError(f"{path} holds no samples")
    return x, rate


def read_wav(path):
    """A 16 kHz mono training/validation/test file as float32 (time,); anything else is a clear error."""
    x, rate = read_audio(path)
    if rate != RATE:
        raise UserError(f"{path} is sampled at {rate} Hz; the homework's data is {RATE} Hz "
                        f"(resample it, or use `p4_denoise.py denoise` for single recordings)")
    if x.shape[1] != 1:
        raise UserError(f"{path} has {x.shape[1]} channels; the homework's data is mono")
    return x[:, 0]


def stft(x):
    """The homework's STFT: (frames, 513) complex64 for a float32 signal (time,)."""
    return librosa.stft(x, n_fft=N_FFT, hop_length=HOP, window="hann").T


def istft(Y, length):
    """Inverse of `stft`, cut or zero-padded to `length` samples."""
    return librosa.istft(Y.T, n_fft=N_FFT, hop_length=HOP, window="hann", length=length)


def analyse(x):
    """The STFT the denoiser works on: `stft` of x with zeros appended up to a whole number of hops."""
    return stft(np.pad(x, (0, -len(x) % HOP)))


def separate(M_hat, X, length):
    """The recovered speech: the inverse STFT of M_hat (.) X (the noisy phase), cut to `length` samples.

    X comes from `analyse`, so every sample lies under two windows. Without that padding, librosa.istft
    divides the last partial hop by the tail of one squared window (down to 1e-10): exact for an unchanged
    STFT, but a loud click at the end of a masked one (metrics.json shows what it costs in SNR).
    """
    return istft(M_hat * X, length + (-length % HOP))[:length]


def ideal_binary_mask(S, N):
    """M = 1 where the speech is louder than the noise in that time-frequency bin, else 0 (float32)."""
    return (np.abs(S) > np.abs(N)).astype(np.float32)


def snr_db(s, s_hat):
    """10 log10(sum s^2 / sum (s - s_hat)^2), in float64."""
    s, s_hat = np.asarray(s, np.float64), np.asarray(s_hat, np.float64)
    return float(10 * np.log10(np.sum(s ** 2) / np.sum((s - s_hat) ** 2)))


def load_split(data_dir, split, limit=None, digest=None):
    """Every mixture of one split: dicts with name, x, X = analyse(x), mag = |X|, and (v) s, IBM; tr: S, N.

    Checks the sample rate, mono, and that x, s, n have equal lengths (naming the file otherwise).
    `digest` (a hashlib object) is fed every waveform, so the config can pin the exact data.
    """
    folder = data_dir / split
    names = sorted(p.name for p in folder.glob(f"{split}x*.wav")) if folder.is_dir() else []
    if not names:
        raise UserError(f"no {split}x*.wav files in {folder}; the data folder needs tr/, v/ and te/ "
                        f"as in the course's homework3.zip")
    files = []
    for name in names[:limit]:
        x = read_wav(folder / name)
        X = analyse(x)
        item = {"name": name, "x": x, "X": X, "mag": np.abs(X)}  # X, mag: (frames, 513)
        if split != "te":
            s, n = (read_wav(folder / name.replace(f"{split}x", f"{split}{tag}", 1)) for tag in "sn")
            if not len(x) == len(s) == len(n):
                raise UserError(f"{folder / name}: x, s, n have different lengths ({len(x)}, {len(s)}, {len(n)} "
                                f"samples); each mixture needs its speech and noise of the same length")
            S, N = analyse(s), analyse(n)
            item.update(s=s, mask=ideal_binary_mask(S, N))
            if split == "tr":  # training mixes S + N itself (see `mixture`): keep only those
                item = {"name": name, "S": S, "N": N}
        if digest is not None:
            digest.update(name.encode() + x.tobytes())
        files.append(item)
    return files


# ----------------------------------------------------------------------------- 2. models

def log_features(mag, mean, std):
    """Standardised log magnitude: the same scale for every bin, computed per frame (so still causal)."""
    return (torch.log(mag + EPS) - mean) / std


class GRUMasker(nn.Module):
    """|X| frames -> mask logits with a one-way GRU: the mask at frame t depends on frames 1..t only.

    Beside the GRU, a linear path takes each frame's features straight to its logits, so the GRU's state
    has to carry only what the frame alone does not tell (the noise so far, the speech so far); it learns
    faster and better than the GRU alone (see the report).
    """

    def __init__(self, hidden=256, layers=1, dropout=0.1):
        super().__init__()
        self.register_buffer("mean", torch.zeros(BINS))  # log|X| statistics of the training set, per bin
        self.register_buffer("std", torch.ones(BINS))
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.GRU(BINS, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden, BINS)
        self.skip = nn.Linear(BINS, BINS)

    def forward(self, mag, state=None):
        """mag (batch, frames, 513) -> logits (batch, frames, 513), and the GRU state to continue from."""
        z = self.drop(log_features(mag, self.mean, self.std))  # (batch, frames, 513)
        h, state = self.rnn(z, state)  # (batch, frames, hidden)
        return self.out(self.drop(h)) + self.skip(z), state


class FCMasker(nn.Module):
    """The homework's baseline: a fully-connected net that masks each frame from that frame alone."""

    def __init__(self, hidden=512, layers=2, dropout=0.1):
        super().__init__()
        self.register_buffer("mean", torch.zeros(BINS))
        self.register_buffer("std", torch.ones(BINS))
        widths = [BINS] + [hidden] * layers
        blocks = [nn.Sequential(nn.Dropout(dropout), nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths, widths[1:])]
        self.net = nn.Sequential(*blocks, nn.Dropout(dropout), nn.Linear(widths[-1], BINS))

    def forward(self, mag, state=None):
        """mag (batch, frames, 513) -> logits (batch, frames, 513); no state (kept for the same interface)."""
        return self.net(log_features(mag, self.mean, self.std)), None


def build_model(config):
    """A masker from its config dict {'kind': 'gru' | 'fc', 'hidden', 'layers', 'dropout'}."""
    kinds = {"gru": GRUMasker, "fc": FCMasker}
    if config.get("kind") not in kinds:
        raise UserError(f"unknown model kind {config.get('kind')!r} in the checkpoint")
    return kinds[config["kind"]](config["hidden"], config["layers"], config["dropout"])


def masked_bce(logits, target, lengths, weight=None):
    """Binary cross-entropy against the IBM over the real frames only (frame t < length), each bin weighted
    by `weight` (batch, frames, 513) if given: a weighted mean, so padded frames carry no weight at all."""
    valid = (torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None])[..., None]
    w = valid.to(logits.dtype) if weight is None else weight * valid  # (batch, frames, 1 or 513)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (w * bce).sum() / w.expand_as(bce).sum()


def loss_weight(mag, power):
    """|X|^power: with power 1 a bin counts in proportion to its magnitude, as in the SNR; 0 counts all alike."""
    return None if power == 0 else mag ** power


# ----------------------------------------------------------------------------- 3. training

def window_starts(frames, crop):
    """0, crop, 2 crop, ... and a last window that ends on the last frame: every frame covered, every window
    `crop` long (a file shorter than that is one window)."""
    return [0] if frames <= crop else list(range(0, frames - crop, crop)) + [frames - crop]


class Segments(torch.utils.data.Dataset):
    """Training files as windows of `crop` frames: the STFTs (S, N) of speech and noise, each (crop, 513).

    The windows are fixed; all randomness (the shuffle, and the remix in `mixture`) comes from the seeded
    RNG that `fit` checkpoints, so a resumed run continues exactly. The GRU starts each window from zero.
    """

    def __init__(self, files, crop):
        self.files = [(torch.from_numpy(f["S"]), torch.from_numpy(f["N"])) for f in files]
        self.windows = [(k, t) for k, f in enumerate(files) for t in window_starts(len(f["S"]), crop)]
        self.crop = crop

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        k, t = self.windows[i]
        S, N = self.files[k]
        return S[t:t + self.crop], N[t:t + self.crop]


def pad_batch(items):
    """[(S, N) of (frames_i, 513)] -> S, N (batch, max frames, 513) zero-padded, lengths (batch,)."""
    S, N = zip(*items)
    pad = functools.partial(nn.utils.rnn.pad_sequence, batch_first=True)
    return pad(S), pad(N), torch.tensor([len(x) for x in S])


def mixture(S, N, lengths, remix=False, snr_range=(-5.0, 5.0)):
    """|X| and the IBM of the mixtures X = S + N, each (batch, frames, 513).

    With `remix`, each speech window gets the noise of a random window of the same batch, scaled to a
    random SNR drawn uniformly from `snr_range` (the data's own range): X = S + g N' is exactly the STFT
    of s + g n' (the STFT is linear), so every epoch sees new mixtures of the same recordings at no cost.
    And half the windows lose their top frequencies, as a recording resampled to 16 kHz (or made at a
    lower rate) does: a smooth low-pass from a random cutoff between 4 and 8 kHz, on speech and noise
    alike, which leaves the IBM as it was; without it the GRU loses dB on such recordings.
    """
    valid = (torch.arange(S.shape[1], device=S.device)[None, :] < lengths.to(S.device)[:, None])[..., None]
    if remix:
        N = (N * valid)[torch.randperm(len(N)).to(S.device)]  # zero beyond each noise's own end, then shuffle
        power_S = (S.abs() ** 2 * valid).sum((1, 2))
        power_N = (N.abs() ** 2 * valid).sum((1, 2)).clamp_min(1e-12)
        snr = torch.empty(len(S)).uniform_(*snr_range).to(S.device)
        N = N * (torch.sqrt(power_S / power_N) * 10 ** (-snr / 20))[:, None, None]
        cutoff = torch.where(torch.rand(len(S)) < 0.5, torch.empty(len(S)).uniform_(BINS // 2, BINS), torch.inf)
        band = torch.sigmoid((cutoff[:, None] - torch.arange(BINS)) / 4).to(S.device)[:, None, :]  # (batch, 1, 513)
        S, N = S * band, N * band
    return (S + N).abs(), (S.abs() > N.abs()).to(S.real.dtype)


def mask_loss(model, batch, power=1.0, remix=False):
    """The training objective: the |X|^power-weighted BCE of the predicted mask against the IBM."""
    S, N, lengths = batch
    mag, mask = mixture(S, N, lengths, remix)
    return masked_bce(model(mag)[0], mask, lengths, loss_weight(mag, power))


@torch.no_grad()
def predict_masks(model, mags, batch_size=32):
    """Soft masks M_hat (frames, 513) for each |X| (frames, 513), the recurrence over each whole file."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(mags)), key=lambda i: len(mags[i]))  # similar lengths together: little padding
    masks = [None] * len(mags)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = nn.utils.rnn.pad_sequence([torch.from_numpy(mags[i]) for i in idx], batch_first=True)
        # padding sits after each file's last frame, so it cannot reach a causal model's real frames
        probs = torch.sigmoid(model(batch.to(device))[0]).cpu().numpy()
        for row, i in zip(probs, idx):
            masks[i] = row[:len(mags[i])]
    model.train(was_training)
    return masks


def score(model, files, power=1.0, batch_size=32):
    """Per-file validation numbers: the training loss (weighted BCE against the IBM) and the SNR of the
    recovered speech."""
    masks = predict_masks(model, [f["mag"] for f in files], batch_size)
    loss = []
    for M_hat, f in zip(masks, files):
        bce = F.binary_cross_entropy(torch.from_numpy(M_hat), torch.from_numpy(f["mask"]), reduction="none")
        w = loss_weight(torch.from_numpy(f["mag"]), power)
        loss.append((bce.mean() if w is None else (w * bce).sum() / w.sum()).item())
    snr = [snr_db(f["s"], separate(M_hat, f["X"], len(f["s"]))) for M_hat, f in zip(masks, files)]
    return {"loss": np.array(loss), "snr": np.array(snr), "masks": masks}


def train_masker(kind, data, args, device, fingerprint):
    """Train (or reuse) the GRU or the FC baseline on `tr`, keeping the epoch with the best `v` SNR."""
    hidden, layers, epochs, crop = ((args.hidden, args.layers, args.epochs, args.crop) if kind == "gru"
                                    else (args.fc_hidden, args.fc_layers, args.fc_epochs, args.fc_crop))
    model_config = {"kind": kind, "hidden": hidden, "layers": layers, "dropout": args.dropout}
    config = {**model_config, "epochs": epochs, "loss_power": args.loss_power, "remix": args.remix, "crop": crop,
              "batch_size": args.batch_size, "lr": args.lr,
              "weight_decay": args.weight_decay, "seed": args.seed, "data": fingerprint}
    path = args.ckpt_dir / f"p4_{kind}.pt"
    seed_everything(args.seed)
    model = build_model(model_config)
    done = load_finished(path, config)
    if done is not None:
        model.load_state_dict(done["best_model"])
        if is_main():
            print(f"[p4] reusing the finished {kind} model {path}")
        return model.to(device).eval(), model_config, done["history"]

    log_mag = torch.log(torch.from_numpy(np.concatenate([np.abs(f["S"] + f["N"]) for f in data["tr"]])) + EPS)
    model.mean.copy_(log_mag.mean(0))
    model.std.copy_(log_mag.std(0))
    model.to(device)
    train_set = Segments(data["tr"], crop)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = epochs * -(-len(train_set) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)

    def validate(m):
        numbers = score(m, data["v"], args.loss_power)
        return {"val_loss": float(numbers["loss"].mean()), "val_snr": float(numbers["snr"].mean())}

    loss_fn = functools.partial(mask_loss, power=args.loss_power, remix=args.remix)
    history = fit(model, loss_fn, optimizer, train_set, epochs=epochs, batch_size=args.batch_size, seed=args.seed,
                  validate=validate, monitor="val_snr", mode="max", scheduler=scheduler, clip_grad=1.0,
                  collate_fn=pad_batch, ckpt_path=path, resume=args.resume, config=config, device=device,
                  desc=f"p4 {kind}", quiet=args.quiet)
    return model.eval(), model_config, history


# ----------------------------------------------------------------------------- 4. streaming denoiser

def hann():
    """The periodic Hann window librosa uses (float32, 1024 points), without librosa's slow first import."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


class StreamingSTFT:
    """`stft` one block of samples at a time: frame t covers samples [512 t - 512, 512 t + 512), zero outside."""

    def __init__(self):
        self.window = hann()
        self.buffer = np.zeros(HOP, np.float32)  # the centre padding before the first sample

    def push(self, x):
        """Append samples (time,); return the frames (k, 513) that are now complete."""
        self.buffer = np.concatenate([self.buffer, np.asarray(x, np.float32)])
        k = max(0, (len(self.buffer) - N_FFT) // HOP + 1)
        if k == 0:
            return np.zeros((0, BINS), np.complex64)
        frames = np.lib.stride_tricks.sliding_window_view(self.buffer, N_FFT)[::HOP][:k]  # (k, 1024)
        X = np.fft.rfft(frames * self.window, axis=1).astype(np.complex64)
        self.buffer = self.buffer[k * HOP:]
        return X

    def finish(self):
        """The last frames, with the centre padding after the last sample."""
        return self.push(np.zeros(HOP, np.float32))


class StreamingISTFT:
    """`istft` one block of frames at a time: windowed overlap-add divided by the overlap-added squared
    window (where it is not ~0), without the first 512 samples (the centre padding). Hop = half a frame,
    so output block j (512 samples) is the first half of frame j plus the second half of frame j - 1."""

    def __init__(self):
        self.window = hann()
        self.carry = np.zeros(HOP, np.float32)  # second half of the last frame: not final until the next one
        self.carry_norm = np.zeros(HOP, np.float32)
        self.skip = HOP

    def _emit(self, y, norm):
        nonzero = norm > np.finfo(np.float32).tiny
        y[nonzero] /= norm[nonzero]
        y, self.skip = y[self.skip:], max(0, self.skip - len(y))
        return y

    def push(self, Y):
        """Frames (k, 513) -> the k * 512 samples that no later frame can change."""
        if len(Y) == 0:
            return np.zeros(0, np.float32)
        frames = np.fft.irfft(Y, n=N_FFT, axis=1).astype(np.float32) * self.window  # (k, 1024)
        first, second = frames[:, :HOP], frames[:, HOP:]
        w2 = self.window ** 2
        y = first.copy()
        y[0] += self.carry
        y[1:] += second[:-1]
        norm = np.tile(w2[:HOP], (len(Y), 1))
        norm[0] += self.carry_norm
        norm[1:] += w2[HOP:]
        self.carry, self.carry_norm = second[-1].copy(), w2[HOP:].copy()
        return self._emit(y.reshape(-1), norm.reshape(-1))

    def finish(self):
        """The second half of the last frame."""
        y = self._emit(self.carry.copy(), self.carry_norm.copy())
        self.carry[:], self.carry_norm[:] = 0, 0
        return y


class StreamingDenoiser:
    """Denoise a 16 kHz signal block by block. The GRU state and the STFT/iSTFT overlaps carry from one
    block to the next, so the output equals the whole-signal result and memory is bounded by the block."""

    def __init__(self, model):
        self.model = model.eval()
        self.state = None
        self.stft, self.istft = StreamingSTFT(), StreamingISTFT()
        self.pushed = self.emitted = 0

    @torch.no_grad()
    def _apply(self, X):
        if len(X) == 0:
            return np.zeros(0, np.float32)
        logits, self.state = self.model(torch.from_numpy(np.abs(X))[None], self.state)  # (1, k, 513)
        return self.istft.push(torch.sigmoid(logits)[0].numpy() * X)

    def push(self, x):
        """Samples in (time,); the denoised samples that are final so far out (at most 1024 behind)."""
        self.pushed += len(x)
        y = self._apply(self.stft.push(x))
        self.emitted += len(y)
        return y

    def finish(self):
        """The rest, so that the whole output is exactly as long as the input (padded as in `analyse`)."""
        X = np.concatenate([self.stft.push(np.zeros(-self.pushed % HOP, np.float32)), self.stft.finish()])
        y = np.concatenate([self._apply(X), self.istft.finish()])[:self.pushed - self.emitted]
        self.emitted += len(y)
        return y


def denoise_signal(model, x, block=RATE):
    """Denoise a whole 16 kHz mono signal (time,) through the streaming path, `block` samples at a time."""
    streamer = StreamingDenoiser(model)
    parts = [streamer.push(x[i:i + block]) for i in range(0, len(x), block)]
    return np.concatenate(parts + [streamer.finish()])


def load_denoiser(path):
    """The trained masker written by the training run (state_dict + config, loaded with weights_only=True)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model {path} not found; train one with `python p4_denoise.py` or pass --model")
    ckpt = load_checkpoint(path)
    config = ckpt.get("config")
    if not isinstance(config, dict) or not {"kind", "hidden", "layers", "dropout"} <= set(config):
        raise UserError(f"{path} has no model config; it was not written by p4_denoise.py")
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        reason = " ".join(line.strip() for line in str(e).strip().splitlines()[1:])[:150] or type(e).__name__
        raise UserError(f"{path} does not hold the weights of this code's {config['kind']} masker ({reason}); "
                        f"train one with `python p4_denoise.py`")
    return model.eval()


def open_output(tmp, dst, rate, format):
    try:
        return sf.SoundFile(tmp, "w", rate, 1, "PCM_16", format=format)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot write {dst} at {rate} Hz ({str(e).strip().splitlines()[-1][:100]})")


def denoise_file(model, src, dst, block_seconds=1.0):
    """Denoise the recording `src` into `dst` (same sample rate, mono, 16-bit), streaming in blocks.

    Any sample rate is resampled to 16 kHz and back (soxr, streaming); channels are averaged. `dst` appears
    only when it is complete. Returns (seconds of audio, sample rate, channels of the input).
    """
    src, dst = Path(src), Path(dst)
    formats = {".wav": "WAV", ".flac": "FLAC"}
    if dst.suffix.lower() not in formats:
        raise UserError(f"cannot write {dst}: the output must end in .wav or .flac")
    if dst.is_dir():
        raise UserError(f"cannot write {dst}: it is a folder")
    if not src.is_file():
        raise UserError(f"{src} not found")
    try:
        source = sf.SoundFile(src)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise UserError(f"{src} is not a readable audio file ({str(e).strip().splitlines()[-1][:100]})")
    with source:
        rate, channels = source.samplerate, source.channels
        if source.frames == 0:
            raise UserError(f"{src} holds no samples")
        to_16k = soxr.ResampleStream(rate, RATE, 1, dtype="float32") if rate != RATE else None
        back = soxr.ResampleStream(RATE, rate, 1, dtype="float32") if rate != RATE else None
        streamer = StreamingDenoiser(model)
        block = max(1, round(block_seconds * rate))
        with atomic_path(dst) as tmp, open_output(tmp, dst, rate, formats[dst.suffix.lower()]) as out:
            read = written = 0

            def write(y, last=False):
                nonlocal written
                if back is not None:
                    y = back.resample_chunk(y, last=last)
                y = y[:read - written]  # the resamplers round: never longer than the input ...
                if last:  # ... nor shorter
                    y = np.concatenate([y, np.zeros(read - written - len(y), np.float32)])
                out.write(np.clip(y, -1.0, 1.0))
                written += len(y)

            try:
                for x in source.blocks(blocksize=block, dtype="float32", always_2d=True):
                    read += len(x)
                    x = x.mean(axis=1)  # (time,): stereo and beyond mixed to mono
                    write(streamer.push(to_16k.resample_chunk(x) if to_16k is not None else x))
            except (sf.LibsndfileError, RuntimeError) as e:
                raise UserError(f"{src} could not be read to the end ({str(e).strip()[:100]}); {dst} was not written")
            if read == 0:
                raise UserError(f"{src} holds no samples")
            tail = [] if to_16k is None else streamer.push(to_16k.resample_chunk(np.zeros(0, np.float32), last=True))
            write(np.concatenate([tail, streamer.finish()]).astype(np.float32), last=True)
    return read / rate, rate, channels


# ----------------------------------------------------------------------------- 5. outputs

def write_wav(path, y):
    """16 kHz, 16-bit, written atomically."""
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(y, -1.0, 1.0), RATE, subtype="PCM_16", format="WAV")


def write_te(model, files, out):
    """The denoised test mixtures as out/te_denoised/<input name>.wav and out/te_denoised.zip (as the homework asks)."""
    folder = out / "te_denoised"
    masks = predict_masks(model, [f["mag"] for f in files])
    for M_hat, f in zip(masks, files):
        write_wav(folder / f["name"], separate(M_hat, f["X"], len(f["x"])))
    with atomic_path(out / "te_denoised.zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for f in files:  # a fixed timestamp: the same model gives a byte-identical zip
            z.writestr(zipfile.ZipInfo(f["name"], date_time=(2020, 1, 1, 0, 0, 0)), (folder / f["name"]).read_bytes())
    return masks


def write_examples(model, v, te, te_masks, out):
    """A few short examples for the report's players: noisy / denoised / clean for v, noisy / denoised for te."""
    picks = {"v": example_indices(v), "te": example_indices(te)}
    v_masks = predict_masks(model, [v[i]["mag"] for i in picks["v"]])
    for M_hat, i in zip(v_masks, picks["v"]):
        f = v[i]
        stem = out / "audio" / f["name"].replace("vx", "v").removesuffix(".wav")
        write_wav(f"{stem}_noisy.wav", f["x"])
        write_wav(f"{stem}_denoised.wav", separate(M_hat, f["X"], len(f["x"])))
        write_wav(f"{stem}_clean.wav", f["s"])
    for i in picks["te"]:
        f = te[i]
        stem = out / "audio" / f["name"].replace("tex", "te").removesuffix(".wav")
        write_wav(f"{stem}_noisy.wav", f["x"])
        write_wav(f"{stem}_denoised.wav", separate(te_masks[i], f["X"], len(f["x"])))
    return {split: [files[i]["name"] for i in idx] for split, files in (("v", v), ("te", te)) for idx in [picks[split]]}


def example_indices(files, count=3):
    """`count` short files, each under a different kind of noise (file number mod 10), spread over the split."""
    chosen, kinds = [], set()
    for i in sorted(range(len(files)), key=lambda i: (len(files[i]["mag"]), i)):
        if i % 10 not in kinds:
            chosen.append(i)
            kinds.add(i % 10)
        if len(chosen) == count:
            break
    return sorted(chosen)


# ----------------------------------------------------------------------------- main

def spread(values):
    """Mean, sample std, standard error of the mean and median of per-file numbers."""
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "sem": std / np.sqrt(len(values)),
            "median": float(np.median(values))}


def evaluate_v(gru, fc, v, power):
    """Per-file SNR (dB) on v of the noisy input, both models, and the oracle IBM, plus variants of the GRU
    for the report: its mask thresholded at 0.5 (a binary mask, like the target); the homework's iSTFT taken
    literally (no padding to whole hops, see `separate`); and its input as `denoise` sees a 44.1 kHz
    recording (resampled to 44.1 kHz and back: the top ~500 Hz are gone)."""
    ours = {"gru": score(gru, v, power), "fc": score(fc, v, power)}
    snr = {"noisy": np.array([snr_db(f["s"], f["x"]) for f in v]), "fc": ours["fc"]["snr"], "gru": ours["gru"]["snr"],
           "oracle_ibm": np.array([snr_db(f["s"], separate(f["mask"], f["X"], len(f["s"]))) for f in v])}
    binary = {k: np.array([snr_db(f["s"], separate((M_hat > 0.5).astype(np.float32), f["X"], len(f["s"])))
                           for M_hat, f in zip(ours[k]["masks"], v)]) for k in ours}
    unpadded = [stft(f["x"]) for f in v]
    literal = np.array([snr_db(f["s"], istft(M_hat * X, len(f["x"])))
                        for M_hat, X, f in zip(predict_masks(gru, [np.abs(X) for X in unpadded]), unpadded, v)])
    via_44k = [analyse(soxr.resample(soxr.resample(f["x"], RATE, 44100), 44100, RATE)[:len(f["x"])]) for f in v]
    round_trip = np.array([snr_db(f["s"], separate(M_hat, X, len(f["x"])))  # = denoise_signal's result, batched
                           for M_hat, X, f in zip(predict_masks(gru, [np.abs(X) for X in via_44k]), via_44k, v)])
    return snr, {"binary_mask": binary, "unpadded_istft": literal, "input_via_44k": round_trip}, ours


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["denoise"]:
        return denoise_main(argv[1:])
    args = get_args(argv)
    resolve_dirs(args, "p4")
    device = init_distributed(pick_device(args.device))
    t_start = time.time()
    seconds = {}

    data_dir = ensure_data(args.data_dir)
    limits = {"tr": 20, "v": 10, "te": 5} if args.dry_run else {}  # a handful of files, the real code path
    if args.dry_run:
        args.epochs = args.fc_epochs = 1
    digest = hashlib.sha256()
    data = {split: load_split(data_dir, split, limits.get(split), digest if split != "te" else None)
            for split in SPLITS}
    fingerprint = digest.hexdigest()[:16]  # tr and v waveforms: new data means new models
    seconds["data"] = time.time() - t_start
    if is_main():
        print(f"[p4] {data_dir}: " + ", ".join(f"{len(files)} {split}" for split, files in data.items()) +
              f" files, loaded in {seconds['data']:.0f} s", flush=True)

    trained = {}
    for kind in ("gru", "fc"):
        t = time.time()
        trained[kind] = train_masker(kind, data, args, device, fingerprint)  # (model, model config, history)
        seconds[kind] = time.time() - t
    if not is_main():
        return
    (gru, gru_config, _), (fc, _, _) = trained["gru"], trained["fc"]

    t = time.time()
    v = data["v"]
    snr, variants, ours = evaluate_v(gru, fc, v, args.loss_power)
    gain = snr["gru"] - snr["fc"]
    save_checkpoint(args.out / "denoiser.pt", model=gru.cpu().state_dict(), config=gru_config)
    te_masks = write_te(gru, data["te"], args.out)
    examples = write_examples(gru, v, data["te"], te_masks, args.out)
    seconds["evaluate_and_write"] = time.time() - t

    metrics = {
        "v_snr_db": {k: spread(x) for k, x in snr.items()},
        "gru_minus_fc_db": {**spread(gain), "files_gru_better": int((gain > 0).sum()), "files": len(gain)},
        "required": {"gru_beats_fc": goal(snr["gru"].mean(), above=snr["fc"].mean())},
        "goals": {"gru_snr_db": goal(snr["gru"].mean(), at_least=11.0),
                  "gru_minus_fc_db": goal(gain.mean(), at_least=1.0)},
        "v_snr_db_binary_mask": {k: spread(x) for k, x in variants["binary_mask"].items()},
        "v_snr_db_gru_unpadded_istft": spread(variants["unpadded_istft"]),
        "v_snr_db_gru_input_via_44k": spread(variants["input_via_44k"]),
        "v_snr_db_by_noise": {"noise": NOISE_TYPES if data_dir == DEFAULT_DATA else list(range(10)),
                              **{k: [float(x[j::10].mean()) for j in range(min(10, len(x)))] for k, x in snr.items()}},
        "models": {kind: {"config": config, "params": sum(p.numel() for p in model.parameters()),
                          "best_epoch": 1 + int(np.argmax([h["val_snr"] for h in history])),
                          "epochs_run": len(history), "train_seconds": sum(h["train_seconds"] for h in history)}
                   for kind, (model, config, history) in trained.items()},
        "history": {kind: history for kind, (_, _, history) in trained.items()},
        "loss_power": args.loss_power, "remix": args.remix,
        "v_snr_db_per_file": {k: x.round(3).tolist() for k, x in snr.items()},
        "data": {"folder": shown_path(data_dir), "files": {k: len(x) for k, x in data.items()}, "fingerprint": fingerprint,
                 "tr_frames": int(sum(len(f["S"]) for f in data["tr"]))},
        "examples": examples,
        "figures": {name: f"{name}.png"
                    for name in ("training_curves", "snr_histogram", "snr_by_noise", "spectrograms")},
        "te_output": {"folder": shown_path(args.out / "te_denoised"), "zip": shown_path(args.out / "te_denoised.zip"),
                      "files": len(data["te"])},
        "device": str(device), "threads": torch.get_num_threads(), "dry_run": args.dry_run,
    }
    save_config(args.out / "config.json", args)
    t = time.time()
    make_figures(metrics, v, ours, args.out)
    seconds["figures"] = time.time() - t
    metrics.update(seconds=seconds, wall_seconds=time.time() - t_start, cpu_seconds=time.process_time())
    save_json(args.out / "metrics.json", metrics)
    m = metrics["v_snr_db"]
    print(f"[p4] v SNR (dB, mean +- std over {len(v)} files): noisy {m['noisy']['mean']:.2f}, "
          f"FC {m['fc']['mean']:.2f} +- {m['fc']['std']:.2f}, GRU {m['gru']['mean']:.2f} +- {m['gru']['std']:.2f}, "
          f"oracle IBM {m['oracle_ibm']['mean']:.2f}; GRU - FC {gain.mean():+.2f} dB "
          f"(sem {metrics['gru_minus_fc_db']['sem']:.2f}); {metrics['wall_seconds']:.0f} s; "
          f"wrote {args.out}/metrics.json")


def make_figures(metrics, v, ours, out):
    history, snr = metrics["history"], metrics["v_snr_db"]
    labels = {"gru": "GRU", "fc": "FC baseline", "noisy": "noisy input", "oracle_ibm": "oracle IBM"}
    colors = {"gru": "C0", "fc": "C1", "noisy": "0.5", "oracle_ibm": "k"}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for kind in ("gru", "fc"):
        epochs, color = [h["epoch"] for h in history[kind]], colors[kind]
        ax1.plot(epochs, [h["train_loss"] for h in history[kind]], color=color, marker=".",
                 label=f"{labels[kind]} train")
        ax1.plot(epochs, [h["val_loss"] for h in history[kind]], color=color, ls="--", label=f"{labels[kind]} v")
        ax2.plot(epochs, [h["val_snr"] for h in history[kind]], color=color, marker=".", label=labels[kind])
        best = metrics["models"][kind]["best_epoch"]
        ax2.plot([best], [history[kind][best - 1]["val_snr"]], "o", mfc="none", color=color, ms=9)
    for kind, ls in (("oracle_ibm", ":"), ("noisy", "-.")):
        ax2.axhline(snr[kind]["mean"], color=colors[kind], ls=ls, lw=1,
                    label=f"{labels[kind]} {snr[kind]['mean']:.1f} dB")
    ax1.set(xlabel="epoch", ylabel="|X|-weighted BCE against the IBM" if metrics["loss_power"] else
            "BCE against the IBM", title="P4: loss (solid: tr, dashed: v)")
    ax2.set(xlabel="epoch", ylabel="mean SNR on v (dB)", title="P4: v SNR per epoch (circle: kept epoch)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out / "training_curves.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    per_file = metrics["v_snr_db_per_file"]
    bins = np.linspace(min(min(x) for x in per_file.values()), max(max(x) for x in per_file.values()), 40)
    for kind in ("noisy", "fc", "gru", "oracle_ibm"):
        ax.hist(per_file[kind], bins=bins, histtype="step", lw=1.5, color=colors[kind],
                label=f"{labels[kind]}: {snr[kind]['mean']:.2f} +- {snr[kind]['std']:.2f} dB")
    ax.set(xlabel="SNR of the recovered speech (dB)", ylabel="files",
           title=f"P4: SNR over the {len(v)} v files (mean +- std)")
    ax.set_ylim(top=1.4 * ax.get_ylim()[1])  # room for the legend
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    ax.grid(alpha=0.3)
    save_figure(fig, out / "snr_histogram.png")

    i = int(np.argsort(ours["gru"]["snr"])[len(v) // 2])  # a typical file: the median GRU SNR
    f, M_hat = v[i], ours["gru"]["masks"][i]
    S_hat = stft(separate(M_hat, f["X"], len(f["x"])))
    panels = [("noisy |X| (dB)", librosa.amplitude_to_db(f["mag"], ref=np.max(f["mag"])), "magma"),
              ("clean |S| (dB)", librosa.amplitude_to_db(np.abs(stft(f["s"])), ref=np.max(f["mag"])), "magma"),
              ("ideal binary mask", f["mask"], "gray"), ("predicted mask (GRU)", M_hat, "gray"),
              (f"denoised (dB), SNR {ours['gru']['snr'][i]:.1f} dB",
               librosa.amplitude_to_db(np.abs(S_hat), ref=np.max(f["mag"])), "magma")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 10), sharex=True)
    extent = [0, len(f["x"]) / RATE, 0, RATE / 2000]
    for ax, (title, image, cmap) in zip(axes, panels):
        shown = ax.imshow(image.T, origin="lower", aspect="auto", extent=extent, cmap=cmap,
                          vmin=-80 if cmap == "magma" else 0, vmax=0 if cmap == "magma" else 1)
        ax.set(ylabel="kHz", title=title)
        fig.colorbar(shown, ax=ax, pad=0.01)
    axes[-1].set_xlabel(f"seconds ({f['name']})")
    save_figure(fig, out / "spectrograms.png", dpi=80)  # five noisy images: keep the file small

    by_noise = metrics["v_snr_db_by_noise"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    kinds = ["noisy", "fc", "gru", "oracle_ibm"]
    positions = np.arange(len(by_noise["gru"]))
    for j, kind in enumerate(kinds):
        ax.bar(positions + (j - 1.5) * 0.2, by_noise[kind], width=0.2, color=colors[kind], label=labels[kind])
    ax.set_xticks(positions, [str(name) for name in by_noise["noise"][:len(positions)]], rotation=20)
    ax.set(ylabel="mean SNR on v (dB)", title="P4: v SNR by kind of noise (file number mod 10)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(top=1.25 * max(max(by_noise[kind]) for kind in kinds))
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, out / "snr_by_noise.png")


def denoise_main(argv):
    p = ArgumentParser(prog="p4_denoise.py denoise",
                       description="Denoise one recording (any sample rate, mono or stereo) with the trained GRU.")
    p.add_argument("input", type=Path, help="the noisy recording (wav, flac, ogg, ...)")
    p.add_argument("output", type=Path,
                   help="where the denoised recording goes (.wav or .flac; same sample rate, mono)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="the trained model (default: results/p4/denoiser.pt)")
    p.add_argument("--block-seconds", type=positive_float, default=1.0,
                   help="seconds of input read and denoised at a time (memory use does not grow with the file)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (one is fastest for one stream)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_denoiser(args.model)
    t = time.perf_counter()
    seconds, rate, channels = denoise_file(model, args.input, args.output, args.block_seconds)
    took = time.perf_counter() - t
    print(f"[p4] denoised {seconds:.1f} s of audio ({rate} Hz, {channels} channel{'s' * (channels > 1)}) in "
          f"{took:.2f} s (real-time factor {took / seconds:.4f}); wrote {args.output}")


if __name__ == "__main__":
    run_cli(main)
