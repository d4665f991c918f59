"""Real-time factor of `p4_denoise.py denoise` on one CPU core: seconds of compute per second of audio.

    python benchmarks/p4_realtime.py             # the committed model, 60 s of audio; results/p4/benchmark.json
    python benchmarks/p4_realtime.py --dry-run   # 2 s of audio, in seconds (runs/dry-run/p4/benchmark.json)

Every case runs side by side in one process on the same signal, with one thread: the streaming denoiser in
memory (STFT + GRU + iSTFT, 1 s blocks and 0.1 s blocks), its three stages alone, and the whole command
file to file, at 16 kHz mono and at 44.1 kHz stereo (resampled to 16 kHz and back, both channels denoised). The
cases run in interleaved rounds (benchmarks/timing.py: a busy moment slows every case of its round alike); each
figure is the median over --repeats rounds, with its spread, as wall time and as this process's CPU time. Goal:
<= 0.01 for the command on the 16 kHz wav, judged on CPU time (the steadier one on a shared machine: with one
thread it cannot count time spent waiting for a core; on an idle machine the two agree); `goals` in
benchmark.json holds the verdict the report shows.
The compute does not depend on what the audio says, so the signal is seeded noise with a speech-like level.
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from common.speech.denoise import DEFAULT_MODEL, denoise, denoise_file  # noqa: E402
from common.speech.stft import ISTFT, RATE, STFT, stft  # noqa: E402
from p4_denoise import GRUMasker, load_denoiser  # noqa: E402
from common.goals import target  # noqa: E402
from benchmarks.timing import interleaved, summary  # noqa: E402
from common.cli import ArgumentParser, bounded_float, bounded_int, run_cli  # noqa: E402
from common.files import ROOT, save_json, shown_path  # noqa: E402
from common.precision import machine  # noqa: E402
from common.train import n_params  # noqa: E402

def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="the trained denoiser (default: results/p4/denoiser.pt; with --dry-run, the dry run's "
                        "runs/dry-run/p4/denoiser.pt, or an untrained one of the default shape when it is missing)")
    p.add_argument("--seconds", type=bounded_float(0.1, 3600), default=60.0, help="length of the test signal")
    p.add_argument("--repeats", type=bounded_int(1, 100), default=5,
                   help="interleaved rounds, each timing every case once (the median is reported, with its spread)")
    p.add_argument("--out", type=Path, default=None,
                   help="where benchmark.json goes (default: results/p4, or runs/dry-run/p4 with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="2 s of audio, one repeat")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    t_start = time.time()
    if args.dry_run:
        args.seconds, args.repeats = min(args.seconds, 2.0), 1
    out = args.out or (ROOT / "runs" / "dry-run" / "p4" if args.dry_run else ROOT / "results" / "p4")
    torch.set_num_threads(1)  # one core, as the goal says
    if args.model is None:
        args.model = out / "denoiser.pt" if args.dry_run else DEFAULT_MODEL
    if args.model.exists() or not args.dry_run:
        model, source = load_denoiser(args.model), shown_path(args.model)
    else:
        model, source = GRUMasker().eval(), "untrained GRUMasker() (dry run)"

    rng = np.random.default_rng(0)
    x = (0.05 * rng.standard_normal(round(args.seconds * RATE))).astype(np.float32)  # (time,) at 16 kHz
    X = stft(x)
    masked = (0.5 * X).astype(np.complex64)
    mag = torch.from_numpy(np.abs(X))[None]  # (1, frames, 513)

    def model_only():
        with torch.no_grad():
            state = None
            for i in range(0, mag.shape[1], 32):  # 1 s blocks of frames, the state carried
                state = model(mag[:, i:i + 32], state)[1]

    def stft_only():
        stream = STFT()
        for i in range(0, len(x), RATE):
            stream.push(x[i:i + RATE])
        stream.finish()

    def istft_only():
        stream = ISTFT()
        for i in range(0, len(masked), 32):
            stream.push(masked[i:i + 32])
        stream.finish()

    cases = {
        "stream_16k_mono_1s_blocks": lambda: denoise(model, x, block=RATE),
        "stream_16k_mono_0.1s_blocks": lambda: denoise(model, x, block=RATE // 10),
        "stage_stft": stft_only,
        "stage_gru": model_only,
        "stage_istft": istft_only,
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sf.write(tmp / "mono16k.wav", x, RATE, subtype="PCM_16")
        x44 = np.interp(np.arange(round(args.seconds * 44100)) / 44100, np.arange(len(x)) / RATE, x)
        sf.write(tmp / "stereo44k.wav", np.stack([x44, 0.8 * x44], axis=1), 44100, subtype="PCM_16")
        cases["file_16k_mono_wav"] = lambda: denoise_file(model, tmp / "mono16k.wav", tmp / "out1.wav")
        cases["file_44.1k_stereo_wav"] = lambda: denoise_file(model, tmp / "stereo44k.wav", tmp / "out2.wav")
        cpu_times = {}
        wall_times = interleaved(cases, args.repeats, min_seconds=0, cpu=cpu_times)
        for name in cases:
            wall, cpu = summary(wall_times[name], 1 / args.seconds), summary(cpu_times[name], 1 / args.seconds)
            results[name] = {"rtf_wall": wall["median"], "rtf_cpu": cpu["median"], "wall": wall, "cpu": cpu,
                             "ms_per_audio_second": 1000 * wall["median"]}
            print(f"[p4 bench] {name:30s} real-time factor {wall['median']:.4f} (wall, spread "
                  f"{100 * wall['spread']:.0f}%)  {cpu['median']:.4f} (cpu)", flush=True)

        # what was timed is right: any block size gives the whole-signal result, and the file is that result
        whole = denoise(model, x)
        streamed_error = float(np.abs(denoise(model, x, block=RATE // 10) - whole).max())
        as_read = denoise(model, sf.read(tmp / "mono16k.wav", dtype="float32")[0])  # the file holds 16-bit samples
        file_error = float(np.abs(sf.read(tmp / "out1.wav", dtype="float32")[0] - np.clip(as_read, -1, 1)).max())

    case = "file_16k_mono_wav"  # the command as the goal states it
    command = results[case]
    report = {
        # judged on this process's CPU time: steadier than wall time on a shared machine (one thread cannot use
        # more than one core's time)
        "goals": {"rtf": target("p4.rtf", command["rtf_cpu"], case=case, measure="rtf_cpu")},
        "cases": results,
        "check": {"max_abs_difference_streamed_vs_whole": streamed_error,
                  "max_abs_difference_file_vs_whole": file_error},
        "audio_seconds": args.seconds, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "model": source, "model_params": n_params(model), "machine": machine("cpu"),
        "dry_run": args.dry_run, "wall_seconds": time.time() - t_start,
    }
    save_json(out / "benchmark.json", report)
    print(f"[p4 bench] denoise command (16 kHz wav, one thread): real-time factor {command['rtf_cpu']:.4f} (cpu), "
          f"{command['rtf_wall']:.4f} (wall); goal <= {report['goals']['rtf']['at_most']:g}: "
          f"{'met' if report['goals']['rtf']['met'] else 'NOT met'}; "
          f"wrote {out / 'benchmark.json'}")


if __name__ == "__main__":
    run_cli(main)
