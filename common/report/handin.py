"""The hand-in folder: report.ipynb, report.html and te_denoised.zip, written together or not at all.

The zip holds every tex*.wav of the given te folder, denoised by the committed model (results/p4/denoiser.pt)
and named as the homework names them (tex0000.wav ...), with fixed timestamps: P4's own writer,
common.speech.denoise.write_te_zip (the one `python p4_denoise.py te-zip` runs), called in this process. The three
files are made in a temporary folder beside the hand-in and moved into it only when all three exist, so a failed
step (no model, a broken te file, Ctrl-C) leaves the previous hand-in as it was.
"""
import os
import shutil
import tempfile
from pathlib import Path

from ..cli import UserError
from ..files import shown_path
from ..precision import torch_threads

FILES = ("report.ipynb", "report.html", "te_denoised.zip")


def handin_inputs(te_folder, model):
    """The te mixtures (tex*.wav) in `te_folder` itself, checked with the model that denoises them: a one-line error
    when there are none, or no model."""
    te_folder = Path(te_folder)
    if not te_folder.is_dir():
        raise UserError(f"no te folder at {shown_path(te_folder)}; run python p4_denoise.py (it builds data/hw3) "
                        "or pass --te with the course's te folder")
    files = sorted(p for p in te_folder.glob("tex*.wav") if p.is_file())
    if not files:
        raise UserError(f"{shown_path(te_folder)} holds no tex*.wav files")
    if not Path(model).is_file():
        raise UserError(f"no model at {shown_path(model)}; run python p4_denoise.py")
    return files


def write_handin(folder, notebook, page, te_folder, model):
    """report.ipynb (`notebook`, an nbformat notebook), report.html (`page`) and te_denoised.zip (every tex*.wav in
    `te_folder` denoised by `model`) into `folder`, all three or none; returns the number of te files zipped."""
    import nbformat

    from p4_denoise import load_denoiser  # P4's model loader: the hand-in denoises exactly as `denoise` does

    from ..speech.denoise import write_te_zip

    files = handin_inputs(te_folder, model)
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.building-"))
    except OSError as e:
        raise UserError(f"cannot write the hand-in beside {shown_path(folder)}: {e.strerror}")
    try:
        nbformat.write(notebook, str(building / "report.ipynb"))
        (building / "report.html").write_text(page)
        with torch_threads(1):  # one recording at a time: one thread is fastest
            write_te_zip(load_denoiser(model), files, building / "te_denoised.zip")
        try:
            folder.mkdir(exist_ok=True)
            for name in FILES:
                os.replace(building / name, folder / name)
        except OSError as e:
            raise UserError(f"cannot write the hand-in into {shown_path(folder)}: {e.strerror}")
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return len(files)
