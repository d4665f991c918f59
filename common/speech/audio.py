"""Sound files for Problem 4, read and written with every sample checked: a file that is cut short, damaged or
implausible is a one-line error naming it, never a shorter or padded recording, and a file is written to a
temporary name and moved into place."""
import contextlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from ..cli import UserError
from ..files import file_kind
from .stft import RATE

FORMATS = {".wav": "WAV", ".flac": "FLAC"}  # what `AudioWriter` writes (16-bit PCM)
MIN_RATE, MAX_RATE = 4_000, 384_000  # sample rates a speech recording can plausibly have
MAX_CHANNELS = 64


@contextlib.contextmanager
def decoder_warnings_silenced():
    """libsndfile's MP3 decoder writes warnings ("Xing stream size off ...") straight to file descriptor 2, around
    Python; they would break the one-line errors, and the error we raise says what matters."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _reason(e):
    text = str(e).strip()
    return (text.splitlines()[-1] if text else type(e).__name__)[:100]


# libsndfile's log of a container whose header promises more bytes than the file holds: "data : 64000 (should be
# 31978)" (WAV; SSND in AIFF, Data Size in AU, riff in W64); 0xFFFFFFFF is a streaming writer's "unknown"
_PROMISED = re.compile(r"^\s*(\w[\w ]*?)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
_CUT_STREAM = {"lacks an end-of-stream bit": "its last Ogg page is not marked as the end of the stream",
               "does not match value from 'ds64'": "it holds fewer samples than its ds64 header promises"}


def cut_short(log):
    """Why a file whose libsndfile log (`SoundFile.extra_info`) is `log` ends before its header says, or None.

    libsndfile reads such a WAV, AIFF, AU, W64, RF64 or Ogg file up to where it ends and says so only in its log:
    the result would be a shorter recording with no word. A header's whole-file size may be 8 bytes too large
    (a common writer's slip) where its data size is right."""
    for name, promised, holds in _PROMISED.findall(log):
        promised, holds = int(promised), int(holds)
        slack = 0 if name.lower() in ("data", "ssnd", "data size") else 8
        if holds + slack < promised < 0xFFFFFFFF:
            return f"its header promises {promised:,} bytes of {name.strip()}, the file holds {holds:,}"
    return next((why for sign, why in _CUT_STREAM.items() if sign in log), None)


class AudioReader:
    """A sound file read block by block as float32 (time, channels), every sample checked.

    The header must give a plausible rate and channel count; each block must be finite and within [-1, 1]
    up to `headroom` (float files can hold anything; a decoder can hand back uninitialised memory when a
    compressed stream is cut); and the file must hold what its header promises: a WAV, AIFF, Ogg, ... that ends
    early, or a stream that decodes to fewer samples, is an error naming the file, never a shorter or padded result.
    """

    def __init__(self, path, headroom=4.0):
        self.path = path = Path(path)
        kind = file_kind(path)
        if kind != "file":
            raise UserError(f"{path} not found" if kind == "missing" else f"{path} is {kind}, not a sound file")
        try:
            open(path, "rb").close()  # libsndfile says "System error." where the OS says why
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None
        try:
            with decoder_warnings_silenced():  # the name as bytes: one that is not UTF-8 is a name all the same
                self.file = sf.SoundFile(os.fsencode(path))
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
            raise UserError(f"{path} is not a readable sound file ({_reason(e)})") from None
        self.rate, self.channels, self.frames = self.file.samplerate, self.file.channels, self.file.frames
        self.headroom = headroom
        self.read = 0
        try:
            if not MIN_RATE <= self.rate <= MAX_RATE:
                raise UserError(f"{path} says it is sampled at {self.rate} Hz; a speech recording is sampled "
                                f"at {MIN_RATE:,} to {MAX_RATE:,} Hz")
            if not 1 <= self.channels <= MAX_CHANNELS:
                raise UserError(f"{path} says it has {self.channels} channels (at most {MAX_CHANNELS} are read)")
            if self.frames <= 0:
                raise UserError(f"{path} holds no samples")
            cut = cut_short(self.file.extra_info)
            if cut is not None:
                raise UserError(f"{path} is cut short: {cut} (a cut or damaged file)")
        except UserError:
            self.__exit__()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def blocks(self, size):
        """Yield (time, channels) float32 blocks of at most `size` samples until the promised length is read."""
        while self.read < self.frames:
            try:
                with decoder_warnings_silenced():
                    x = self.file.read(min(size, self.frames - self.read), dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
                raise UserError(f"{self.path} could not be read to the end ({_reason(e)})") from None
            if len(x) == 0:
                raise UserError(f"{self.path} ends after {self.read:,} of the {self.frames:,} samples its header "
                                f"promises (a cut or damaged file)")
            if not np.isfinite(x).all():
                t = self.read + int(np.flatnonzero(~np.isfinite(x).all(1))[0])
                raise UserError(f"{self.path} holds a non-finite sample (NaN or infinity) at {t / self.rate:.3f} s")
            peak = float(np.abs(x).max())
            if peak > self.headroom:
                raise UserError(f"{self.path} holds samples up to {peak:.3g} in size, far outside [-1, 1] "
                                f"(a damaged file, or float samples on another scale)")
            self.read += len(x)
            yield x


def read_audio(path, rate=None):
    """The whole file as float32 mono (time,), channels averaged, and its sample rate; `rate`: the rate it must
    have."""
    with AudioReader(path) as reader:
        if rate is not None and reader.rate != rate:
            raise UserError(f"{path} is sampled at {reader.rate} Hz; {rate} Hz is needed here")
        x = np.concatenate(list(reader.blocks(1 << 20)))
    return (x.mean(axis=1) if reader.channels > 1 else x[:, 0]), reader.rate


def sound_header(path):
    """(frames, rate, channels) from a sound file's header, without decoding it."""
    with AudioReader(path) as reader:
        return reader.frames, reader.rate, reader.channels


# ----------------------------------------------------------------------------- writing

TEMPORARY = re.compile(r"\.denoise-(\d+)-\w+\.tmp")  # AudioWriter's temporary files: the writer's process id in it
_UMASK = os.umask(0)
os.umask(_UMASK)
_swept = set()


def remove_stale_temporaries(folder):
    """Remove the temporary files that a writer killed outright (SIGKILL, a power cut) left in `folder`: those
    whose process is gone. Once per folder and process; a live writer's file (any process, any user) stays."""
    folder = Path(folder)
    if folder in _swept:
        return
    _swept.add(folder)
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = TEMPORARY.fullmatch(entry.name)
            if match and not _running(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


class AudioWriter:
    """A 16-bit sound file of `channels` channels written block by block to a temporary name and moved into place
    when closed without error; `clipped` counts the samples that had to be clipped to [-1, 1].

    The temporary name is short (.denoise-PID-XXXXXXXX.tmp), so a name up to the file system's limit can be
    written; a file it replaces keeps its permissions, and a read-only one is refused. Every failure (a folder
    that cannot be written, a full disk, a file size limit) is a UserError naming the file."""

    def __init__(self, path, rate, channels=1):
        self.path = Path(path)
        if self.path.suffix.lower() not in FORMATS:
            raise UserError(f"cannot write {self.path}: the name must end in {' or '.join(FORMATS)}")
        kind = file_kind(self.path)
        if kind not in ("file", "missing"):
            raise UserError(f"cannot write {self.path}: it is {kind}")
        self.mode, self.owner = 0o666 & ~_UMASK, None
        if kind == "file":
            old = os.stat(self.path)
            if not old.st_mode & 0o222:
                raise UserError(f"{self.path} is read-only; make it writable or choose another name")
            self.mode, self.owner = stat.S_IMODE(old.st_mode), (old.st_uid, old.st_gid)
        self.rate, self.channels, self.clipped, self.written = rate, channels, 0, 0

    def __enter__(self):
        folder = self.path.parent
        remove_stale_temporaries(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".denoise-{os.getpid()}-", suffix=".tmp")
            os.close(fd)
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}") from None
        self.tmp = Path(tmp)
        try:
            self.file = sf.SoundFile(tmp, "w", self.rate, self.channels, "PCM_16",
                                     format=FORMATS[self.path.suffix.lower()])
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
            os.unlink(tmp)
            raise UserError(f"cannot write {self.path} at {self.rate} Hz ({_reason(e)})") from None
        return self

    def write(self, y):
        """Append samples (time,) or (time, channels)."""
        y = np.asarray(y, np.float32)
        self.clipped += int((np.abs(y) > 1.0).sum())
        try:
            self.file.write(np.clip(y, -1.0, 1.0))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise UserError(f"cannot write {self.path} after {self.written:,} samples ({_reason(e)}: is the disk "
                            f"full, or a file size limit set?)") from None
        self.written += len(y)

    def __exit__(self, exc_type, *exc):
        done = False
        try:
            try:
                self.file.close()
            except (sf.LibsndfileError, RuntimeError, OSError) as e:
                if exc_type is None:
                    raise UserError(f"cannot write {self.path} ({_reason(e)})") from None
            if exc_type is None:
                os.chmod(self.tmp, self.mode)
                if self.owner is not None and os.geteuid() == 0:
                    with contextlib.suppress(OSError):
                        os.chown(self.tmp, *self.owner)
                os.replace(self.tmp, self.path)
                done = True
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}") from None
        finally:
            if not done:
                with contextlib.suppress(OSError):
                    os.unlink(self.tmp)
        return False


def write_audio(path, y, rate=RATE):
    """Write a whole signal (time,) or (time, channels) as a 16-bit file, atomically."""
    y = np.asarray(y)
    with AudioWriter(path, rate, 1 if y.ndim == 1 else y.shape[1]) as out:
        out.write(y)
