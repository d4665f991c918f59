"""The homework's MNIST classifier (784 -> 5 x 1024 ReLU -> 10), shared by P1, P2, P3 and P5.

P1 trains it (the "baseline") and saves it to checkpoints/p1_baseline_seed{seed}.pt; P2 and P3
start from it and fine-tune it (common/mnist/finetune.py), and P5 uses it to check that drawn digits keep their class.
"""
from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..cli import UserError
from ..files import file_kind
from ..precision import Dropout
from ..train import best_weights, evaluate, load_checkpoint

PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081  # MNIST training-set statistics
DEPTH, MAX_WIDTH = 5, 4096  # the homework's 5 hidden layers; the widest P1 trains (5 x 4096^2 weights: 336 MB)


class MLP(nn.Module):
    """Pixels in [0, 1], (batch, 28, 28) or (batch, 784) -> logits (batch, 10).

    `hidden` holds the five 1024-unit layers that P1..P3 compress; `head` is the last layer, kept dense.
    """

    def __init__(self, width=1024, depth=5, dropout=0.0, n_in=784, n_out=10):
        super().__init__()
        sizes = [n_in] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(width, n_out)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        x = (x.flatten(1) - PIXEL_MEAN) / PIXEL_STD
        for layer in self.hidden:
            x = self.dropout(F.relu(layer(x)))
        return self.head(x)


def with_hidden(model, layers, dropout=0.0):
    """A copy of the MLP `model` whose hidden layers are `layers` (one module per hidden layer, (batch, in) ->
    (batch, out)): its head copied, `dropout` after every hidden layer, on `model`'s device. P1's rank-D network,
    P2's factorized one and P3's straight-through one are all built this way."""
    layers = list(layers)
    if len(layers) != len(model.hidden):
        raise ValueError(f"{len(layers)} layers for the {len(model.hidden)} hidden layers of the MLP")
    net = MLP(model.head.in_features, len(model.hidden), dropout)
    net.head.load_state_dict(model.head.state_dict())
    net.hidden = nn.ModuleList(layers)
    return net.to(model.head.weight.device)


def classification_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def classification_metrics(model, batch):
    """Per-example loss and accuracy, for common.train.evaluate."""
    x, y = batch
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y, reduction="none"), "acc": (logits.argmax(1) == y).float()}


def baseline_path(ckpt_dir, seed):
    return Path(ckpt_dir) / f"p1_baseline_seed{seed}.pt"


def load_baseline(ckpt_dir, seed, device="cpu"):
    """(model in eval mode on `device`, its training config) of P1's finished baseline for `seed`. Anything else at
    its path (another script's checkpoint, an unfinished run) is a one-line error saying how to train it."""
    path = baseline_path(ckpt_dir, seed)
    train, same = f"python p1_svd.py --seeds {seed + 1}", "(add the same --ckpt-dir/--dry-run you used here)"
    if file_kind(path) == "missing":
        raise UserError(f"baseline {path} not found; train it first with: {train} {same}")
    ckpt = load_checkpoint(path)
    config = ckpt.get("config")
    if not isinstance(config, dict) or config.get("depth") != DEPTH or type(config.get("width")) is not int or \
            not 1 <= config["width"] <= MAX_WIDTH:
        raise UserError(f"{path} is not a P1 baseline (its config is not a {DEPTH}-layer MLP's of width 1 to "
                        f"{MAX_WIDTH}: another script's checkpoint?); replace it with: {train} --overwrite {same}")
    if not ckpt.get("done"):
        raise UserError(f"baseline {path} is unfinished; finish it with: python p1_svd.py --resume")
    model = MLP(width=config["width"], depth=config["depth"])
    try:
        model.load_state_dict(best_weights(ckpt))
    except (RuntimeError, KeyError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a P1 baseline of width {config['width']}: its weights do not fit ({reason})"
                        ) from None
    return model.to(device).eval(), config


def accuracy(model, split, device="cpu"):
    """Accuracy of `model` on one of load_mnist's splits, (x, y)."""
    return evaluate(model, TensorDataset(*split), classification_metrics, device=device)["acc"]
