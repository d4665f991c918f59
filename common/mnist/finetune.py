"""What P2 and P3 share: both fine-tune a network that starts as P1's rank-D network, and report it the same way.

`finetune_classifier` is the recipe (or the reuse of a finished run), `finetune_scores` the numbers each seed
reports, `summarize` their mean and std over the seeds, `plot_finetune_curve` the validation accuracy per epoch
from epoch 0, P1's network before any fine-tuning.
"""
from torch.utils.data import TensorDataset

from ..goals import mean_std
from ..plot import plt, save_figure
from ..train import best_record, evaluate, seed_everything, train_or_reuse, trained_seconds
from .data import shifted
from .mlp import accuracy, classification_loss, classification_metrics


def finetune_loss(shift):
    """P2's and P3's loss: cross-entropy on digits shifted by up to `shift` pixels each way (0: as they are)."""
    def loss(model, batch):
        x, y = batch
        return classification_loss(model, (shifted(x, shift), y))
    return loss


def finetune_classifier(model, data, args, *, seed, path, config, device, desc, validate=None, warmup=0.1):
    """Fine-tune `model` on the training split, or reuse the finished run at `path` made with the same `config`.

    P2's and P3's recipe: AdamW, a one-cycle schedule (a `warmup` share of the steps rising to args.lr, then cosine
    decay; 0: cosine from args.lr straight down), cross-entropy on digits shifted by up to
    args.shift pixels (P1's baseline trained on them; 0: none), and the epoch with the best validation accuracy
    kept. They differ by the model they pass in and by `validate(model) -> {"val_acc": ...}`
    (default: accuracy and loss of `model` itself on the validation split). `args` gives epochs, batch_size, lr,
    weight_decay, shift, precision (resolved: "fp32" or "bf16"), resume, overwrite and quiet. Returns the history;
    `model` ends with the best epoch's weights, in eval mode.
    """
    if validate is None:
        val_set = TensorDataset(*data["val"])

        def validate(m):
            return {f"val_{k}": v for k, v in evaluate(m, val_set, classification_metrics, device=device).items()}

    seed_everything(seed)  # for the dropout masks and shifts: `model` already holds the weights it starts from
    return train_or_reuse(model, finetune_loss(args.shift), TensorDataset(*data["train"]), validate=validate,
                          monitor="val_acc", mode="max", warmup=warmup, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, weight_decay=args.weight_decay, seed=seed, ckpt_path=path, config=config,
                          resume=args.resume, overwrite=args.overwrite, device=device, precision=args.precision,
                          desc=desc, quiet=args.quiet)


def finetune_scores(baseline, initial, final, history, data, device):
    """Per seed: test accuracy of the dense baseline, of the `initial` network (P1's rank-D network; also on the
    validation split, epoch 0 of the curve) and of the `final` one; the best epoch; the training time."""
    return {"baseline_test_acc": accuracy(baseline, data["test"], device),
            "initial_test_acc": accuracy(initial, data["test"], device),
            "initial_val_acc": accuracy(initial, data["val"], device),
            "test_acc": accuracy(final, data["test"], device),
            "best_epoch": best_record(history, "val_acc", "max")["epoch"],
            "train_seconds": trained_seconds(history)}  # kept when a finished run is reused


def summarize(runs):
    """Mean and std over the seeds of the three test accuracies."""
    return {k: mean_std([r[k] for r in runs]) for k in ("test_acc", "initial_test_acc", "baseline_test_acc")}


def plot_finetune_curve(metrics, path, *, xlabel, ylabel, title):
    """Validation accuracy per epoch for every seed, epoch 0 being P1's rank-D network; the baseline and P1 as lines.
    The legend sits beside the axes, where it hides no point."""
    fig, ax = plt.subplots(figsize=(7.2, 3.8), layout="constrained")
    for run in metrics["seeds"]:
        epochs = [0] + [h["epoch"] for h in run["history"]]
        acc = [100 * run["initial_val_acc"]] + [100 * h["val_acc"] for h in run["history"]]
        ax.plot(epochs, acc, marker=".", label=f"seed {run['seed']} (validation)")
    base, init = metrics["baseline_test_acc"]["mean"], metrics["initial_test_acc"]["mean"]
    ax.axhline(100 * base, color="k", ls="--", lw=1, label=f"dense baseline,\ntest {100 * base:.2f}%")
    ax.axhline(100 * init, color="gray", ls=":", lw=1, label=f"P1 rank {metrics['rank']},\ntest {100 * init:.2f}%")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_xticks(range(0, max(len(run["history"]) for run in metrics["seeds"]) + 1))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
