"""The denoised `te` mixtures of the hand-in: every file of the `te` folder denoised by the committed model
(results/p4/denoiser.pt) and zipped as the homework names them (te_denoised.zip holding tex0000.wav ...), with
fixed timestamps, so the same model and data give the same zip, byte for byte. `make handin` calls it through
`python make_report.py --handin DIR`, beside the report.

The denoising itself is the `denoise` command (`python p4_denoise.py denoise TE_FOLDER --out-dir DIR`), run as a
subprocess on `processes` shares of the files at once (one CPU thread each: one thread is fastest for one stream).
"""
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .utils import ROOT, UserError, atomic_path, shown_path

STAMP = (2020, 1, 1, 0, 0, 0)  # every member's timestamp: the zip depends on the audio only


def te_files(te_folder):
    te_folder = Path(te_folder)
    if not te_folder.is_dir():
        raise UserError(f"no te folder at {shown_path(te_folder)}; run python p4_denoise.py (it builds data/hw3) "
                        "or pass the course's te folder")
    files = sorted(p for p in te_folder.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
    if not files:
        raise UserError(f"{shown_path(te_folder)} holds no .wav files")
    return files


def write_te_zip(zip_path, te_folder=ROOT / "data" / "hw3" / "te", model=ROOT / "results" / "p4" / "denoiser.pt",
                 processes=None):
    """Denoise every .wav in `te_folder` with `model` into `zip_path`, each under its input's name; returns the
    number of files."""
    files = te_files(te_folder)
    if not Path(model).is_file():
        raise UserError(f"no model at {shown_path(model)}; run python p4_denoise.py")
    processes = max(1, min(processes or os.cpu_count() or 1, len(files)))
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [subprocess.Popen([sys.executable, str(ROOT / "p4_denoise.py"), "denoise", *map(str, share),
                                  "--out-dir", tmp, "--model", str(model), "--threads", "1", "--quiet"],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for share in (files[i::processes] for i in range(processes))]
        try:
            errors = [job.communicate()[1].strip() for job in jobs]
        finally:  # stopped (Ctrl-C, SIGTERM): no denoiser is left running
            for job in jobs:
                if job.poll() is None:
                    job.kill()
        if any(job.returncode for job in jobs):
            raise UserError("denoising te failed: " + " ".join(e.splitlines()[-1] for e in errors if e))
        with atomic_path(zip_path) as part, zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as z:
            for src in files:
                z.writestr(zipfile.ZipInfo(src.name, date_time=STAMP), (Path(tmp) / f"{src.stem}.wav").read_bytes())
    return len(files)
