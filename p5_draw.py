"""Problem 5: an LSTM that draws the bottom half of MNIST digits, one 7x7 patch at a time.

Each 28x28 image becomes a sequence of 16 patches of 7x7 pixels (rows of patches, top-left to
bottom-right, each flattened to 49 values). An LSTM (2 layers x 64 units) and a dense layer with a
sigmoid predict the next patch; it is trained with teacher forcing (feed X[1..15], compare with
X[2..16], MSE) on the 50,000 training images, with early stopping on the other 10,000 (the homework
validates on the test set; here the test set is kept for the final numbers only).

To draw, the LSTM reads the first 8 patches (the top half), then runs 7 single steps, each fed its own
previous prediction; X[1..8] and the 8 predicted patches Y[8..15] make the completed image. The P1
baseline classifier (seed 0) checks whether a completion keeps its class; two references set the bar:
the bottom half of the training image whose top half is nearest (L2), and the mean bottom half.

    python p5_draw.py              # full quality (a few minutes on 2 CPU cores; needs P1's seed-0 baseline)
    python p5_draw.py --dry-run    # a tiny end-to-end run in seconds (needs `python p1_svd.py --dry-run`)

Writes results/p5/{metrics.json, config.json, completions.png, originals.png, side_by_side.png,
learning_curve.png, mse_per_patch.png} and checkpoints/p5_lstm_seed{seed}.pt; a finished checkpoint whose config is
unchanged is reused, not retrained.
"""
import contextlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from torchvision.utils import make_grid, save_image

from common.data import load_mnist
from common.mnist_mlp import load_baseline
from common.plot import plt, save_figure
from common.train import evaluate, init_distributed, is_main, train_or_reuse
from common.utils import (ArgumentParser, goal, UserError, add_common_args, atomic_path, nonnegative_float,
                          nonnegative_int, pick_device, positive_float, positive_int, resolve_dirs, run_cli,
                          save_config, save_json, seed_everything, seed_int)

PATCH = 7      # patches are PATCH x PATCH pixels
N_GIVEN = 8    # the top half: two rows of patches (image rows 0..13)


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the LSTM's initialisation and batches")
    p.add_argument("--hidden", type=positive_int, default=64, help="LSTM units per layer")
    p.add_argument("--layers", type=positive_int, default=2, help="stacked LSTM layers")
    p.add_argument("--epochs", type=positive_int, default=30,
                   help="most training epochs (early stopping may end sooner)")
    p.add_argument("--patience", type=positive_int, default=4,
                   help="stop after this many epochs without a lower validation MSE")
    p.add_argument("--batch-size", type=positive_int, default=64, help="mini-batch size")
    p.add_argument("--lr", type=positive_float, default=3e-3,
                   help="initial Adam learning rate (cosine decay to 0 over --epochs)")
    p.add_argument("--clip-grad", type=nonnegative_float, default=1.0,
                   help="clip the gradient norm to this (0: no clipping)")
    p.add_argument("--per-class", type=positive_int, default=10,
                   help="test images drawn per digit class for the figures (a row per class)")
    p.add_argument("--examples-seed", type=seed_int, default=0,
                   help="seed that picks the test images of the figures")
    p.add_argument("--threads", type=nonnegative_int, default=1,
                   help="CPU threads for training (0: torch's default); a 64-unit LSTM runs fastest on one")
    add_common_args(p, out="results/p5")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- 1. images <-> patch sequences

def to_patches(images, size=PATCH):
    """(N, H, W) -> (N, (H / size) * (W / size), size * size): patches in rows, top-left to bottom-right."""
    n, height, width = images.shape
    if height % size or width % size:
        raise ValueError(f"a {height}x{width} image does not split into {size}x{size} patches")
    rows, cols = height // size, width // size
    return (images.reshape(n, rows, size, cols, size)  # (N, patch row, pixel row, patch col, pixel col)
            .transpose(2, 3)
            .reshape(n, rows * cols, size * size))


def from_patches(patches, height=28, width=28):
    """The inverse of to_patches: (N, (H / size) * (W / size), size * size) -> (N, H, W)."""
    n, count, area = patches.shape
    size = round(area ** 0.5)
    rows, cols = height // size, width // size
    if size * size != area or rows * size != height or cols * size != width or rows * cols != count:
        raise ValueError(f"{count} patches of {area} pixels do not tile a {height}x{width} image")
    return (patches.reshape(n, rows, cols, size, size)
            .transpose(2, 3)
            .reshape(n, height, width))


# ----------------------------------------------------------------------------- 2. the model

class PatchLSTM(nn.Module):
    """(batch, steps, 49) patches -> (batch, steps, 49) predictions of the next patch, in [0, 1].

    forward also takes and returns the LSTM state ((layers, batch, hidden) h and c), so that drawing
    can continue one step at a time from where the given patches left off.
    """

    def __init__(self, hidden=64, layers=2, patch_pixels=PATCH * PATCH):
        super().__init__()
        self.lstm = nn.LSTM(patch_pixels, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, patch_pixels)

    def forward(self, patches, state=None):
        h, state = self.lstm(patches, state)   # h: (batch, steps, hidden)
        return torch.sigmoid(self.head(h)), state  # pixels are in [0, 1], so is the prediction


def teacher_forced_loss(model, batch):
    """Feed X[1..15], predict X[2..16]; the MSE per pixel."""
    (x,) = batch                  # (batch, 16, 49)
    y, _ = model(x[:, :-1])
    return F.mse_loss(y, x[:, 1:])


def teacher_forced_metrics(model, batch):
    """Per-image teacher-forced MSE per pixel, for common.train.evaluate."""
    (x,) = batch
    y, _ = model(x[:, :-1])
    return {"mse": ((y - x[:, 1:]) ** 2).mean((1, 2))}


@torch.no_grad()
def per_patch_mse(model, patches, chunk=2000):
    """Teacher-forced MSE per pixel of each predicted patch 2..16, over all of `patches`: (15,)."""
    sums = sum(((model(x[:, :-1])[0] - x[:, 1:]) ** 2).sum((0, 2)) for x in patches.split(chunk))
    return sums / (len(patches) * patches.shape[2])


@torch.no_grad()
def draw(model, patches, n_given=N_GIVEN):
    """Complete each sequence from its first `n_given` patches, feeding every prediction back in.

    patches: (batch, 16, 49); only patches[:, :n_given] are read. Returns (batch, 16, 49) whose first
    `n_given` patches are the given ones, unchanged, followed by the predicted Y[n_given..15].
    """
    y, state = model(patches[:, :n_given])
    drawn = [y[:, -1:]]                      # Y[8]: the prediction of patch 9 after reading 1..8
    for _ in range(patches.shape[1] - n_given - 1):
        y, state = model(drawn[-1], state)   # one step, fed the previous prediction
        drawn.append(y)
    return torch.cat([patches[:, :n_given], *drawn], dim=1)


# ----------------------------------------------------------------------------- 3. the references

@torch.no_grad()
def nearest_bottoms(train_patches, query_patches, n_given=N_GIVEN, chunk=1000):
    """For each query, the bottom half of the training sequence whose top half is nearest in L2.

    |q - t|^2 = |q|^2 - 2 q.t + |t|^2; |q|^2 is the same for every t, so the argmin over t of
    |t|^2 - 2 q.t needs one matrix product per chunk of queries: (chunk, 392) x (392, N_train).
    Returns (the completed sequences (N_query, 16, 49), the index of each query's neighbour).
    """
    train_top = train_patches[:, :n_given].flatten(1)  # (N_train, 392)
    train_sq = (train_top ** 2).sum(1)
    index = torch.cat([(train_sq - 2 * query[:, :n_given].flatten(1) @ train_top.T).argmin(1)
                       for query in query_patches.split(chunk)])
    return torch.cat([query_patches[:, :n_given], train_patches[index, n_given:]], dim=1), index


def mean_bottoms(train_patches, query_patches, n_given=N_GIVEN):
    """Each query's top half above the mean bottom half of the training set."""
    mean = train_patches[:, n_given:].mean(0, keepdim=True)  # (1, 8, 49)
    return torch.cat([query_patches[:, :n_given], mean.expand(len(query_patches), -1, -1)], dim=1)


# ----------------------------------------------------------------------------- 4. scoring completions

@torch.no_grad()
def predict(classifier, images, chunk=2000):
    """The classifier's labels for (N, 28, 28) images in [0, 1]."""
    return torch.cat([classifier(x).argmax(1) for x in images.split(chunk)])


def score(completed, original, labels, classifier, n_given=N_GIVEN):
    """Bottom-half MSE per pixel against the originals, and the share the classifier still puts in the true class.

    completed, original: (N, 16, 49) patch sequences; labels: (N,). Also returns the predicted labels.
    """
    predicted = predict(classifier, from_patches(completed))
    return {"bottom_mse": F.mse_loss(completed[:, n_given:], original[:, n_given:]).item(),
            "class_kept": (predicted == labels).double().mean().item()}, predicted


def pick_examples(labels, per_class, seed):
    """`per_class` test indices of every class 0..9, class by class, chosen with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(10):
        index = (labels == c).nonzero().squeeze(1)
        if len(index) < per_class:
            raise UserError(f"the test set has only {len(index)} images of digit {c}; lower --per-class")
        picked.append(index[torch.randperm(len(index), generator=g)[:per_class]])
    return torch.cat(picked)


# ----------------------------------------------------------------------------- main

def train_lstm(data, args, device):
    """Train (or reuse) the patch LSTM; model selection and early stopping on the validation MSE."""
    config = {"hidden": args.hidden, "layers": args.layers, "epochs": args.epochs, "patience": args.patience,
              "batch_size": args.batch_size, "lr": args.lr, "clip_grad": args.clip_grad, "seed": args.seed,
              "train_size": len(data["train"][0]), "val_size": len(data["val"][0])}
    seed_everything(args.seed)
    model = PatchLSTM(args.hidden, args.layers).to(device)
    val_set = TensorDataset(to_patches(data["val"][0]))

    def validate(m):
        return {"val_mse": evaluate(m, val_set, teacher_forced_metrics, device=device)["mse"]}

    # Adam (AdamW without weight decay), no warm-up: the learning rate decays along a cosine from --lr to 0
    history = train_or_reuse(model, teacher_forced_loss, TensorDataset(to_patches(data["train"][0])),
                             validate=validate, monitor="val_mse", mode="min", patience=args.patience, warmup=0,
                             epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=0.0,
                             seed=args.seed, clip_grad=args.clip_grad or None,
                             ckpt_path=args.ckpt_dir / f"p5_lstm_seed{args.seed}.pt", config=config,
                             resume=args.resume, device=device, desc="p5 lstm", quiet=args.quiet)
    return model, history, config


@contextlib.contextmanager
def threads(n):
    """Run the block on `n` CPU threads (0: leave torch's default), then restore the previous count.

    A 64-unit LSTM does many tiny matrix products; splitting each over 2 threads costs more than it
    saves, and on a busy machine the threads wait for each other (measured on the shared 2-core
    machine, other jobs running: 1 thread 8-36 ms a step, 2 threads 20-30x slower).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv=None):
    args = get_args(argv)
    resolve_dirs(args, "p5")
    device = init_distributed(pick_device(args.device))
    classifier, classifier_config = load_baseline(args.ckpt_dir, 0)  # first: fail before training, not after
    classifier = classifier.to(device)
    data = load_mnist(dry_run=args.dry_run)  # --dry-run: a few batches, the real model and code path
    if args.dry_run:
        args.epochs = 1
    examples = pick_examples(data["test"][1], args.per_class, args.examples_seed)  # the figures' test images
    t_start = time.time()

    with threads(args.threads):  # then all cores again: the nearest-neighbour products are large
        model, history, config = train_lstm(data, args, device)
    seconds_train = time.time() - t_start

    test_x, test_y = data["test"]
    test = to_patches(test_x).to(device)  # (10000, 16, 49)
    tf_test = evaluate(model, TensorDataset(test), teacher_forced_metrics, device=device)["mse"]
    tf_test_per_patch = per_patch_mse(model, test)
    if not is_main():
        return

    # every completion of the whole test set; the figures' 100 are a subset
    t0 = time.time()
    train = to_patches(data["train"][0]).to(device)
    test_y = test_y.to(device)
    completed = {"lstm": draw(model, test),
                 "nearest_neighbour": nearest_bottoms(train, test)[0],
                 "mean_bottom": mean_bottoms(train, test)}
    seconds_draw = time.time() - t0
    examples = examples.to(device)
    drawing = {"test": {}, "examples": {}}
    predicted = {}
    for name, seqs in [("original", test)] + list(completed.items()):
        drawing["test"][name], predicted[name] = score(seqs, test, test_y, classifier)
        drawing["examples"][name], _ = score(seqs[examples], test[examples], test_y[examples], classifier)
    changed = predicted["lstm"] != test_y

    best = min(history, key=lambda r: r["val_mse"])
    lstm_test, lstm_ex = drawing["test"]["lstm"], drawing["examples"]["lstm"]
    metrics = {
        "teacher_forced_mse": {"val": best["val_mse"], "test": tf_test},
        "best_epoch": best["epoch"], "epochs_trained": len(history),
        "drawing": drawing,
        "teacher_forced_test_mse_per_patch": tf_test_per_patch.tolist(),  # targets: patches 2..16
        "goals": {"teacher_forced_test_mse": goal(tf_test, at_most=0.025),
                  "class_kept": goal(min(lstm_test["class_kept"], lstm_ex["class_kept"]), at_least=0.9),
                  # below both references on the same images: the LSTM's MSE over the better reference's, worst split
                  "lstm_mse_over_best_reference": goal(max(
                      scores["lstm"]["bottom_mse"] / min(scores["nearest_neighbour"]["bottom_mse"],
                                                         scores["mean_bottom"]["bottom_mse"])
                      for scores in (drawing["test"], drawing["examples"])), below=1.0)},
        "class_kept_per_digit": {str(c): (~changed[test_y == c]).double().mean().item() for c in range(10)},
        "examples": {"indices": examples.tolist(), "labels": test_y[examples].tolist(),
                     "lstm_predicted": predicted["lstm"][examples].tolist()},
        "params": sum(p.numel() for p in model.parameters()),
        "figures": {name: f"{name}.png" for name in ("side_by_side", "completions", "originals", "learning_curve",
                                                      "mse_per_patch")},
        "history": history, "config": config, "classifier_config": classifier_config,
        "device": str(device), "train_threads": args.threads or torch.get_num_threads(), "dry_run": args.dry_run,
        "seconds": {"train": seconds_train, "draw_and_references": seconds_draw},
        "wall_seconds": time.time() - t_start}
    save_json(args.out / "metrics.json", metrics)
    save_config(args.out / "config.json", args, classifier_config=classifier_config)
    make_figures({k: from_patches(v[examples]).cpu() for k, v in [("original", test)] + list(completed.items())},
                 changed[examples].cpu(), drawing["examples"], history, tf_test_per_patch.cpu(), args.per_class,
                 args.out)
    print(f"[p5] teacher-forced test MSE {tf_test:.4f}; drawn bottom-half MSE: LSTM {lstm_test['bottom_mse']:.4f}, "
          f"nearest neighbour {drawing['test']['nearest_neighbour']['bottom_mse']:.4f}, "
          f"mean {drawing['test']['mean_bottom']['bottom_mse']:.4f}; class kept by the LSTM "
          f"{lstm_test['class_kept']:.3f} (test), {lstm_ex['class_kept']:.2f} (the {len(examples)}); "
          f"wrote {args.out}/metrics.json")


# ----------------------------------------------------------------------------- figures

def framed_grid(images, per_class, changed=None):
    """A make_grid of (N, 28, 28) images, a row per class; a red frame marks the `changed` ones."""
    n = len(images)
    frame = torch.zeros(n, 3)                  # black: invisible on MNIST's black background
    if changed is not None:
        frame[changed] = torch.tensor([1.0, 0.0, 0.0])
    framed = frame[:, :, None, None].repeat(1, 1, 32, 32)  # (N, 3, 32, 32): a 2-pixel frame
    framed[:, :, 2:-2, 2:-2] = images.unsqueeze(1)
    return make_grid(framed, nrow=per_class, padding=2, pad_value=0.5)


def save_grid(grid, path):
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")


def make_figures(images, changed, scores, history, mse_per_patch, per_class, out):
    """images: {'original', 'lstm', 'nearest_neighbour', 'mean_bottom'} -> (100, 28, 28) in [0, 1]."""
    save_grid(framed_grid(images["lstm"], per_class, changed), out / "completions.png")
    save_grid(framed_grid(images["original"], per_class), out / "originals.png")

    panels = [("original", "originals", None), ("lstm", "LSTM completions", changed),
              ("nearest_neighbour", "nearest-neighbour bottom", None), ("mean_bottom", "mean bottom", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.8))
    for ax, (key, title, marks) in zip(axes, panels):
        ax.imshow(framed_grid(images[key], per_class, marks).permute(1, 2, 0).numpy(), interpolation="nearest")
        s = scores[key]
        detail = (f"class kept {100 * s['class_kept']:.0f}%" if key == "original" else
                  f"bottom MSE {s['bottom_mse']:.4f}, class kept {100 * s['class_kept']:.0f}%")
        ax.set_title(f"{title}\n{detail}", fontsize=10)
        ax.axis("off")
    fig.suptitle("P5: top half given (rows 0-13), bottom half drawn; a row per digit; red frame: class changed",
                 fontsize=11)
    save_figure(fig, out / "side_by_side.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train (teacher forced)")
    ax.plot(epochs, [r["val_mse"] for r in history], marker="o", label="validation (teacher forced)")
    best = min(history, key=lambda r: r["val_mse"])
    ax.axvline(best["epoch"], color="k", ls=":", lw=1, label=f"kept: epoch {best['epoch']}")
    ax.set(xlabel="epoch", ylabel="MSE per pixel", title="P5: next-patch MSE while training")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, out / "learning_curve.png")

    fig, ax = plt.subplots(figsize=(4.6, 4))
    grid = torch.cat([torch.tensor([float("nan")]), mse_per_patch.double()]).reshape(4, 4)  # patch 1 is never a target
    shown = ax.imshow(grid.numpy(), cmap="viridis")
    for (r, c), v in zip(((r, c) for r in range(4) for c in range(4)), grid.flatten().tolist()):
        ax.text(c, r, "given" if r == c == 0 else f"{v:.3f}", ha="center", va="center",
                color="k" if r == c == 0 or v > grid.nanmean() else "w", fontsize=9)
    ax.set(xticks=[], yticks=[], title="P5: teacher-forced test MSE per pixel\nof each predicted 7x7 patch")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    save_figure(fig, out / "mse_per_patch.png")


if __name__ == "__main__":
    run_cli(main)
