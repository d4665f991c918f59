"""Problem 4's signal processing: the homework's STFT and its inverse (one implementation, streaming) and the SNR.

The STFT is the homework's: a 1024-point periodic Hann window, hop 512, frames centred on multiples of the hop
(512 zeros before the first sample), i.e. `librosa.stft(x, n_fft=1024, hop_length=512, window="hann")`.
One difference, on purpose: the signal is also padded with zeros up to a whole number of hops, so every
sample lies under two windows. Without it, the inverse STFT divides the last partial hop by the tail of one
squared window (down to 1e-10): exact for an unchanged STFT, a loud click at the end of a masked one.
`STFT` and `ISTFT` work one block at a time with bounded memory; `stft` and `istft` are the same classes
applied to a whole signal, so training, evaluation and the `denoise` command share one code path
(tests/test_p4.py checks it against librosa, the homework's reference).
"""
import numpy as np
import torch

RATE, N_FFT, HOP = 16000, 1024, 512
BINS = N_FFT // 2 + 1  # 513 frequency bins, 0 .. 8 kHz in steps of 15.625 Hz


def hann():
    """The periodic Hann window librosa uses (float32, 1024 points)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


class STFT:
    """The STFT one block of samples at a time: frame t covers samples [512 t - 512, 512 t + 512), zero outside."""

    def __init__(self):
        self.window = hann()
        self.buffer = np.zeros(HOP, np.float32)  # the centre padding before the first sample
        self.pushed = 0

    def push(self, x):
        """Append samples (time,); return the frames (k, 513) complex64 that are now complete."""
        self.pushed += len(x)
        self.buffer = np.concatenate([self.buffer, np.asarray(x, np.float32)])
        k = max(0, (len(self.buffer) - N_FFT) // HOP + 1)
        if k == 0:
            return np.zeros((0, BINS), np.complex64)
        frames = np.lib.stride_tricks.sliding_window_view(self.buffer, N_FFT)[::HOP][:k]  # (k, 1024)
        X = np.fft.rfft(frames * self.window, axis=1).astype(np.complex64)
        self.buffer = self.buffer[k * HOP:]
        return X

    def finish(self):
        """The last frames: zeros up to a whole number of hops, then the centre padding after the end."""
        return self.push(np.zeros(-self.pushed % HOP + HOP, np.float32))


class ISTFT:
    """The inverse of `STFT`, one block of frames at a time: windowed overlap-add divided by the overlap-added
    squared window (librosa's normalisation), without the 512 samples of centre padding. With a hop of half a
    frame, output block j (512 samples) is the first half of frame j plus the second half of frame j - 1."""

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
        """Frames (k, 513) -> the samples that no later frame can change (k * 512, fewer at the start)."""
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


def stft(x):
    """The STFT (frames, 513) complex64 of a whole signal (time,): 1 + ceil(len / 512) frames."""
    s = STFT()
    return np.concatenate([s.push(x), s.finish()])


def istft(X, length):
    """The signal (length,) float32 whose `stft` is X (for a changed X: the least-squares one, as librosa)."""
    s = ISTFT()
    y = np.concatenate([s.push(X), s.finish()])
    return y[:length]


def snr_db(s, s_hat):
    """10 log10(sum s^2 / sum (s - s_hat)^2), in float64: the homework's score."""
    s, s_hat = np.asarray(s, np.float64), np.asarray(s_hat, np.float64)
    return float(10 * np.log10(np.sum(s ** 2) / np.sum((s - s_hat) ** 2)))


def si_sdr_db(s, s_hat):
    """Scale-invariant SDR (Le Roux et al. 2019): the SNR after scaling s to its best fit to s_hat."""
    s, s_hat = np.asarray(s, np.float64), np.asarray(s_hat, np.float64)
    target = (s_hat @ s) / (s @ s) * s
    return float(10 * np.log10(np.sum(target ** 2) / np.sum((s_hat - target) ** 2)))


def planes(X):
    """A complex spectrum tensor (...) as its real and imaginary parts, (2, ...) contiguous: torch.hypot(*planes(X)) is
    X.abs() bit for bit (the same kernel), without the complex intermediate that makes X.abs() slow on a CPU."""
    return torch.stack([X.real, X.imag])
