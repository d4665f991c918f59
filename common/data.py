"""MNIST, offline-first: copy the canonical .gz files from a local mirror, then let torchvision verify them.

Images come back as float32 tensors in [0, 1], shape (N, 28, 28); labels as int64 (N,).
The validation split is carved from the 60k training images with a fixed generator, so every
script (P1, P2, P3, P5) sees the same 50,000 / 10,000 split; the test set is only for final numbers.
"""
import os
import shutil
from pathlib import Path

import torch
import torchvision

from .utils import ROOT, UserError

MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
DATA_DIR = Path(os.environ.get("HW3_DATA", ROOT / "data"))
MNIST_MIRROR = Path(os.environ.get("HW3_MNIST_MIRROR", ROOT.parent / "shared" / "data" / "mnist"))
N_VAL = 10_000
SPLIT_SEED = 1234  # fixed for every script and every training seed
DRY_RUN_SIZES = {"train": 2048, "val": 512, "test": 1000}  # a few batches: the real code path in seconds


def fetch_mnist(root=DATA_DIR, mirror=MNIST_MIRROR):
    """Place MNIST under root/MNIST/raw (from the mirror if it has it) and load it with torchvision.

    Returns (train, test) torchvision datasets. Without a mirror, torchvision's own download is tried;
    if that fails too, the error says exactly where to put the files.
    """
    raw = Path(root) / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).exists() and not (raw / f[:-3]).exists()]
    if missing and all((Path(mirror) / f).exists() for f in missing):
        raw.mkdir(parents=True, exist_ok=True)
        for f in missing:
            shutil.copyfile(Path(mirror) / f, raw / f)
    try:
        train = torchvision.datasets.MNIST(root, train=True, download=True)
        test = torchvision.datasets.MNIST(root, train=False, download=True)
    except (RuntimeError, OSError) as e:
        raise UserError(
            f"MNIST is not in {raw} and could not be downloaded ({type(e).__name__}); copy the four "
            f"files {', '.join(MNIST_FILES)} into {mirror} or set HW3_MNIST_MIRROR to a folder holding them")
    return train, test


def load_mnist(root=DATA_DIR, mirror=MNIST_MIRROR, dry_run=False):
    """MNIST as tensors: {'train': (x, y), 'val': (x, y), 'test': (x, y)}, x float in [0, 1] (N, 28, 28).

    dry_run: only the first DRY_RUN_SIZES images of each split (what every script's --dry-run trains on).
    """
    train, test = fetch_mnist(root, mirror)
    x = train.data.float() / 255
    y = train.targets
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, va = perm[N_VAL:], perm[:N_VAL]
    data = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (test.data.float() / 255, test.targets)}
    if dry_run:
        data = {k: tuple(t[:DRY_RUN_SIZES[k]] for t in split) for k, split in data.items()}
    return data
