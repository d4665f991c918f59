"""Problem 4's trained denoiser as a product: loading a masker, running it over whole files (`predict_masks`) or
streaming it over sound files (`Denoiser`, `denoise_file`), the `denoise` command, and the denoised `te` mixtures
zipped for hand-in. The masker itself (its features, the GRU and the FC, `build_masker`) is the homework's and
lives in p4_denoise.py, which hands its `load_denoiser` to the commands here.

A masker maps |X| (batch, frames, 513) and a state to mask logits of the same shape and the next state, causally
(the mask at frame t from frames 1..t), so a file streamed in blocks gives exactly the result of the whole file.
"""
import contextlib
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import soxr
import torch
from torch import nn

from ..cli import ArgumentParser, UserError, bounded_float, thread_count
from ..files import ROOT, atomic_path, file_kind, shown_path
from ..precision import torch_threads
from ..train import best_weights, load_checkpoint
from .audio import AudioReader, AudioWriter, FORMATS, decoder_warnings_silenced
from .data import DEFAULT_DATA, ensure_data
from .stft import ISTFT, RATE, STFT

ZIP_STAMP = (2020, 1, 1, 0, 0, 0)  # every zip member's timestamp: the zip depends on the audio only
DEFAULT_MODEL = ROOT / "results" / "p4" / "denoiser.pt"


# ----------------------------------------------------------------------------- the checkpoint

def load_model(path, build):
    """The masker in a checkpoint written by p4_denoise.py (results/p4/denoiser.pt, or a training checkpoint in
    checkpoints/), built by `build(config)` (p4_denoise.build_masker), in eval mode.

    Loaded with weights_only=True, its digest and finiteness checked (`load_checkpoint`), and the shapes its config
    implies compared with its tensors on the meta device before any memory is taken: a config that asks for a
    model of gigabytes is refused at once. Every problem is one UserError naming the file."""
    path = Path(path)
    kind = file_kind(path)
    if kind != "file":
        raise UserError(f"model {path} not found; train one with `python p4_denoise.py` or pass --model"
                        if kind == "missing" else f"model {path} is {kind}, not a model file; pass --model with "
                                                  f"a model p4_denoise.py wrote")
    try:
        open(path, "rb").close()
        ckpt = load_checkpoint(path)
    except OSError as e:
        raise UserError(f"cannot read model {path}: {e.strerror}") from None
    except UserError as e:
        if _is_sound_file(path):
            raise UserError(f"model {path} is a sound file, not a model: give recordings as PATH, and --model a "
                            f"model p4_denoise.py wrote (default {DEFAULT_MODEL.relative_to(ROOT)})") from None
        raise UserError(str(e).replace("; delete it and run again", "; pass --model with a model p4_denoise.py "
                                                                    "wrote")) from None
    config = ckpt.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(f"{path} holds no masker config; it was not written by p4_denoise.py")
    weights = best_weights(ckpt)
    weights = weights if isinstance(weights, dict) else {}
    try:
        with torch.device("meta"):
            wanted = {name: tuple(t.shape) for name, t in build(config["model"]).state_dict().items()}
        found = {name: tuple(t.shape) for name, t in weights.items() if torch.is_tensor(t)}
        if wanted != found:
            raise UserError(f"its tensors are not the model its config describes ({_difference(wanted, found)})")
        model = build(config["model"])
        model.load_state_dict(weights)
    except UserError as e:
        raise UserError(f"model {path}: {e}") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"model {path}: its weights do not load ({str(e).strip().splitlines()[0][:120]})") from None
    return model.eval()


def _difference(wanted, found):
    """The first of the model's tensors that the checkpoint lacks, or holds in another shape, or does not know."""
    for name, shape in wanted.items():
        if found.get(name) != shape:
            return f"{name}: {shape} wanted, {found.get(name, 'nothing')} found"
    return f"{sorted(set(found) - set(wanted))[0]} is not the model's"


def _is_sound_file(path):
    try:
        with decoder_warnings_silenced():
            AudioReader(path).__exit__()
        return True
    except UserError:
        return False


# ----------------------------------------------------------------------------- inference

@torch.no_grad()
def predict_masks(model, mags, batch_size=32):
    """Masks (frames, 513) float32 in [0, 1] for whole files' |X| (frames, 513): files of similar length batched.

    Padding sits after each file's last frame, so it cannot reach a causal model's real frames."""
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


class Denoiser:
    """Denoise a 16 kHz signal of any number of channels block by block: STFT -> mask -> inverse STFT, the
    masker's state and the STFT overlaps carried from block to block, so the output equals the whole-signal result
    (`denoise`) and memory is bounded by the block. Output lags input by at most 1024 samples; `finish` returns
    the rest.

    Channels: one mask, computed from the RMS of the channels' magnitudes sqrt(mean_c |X_c|^2), is applied to every
    channel's STFT, so the channels keep their balance and phase, and no layout can cancel the reference (the
    average of an antiphase pair R = -L is silence; their magnitudes are not). One channel: |X| itself."""

    def __init__(self, model, channels=1):
        self.model = model.eval()
        self.state = None
        self.stfts, self.istfts = [STFT() for _ in range(channels)], [ISTFT() for _ in range(channels)]
        self.pushed = self.emitted = 0

    @torch.no_grad()
    def _apply(self, X):
        """Frames (channels, k, 513) -> the samples (time, channels) that no later frame can change."""
        if X.shape[1] == 0:
            return np.zeros((0, len(X)), np.float32)
        noisy_mag = np.abs(X[0]) if len(X) == 1 else np.sqrt(np.mean(np.abs(X) ** 2, axis=0))  # (k, 513)
        logits, self.state = self.model(torch.from_numpy(noisy_mag)[None], self.state)
        mask = torch.sigmoid(logits)[0].numpy()
        return np.stack([istft.push(mask * X_c) for istft, X_c in zip(self.istfts, X)], axis=1)

    def push(self, x):
        """Samples (time, channels) in; the denoised samples (time, channels) that are final so far out."""
        self.pushed += len(x)
        y = self._apply(np.stack([stft.push(x[:, c]) for c, stft in enumerate(self.stfts)]))
        self.emitted += len(y)
        return y

    def finish(self):
        """The rest, so that the whole output is exactly as long as the input."""
        last = self._apply(np.stack([stft.finish() for stft in self.stfts]))
        tail = np.stack([istft.finish() for istft in self.istfts], axis=1)
        y = np.concatenate([last, tail])[:self.pushed - self.emitted]
        self.emitted += len(y)
        return y


def denoise(model, x, block=None):
    """Denoise a whole 16 kHz signal, (time,) or (time, channels), streamed `block` samples at a time (None: all
    at once)."""
    x = np.asarray(x, np.float32)
    frames = x[:, None] if x.ndim == 1 else x  # (time, channels)
    streamer = Denoiser(model, frames.shape[1])
    block = block or max(1, len(frames))
    y = np.concatenate([streamer.push(frames[i:i + block]) for i in range(0, len(frames), block)]
                       + [streamer.finish()])
    return y[:, 0] if x.ndim == 1 else y


def denoise_file(model, src, dst, block_seconds=1.0):
    """Denoise the recording `src` into `dst` (the same sample rate and channels, 16-bit), streaming in blocks.

    Other rates are resampled to 16 kHz and back (soxr, streaming). Every input sample is checked (see
    `AudioReader`); `dst` appears only once complete. Returns (samples, rate, channels, clipped)."""
    with AudioReader(src) as reader, AudioWriter(dst, reader.rate, reader.channels) as out:
        rate, channels = reader.rate, reader.channels
        to_16k = soxr.ResampleStream(rate, RATE, channels, dtype="float32") if rate != RATE else None
        back = soxr.ResampleStream(RATE, rate, channels, dtype="float32") if rate != RATE else None
        streamer = Denoiser(model, channels)

        def emit(y, last=False):
            if back is not None:
                y = back.resample_chunk(y, last=last)
            y = y[:reader.read - out.written]  # the resamplers round: never longer than the input ...
            if last:  # ... nor shorter
                y = np.concatenate([y, np.zeros((reader.read - out.written - len(y), channels), np.float32)])
            if not np.isfinite(y).all():
                raise UserError(f"the model produced non-finite samples for {src}; {dst} was not written")
            out.write(y)

        for x in reader.blocks(max(1, round(block_seconds * rate))):  # (time, channels)
            emit(streamer.push(to_16k.resample_chunk(x) if to_16k is not None else x))
        tail = np.zeros((0, channels), np.float32) if to_16k is None else streamer.push(
            to_16k.resample_chunk(np.zeros((0, channels), np.float32), last=True))
        emit(np.concatenate([tail, streamer.finish()]), last=True)
    return reader.read, rate, channels, out.clipped


# ----------------------------------------------------------------------------- the `denoise` command

SOUND_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".opus"}


def _identity(path):
    """What a path names on disk: an existing file's device and inode (so a hard link, a symbolic link or another
    spelling of it is the same), else its resolved path."""
    if file_kind(path) == "missing":
        return os.path.realpath(path)
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _sounds_in(folder):
    """[(path, None)] for the sound files in `folder`, and [(path, UserError)] for an entry that cannot be looked at
    (a symbolic link loop): that one fails, the others are still done."""
    try:
        found = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in SOUND_SUFFIXES)
    except OSError as e:
        raise UserError(f"cannot list folder {folder}: {e.strerror}") from None
    entries = []
    for path in found:
        try:
            if file_kind(path) == "file":
                entries.append((path, None))
        except UserError as e:
            entries.append((path, e))
    if not entries:
        raise UserError(f"folder {folder} holds no sound files ({', '.join(sorted(SOUND_SUFFIXES))})")
    return entries


def plan_outputs(paths, out_dir, overwrite_input):
    """[(input, output)] for `denoise`: IN OUT, or every input (folders: the sound files in them) into out_dir as
    NAME.wav. A pair that cannot be done is (input, UserError); all are checked here, before anything is written:
    no output may be an input (its own only with overwrite_input), no two outputs the same file."""
    if out_dir is None:
        if len(paths) != 2:
            raise UserError(f"give one input and one output (IN OUT), or several inputs with --out-dir DIR "
                            f"(got {len(paths)} path{'s' * (len(paths) != 1)} and no --out-dir)")
        pairs = [tuple(paths)]
    else:
        if file_kind(out_dir) not in ("missing", "a folder"):
            raise UserError(f"--out-dir {out_dir} exists and is not a folder")
        pairs = []
        for path in paths:
            try:
                inputs = _sounds_in(path) if file_kind(path) == "a folder" else [(path, None)]
            except UserError as e:
                pairs.append((path, e))
                continue
            pairs += [(src, error or out_dir / f"{src.stem}.wav") for src, error in inputs]
    inputs = {}
    for src, _ in pairs:
        with contextlib.suppress(UserError):
            inputs.setdefault(_identity(src), src)
    checked, taken = [], {}
    for src, dst in pairs:
        try:
            if isinstance(dst, UserError):
                raise dst
            where = _identity(dst)
            if where in taken:
                raise UserError(f"{src} and {taken[where]} would both be written to {dst}; denoise them into "
                                f"different folders")
            if where in inputs and (where != _identity(src) or not overwrite_input):
                raise UserError(f"the output {dst} is the input itself; pass --overwrite-input to replace it"
                                if where == _identity(src) else
                                f"the output of {src} would replace the input {inputs[where]}; choose another "
                                f"--out-dir")
            taken[where] = src
        except UserError as e:
            dst = e
        checked.append((src, dst))
    return checked


class Stdout:
    """Progress lines that a closed pipe (`| head -1`) or a full disk (`> /dev/full`) cannot stop: after the first
    failure nothing more is printed (stdout is pointed at /dev/null, so Python's last flush cannot fail either),
    the work goes on, and `failed` says why for the end."""

    def __init__(self):
        self.failed = None

    def print(self, text):
        if self.failed is None:
            try:
                # a file name that is not UTF-8 is shown with its odd bytes escaped (stdout's encoding is strict)
                print(text.encode(sys.stdout.encoding or "utf-8", "backslashreplace").decode(sys.stdout.encoding or
                                                                                            "utf-8"), flush=True)
            except OSError as e:
                self.failed = e.strerror or type(e).__name__
                with contextlib.suppress(OSError, ValueError):
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                    os.close(devnull)


def denoise_main(argv, load_denoiser):
    """`p4_denoise.py denoise`: the command line around `denoise_file`; `load_denoiser(path)` loads the model."""
    p = ArgumentParser(prog="p4_denoise.py denoise", allow_abbrev=False,
                       description="Denoise recordings (any sample rate, any number of channels) with the trained GRU.",
                       epilog="Each output has its input's rate and channels (one mask, from all channels, applied "
                              "to each). A file that ends before its header says (a cut WAV, AIFF, Ogg, FLAC or "
                              "MP3) is an error, never a shorter output. No input is ever replaced without "
                              "--overwrite-input, and no output replaces another input.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="IN OUT: one recording and where its denoised version goes (.wav or .flac); or, with "
                        "--out-dir, any number of recordings and folders of recordings")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="write each input's denoised version into this folder as NAME.wav (default: the IN OUT form)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="the trained model (default: results/p4/denoiser.pt)")
    p.add_argument("--block-seconds", type=bounded_float(0.01, 60.0), default=1.0,
                   help="seconds of input read and denoised at a time (memory does not grow with the file)")
    p.add_argument("--threads", type=thread_count(1), default=1,
                   help="CPU threads (one is fastest for one stream)")
    p.add_argument("--overwrite-input", action="store_true", help="allow an output to replace its own input")
    p.add_argument("--quiet", action="store_true", help="one line at the end instead of one per recording")
    args = p.parse_args(argv)
    pairs = plan_outputs(args.paths, args.out_dir, args.overwrite_input)
    stdout, failed, started = Stdout(), 0, time.perf_counter()
    with torch_threads(args.threads):
        model = load_denoiser(args.model)
        for src, dst in pairs:
            try:
                if isinstance(dst, UserError):
                    raise dst
                t = time.perf_counter()
                samples, rate, channels, clipped = denoise_file(model, src, dst, args.block_seconds)
            except (UserError, OSError) as e:  # not a stop: Stopped is no Exception
                error = e if isinstance(e, UserError) else UserError(f"{src}: {e.strerror or e}")
                if len(pairs) == 1:
                    raise error from None
                with contextlib.suppress(OSError):
                    print(f"error: {error}", file=sys.stderr, flush=True)
                failed += 1
                continue
            took = time.perf_counter() - t
            note = f"; {clipped} samples clipped to [-1, 1]" if clipped else ""
            if not args.quiet:
                stdout.print(f"[p4] {src}: {samples / rate:.1f} s ({rate} Hz, {channels} channel{'s' * (channels > 1)})"
                             f" denoised in {took:.2f} s (real-time factor {took * rate / samples:.4f}){note}; "
                             f"wrote {dst}")
    done = f"{len(pairs) - failed} of {len(pairs)} recordings denoised"
    if args.quiet or failed:
        stdout.print(f"[p4] {done} in {time.perf_counter() - started:.1f} s"
                     + (f"; {failed} failed (named above)" if failed else ""))
    if stdout.failed is not None:
        raise UserError(f"stdout failed ({stdout.failed}), so progress was not shown; {done}"
                        + (f", {failed} failed" if failed else ""))
    if failed:
        sys.exit(2)


# ----------------------------------------------------------------------------- the te outputs for hand-in

def write_te_zip(model, te, zip_path, block_seconds=1.0):
    """The denoised `te` mixtures, zipped as the homework names them: each under its input's name (tex0000.wav),
    16-bit at the input's rate, with fixed timestamps (the same model gives the same zip). `te` is the te folder
    or a list of its files; each goes through `denoise_file`, as with the `denoise` command. Returns metrics.json's
    `te_output`: the zip, the number of files, and the command that rebuilds it from the saved model."""
    paths = sorted(Path(te).glob("tex*.wav")) if isinstance(te, (str, Path)) else [Path(p) for p in te]
    if not paths:
        raise UserError(f"no tex*.wav files in {te}")
    with tempfile.TemporaryDirectory() as tmp, atomic_path(zip_path) as part, \
            zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as z:
        for src in paths:
            out = Path(tmp) / (src.stem + (src.suffix if src.suffix.lower() in FORMATS else ".wav"))
            denoise_file(model, src, out, block_seconds)
            z.writestr(zipfile.ZipInfo(out.name, date_time=ZIP_STAMP), out.read_bytes())
            out.unlink()
    data_dir = paths[0].parent.parent
    command = f"python p4_denoise.py te-zip {shown_path(zip_path)}" + \
        ("" if data_dir.resolve() == DEFAULT_DATA.resolve() else f" --data-dir {shown_path(data_dir)}")
    return {"zip": shown_path(zip_path), "files": len(paths), "command": command}


def te_zip_main(argv, load_denoiser):
    """`p4_denoise.py te-zip OUT.zip`: `write_te_zip` with the committed model, for `make handin`."""
    p = ArgumentParser(prog="p4_denoise.py te-zip", allow_abbrev=False,
                       description="Zip the denoised te mixtures as the homework names them (te/tex0000.wav -> "
                                   "tex0000.wav in the zip), with the trained model; no training.")
    p.add_argument("zip", type=Path, help="where the zip goes, e.g. handin/te_denoised.zip")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="homework-3 speech data with te/ (default: data/hw3, built when missing)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="the trained model (default: results/p4/denoiser.pt)")
    p.add_argument("--threads", type=thread_count(1), default=1,
                   help="CPU threads (one is fastest for one stream)")
    args = p.parse_args(argv)
    if args.zip.suffix.lower() != ".zip":
        raise UserError(f"the zip's name must end in .zip, got {args.zip}")
    te = ensure_data(args.data_dir) / "te"
    started = time.perf_counter()
    with torch_threads(args.threads):
        written = write_te_zip(load_denoiser(args.model), te, args.zip)
    print(f"[p4] {written['files']} denoised te mixtures in {args.zip} ({time.perf_counter() - started:.1f} s)")
