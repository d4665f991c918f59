"""Problem 4's trained denoiser as a product: its causal features, the two maskers, the checkpoint format, and the
one inference path (STFT -> mask -> inverse STFT) that training's evaluation, the `te` outputs, the benchmark and
the `denoise` command all run. Importable without the training code (p4_denoise.py trains the models).

Shapes: a magnitude spectrogram `noisy_mag` is (batch, frames, 513); a mask is the same shape, in [0, 1].
Causality (the homework's equation 12): the mask at frame t depends on frames 1..t only. Every module here keeps
that, and carries a state from one block of frames to the next, so a file streamed in blocks gives exactly the
result of the whole file at once.
"""
import os
import sys
import time
from pathlib import Path

import numpy as np
import soxr
import torch
from torch import nn

from .audio import BINS, ISTFT, RATE, STFT, AudioReader, AudioWriter, istft
from .train import best_weights, load_checkpoint
from .utils import ROOT, UserError

EPS = 1e-5  # floor under |X| before the log (|X| of a full-scale sine is about 256)
DEFAULT_MODEL = ROOT / "results" / "p4" / "denoiser.pt"


# ----------------------------------------------------------------------------- features

class RunningMean(nn.Module):
    """The causal running mean of the log spectrum, per bin: what a frame alone cannot tell.

    mean_t = sum_k a^(t-k) z_k / sum_k a^(t-k) (k = 1..t): an exponentially weighted mean that starts as the plain
    mean of the frames so far and forgets with a time constant of 1 / (1 - a) frames (a = 0.98: 50 frames, 1.6 s).
    z_t - mean_t says how far this frame stands above what this bin has been doing (mostly the noise, where the
    noise is steady), as NSNet's online normalisation does. State: the running sums (sum a^(t-k) z_k (batch, 513),
    sum a^(t-k) (batch, 1)) after the last frame.
    """

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


# ----------------------------------------------------------------------------- the two maskers

class GRUMasker(nn.Module):
    """|X| frames -> mask logits, causally: the recurrent model of the homework.

    Per frame, the standardised log spectrum z_t and its distance from its running mean (z_t - mean_t) go through a
    linear projection with LayerNorm, then a one-way GRU, whose state carries what the frame cannot tell (the noise
    so far, the voice so far). The logits are the GRU's read-out plus a linear path straight from the projection.
    `running_mean=False` feeds z_t alone and `proj=0` leaves out the projection (the GRU reads the features): the
    ablation's variants.
    """

    def __init__(self, hidden=256, proj=256, dropout=0.1, alpha=0.98, running_mean=True):
        super().__init__()
        self.log_spectrum = LogSpectrum()
        self.running_mean = RunningMean(alpha) if running_mean else None
        features = 2 * BINS if running_mean else BINS
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, proj), nn.LayerNorm(proj), nn.ReLU()) \
            if proj else nn.Dropout(dropout)
        width = proj or features
        self.rnn = nn.GRU(width, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
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
        h, rnn_state = self.rnn(x, rnn_state)  # (batch, frames, hidden)
        return self.out(self.drop(h)) + self.skip(x), (mean_state, rnn_state)


class FCMasker(nn.Module):
    """The homework's baseline: a fully-connected net that masks each frame from that frame alone."""

    def __init__(self, hidden=512, layers=2, dropout=0.1, layer_norm=False):
        super().__init__()
        self.log_spectrum = LogSpectrum()
        widths = [BINS] + [hidden] * layers
        blocks = [nn.Sequential(nn.Dropout(dropout), nn.Linear(a, b), nn.LayerNorm(b) if layer_norm else nn.Identity(),
                                nn.ReLU()) for a, b in zip(widths, widths[1:])]
        self.net = nn.Sequential(*blocks, nn.Dropout(dropout), nn.Linear(widths[-1], BINS))

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
        raise UserError(f"the {kind} model config {config} is not usable ({str(e).strip()[:100]})")


def load_denoiser(path):
    """The masker in a checkpoint written by p4_denoise.py (results/p4/denoiser.pt, or a training checkpoint in
    checkpoints/), in eval mode; loaded with weights_only=True, its digest and finiteness checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model {path} not found; train one with `python p4_denoise.py` or pass --model")
    ckpt = load_checkpoint(path)
    config = ckpt.get("config", {})
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(f"{path} holds no masker config; it was not written by p4_denoise.py")
    model = build_masker(config["model"])
    try:
        model.load_state_dict(best_weights(ckpt))
    except (RuntimeError, TypeError, KeyError, AttributeError) as e:
        reason = " ".join(line.strip() for line in str(e).strip().splitlines()[1:])[:150] or type(e).__name__
        raise UserError(f"{path} does not hold the weights of this code's {config['model'].get('kind')} masker "
                        f"({reason}); train one with `python p4_denoise.py`")
    return model.eval()


# ----------------------------------------------------------------------------- the inference path

@torch.no_grad()
def predict_masks(model, mags, batch_size=32):
    """Masks (frames, 513) float32 in [0, 1] for whole files' |X| (frames, 513): files of similar length batched.

    Padding sits after each file's last frame, so it cannot reach a causal model's real frames.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(mags)), key=lambda i: len(mags[i]))
    masks = [None] * len(mags)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = nn.utils.rnn.pad_sequence([torch.as_tensor(mags[i]) for i in idx], batch_first=True)
        probs = torch.sigmoid(model(batch.to(device))[0]).cpu().numpy()  # (batch, frames, 513)
        for row, i in zip(probs, idx):
            masks[i] = row[:len(mags[i])]
    model.train(was_training)
    return masks


def apply_mask(mask, X, length):
    """The recovered signal: the inverse STFT of mask (.) X (the noisy phase kept), `length` samples."""
    return istft(mask * X, length)


class Denoiser:
    """Denoise a 16 kHz signal block by block: STFT -> mask -> inverse STFT, the masker's state and the STFT
    overlaps carried from block to block, so the output equals the whole-signal result (`denoise`) and memory
    is bounded by the block. Output lags input by at most 1024 samples; `finish` returns the rest."""

    def __init__(self, model):
        self.model = model.eval()
        self.state = None
        self.stft, self.istft = STFT(), ISTFT()
        self.pushed = self.emitted = 0

    @torch.no_grad()
    def _apply(self, X):
        if len(X) == 0:
            return np.zeros(0, np.float32)
        logits, self.state = self.model(torch.from_numpy(np.abs(X))[None], self.state)  # (1, frames, 513)
        return self.istft.push(torch.sigmoid(logits)[0].numpy() * X)

    def push(self, x):
        """Samples (time,) in; the denoised samples that are final so far out."""
        self.pushed += len(x)
        y = self._apply(self.stft.push(x))
        self.emitted += len(y)
        return y

    def finish(self):
        """The rest, so that the whole output is exactly as long as the input."""
        y = np.concatenate([self._apply(self.stft.finish()), self.istft.finish()])[:self.pushed - self.emitted]
        self.emitted += len(y)
        return y


def denoise(model, x, block=None):
    """Denoise a whole 16 kHz mono signal (time,), streamed `block` samples at a time (None: all at once)."""
    streamer = Denoiser(model)
    block = block or max(1, len(x))
    return np.concatenate([streamer.push(x[i:i + block]) for i in range(0, len(x), block)] + [streamer.finish()])


# ----------------------------------------------------------------------------- the `denoise` command

def denoise_file(model, src, dst, block_seconds=1.0):
    """Denoise the recording `src` into `dst` (the same sample rate, mono, 16-bit), streaming in blocks.

    Other rates are resampled to 16 kHz and back (soxr, streaming); channels are averaged. Every input sample
    is checked (see `AudioReader`); `dst` appears only once complete. Returns (samples, rate, channels, clipped).
    """
    with AudioReader(src) as reader, AudioWriter(dst, reader.rate) as out:
        rate = reader.rate
        to_16k = soxr.ResampleStream(rate, RATE, 1, dtype="float32") if rate != RATE else None
        back = soxr.ResampleStream(RATE, rate, 1, dtype="float32") if rate != RATE else None
        streamer = Denoiser(model)

        def emit(y, last=False):
            if back is not None:
                y = back.resample_chunk(y, last=last)
            y = y[:reader.read - out.written]  # the resamplers round: never longer than the input ...
            if last:  # ... nor shorter
                y = np.concatenate([y, np.zeros(reader.read - out.written - len(y), np.float32)])
            if not np.isfinite(y).all():
                raise UserError(f"the model produced non-finite samples for {src}; {dst} was not written")
            out.write(y)

        for x in reader.blocks(max(1, round(block_seconds * rate))):
            emit(streamer.push(to_16k.resample_chunk(x) if to_16k is not None else x))
        tail = np.zeros(0, np.float32) if to_16k is None else streamer.push(
            to_16k.resample_chunk(np.zeros(0, np.float32), last=True))
        emit(np.concatenate([tail, streamer.finish()]), last=True)
    return reader.read, rate, reader.channels, out.clipped


SOUND_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".opus"}


def plan_outputs(paths, out_dir, overwrite_input):
    """[(input, output)] for `denoise`: IN OUT, or every input (folders: the sound files in them) into out_dir.
    A pair that cannot be done is (input, UserError)."""
    if out_dir is None:
        if len(paths) != 2:
            raise UserError(f"give one input and one output (IN OUT), or several inputs with --out-dir DIR "
                            f"(got {len(paths)} path{'s' * (len(paths) != 1)} and no --out-dir)")
        pairs = [tuple(paths)]
    else:
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--out-dir {out_dir} exists and is not a folder")
        inputs = []
        for path in paths:
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix.lower() in SOUND_SUFFIXES and p.is_file())
                if not found:
                    raise UserError(f"folder {path} holds no sound files ({', '.join(sorted(SOUND_SUFFIXES))})")
                inputs += found
            else:
                inputs.append(path)
        pairs, taken = [], {}
        for src in inputs:
            dst = out_dir / f"{src.stem}.wav"
            if dst in taken:
                pairs.append((src, UserError(f"{src} and {taken[dst]} would both be written to {dst}; "
                                             f"denoise them into different folders")))
                continue
            taken[dst] = src
            pairs.append((src, dst))
    checked = []
    for src, dst in pairs:
        if not isinstance(dst, UserError) and not overwrite_input and src.exists() and dst.exists() and \
                os.path.samefile(src, dst):
            dst = UserError(f"the output {dst} is the input itself; pass --overwrite-input to replace it")
        checked.append((src, dst))
    return checked


def denoise_main(argv):
    from .utils import ArgumentParser, bounded_float, bounded_int
    p = ArgumentParser(prog="p4_denoise.py denoise",
                       description="Denoise recordings (any sample rate, mono or stereo) with the trained GRU.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="IN OUT: one recording and where its denoised version goes (.wav or .flac); or, with "
                        "--out-dir, any number of recordings and folders of recordings")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="write each input's denoised version into this folder as NAME.wav (default: the IN OUT form)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="the trained model (default: results/p4/denoiser.pt)")
    p.add_argument("--block-seconds", type=bounded_float(0.01, 60.0), default=1.0,
                   help="seconds of input read and denoised at a time, 0.01 to 60 (memory does not grow with the file)")
    p.add_argument("--threads", type=bounded_int(1, 4 * (os.cpu_count() or 1)), default=1,
                   help="CPU threads (one is fastest for one stream)")
    p.add_argument("--overwrite-input", action="store_true", help="allow an output to replace its own input")
    p.add_argument("--quiet", action="store_true", help="one line at the end instead of one per recording")
    args = p.parse_args(argv)
    pairs = plan_outputs(args.paths, args.out_dir, args.overwrite_input)
    torch.set_num_threads(args.threads)
    model = load_denoiser(args.model)
    failed, started = 0, time.perf_counter()
    for src, dst in pairs:
        try:
            if isinstance(dst, UserError):
                raise dst
            t = time.perf_counter()
            samples, rate, channels, clipped = denoise_file(model, src, dst, args.block_seconds)
        except UserError as e:
            if len(pairs) == 1:
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            failed += 1
            continue
        took = time.perf_counter() - t
        note = f"; {clipped} samples clipped to [-1, 1]" if clipped else ""
        if not args.quiet:
            print(f"[p4] {src}: {samples / rate:.1f} s ({rate} Hz, {channels} channel{'s' * (channels > 1)}) denoised "
                  f"in {took:.2f} s (real-time factor {took * rate / samples:.4f}){note}; wrote {dst}", flush=True)
    if args.quiet or failed:
        print(f"[p4] {len(pairs) - failed} of {len(pairs)} recordings denoised in {time.perf_counter() - started:.1f} s"
              + (f"; {failed} failed (named above)" if failed else ""), flush=True)
    if failed:
        sys.exit(2)
