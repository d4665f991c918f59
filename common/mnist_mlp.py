"""The homework's MNIST classifier (784 -> 5 x 1024 ReLU -> 10), shared by P1, P2, P3 and P5.

P1 trains it (the "baseline") and saves it to checkpoints/p1_baseline_seed{seed}.pt; P2 and P3
start from it and fine-tune it (`finetune_classifier`), and P5 uses it to check that drawn digits keep their class.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .train import best_weights, evaluate, fit, is_main, load_checkpoint, load_finished
from .utils import UserError, seed_everything

PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081  # MNIST training-set statistics


class MLP(nn.Module):
    """Pixels in [0, 1], (batch, 28, 28) or (batch, 784) -> logits (batch, 10).

    `hidden` holds the five 1024-unit layers that P1..P3 compress; `head` is the last layer, kept dense.
    """

    def __init__(self, width=1024, depth=5, dropout=0.0, n_in=784, n_out=10):
        super().__init__()
        sizes = [n_in] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(width, n_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = (x.flatten(1) - PIXEL_MEAN) / PIXEL_STD
        for layer in self.hidden:
            x = self.dropout(F.relu(layer(x)))
        return self.head(x)


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


def load_baseline(ckpt_dir, seed):
    """(model in eval mode, its training config) of P1's finished baseline for `seed`."""
    path = baseline_path(ckpt_dir, seed)
    if not path.exists():
        raise UserError(f"baseline {path} not found; train it first with: python p1_svd.py --seeds {seed + 1}"
                        f" (add the same --ckpt-dir/--dry-run you used here)")
    ckpt = load_checkpoint(path)
    if not ckpt.get("done"):
        raise UserError(f"baseline {path} is unfinished; finish it with: python p1_svd.py --resume")
    config = ckpt["config"]
    model = MLP(width=config["width"], depth=config["depth"])
    model.load_state_dict(best_weights(ckpt))
    return model.eval(), config


def finetune_classifier(model, data, args, *, seed, path, config, device, desc, validate=None):
    """Fine-tune `model` on the training split, or reuse the finished run at `path` made with the same `config`.

    P2's and P3's recipe: AdamW, a one-cycle schedule (10% warm-up), cross-entropy, and the epoch with the best
    validation accuracy kept. They differ by the model they pass in and by `validate(model) -> {"val_acc": ...}`
    (default: accuracy and loss of `model` itself on the validation split). `args` gives epochs, batch_size, lr,
    weight_decay, resume and quiet. Returns the history; `model` ends with the best epoch's weights, in eval mode.
    """
    done = load_finished(path, config)
    if done is not None:
        model.load_state_dict(done["best_model"])
        if is_main():
            print(f"[{desc}] reusing the finished fine-tune {path}")
        model.eval()
        return done["history"]

    if validate is None:
        val_set = TensorDataset(*data["val"])

        def validate(m):
            return {f"val_{k}": v for k, v in evaluate(m, val_set, classification_metrics, device=device).items()}

    seed_everything(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * -(-len(data["train"][0]) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    history = fit(model, classification_loss, optimizer, TensorDataset(*data["train"]), epochs=args.epochs,
                  batch_size=args.batch_size, seed=seed, validate=validate, monitor="val_acc", mode="max",
                  scheduler=scheduler, ckpt_path=path, resume=args.resume, config=config, device=device,
                  desc=desc, quiet=args.quiet)
    model.eval()
    return history
