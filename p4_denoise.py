"""Problem 4: a causal GRU speech denoiser that predicts the ideal binary mask, beside the homework's frame-wise FC.

Each mixture x = s + n becomes its STFT X (1024-point Hann window, hop 512: 513 bins per frame). The target is the
ideal binary mask M = 1 where |S| > |N|, else 0. A model reads |X| frame by frame and predicts M_hat in [0, 1]; the
recovered speech is the inverse STFT of M_hat (.) X. Score: SNR = 10 log10(sum s^2 / sum (s - s_hat)^2) per `v`
file, averaged. The FC sees one frame; the GRU is causal (the mask at frame t from frames 1..t, the homework's
equation 12) and also sees each frame against the running mean of the frames so far. Both learn the |X|-weighted
BCE against the IBM on mixtures made anew at every step (`mixture`); the epoch kept is the one with the best `v` SNR.

    python p4_denoise.py                            # data, both models, scores, te zip, figures
    python p4_denoise.py --dry-run                  # a handful of files, small models, one epoch each, in seconds
    python p4_denoise.py --ablation                 # what each design choice is worth, into ablation.json
    python p4_denoise.py denoise IN.wav OUT.wav     # denoise with results/p4/denoiser.pt (or IN... --out-dir DIR)
    python p4_denoise.py te-zip te_denoised.zip     # the denoised te mixtures for hand-in, from the saved model

Writes results/p4/{metrics.json, config.json, *.png, audio/*.wav, denoiser.pt, te_denoised.zip} and checkpoints/
p4_{gru,fc}.pt (reused when finished with the same config). Its machinery: common/speech/ (data, denoise, scores, ...).
"""
import argparse
import functools
import hashlib
import inspect
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.ablation import read_ablation, run_ablation
from common.cli import (ArgumentParser, TrainingFlags, UserError, add_common_args, bounded_float, bounded_int,
                        dropout_rate, nonnegative_float, pick_device, positive_float, run_cli, seed_int)
from common.files import resolve_dirs, save_config, save_json, shown_path
from common.precision import Dropout, add_precision_flag, machine, resolve_precision, torch_threads
from common.speech.audio import read_audio
from common.speech.data import (DEFAULT_DATA, NOISE_TYPES, NoisePool, SpeechWindows, at_speed, check_mixture,
                                distinct_speech, ensure_data, pad_batch, source_path, speed_list, split_paths)
from common.speech.denoise import denoise_main, load_model, predict_masks, te_zip_main, write_te_zip
from common.speech.figures import make_figures
from common.speech.gru import gru
from common.speech.listening import write_examples
from common.speech.scores import model_records, score_systems, summarize_scores
from common.speech.stft import BINS, RATE, istft, planes, snr_db, stft
from common.train import init_distributed, is_main, save_checkpoint, seed_everything, train_or_reuse

EPS = 1e-5  # floor under |X| before the log (|X| of a full-scale sine is about 256)
DRY_RUN = {"epochs": 1, "fc_epochs": 1, "hidden": 32, "proj": 32, "fc_hidden": 64, "repeats": 2}  # at most these


def get_args(argv=None):
    """The flags, and for each model the names of the flags that define it (its training config)."""
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                       epilog="`python p4_denoise.py denoise --help` and `te-zip --help` describe the commands.")
    p.add_argument("--data-dir", type=Path, help="speech data: tr/, v/, te/ (default: data/hw3, built when missing)")
    both = TrainingFlags(p, "training of both models (a finished checkpoint is reused only if all its flags match)")
    both.add("--dropout", type=dropout_rate, default=0.1, help="dropout in both models")
    both.add("--speeds", type=speed_list, default=[1.0], help="speeds at which the models hear each training "
             "sentence, comma-separated (1: as recorded; 1.1: 10%% faster and higher, a new voice)")
    both.add("--repeats", type=bounded_int(1, 100), default=10, help="times each training window is used per epoch, "
             "each time with new noise (the course's data holds each sentence under ten noises)")
    both.add("--band-fraction", type=bounded_float(0, 1), default=0.5, help="fraction of training mixtures "
             "low-passed at a random 4-8 kHz cutoff (as resampled audio is)")
    both.add("--loss-power", type=nonnegative_float, default=1.0, help="weight each bin's BCE by |X|^power (1: loud "
             "bins count more, as in the SNR; 0: plain BCE)")
    both.add("--batch-size", type=bounded_int(1, 256), default=32, help="windows per mini-batch")
    both.add("--weight-decay", type=nonnegative_float, default=0.01, help="AdamW weight decay")
    both.add("--seed", type=seed_int, default=0, help="random seed of both models")
    add_precision_flag(both)
    gru = TrainingFlags(p, "the GRU")
    gru.add("--hidden", type=bounded_int(1, 4096), default=256, help="GRU state size")
    gru.add("--proj", type=bounded_int(0, 4096), default=256, help="width of the GRU's input projection (0: none)")
    gru.add("--running-mean", action=argparse.BooleanOptionalAction, default=True,
            help="feed the GRU each frame's distance from the running mean of the frames so far")
    gru.add("--alpha", type=bounded_float(0, 1), default=0.98,
            help="forgetting factor of the GRU's running mean (time constant 1 / (1 - alpha) frames; 1: none)")
    gru.add("--epochs", type=bounded_int(1, 1000), default=28, help="GRU training epochs")
    gru.add("--crop", type=bounded_int(1, 500), default=96, help="frames per GRU training window (3 s)")
    gru.add("--lr", type=positive_float, default=5e-3, help="the GRU's peak AdamW learning rate (one-cycle schedule)")
    fc = TrainingFlags(p, "the FC baseline (its flags go into its config without the fc- prefix)")
    fc.add("--fc-hidden", type=bounded_int(1, 4096), default=512, help="width of the FC baseline's hidden layers")
    fc.add("--fc-layers", type=bounded_int(1, 8), default=2, help="hidden layers of the FC baseline")
    fc.add("--fc-layer-norm", action=argparse.BooleanOptionalAction, default=False,
           help="LayerNorm after each of the FC's hidden layers (it helps the GRU's projection, not the FC)")
    fc.add("--fc-epochs", type=bounded_int(1, 1000), default=14, help="FC training epochs")
    fc.add("--fc-crop", type=bounded_int(1, 500), default=48, help="frames per FC training window (shorter windows: "
           "more steps for the same frames, which the FC needs)")
    fc.add("--fc-lr", type=positive_float, default=3e-3, help="the FC's peak learning rate")
    p.add_argument("--ablation", action="store_true", help="instead of the main run: train each ablation variant")
    add_common_args(p, out="results/p4")
    args = p.parse_args(argv)
    if args.dry_run:  # small models for one epoch: the real code path in seconds
        for name, most in DRY_RUN.items():
            setattr(args, name, min(getattr(args, name), most))
    return args, {"gru": both.names + gru.names, "fc": both.names + fc.names}


# ----------------------------------------------------------------------------- 1. data

def ideal_binary_mask(S, N):
    """M = 1 where the speech is louder than the noise in that time-frequency bin, else 0 (ties go to the noise)."""
    return (np.abs(S) > np.abs(N)).astype(np.float32)


def load_split(data_dir, split, limit=None, digest=None):
    """tr or v as dicts: name, s, n (signals); v also x, X = stft(x) and the IBM. x, s, n must be 16 kHz, equally
    long, and s and n not silent (the error names the file). `digest` (hashlib) is fed every mixture: the training
    config pins the data."""
    files = []
    for path in split_paths(data_dir, split)[:limit]:
        x, s, n = (read_audio(source_path(path, role) if role != "x" else path, RATE)[0] for role in "xsn")
        check_mixture(path, x, s, n)  # equally long, neither speech nor noise silent
        item = {"name": path.name, "s": s, "n": n}
        if split == "v":
            item.update(x=x, X=stft(x), mask=ideal_binary_mask(stft(s), stft(n)))  # X, mask: (frames, 513)
        if digest is not None:
            digest.update(path.name.encode() + x.tobytes())
        files.append(item)
    return files


def load_data(data_dir, dry_run):
    """tr and v (`load_split`), the te files, and the fingerprint of the tr and v waveforms (new data means new
    models); the dry run takes a handful of files (the real code path)."""
    limits = {"tr": 20, "v": 10, "te": 5} if dry_run else {}
    digest = hashlib.sha256()
    tr, v = (load_split(data_dir, split, limits.get(split), digest) for split in ("tr", "v"))
    return tr, v, split_paths(data_dir, "te")[:limits.get("te")], digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- 2. training data: mixtures made anew

def mixture(S, N, lengths, band_fraction=0.0, snr_range=(-5.0, 5.0)):
    """|X| and the IBM of the mixtures X = S + g N (each (batch, frames, 513)), and the valid frames (batch, frames, 1).

    g scales each noise to a random SNR drawn uniformly from `snr_range` (the data's own range); X = S + g N is the
    STFT of s + g n, so every step sees new mixtures at no cost. A `band_fraction` of them lose their top frequencies
    as resampled recordings do (a smooth low-pass from a random 4-8 kHz cutoff on speech and noise: the IBM stays).
    S and N are computed on as real and imaginary planes (`planes`), scaled by real gains."""
    device, batch = S.device, len(S)
    valid = (torch.arange(S.shape[1], device=device)[None, :] < lengths.to(device)[:, None])[..., None]
    S, N = planes(S), planes(N.to(device)).mul_(valid)  # (2, batch, frames, 513), fresh: changed in place
    power_S = (torch.hypot(*S) ** 2 * valid).sum((1, 2))
    power_N = (torch.hypot(*N) ** 2).sum((1, 2)).clamp_min(1e-12)
    snr = torch.empty(batch).uniform_(*snr_range).to(device)  # drawn on the CPU: the same on any device
    N.mul_((torch.sqrt(power_S / power_N) * 10 ** (-snr / 20))[:, None, None])
    cutoff = torch.where(torch.rand(batch) < band_fraction, torch.empty(batch).uniform_(BINS // 2, BINS), torch.inf)
    bins = torch.arange(BINS, device=device)
    band = torch.sigmoid((cutoff.to(device)[:, None] - bins) / 4)[:, None, :]  # (batch, 1, 513)
    S.mul_(band), N.mul_(band)
    return torch.hypot(*(S + N)), (torch.hypot(*S) > torch.hypot(*N)).to(S.dtype), valid


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


# ----------------------------------------------------------------------------- 3. the two maskers

class RunningMean(nn.Module):
    """The causal running mean of the log spectrum, per bin: mean_t = sum_k a^(t-k) z_k / sum_k a^(t-k) (k = 1..t),
    forgetting with a time constant of 1 / (1 - a) frames (a = 0.98: 50 frames, 1.6 s). z_t - mean_t says how far
    this frame stands above what this bin has been doing (mostly the noise, where it is steady), as NSNet's online
    normalisation does. State: the running sums (batch, 513) and (batch, 1) after the last frame."""

    def __init__(self, alpha=0.98):
        super().__init__()
        self.alpha = alpha

    @torch.no_grad()  # a function of the input alone: no parameters, no gradient needed
    def forward(self, z, state=None):
        """z (batch, frames, 513) -> running mean (batch, frames, 513), and the state after the last frame."""
        total, weight = (z.new_zeros(z.shape[0], z.shape[2]), z.new_zeros(z.shape[0], 1)) if state is None else state
        means = []
        for t in range(z.shape[1]):
            total = self.alpha * total + z[:, t]
            weight = self.alpha * weight + 1
            means.append(total / weight)
        return torch.stack(means, 1), (total, weight)


class LogSpectrum(nn.Module):
    """log |X|, standardised per bin with the training set's statistics (a fixed, frame-wise map; training sets
    `mean` and `std`, and they are saved with the weights)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(BINS))
        self.register_buffer("std", torch.ones(BINS))

    def forward(self, noisy_mag):
        return (torch.log(noisy_mag + EPS) - self.mean) / self.std


class GRUMasker(nn.Module):
    """|X| frames -> mask logits, causally: the recurrent model of the homework. Per frame, the standardised log
    spectrum z_t and z_t - mean_t go through a linear projection with LayerNorm, then a one-way GRU, whose state
    carries what the frame cannot tell (the noise so far, the voice so far); the logits are the GRU's read-out plus a
    linear path from the projection. `running_mean=False` (z_t alone) and `proj=0` are the ablation's variants."""

    def __init__(self, hidden=256, proj=256, dropout=0.1, alpha=0.98, running_mean=True):
        super().__init__()
        self.log_spectrum = LogSpectrum()
        self.running_mean = RunningMean(alpha) if running_mean else None
        features = 2 * BINS if running_mean else BINS
        self.proj = nn.Sequential(Dropout(dropout), nn.Linear(features, proj), nn.LayerNorm(proj), nn.ReLU()) \
            if proj else Dropout(dropout)
        width = proj or features
        self.rnn = nn.GRU(width, hidden, batch_first=True)
        self.drop = Dropout(dropout)
        self.out = nn.Linear(hidden, BINS)
        self.skip = nn.Linear(width, BINS)

    def forward(self, noisy_mag, state=None):
        """noisy_mag (batch, frames, 513) -> logits (batch, frames, 513), and the state to continue from."""
        mean_state, rnn_state = (None, None) if state is None else state
        z = self.log_spectrum(noisy_mag)  # (batch, frames, 513)
        if self.running_mean is not None:
            mean, mean_state = self.running_mean(z, mean_state)
            z = torch.cat([z, z - mean], -1)  # (batch, frames, 2 x 513)
        x = self.proj(z)  # (batch, frames, proj)
        h, rnn_state = gru(self.rnn, x, rnn_state)  # (batch, frames, hidden): self.rnn, in bf16 under autocast
        return self.out(self.drop(h)) + self.skip(x), (mean_state, rnn_state)


class FCMasker(nn.Module):
    """The homework's baseline: a fully-connected net that masks each frame from that frame alone."""

    def __init__(self, hidden=512, layers=2, dropout=0.1, layer_norm=False):
        super().__init__()
        self.log_spectrum = LogSpectrum()
        widths = [BINS] + [hidden] * layers
        blocks = [nn.Sequential(Dropout(dropout), nn.Linear(a, b), nn.LayerNorm(b) if layer_norm else nn.Identity(),
                                nn.ReLU()) for a, b in zip(widths, widths[1:])]
        self.net = nn.Sequential(*blocks, Dropout(dropout), nn.Linear(widths[-1], BINS))

    def forward(self, noisy_mag, state=None):
        """noisy_mag (batch, frames, 513) -> logits (batch, frames, 513); no state (the same interface)."""
        return self.net(self.log_spectrum(noisy_mag)), None


MASKERS = {"gru": GRUMasker, "fc": FCMasker}


def build_masker(config):
    """A masker from its config {'kind': 'gru' | 'fc', and that class's keyword arguments}."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in MASKERS:
        raise UserError(f"unknown model kind {kind!r}")
    try:
        return MASKERS[kind](**config)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"the {kind} model config {config} is not usable ({str(e).strip()[:100]})") from None


def load_denoiser(path):
    """The masker in `path` (results/p4/denoiser.pt, or a training checkpoint), checked, in eval mode."""
    return load_model(path, build_masker)


# ----------------------------------------------------------------------------- 4. inference: the masked STFT

def apply_mask(mask, X, length):
    """The recovered signal: the inverse STFT of mask (.) X (the noisy phase kept), `length` samples."""
    return istft(mask * X, length)


def enhance(model, files):
    """Masks and recovered signals of whole files (dicts with X, x)."""
    masks = predict_masks(model, [np.abs(f["X"]) for f in files])
    return masks, [apply_mask(M_hat, f["X"], len(f["x"])) for M_hat, f in zip(masks, files)]


# ----------------------------------------------------------------------------- 5. training

def training_config(kind, flags, fingerprint):
    """A model's config from its flags' values (the FC's without their fc_ prefix): the masker's arguments under
    "model" (what `build_masker` reads), the recipe and the data beside them; a checkpoint is reused only if equal."""
    recipe = {name.removeprefix("fc_"): value for name, value in flags.items()}
    model = {"kind": kind, **{name: recipe.pop(name) for name in inspect.signature(MASKERS[kind]).parameters}}
    return {"model": model, **recipe, "data": fingerprint}


def validation_numbers(model, v, power):
    """The training loss and the SNR on `v`, per epoch."""
    masks, outputs = enhance(model, v)
    loss = [masked_bce(torch.logit(torch.from_numpy(M_hat).double(), eps=1e-7)[None],
                       torch.from_numpy(f["mask"]).double()[None], torch.ones(1, len(M_hat), 1, dtype=torch.bool),
                       loss_weight(torch.from_numpy(np.abs(f["X"])).double()[None], power)).item()
            for M_hat, f in zip(masks, v)]
    snr = [snr_db(f["s"], y) for f, y in zip(v, outputs)]
    return {"val_loss": float(np.mean(loss)), "val_snr": float(np.mean(snr))}


def train_masker(kind, args, flags, sentences, noise, stats, v, fingerprint, device, name=None):
    """Train (or reuse) the GRU or the FC, defined by the flags of `args` named in `flags`, on fresh mixtures of
    `sentences` and `noise`, keeping the epoch with the best `v` SNR: (model in eval mode, its config, history)."""
    config = training_config(kind, {name: getattr(args, name) for name in flags}, fingerprint)
    speech = [stft(at_speed(s, speed)) for s in sentences for speed in config["speeds"]]  # each (frames, 513)
    seed_everything(config["seed"])
    model = build_masker(config["model"])
    model.log_spectrum.mean.copy_(stats[0])
    model.log_spectrum.std.copy_(stats[1])
    loss_fn = functools.partial(mask_loss, noise=noise, power=config["loss_power"],
                                band_fraction=config["band_fraction"])
    history = train_or_reuse(
        model.to(device), loss_fn, SpeechWindows(speech, config["crop"], config["repeats"]),
        validate=lambda m: validation_numbers(m, v, config["loss_power"]), monitor="val_snr", mode="max", warmup=0.1,
        epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
        seed=config["seed"], clip_grad=1.0, collate_fn=pad_batch, ckpt_path=args.ckpt_dir / f"p4_{name or kind}.pt",
        config=config, resume=args.resume, overwrite=args.overwrite, device=device, precision=config["precision"],
        desc=f"p4 {name or kind}", quiet=args.quiet)
    return model.eval(), config, history


# ----------------------------------------------------------------------------- 6. ablation

# each variant changes one thing of the main run's recipe (the flags it overrides), trained with the same seed
THREE_SPEEDS = {"speeds": [0.9, 1.0, 1.1], "repeats": 3}
ABLATIONS = [
    ("gru", "the GRU of the main run", "gru", {}),
    ("gru_no_running_mean", "without the running mean: the GRU reads z_t alone", "gru", {"running_mean": False}),
    ("gru_no_projection", "without the input projection and its LayerNorm", "gru", {"proj": 0}),
    ("gru_three_speeds", "the training sentences at speeds 0.9, 1, 1.1 (repeats 10 / 3)", "gru", THREE_SPEEDS),
    ("gru_no_band_limit", "no band-limited training mixtures", "gru", {"band_fraction": 0.0}),
    ("fc", "the FC of the main run", "fc", {}),
    ("fc_three_speeds", "the FC on speeds 0.9, 1, 1.1 (repeats 10 / 3)", "fc", THREE_SPEEDS),
    ("fc_layer_norm", "the FC with LayerNorm after each hidden layer", "fc", {"fc_layer_norm": True}),
    ("fc_windows_96", "the FC on the GRU's 96-frame windows (half the steps)", "fc", {"fc_crop": 96}),
    ("fc_1024x2", "a wider FC: 2 x 1024 (twice the compute)", "fc", {"fc_hidden": 1024}),
]


def ablation(args, flags, data, device):
    """Train every variant of ABLATIONS (checkpoints p4_ablation_<name>.pt) and write ablation.json."""
    sentences, noise, stats, v, fingerprint = data

    def train(name, kind, variant):
        return train_masker(kind, variant, flags[kind], sentences, noise, stats, v, fingerprint, device,
                            name=None if name == kind else f"ablation_{name}")

    run_ablation(ABLATIONS, args, train, lambda model: [snr_db(f["s"], y) for f, y in zip(v, enhance(model, v)[1])],
                 args.out / "ablation.json", metric="v_snr_db", monitor="val_snr", seed=args.seed, data=fingerprint,
                 dry_run=args.dry_run, command="python p4_denoise.py --ablation")


# ----------------------------------------------------------------------------- 7. results

def enhance_v(models, v):
    """Each system's masks and outputs on `v`: the noisy input, the FC, the GRU and the oracle IBM (the true mask)."""
    masks, outputs = {}, {"noisy": [f["x"] for f in v]}
    for kind in ("fc", "gru"):
        masks[kind], outputs[kind] = enhance(models[kind], v)
    outputs["oracle_ibm"] = [apply_mask(f["mask"], f["X"], len(f["x"])) for f in v]
    return masks, outputs


# ----------------------------------------------------------------------------- main

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["denoise"], ["te-zip"]):
        return (denoise_main if argv[0] == "denoise" else te_zip_main)(argv[1:], load_denoiser)
    args, flags = get_args(argv)
    resolve_dirs(args, "p4")
    device = init_distributed(pick_device(args.device))
    args.precision = resolve_precision(args.precision, device)  # what "auto" means on this machine
    t_start, seconds = time.time(), {}

    data_dir = ensure_data(args.data_dir)
    tr, v, te, fingerprint = load_data(data_dir, args.dry_run)
    sentences, noise, stats = distinct_speech(tr), NoisePool([stft(f["n"]) for f in tr]), log_spectrum_stats(tr)
    seconds["data"] = time.time() - t_start
    if is_main():
        print(f"[p4] {data_dir}: {len(tr)} tr, {len(v)} v, {len(te)} te; {len(sentences)} sentences", flush=True)
    if args.ablation:
        return ablation(args, flags, (sentences, noise, stats, v, fingerprint), device)

    trained = {}
    for kind in ("gru", "fc"):
        t = time.time()
        trained[kind] = train_masker(kind, args, flags[kind], sentences, noise, stats, v, fingerprint, device)
        seconds[f"train_{kind}"] = time.time() - t
    if not is_main():
        return
    models = {kind: model.cpu() for kind, (model, _, _) in trained.items()}  # scored on the CPU, as `denoise` runs
    save_checkpoint(args.out / "denoiser.pt", config=trained["gru"][1], model=models["gru"].state_dict())

    t = time.time()
    masks, outputs = enhance_v(models, v)
    scores = score_systems([f["s"] for f in v], outputs)
    metrics = summarize_scores([f["name"] for f in v], scores, NOISE_TYPES if data_dir == DEFAULT_DATA else range(10))
    seconds["score"], t = time.time() - t, time.time()
    with torch_threads(1):  # one stream at a time: one thread is fastest
        metrics["te_output"] = write_te_zip(models["gru"], te, args.out / "te_denoised.zip")
        metrics["examples"] = write_examples(v, outputs, {k: s["snr_db"] for k, s in scores.items()}, te,
                                             models["gru"], args.out)
    seconds["te_and_examples"] = time.time() - t
    metrics.update(models=model_records(trained), history={kind: h for kind, (_, _, h) in trained.items()},
                   data={"folder": shown_path(data_dir), "files": {"tr": len(tr), "v": len(v), "te": len(te)},
                         "distinct_training_sentences": len(sentences), "noise_recordings": len(tr),
                         "fingerprint": fingerprint},
                   ablation=read_ablation(args.out / "ablation.json", "python p4_denoise.py --ablation",
                                          data=fingerprint, seed=args.seed),
                   model_file=shown_path(args.out / "denoiser.pt"), device=str(device),
                   threads=torch.get_num_threads(), machine=machine(device, args.precision), dry_run=args.dry_run)
    save_config(args.out / "config.json", args)
    t = time.time()
    metrics["figures"] = make_figures(metrics, v, masks, outputs, args.out)
    seconds["figures"] = time.time() - t
    metrics.update(seconds=seconds, wall_seconds=time.time() - t_start, cpu_seconds=time.process_time())
    save_json(args.out / "metrics.json", metrics)
    m, gain = {k: s["snr_db"]["mean"] for k, s in metrics["v"]["systems"].items()}, metrics["gru_minus_fc_db"]
    print(f"[p4] v SNR (dB, mean over {len(v)} files): noisy {m['noisy']:.2f}, FC {m['fc']:.2f}, GRU {m['gru']:.2f}, "
          f"oracle IBM {m['oracle_ibm']:.2f}; GRU - FC {gain['mean']:+.2f} dB (sem {gain['sem']:.2f}, better on "
          f"{gain['files_gru_better']} files); {metrics['wall_seconds']:.0f} s; wrote {shown_path(args.out)}")


if __name__ == "__main__":
    run_cli(main)
