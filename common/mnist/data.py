"""MNIST, offline-first: copy the canonical .gz files from a local mirror, let torchvision verify and extract them,
then read the extracted files.

Images come back as float32 tensors in [0, 1], shape (N, 28, 28); labels as int64 (N,).
The validation split is carved from the 60k training images with a fixed generator, so every
script (P1, P2, P3, P5) sees the same 50,000 / 10,000 split; the test set is only for final numbers.
Once the files are extracted, reading them needs no torchvision (whose import costs seconds per process).
"""
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cli import UserError
from ..files import DATA_DIR, ROOT, atomic_path, file_kind

MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
MNIST_MIRROR = Path(os.environ.get("HW3_MNIST_MIRROR", ROOT.parent / "shared" / "data" / "mnist"))
N_VAL = 10_000
SPLIT_SEED = 1234  # fixed for every script and every training seed
DRY_RUN_SIZES = {"train": 2048, "val": 512, "test": 1000}  # a few batches: the real code path in seconds


def fetch_mnist(root=DATA_DIR, mirror=MNIST_MIRROR):
    """MNIST as uint8 tensors: {"train": (images (60000, 28, 28), labels (60000,) int64), "test": (10000 of each)}.

    The four files are read from root/MNIST/raw once extracted there. Missing, they are copied from the mirror (if it
    has them) and torchvision verifies and extracts them; without a mirror, torchvision's own download is tried. If
    that fails too, the error says exactly where to put the files. Every problem is a one-line error naming the file.
    """
    raw = Path(root) / "MNIST" / "raw"
    for f in MNIST_FILES:
        kind = file_kind(raw / f[:-3])
        if kind not in ("file", "missing"):
            raise UserError(f"{raw / f[:-3]} is {kind}, not an MNIST file; remove it and run again")
    if not all(file_kind(raw / f[:-3]) == "file" for f in MNIST_FILES):
        _extract(root, raw, Path(mirror))
    mnist = {split: (read_idx(raw / f"{prefix}-images-idx3-ubyte"), read_idx(raw / f"{prefix}-labels-idx1-ubyte"))
             for split, prefix in (("train", "train"), ("test", "t10k"))}
    for split, (images, labels) in mnist.items():
        prefix = "train" if split == "train" else "t10k"
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise UserError(f"{raw}/{prefix}-*-ubyte hold {tuple(images.shape)} images and {len(labels)} labels, not "
                            f"MNIST's 28 x 28 images with a label each (damaged?); delete them and run again")
        if len(labels) and int(labels.max()) > 9:
            raise UserError(f"{raw / prefix}-labels-idx1-ubyte holds the label {int(labels.max())}; MNIST's labels "
                            f"are 0 to 9 (a damaged file?); delete it and run again")
    return {split: (images, labels.long()) for split, (images, labels) in mnist.items()}


def _extract(root, raw, mirror):
    """Copy the missing .gz files from the mirror into `raw`, each checked against MNIST's MD5 (a damaged copy, or one
    an earlier run left, is removed, never kept), then let torchvision extract them (or download what is missing)."""
    import torchvision  # only here: it checks the .gz files' checksums and extracts them (or downloads them)
    from torchvision.datasets.utils import check_integrity
    md5 = dict(torchvision.datasets.MNIST.resources)
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {raw}: {e.strerror}; set HW3_DATA to a writable folder") from None
    for f in MNIST_FILES:
        if file_kind(raw / f[:-3]) == "file":
            continue
        if file_kind(raw / f) == "file" and not check_integrity(str(raw / f), md5[f]):
            (raw / f).unlink()  # damaged (an earlier copy): copied or downloaded anew below
        if file_kind(raw / f) == "missing" and file_kind(mirror / f) == "file":
            try:
                with atomic_path(raw / f) as tmp:
                    shutil.copyfile(mirror / f, tmp)
            except OSError as e:
                raise UserError(f"cannot copy {mirror / f} into {raw}: {e.strerror}") from None
            if not check_integrity(str(raw / f), md5[f]):
                (raw / f).unlink()
                raise UserError(f"{mirror / f} is damaged: its MD5 is not that of MNIST's {f}; replace it with the "
                                f"canonical file (HW3_MNIST_MIRROR names the mirror)")
    try:
        for train in (True, False):
            torchvision.datasets.MNIST(root, train=train, download=True)
    except (RuntimeError, OSError) as e:
        raise UserError(
            f"MNIST is not in {raw} and could not be downloaded ({type(e).__name__}); copy the four "
            f"files {', '.join(MNIST_FILES)} into {mirror} or set HW3_MNIST_MIRROR to a folder holding them") from None


def read_idx(path):
    """An IDX file of unsigned bytes (MNIST's format: a 4-byte magic number 0x0000080D, D the number of dimensions,
    then D big-endian 4-byte sizes, then the bytes) as a uint8 tensor of those sizes."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; delete it and run again") from None
    dims = data[3] if len(data) >= 4 and data[:3] == b"\x00\x00\x08" else 0
    shape = tuple(np.frombuffer(data, dtype=">u4", count=dims, offset=4).tolist()) if dims else ()
    if not dims or len(data) != 4 + 4 * dims + int(np.prod(shape)):
        raise UserError(f"{path} is not an MNIST file of unsigned bytes (damaged?); delete it and run again")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape).copy())


def load_mnist(root=DATA_DIR, mirror=MNIST_MIRROR, dry_run=False):
    """MNIST as tensors: {'train': (x, y), 'val': (x, y), 'test': (x, y)}, x float in [0, 1] (N, 28, 28).

    dry_run: only the first DRY_RUN_SIZES images of each split (what every script's --dry-run trains on).
    """
    mnist = fetch_mnist(root, mirror)
    x = mnist["train"][0].float() / 255
    y = mnist["train"][1]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, va = perm[N_VAL:], perm[:N_VAL]
    test_x, test_y = mnist["test"]
    data = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (test_x.float() / 255, test_y)}
    if dry_run:
        data = {k: tuple(t[:DRY_RUN_SIZES[k]] for t in split) for k, split in data.items()}
    return data


def shifted(x, pixels):
    """Each digit (batch, 28, 28) moved by its own random offset of up to `pixels` whole pixels each way, zeros
    filling in; `pixels` 0: x itself (and no random numbers drawn)."""
    if not pixels:
        return x
    batch, height, width = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    dy, dx = (torch.randint(-pixels, pixels + 1, (batch, 1), device=x.device) + pixels for _ in range(2))
    rows = torch.arange(height, device=x.device) + dy  # (batch, 28): the source row of every output row
    cols = torch.arange(width, device=x.device) + dx
    return padded[torch.arange(batch, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
