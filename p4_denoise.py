"""Problem 4: a causal GRU speech denoiser that predicts the ideal binary mask, beside the homework's frame-wise FC.

Each mixture x = s + n becomes its STFT X (1024-point Hann window, hop 512: 513 bins per frame). The target is
the ideal binary mask M = 1 where |S| > |N|, else 0. A model reads |X| frame by frame and predicts M_hat in
[0, 1]; the recovered speech is the inverse STFT of M_hat (.) X. Score: SNR = 10 log10(sum s^2 / sum (s - s_hat)^2)
per `v` file, averaged; SI-SDR, STOI and wideband PESQ beside it.

The two models (common/denoiser.py) differ by memory. The FC sees the current frame and nothing else. The GRU is
causal (the mask at frame t from frames 1..t, the homework's equation 12) and sees, beside each frame, how it stands
against the running mean of the frames so far, through a projection with LayerNorm into a recurrent state: what one
frame cannot tell (the noise so far, the voice so far). Both learn from the same mixtures and loss: binary
cross-entropy against the IBM, each bin weighted by |X| (the loud bins are the ones the SNR counts), on mixtures
made anew at every step from the training recordings: each distinct training sentence (the course's data holds
each one ten times, under ten noises) with a random stretch of a random training noise at a random SNR in
[-5, 5] dB, half of them band-limited (see `mixture`). Each model has its own best width, window length and
epochs within a budget of about 10 minutes on 2 cores for both (`--ablation` measures the alternatives).
Validation and test run the models over whole files.

    python p4_denoise.py                            # data, both models, scores, te outputs, figures (~8 min)
    python p4_denoise.py --dry-run                  # a handful of files, one epoch each, in seconds
    python p4_denoise.py --ablation                 # what each design choice is worth, into ablation.json
    python p4_denoise.py denoise IN.wav OUT.wav     # denoise a recording with results/p4/denoiser.pt
    python p4_denoise.py denoise IN... --out-dir DIR

The data step builds the course's layout into data/hw3 from ../shared/data/hw3 when it is missing (or from
$HW3_SPEECH_SOURCE); with the course's own homework3 folder, pass --data-dir. Writes results/p4/{metrics.json,
config.json, *.png, audio/*.wav, denoiser.pt, te_denoised/, te_denoised.zip} and the training checkpoints
checkpoints/p4_{gru,fc}.pt (reused when finished with the same config).
"""
import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from torch import nn

from common.audio import BINS, RATE, read_audio, si_sdr_db, snr_db, stft, write_audio
from common.denoiser import EPS, apply_mask, build_masker, denoise_main, predict_masks
from common.train import init_distributed, is_main, save_checkpoint, train_or_reuse
from common.utils import (ROOT, ArgumentParser, UserError, add_common_args, atomic_path, goal, nonnegative_float,
                          nonnegative_int, pick_device, positive_float, positive_int, resolve_dirs, run_cli,
                          save_config, save_json, seed_everything, seed_int, shown_path)

SPLITS = ("tr", "v", "te")  # folders, and the files' prefixes (tr/trx0000.wav), as in the course's homework3.zip
DEFAULT_DATA = ROOT / "data" / "hw3"
# files NNN0..NNN9 are one sentence under ten kinds of noise, in this order in build_hw3.py's data (its README);
# the course's own data has ten kinds of its own
NOISE_TYPES = ["babble", "birds", "boat engine", "cafe", "city street", "exercise bike", "kitchen dishes", "music",
               "rain", "wind"]


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0],
                       epilog="`python p4_denoise.py denoise --help` describes the denoise command.")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="homework-3 speech data with tr/, v/, te/ (default: data/hw3, built when missing)")
    p.add_argument("--hidden", type=positive_int, default=256, help="GRU state size")
    p.add_argument("--proj", type=nonnegative_int, default=256,
                   help="width of the GRU's input projection (0: none, the GRU reads the features)")
    p.add_argument("--running-mean", action=argparse.BooleanOptionalAction, default=True,
                   help="feed the GRU each frame's distance from the running mean of the frames so far")
    p.add_argument("--alpha", type=float_below_one, default=0.98,
                   help="forgetting factor of the GRU's running statistics (time constant 1 / (1 - alpha) frames)")
    p.add_argument("--fc-hidden", type=positive_int, default=512, help="width of the FC baseline's hidden layers")
    p.add_argument("--fc-layers", type=positive_int, default=2, help="hidden layers of the FC baseline")
    p.add_argument("--fc-layer-norm", action=argparse.BooleanOptionalAction, default=False,
                   help="LayerNorm after each of the FC's hidden layers (it helps the GRU's projection, not the FC)")
    p.add_argument("--dropout", type=float_below_one, default=0.1, help="dropout in both models")
    p.add_argument("--epochs", type=positive_int, default=14, help="GRU training epochs")
    p.add_argument("--fc-epochs", type=positive_int, default=14, help="FC training epochs")
    p.add_argument("--speeds", type=speed_list, default=(1.0,),
                   help="speeds at which the models hear each distinct training sentence, comma-separated (1: as "
                        "recorded; 1.1: 10%% faster and higher, a new voice; see the ablation)")
    p.add_argument("--repeats", type=positive_int, default=10,
                   help="times each training window is used per epoch, each time with new noise (the course's data "
                        "holds each sentence ten times, under ten kinds of noise)")
    p.add_argument("--crop", type=positive_int, default=96, help="frames per GRU training window (3 s)")
    p.add_argument("--fc-crop", type=positive_int, default=48,
                   help="frames per FC training window: the FC sees frames one by one, so this sets the frames per "
                        "step (shorter windows: more steps for the same frames, which the FC needs)")
    p.add_argument("--band-fraction", type=unit_interval, default=0.5,
                   help="fraction of training mixtures low-passed at a random 4-8 kHz cutoff (as resampled audio is)")
    p.add_argument("--loss-power", type=nonnegative_float, default=1.0,
                   help="weight each bin's BCE by |X|^power (1: loud bins count more, as in the SNR; 0: plain BCE)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="windows per mini-batch")
    p.add_argument("--lr", type=positive_float, default=5e-3,
                   help="the GRU's peak AdamW learning rate (one-cycle schedule)")
    p.add_argument("--fc-lr", type=positive_float, default=3e-3, help="the FC's peak learning rate")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01, help="AdamW weight decay")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed of both models")
    p.add_argument("--ablation", action="store_true",
                   help="instead of the main run: train each ablation variant and write ablation.json")
    add_common_args(p, out="results/p4")
    return p.parse_args(argv)


def float_below_one(text):
    value = nonnegative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def unit_interval(text):
    value = nonnegative_float(text)
    if not value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def speed_list(text):
    try:
        speeds = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected speeds like 0.9,1.0,1.1, got {text!r}")
    if not all(0.5 <= s <= 2 for s in speeds):
        raise argparse.ArgumentTypeError(f"speeds must lie in [0.5, 2], got {text!r}")
    return speeds


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


def ideal_binary_mask(S, N):
    """M = 1 where the speech is louder than the noise in that time-frequency bin, else 0 (ties go to the noise)."""
    return (np.abs(S) > np.abs(N)).astype(np.float32)


def load_split(data_dir, split, limit=None, digest=None):
    """One split's files as dicts: name and path; tr: s, n (signals); v: also x, X = stft(x) and the IBM.

    Every file must be 16 kHz mono, and x, s, n of a mixture equally long (the error names the file).
    `digest` (a hashlib object) is fed every waveform of tr and v, so the training config pins the exact data.
    """
    folder = data_dir / split
    paths = sorted(folder.glob(f"{split}x*.wav")) if folder.is_dir() else []
    if not paths:
        raise UserError(f"no {split}x*.wav files in {folder}; the data folder needs tr/, v/ and te/ "
                        f"as in the course's homework3.zip")
    files = []
    for path in paths[:limit]:
        item = {"name": path.name, "path": path}
        if split != "te":
            x, s, n = (read_audio(path.with_name(path.name.replace(f"{split}x", f"{split}{tag}", 1)), RATE)[0]
                       for tag in "xsn")
            if not len(x) == len(s) == len(n):
                raise UserError(f"{path}: x, s, n have different lengths ({len(x)}, {len(s)}, {len(n)} samples); "
                                f"each mixture needs its speech and noise of the same length")
            item.update(s=s, n=n)
            if split == "v":
                X = stft(x)  # (frames, 513)
                item.update(x=x, X=X, mask=ideal_binary_mask(stft(s), stft(n)))
            if digest is not None:
                digest.update(path.name.encode() + x.tobytes())
        files.append(item)
    return files


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


# ----------------------------------------------------------------------------- 2. training data: mixtures made anew

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


def mixture(S, N, lengths, band_fraction=0.0, snr_range=(-5.0, 5.0)):
    """|X| and the IBM of the mixtures X = S + g N (each (batch, frames, 513)), and the valid frames (batch, frames, 1).

    g scales each noise to a random SNR drawn uniformly from `snr_range` (the data's own range); X = S + g N is the
    STFT of s + g n (the STFT is linear), so every step sees new mixtures of the recordings at no cost. And a
    `band_fraction` of them lose their top frequencies, as a recording resampled to 16 kHz (or made at a lower
    rate) does: a smooth low-pass from a random cutoff between 4 and 8 kHz, on speech and noise alike, which leaves
    the IBM as it was; without it the models lose dB on such recordings.
    """
    device = S.device
    valid = (torch.arange(S.shape[1], device=device)[None, :] < lengths.to(device)[:, None])[..., None]
    N = N.to(device) * valid
    power_S = (S.abs() ** 2 * valid).sum((1, 2))
    power_N = (N.abs() ** 2).sum((1, 2)).clamp_min(1e-12)
    snr = torch.empty(len(S)).uniform_(*snr_range).to(device)  # drawn on the CPU: the same on any device
    N = N * (torch.sqrt(power_S / power_N) * 10 ** (-snr / 20))[:, None, None]
    cutoff = torch.where(torch.rand(len(S)) < band_fraction, torch.empty(len(S)).uniform_(BINS // 2, BINS), torch.inf)
    bins = torch.arange(BINS, device=device)
    band = torch.sigmoid((cutoff.to(device)[:, None] - bins) / 4)[:, None, :]  # (batch, 1, 513)
    S, N = S * band, N * band
    return (S + N).abs(), (S.abs() > N.abs()).to(S.real.dtype), valid


def masked_bce(logits, target, valid, weight=None):
    """Binary cross-entropy against the IBM over the valid frames, each bin weighted by `weight` (batch, frames,
    513) if given: a weighted mean, so padded frames carry no weight at all."""
    w = valid.to(logits.dtype) if weight is None else weight * valid
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (w * bce).sum() / w.expand_as(bce).sum()


def loss_weight(noisy_mag, power):
    """|X|^power: with power 1 a bin counts in proportion to its magnitude, as in the SNR; 0 counts all alike."""
    return None if power == 0 else noisy_mag ** power


def mask_loss(model, batch, noise, power=1.0, band_fraction=0.0):
    """The training objective: a fresh mixture for every speech window, then the |X|^power-weighted BCE of the
    predicted mask against its IBM."""
    S, lengths = batch
    noisy_mag, mask, valid = mixture(S, noise.draw(*S.shape[:2]), lengths, band_fraction)
    return masked_bce(model(noisy_mag)[0], mask, valid, loss_weight(noisy_mag, power))


def log_spectrum_stats(files):
    """Per-bin mean and std of log |X| over the training mixtures x = s + n: the models' fixed standardisation."""
    total = squares = count = 0
    for f in files:
        log_mag = np.log(np.abs(stft(f["s"] + f["n"])).astype(np.float64) + EPS)
        total, squares, count = total + log_mag.sum(0), squares + (log_mag ** 2).sum(0), count + len(log_mag)
    mean = total / count
    std = np.sqrt(squares / count - mean ** 2)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


# ----------------------------------------------------------------------------- 3. training

def masker_config(kind, args):
    """The model's own config (what `build_masker` and the `denoise` command need)."""
    if kind == "gru":
        return {"kind": "gru", "hidden": args.hidden, "proj": args.proj, "dropout": args.dropout, "alpha": args.alpha,
                "running_mean": args.running_mean}
    return {"kind": "fc", "hidden": args.fc_hidden, "layers": args.fc_layers, "dropout": args.dropout,
            "layer_norm": args.fc_layer_norm}


def enhance(model, files):
    """Masks and recovered signals of whole files (dicts with X, x) through the one inference path."""
    masks = predict_masks(model, [np.abs(f["X"]) for f in files])
    return masks, [apply_mask(M_hat, f["X"], len(f["x"])) for M_hat, f in zip(masks, files)]


def validation_numbers(model, v, power):
    """The training loss and the SNR on `v`, per epoch."""
    masks, outputs = enhance(model, v)
    loss = [masked_bce(torch.logit(torch.from_numpy(M_hat).double(), eps=1e-7)[None],
                       torch.from_numpy(f["mask"]).double()[None], torch.ones(1, len(M_hat), 1, dtype=torch.bool),
                       loss_weight(torch.from_numpy(np.abs(f["X"])).double()[None], power)).item()
            for M_hat, f in zip(masks, v)]
    snr = [snr_db(f["s"], y) for f, y in zip(v, outputs)]
    return {"val_loss": float(np.mean(loss)), "val_snr": float(np.mean(snr))}


def recipe(kind, args):
    """A model's training data, length and learning rate."""
    if kind == "gru":
        return {"epochs": args.epochs, "speeds": list(args.speeds), "crop": args.crop, "repeats": args.repeats,
                "lr": args.lr}
    return {"epochs": args.fc_epochs, "speeds": list(args.speeds), "crop": args.fc_crop, "repeats": args.repeats,
            "lr": args.fc_lr}


def train_masker(kind, args, sentences, noise, stats, v, fingerprint, device, name=None):
    """Train (or reuse) the GRU or the FC on fresh mixtures of `sentences` (at the model's speeds) and `noise`,
    keeping the epoch with the best `v` SNR. Returns (model in eval mode, its training config, history)."""
    name = name or kind
    model_config = masker_config(kind, args)
    data = recipe(kind, args)
    speech = [stft(at_speed(s, speed)) for s in sentences for speed in data["speeds"]]  # each (frames, 513)
    config = {"model": model_config, **data, "band_fraction": args.band_fraction, "loss_power": args.loss_power,
              "batch_size": args.batch_size, "weight_decay": args.weight_decay, "seed": args.seed, "data": fingerprint}
    seed_everything(args.seed)
    model = build_masker(model_config)
    model.log_spectrum.mean.copy_(stats[0])
    model.log_spectrum.std.copy_(stats[1])
    loss_fn = functools.partial(mask_loss, noise=noise, power=args.loss_power, band_fraction=args.band_fraction)
    history = train_or_reuse(
        model.to(device), loss_fn, SpeechWindows(speech, data["crop"], data["repeats"]),
        validate=lambda m: validation_numbers(m, v, args.loss_power), monitor="val_snr", mode="max", warmup=0.1,
        epochs=config["epochs"], batch_size=args.batch_size, lr=config["lr"], weight_decay=args.weight_decay,
        seed=args.seed, clip_grad=1.0, collate_fn=pad_batch, ckpt_path=args.ckpt_dir / f"p4_{name}.pt",
        config=config, resume=args.resume, device=device, desc=f"p4 {name}", quiet=args.quiet)
    return model.eval(), config, history


# ----------------------------------------------------------------------------- 4. evaluation

def spread(values):
    """Mean, sample std, standard error of the mean and median of per-file numbers."""
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "sem": std / np.sqrt(len(values)),
            "median": float(np.median(values))}


def perceptual_scores(pair):
    """(STOI, wideband PESQ) of one estimate against its clean speech; PESQ is None where it finds no speech."""
    from pesq import PesqError, pesq
    from pystoi import stoi
    s, y = pair
    quality = pesq(RATE, s, y, "wb", on_error=PesqError.RETURN_VALUES)
    return float(stoi(s, y, RATE)), (float(quality) if quality >= 0 else None)


def score_v(v, outputs, workers):
    """Per-file SNR, SI-SDR, STOI and PESQ of each system's outputs {name: [signal per file]} on `v`."""
    scores = {}
    pairs = [(f["s"], y) for name in outputs for f, y in zip(v, outputs[name])]
    if workers > 1:  # PESQ is slow (13 ms per second of audio); fresh processes, not forks of this threaded one
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            perceptual = list(pool.map(perceptual_scores, pairs, chunksize=16))
    else:
        perceptual = [perceptual_scores(pair) for pair in pairs]
    for k, name in enumerate(outputs):
        block = perceptual[k * len(v):(k + 1) * len(v)]
        scores[name] = {"snr_db": [snr_db(f["s"], y) for f, y in zip(v, outputs[name])],
                        "si_sdr_db": [si_sdr_db(f["s"], y) for f, y in zip(v, outputs[name])],
                        "stoi": [q[0] for q in block], "pesq": [q[1] for q in block]}
    return scores


def summarise(values):
    """`spread` of the numbers that exist (PESQ can be None), with how many there were."""
    kept = [x for x in values if x is not None]
    return {**spread(kept), "files": len(kept)}


# ----------------------------------------------------------------------------- 5. outputs

def write_te(model_path, te, out, threads):
    """The denoised test mixtures as out/te_denoised/<input name>.wav, written by the `denoise` command itself,
    and out/te_denoised.zip (as the homework asks) with fixed timestamps: the same model gives the same zip."""
    folder = out / "te_denoised"
    denoise_main([str(f["path"]) for f in te] + ["--out-dir", str(folder), "--model", str(model_path),
                                                 "--threads", str(threads), "--quiet"])
    with atomic_path(out / "te_denoised.zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for f in te:
            z.writestr(zipfile.ZipInfo(f["name"], date_time=(2020, 1, 1, 0, 0, 0)), (folder / f["name"]).read_bytes())
    return folder


def example_indices(names, lengths, count=3):
    """`count` short files, each under a different kind of noise (file number mod 10), spread over the split."""
    chosen, kinds = [], set()
    for i in sorted(range(len(names)), key=lambda i: (lengths[i], i)):
        if i % 10 not in kinds:
            chosen.append(i)
            kinds.add(i % 10)
        if len(chosen) == count:
            break
    return sorted(chosen)


def write_examples(v, gru_outputs, te, te_folder, out):
    """A few short examples for the report's players: noisy / denoised / clean for v, noisy / denoised for te.
    Returns {split: [{"file", "kind", "path" (relative to out)}]}."""
    written = {"v": [], "te": []}
    for i in example_indices([f["name"] for f in v], [len(f["x"]) for f in v]):
        f, stem = v[i], v[i]["name"].replace("vx", "v").removesuffix(".wav")
        for kind, y in (("noisy", f["x"]), ("denoised", gru_outputs[i]), ("clean", f["s"])):
            write_audio(out / "audio" / f"{stem}_{kind}.wav", y)
            written["v"].append({"file": f["name"], "kind": kind, "path": f"audio/{stem}_{kind}.wav"})
    lengths = [read_audio(f["path"])[0].shape[0] for f in te]
    for i in example_indices([f["name"] for f in te], lengths):
        f, stem = te[i], te[i]["name"].replace("tex", "te").removesuffix(".wav")
        for kind, path in (("noisy", f["path"]), ("denoised", te_folder / f["name"])):
            write_audio(out / "audio" / f"{stem}_{kind}.wav", read_audio(path, RATE)[0])
            written["te"].append({"file": f["name"], "kind": kind, "path": f"audio/{stem}_{kind}.wav"})
    return written


# ----------------------------------------------------------------------------- 6. figures

def make_figures(metrics, v, masks, outputs, out):
    from common.plot import plt, save_figure

    history, systems = metrics["history"], metrics["v"]["systems"]
    labels = {"gru": "GRU", "fc": "FC baseline", "noisy": "noisy input", "oracle_ibm": "oracle IBM"}
    colors = {"gru": "C0", "fc": "C1", "noisy": "0.5", "oracle_ibm": "k"}
    figures = {}

    def save(fig, name, **kw):
        save_figure(fig, out / name, **kw)
        figures[name.removesuffix(".png")] = name  # relative to metrics.json, as make_report.py reads it

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for kind in ("gru", "fc"):
        epochs, color = [h["epoch"] for h in history[kind]], colors[kind]
        ax1.plot(epochs, [h["train_loss"] for h in history[kind]], color=color, marker=".", label=f"{labels[kind]} tr")
        ax1.plot(epochs, [h["val_loss"] for h in history[kind]], color=color, ls="--", label=f"{labels[kind]} v")
        ax2.plot(epochs, [h["val_snr"] for h in history[kind]], color=color, marker=".", label=labels[kind])
        best = metrics["models"][kind]["best_epoch"]
        ax2.plot([best], [history[kind][best - 1]["val_snr"]], "o", mfc="none", color=color, ms=9)
    for kind, ls in (("oracle_ibm", ":"), ("noisy", "-.")):
        mean = systems[kind]["snr_db"]["mean"]
        ax2.axhline(mean, color=colors[kind], ls=ls, lw=1, label=f"{labels[kind]} {mean:.1f} dB")
    ax1.set(xlabel="epoch", ylabel="|X|-weighted BCE against the IBM", title="P4: loss (solid: tr, dashed: v)")
    ax2.set(xlabel="epoch", ylabel="mean SNR on v (dB)", title="P4: v SNR per epoch (circle: kept epoch)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, "training_curves.png")

    per_file = metrics["per_file"]["snr_db"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bins = np.linspace(min(min(x) for x in per_file.values()), max(max(x) for x in per_file.values()), 40)
    for kind in ("noisy", "fc", "gru", "oracle_ibm"):
        stat = systems[kind]["snr_db"]
        ax.hist(per_file[kind], bins=bins, histtype="step", lw=1.5, color=colors[kind],
                label=f"{labels[kind]}: {stat['mean']:.2f} +- {stat['std']:.2f} dB")
    ax.set(xlabel="SNR of the recovered speech (dB)", ylabel="files",
           title=f"P4: SNR over the {len(v)} v files (mean +- std)")
    ax.set_ylim(top=1.4 * ax.get_ylim()[1])  # room for the legend
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    ax.grid(alpha=0.3)
    save(fig, "snr_histogram.png")

    noisy_snr = np.array(per_file["noisy"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    edges = np.linspace(np.floor(noisy_snr.min()), np.ceil(noisy_snr.max()), 6)
    for kind in ("fc", "gru", "oracle_ibm"):
        gain = np.array(per_file[kind]) - noisy_snr
        ax.scatter(noisy_snr, gain, s=4, alpha=0.35, color=colors[kind])
        which = np.clip(np.digitize(noisy_snr, edges) - 1, 0, len(edges) - 2)
        centres = [(edges[j] + edges[j + 1]) / 2 for j in range(len(edges) - 1) if (which == j).any()]
        means = [gain[which == j].mean() for j in range(len(edges) - 1) if (which == j).any()]
        ax.plot(centres, means, color=colors[kind], marker="o", label=f"{labels[kind]} (mean per 2 dB of input)")
    ax.set(xlabel="input SNR of the mixture (dB)", ylabel="SNR gain (dB)", title="P4: SNR gain against input SNR (v)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, "snr_gain_vs_input.png")

    by_noise = metrics["by_noise"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    kinds = ["noisy", "fc", "gru", "oracle_ibm"]
    positions = np.arange(len(by_noise["snr_db"]["gru"]))
    for j, kind in enumerate(kinds):
        ax.bar(positions + (j - 1.5) * 0.2, by_noise["snr_db"][kind], width=0.2, color=colors[kind], label=labels[kind])
    ax.set_xticks(positions, [str(name) for name in by_noise["noise"][:len(positions)]], rotation=20)
    ax.set(ylabel="mean SNR on v (dB)", title="P4: v SNR by kind of noise (file number mod 10)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(top=1.25 * max(max(by_noise["snr_db"][kind]) for kind in kinds))
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    save(fig, "snr_by_noise.png")

    i = int(np.argsort(per_file["gru"])[len(v) // 2])  # a typical file: the median GRU SNR
    f, M_hat = v[i], masks["gru"][i]
    ref = np.abs(f["X"]).max()

    def db(S):
        return 20 * np.log10(np.maximum(np.abs(S), 1e-5 * ref) / ref)

    panels = [("noisy |X| (dB)", db(f["X"]), "magma"), ("clean |S| (dB)", db(stft(f["s"])), "magma"),
              ("ideal binary mask", f["mask"], "gray"), ("predicted mask (GRU)", M_hat, "gray"),
              (f"denoised (dB), SNR {per_file['gru'][i]:.1f} dB", db(stft(outputs["gru"][i])), "magma")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 10), sharex=True)
    extent = [0, len(f["x"]) / RATE, 0, RATE / 2000]
    for ax, (title, image, cmap) in zip(axes, panels):
        shown = ax.imshow(image.T, origin="lower", aspect="auto", extent=extent, cmap=cmap,
                          vmin=-80 if cmap == "magma" else 0, vmax=0 if cmap == "magma" else 1)
        ax.set(ylabel="kHz", title=title)
        fig.colorbar(shown, ax=ax, pad=0.01)
    axes[-1].set_xlabel(f"seconds ({f['name']})")
    save(fig, "spectrograms.png", dpi=80)  # five noisy images: keep the file small
    return figures


# ----------------------------------------------------------------------------- 7. ablation

# each variant changes one thing of the main run's recipe (the flags it overrides), trained with the same seed
ABLATIONS = [
    ("gru", "the GRU of the main run", "gru", {}),
    ("gru_no_running_mean", "without the running mean: the GRU reads z_t alone", "gru", {"running_mean": False}),
    ("gru_no_projection", "without the input projection and its LayerNorm", "gru", {"proj": 0}),
    ("gru_three_speeds", "the training sentences at speeds 0.9, 1, 1.1 (repeats 10 / 3)", "gru",
     {"speeds": (0.9, 1.0, 1.1), "repeats": 3}),
    ("gru_no_band_limit", "no band-limited training mixtures", "gru", {"band_fraction": 0.0}),
    ("fc", "the FC of the main run", "fc", {}),
    ("fc_three_speeds", "the FC on speeds 0.9, 1, 1.1 (repeats 10 / 3)", "fc", {"speeds": (0.9, 1.0, 1.1),
                                                                              "repeats": 3}),
    ("fc_layer_norm", "the FC with LayerNorm after each hidden layer", "fc", {"fc_layer_norm": True}),
    ("fc_windows_96", "the FC on the GRU's 96-frame windows (half the steps)", "fc", {"fc_crop": 96}),
    ("fc_1024x2", "a wider FC: 2 x 1024 (twice the compute)", "fc", {"fc_hidden": 1024}),
]


def run_ablation(args, sentences, noise, v, stats, fingerprint, device):
    """Train every variant of ABLATIONS (checkpoints p4_ablation_<name>.pt) and write ablation.json."""
    rows = []
    for name, what, kind, overrides in ABLATIONS:
        variant = argparse.Namespace(**{**vars(args), **overrides})
        t = time.time()
        model, config, history = train_masker(kind, variant, sentences, noise, stats, v, fingerprint, device,
                                              name=None if name == kind else f"ablation_{name}")
        snr = [snr_db(f["s"], y) for f, y in zip(v, enhance(model, v)[1])]
        rows.append({"name": name, "what": what, "kind": kind, "overrides": {k: list(x) if isinstance(x, tuple) else x
                                                                             for k, x in overrides.items()},
                     "v_snr_db": spread(snr), "v_snr_db_per_file": np.round(snr, 3).tolist(),
                     "best_epoch": 1 + int(np.argmax([h["val_snr"] for h in history])), "epochs": len(history),
                     "seconds": time.time() - t})
        print(f"[p4 ablation] {name}: v SNR {rows[-1]['v_snr_db']['mean']:.2f} dB", flush=True)
    save_json(args.out / "ablation.json", {"rows": rows, "seed": args.seed, "data": fingerprint,
                                           "dry_run": args.dry_run, "command": "python p4_denoise.py --ablation"})


def load_ablation(path, fingerprint, seed):
    """ablation.json if an --ablation run wrote it for this data and seed (the main run reports it), else None."""
    if not path.is_file():
        return None
    try:
        ablation = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{shown_path(path)} is not readable ({type(e).__name__}); delete it or rerun "
                        f"python p4_denoise.py --ablation")
    if not isinstance(ablation, dict) or ablation.get("data") != fingerprint or ablation.get("seed") != seed:
        return None
    return ablation


# ----------------------------------------------------------------------------- main

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
    tr, v, te = (load_split(data_dir, split, limits.get(split), digest if split != "te" else None) for split in SPLITS)
    fingerprint = digest.hexdigest()[:16]  # the tr and v waveforms: new data means new models
    sentences = distinct_speech(tr)
    noise = NoisePool([stft(f["n"]) for f in tr])
    stats = log_spectrum_stats(tr)
    seconds["data"] = time.time() - t_start
    if is_main():
        print(f"[p4] {data_dir}: {len(tr)} tr, {len(v)} v, {len(te)} te files; {len(sentences)} distinct training "
              f"sentences, {len(tr)} noise recordings; loaded in {seconds['data']:.0f} s", flush=True)
    if args.ablation:
        return run_ablation(args, sentences, noise, v, stats, fingerprint, device)

    trained = {}
    for kind in ("gru", "fc"):
        t = time.time()
        trained[kind] = train_masker(kind, args, sentences, noise, stats, v, fingerprint, device)
        seconds[f"train_{kind}"] = time.time() - t
    if not is_main():
        return
    (gru, gru_config, _), (fc, _, _) = trained["gru"], trained["fc"]
    gru, fc = gru.cpu(), fc.cpu()  # scoring and the saved model run on the CPU, as the `denoise` command does

    # the deliverable: the GRU in the form the `denoise` command loads
    save_checkpoint(args.out / "denoiser.pt", config=gru_config, model=gru.state_dict())

    t = time.time()
    masks, outputs = {}, {"noisy": [f["x"] for f in v]}
    for kind, model in (("fc", fc), ("gru", gru)):
        masks[kind], outputs[kind] = enhance(model, v)
    outputs["oracle_ibm"] = [apply_mask(f["mask"], f["X"], len(f["x"])) for f in v]
    scores = score_v(v, outputs, workers=min(os.cpu_count() or 1, 2))
    seconds["score"] = time.time() - t
    t = time.time()
    te_folder = write_te(args.out / "denoiser.pt", te, args.out, threads=1)  # one stream: one thread is fastest
    examples = write_examples(v, outputs["gru"], te, te_folder, args.out)
    seconds["te_and_examples"] = time.time() - t

    snr = {name: np.array(s["snr_db"]) for name, s in scores.items()}
    gain = snr["gru"] - snr["fc"]
    kinds = len(NOISE_TYPES) if data_dir == DEFAULT_DATA else 10
    by_noise = {"noise": NOISE_TYPES if data_dir == DEFAULT_DATA else list(range(10)),
                "snr_db": {name: [float(x[j::10].mean()) for j in range(min(kinds, len(x)))]
                           for name, x in snr.items()},
                "gru_minus_fc_db": [float(gain[j::10].mean()) for j in range(min(kinds, len(gain)))]}
    systems = {name: {metric: summarise(values) for metric, values in s.items()} for name, s in scores.items()}
    mean = {name: {metric: stat["mean"] for metric, stat in system.items()} for name, system in systems.items()}
    better_types = sum(g > 0 for g in by_noise["gru_minus_fc_db"])
    metrics = {
        "v": {"files": len(v), "systems": systems},
        "gru_minus_fc_db": {**spread(gain), "files_gru_better": int((gain > 0).sum()), "files": len(gain),
                            "fraction_gru_better": float((gain > 0).mean())},
        "by_noise": by_noise,
        "required": {"gru_beats_fc": goal(mean["gru"]["snr_db"], above=mean["fc"]["snr_db"], unit="dB")},
        "goals": {  # issue 10's bars
            "gru_snr_db": goal(mean["gru"]["snr_db"], at_least=9.5, unit="dB"),
            "gru_minus_fc_db": goal(gain.mean(), at_least=1.5, unit="dB", sem=spread(gain)["sem"]),
            "fraction_of_files_gru_better": goal((gain > 0).mean(), at_least=0.75),
            "noise_types_gru_better": goal(better_types, at_least=len(by_noise["gru_minus_fc_db"])),
            **{f"{metric}_{a}_over_{b}": goal(mean[a][metric] - mean[b][metric], above=0.0)
               for metric in ("stoi", "pesq") for a, b in (("gru", "fc"), ("fc", "noisy"))}},
        "models": {kind: {"config": config, "params": sum(p.numel() for p in model.parameters()),
                          "best_epoch": 1 + int(np.argmax([h["val_snr"] for h in history])),
                          "epochs_run": len(history), "train_seconds": sum(h["train_seconds"] for h in history)}
                   for kind, (model, config, history) in trained.items()},
        "history": {kind: history for kind, (_, _, history) in trained.items()},
        "per_file": {"names": [f["name"] for f in v],
                     **{metric: {name: np.round(np.array(s[metric], dtype=float), 4).tolist() for name, s in
                                 scores.items()} for metric in ("snr_db", "si_sdr_db", "stoi")}},
        "data": {"folder": shown_path(data_dir), "files": {"tr": len(tr), "v": len(v), "te": len(te)},
                 "distinct_training_sentences": len(sentences), "noise_recordings": len(tr),
                 "fingerprint": fingerprint},
        "examples": examples,
        "ablation": load_ablation(args.out / "ablation.json", fingerprint, args.seed),
        "te_output": {"folder": shown_path(te_folder), "zip": shown_path(args.out / "te_denoised.zip"),
                      "files": len(te), "command": f"python p4_denoise.py denoise {shown_path(data_dir / 'te')} "
                                                   f"--out-dir {shown_path(te_folder)}"},
        "model_file": shown_path(args.out / "denoiser.pt"),
        "device": str(device), "threads": torch.get_num_threads(), "dry_run": args.dry_run,
    }
    save_config(args.out / "config.json", args)
    t = time.time()
    metrics["figures"] = make_figures(metrics, v, masks, outputs, args.out)
    seconds["figures"] = time.time() - t
    metrics.update(seconds=seconds, wall_seconds=time.time() - t_start, cpu_seconds=time.process_time())
    save_json(args.out / "metrics.json", metrics)
    m = metrics["v"]["systems"]
    print(f"[p4] v SNR (dB, mean over {len(v)} files): noisy {m['noisy']['snr_db']['mean']:.2f}, "
          f"FC {m['fc']['snr_db']['mean']:.2f}, GRU {m['gru']['snr_db']['mean']:.2f}, oracle IBM "
          f"{m['oracle_ibm']['snr_db']['mean']:.2f}; GRU - FC {gain.mean():+.2f} dB (sem "
          f"{metrics['gru_minus_fc_db']['sem']:.2f}, better on {int((gain > 0).sum())} files); "
          f"{metrics['wall_seconds']:.0f} s; wrote {shown_path(args.out / 'metrics.json')}")


if __name__ == "__main__":
    run_cli(main)
