"""The denoised `te` mixtures of the hand-in: every file of the `te` folder denoised by the committed model
(results/p4/denoiser.pt) and zipped as the homework names them (te_denoised.zip holding tex0000.wav ...), with
fixed timestamps, so the same model and data give the same zip, byte for byte. `make handin` calls it through
`python make_report.py --handin DIR`, beside the report.

The zip is written by P4's own command, `python p4_denoise.py te-zip ZIP` (common.denoiser.write_te_zip, the code
that writes the main run's zip), run as a subprocess: the report builder imports no problem script.
"""
import subprocess
import sys
from pathlib import Path

from ..cli import UserError
from ..files import ROOT, shown_path


def te_files(te_folder):
    """The te mixtures (tex*.wav) in `te_folder`; a one-line error when there are none."""
    te_folder = Path(te_folder)
    if not te_folder.is_dir():
        raise UserError(f"no te folder at {shown_path(te_folder)}; run python p4_denoise.py (it builds data/hw3) "
                        "or pass the course's te folder")
    files = sorted(te_folder.glob("tex*.wav"))
    if not files:
        raise UserError(f"{shown_path(te_folder)} holds no tex*.wav files")
    return files


def write_te_zip(zip_path, te_folder=ROOT / "data" / "hw3" / "te", model=ROOT / "results" / "p4" / "denoiser.pt"):
    """Denoise every tex*.wav in `te_folder` (a folder named te, as in the course's data) with `model` into
    `zip_path`, each under its input's name; returns the number of files."""
    files = te_files(te_folder)
    if not Path(model).is_file():
        raise UserError(f"no model at {shown_path(model)}; run python p4_denoise.py")
    proc = subprocess.run([sys.executable, str(ROOT / "p4_denoise.py"), "te-zip", str(zip_path),
                           "--data-dir", str(Path(te_folder).parent), "--model", str(model)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        reason = (proc.stderr.strip() or "no output").splitlines()[-1].removeprefix("error: ")
        raise UserError(f"denoising te failed: {reason}")
    return len(files)
