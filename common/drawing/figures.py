"""P5's figures: grids of completed digits (a row per class, a red frame where the class changed), the originals
beside the drawers' completions, the ambiguous top halves with their samples, the training curves and the MSE of
each predicted patch.

Sized for a page about 900 pixels wide: every title is at least 9 pixels high there.
"""
import torch

from ..plot import image_grid, plt, save_figure, save_image
from ..train import best_record

# the figures drawing_figures writes, as NAME.png
FIGURES = ["side_by_side", "completions", "samples", "ambiguous", "originals", "learning_curve", "mse_per_patch"]


def drawing_figures(test, completed, labels, predicted, scores, examples, ambiguous, histories, mse_per_patch,
                    per_class, out, to_images):
    """Every figure of P5 into `out`. test: the test set's sequences (N, 16, 49); completed: {name: (S, N, 16, 49)};
    labels (N,); predicted: the classifier's labels of each, {name: (S, N)}; scores: the score of each on the
    `examples` (indices, `per_class` per digit); ambiguous: the ambiguous_record; histories: {"mse": ...,
    "sampler": ...}; mse_per_patch (15,); to_images: sequences (n, 16, 49) -> images (n, 28, 28)."""
    images = {k: to_images(v[0, examples]).cpu() for k, v in [("original", test[None])] + list(completed.items())}
    # the first sample stands for the sampling drawer
    changed = {k: (predicted[k][0] != labels)[examples].cpu() for k in ("mse", "sampler")}
    completion_figures(images, changed, scores, per_class, out)
    training_figures(histories["mse"], histories["sampler"], mse_per_patch.cpu(), out)
    index, shown = ambiguous["indices"], len(ambiguous["sampler_predicted"][0])
    samples = completed["sampler"][:shown, index]  # (shown, count, 16, 49)
    ambiguous_figure(to_images(test[index]).cpu(), to_images(completed["mse"][0, index]).cpu(),
                     to_images(samples.flatten(0, 1)).unflatten(0, samples.shape[:2]).cpu(), ambiguous,
                     out / "ambiguous.png")


LINE = (0.15, 0.35, 0.85)  # the blue line between the given top half and the drawn bottom half


def framed_grid(images, per_class, changed=None):
    """A make_grid of (N, 28, 28) images, a row per class; a red frame marks the `changed` ones. Each digit is split
    by a 1-pixel blue line between its top half (rows 0-13, given) and its bottom half (rows 14-27, drawn), inserted
    between them so that no pixel is hidden."""
    n, height, width = images.shape
    frame = torch.zeros(n, 3)                  # black: invisible on MNIST's black background
    if changed is not None:
        frame[changed] = torch.tensor([1.0, 0.0, 0.0])
    framed = frame[:, :, None, None].repeat(1, 1, height + 5, width + 4)  # (N, 3, 33, 32): a 2-pixel frame
    half = height // 2
    framed[:, :, 2:2 + half, 2:-2] = images[:, None, :half]
    framed[:, :, 2 + half, 2:-2] = torch.tensor(LINE)[None, :, None]
    framed[:, :, 3 + half:-2, 2:-2] = images[:, None, half:]
    return image_grid(framed, per_class, padding=2, pad_value=0.5)


def completion_figures(images, changed, scores, per_class, out):
    """completions.png, samples.png and originals.png (one grid each), and side_by_side.png: the originals beside
    the MSE drawer's completions and a sample of the sampling drawer, then the two references.

    images: {'original', 'mse', 'sampler', 'nearest_neighbour', 'mean_bottom'} -> (N, 28, 28) in [0, 1], a row of
    `per_class` per digit; changed: {'mse', 'sampler'} -> (N,) bool, the completions whose class the classifier
    changed; scores: the `score` of each on these images.
    """
    save_image(framed_grid(images["mse"], per_class, changed["mse"]), out / "completions.png")
    save_image(framed_grid(images["sampler"], per_class, changed["sampler"]), out / "samples.png")
    save_image(framed_grid(images["original"], per_class), out / "originals.png")

    panels = [("original", "originals"), ("mse", "MSE drawer"), ("sampler", "sampling drawer (1 sample)"),
              ("nearest_neighbour", "nearest-neighbour bottom"), ("mean_bottom", "mean bottom")]
    fig, axes = plt.subplots(2, 3, figsize=(12.6, 9.4))
    for ax, (key, title) in zip(axes.flat, panels):
        ax.imshow(framed_grid(images[key], per_class, changed.get(key)).permute(1, 2, 0).numpy(),
                  interpolation="nearest")
        s = scores[key]
        detail = (f"class kept {100 * s['class_kept']:.0f}%" if key == "original" else
                  f"bottom MSE {s['bottom_mse']:.4f}, class kept {100 * s['class_kept']:.0f}%")
        ax.set_title(f"{title}\n{detail}", fontsize=12)
    for ax in axes.flat:
        ax.axis("off")
    axes[1, 2].text(0.02, 0.5, "Top half given (image rows 0-13),\nbottom half drawn, below the\nblue line.\n\n"
                    "A row per digit, 0 to 9.\n\nRed frame: P1's classifier\nreads another digit.", fontsize=12,
                    va="center")
    fig.suptitle("P5: completions of the same 100 test digits", fontsize=13)
    save_figure(fig, out / "side_by_side.png")


def training_figures(history, sampler_history, mse_per_patch, out):
    """learning_curve.png (both drawers, train and validation) and mse_per_patch.png (a 4 x 4 map; (15,) values for
    the predicted patches 2..16)."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for a, hist, key, name in [(ax, history, "val_mse", "MSE drawer: MSE per pixel"),
                               (ax2, sampler_history, "val_nll", "sampling drawer: NLL, nats per patch")]:
        epochs = [r["epoch"] for r in hist]
        a.plot(epochs, [r["train_loss"] for r in hist], marker="o", label="train (teacher forced)")
        a.plot(epochs, [r[key] for r in hist], marker="o", label="validation (teacher forced)")
        best = best_record(hist, key, "min")
        a.axvline(best["epoch"], color="k", ls=":", lw=1, label=f"kept: epoch {best['epoch']}")
        a.set(xlabel="epoch", title=name)
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle("P5: training the two drawers", fontsize=11)
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


def ambiguous_figure(original, mse, samples, info, path, gap=4, title_room=11):
    """A row per ambiguous top half: the original, the MSE drawer's completion, then the samples; each titled
    with the classifier's label. original, mse: (count, 28, 28); samples: (shown, count, 28, 28).

    One image holds every digit (one axes, not one per digit: a hundred axes take seconds to lay out); a blue line
    marks where the drawn bottom half starts."""
    columns = [original, mse, *samples]
    count, height, width = original.shape
    cell_w, cell_h = width + gap, height + title_room  # data units (pixels) per digit, with its title above it
    canvas = torch.full((count * cell_h, len(columns) * cell_w), float("nan"))  # nan: white background
    fig, ax = plt.subplots(figsize=(1.1 * len(columns), 1.35 * count))
    for i in range(count):
        titles = [f"original {info['labels'][i]}", f"MSE: {info['mse_predicted'][i]}"]
        titles += [str(p) for p in info["sampler_predicted"][i][:len(samples)]]
        for j, (column, title) in enumerate(zip(columns, titles)):
            top, left = i * cell_h + title_room, j * cell_w + gap // 2
            canvas[top:top + height, left:left + width] = column[i]
            ax.text(left + width / 2, top - 1.5, title, ha="center", va="bottom", fontsize=9)
        lefts = torch.arange(len(columns)) * cell_w + gap // 2
        ax.hlines([i * cell_h + title_room + 13.5] * len(columns), lefts - 0.5, lefts + width - 0.5,
                  color="tab:blue", lw=0.6)  # below the line: drawn
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(canvas.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title("P5: ambiguous top halves (their nearest training top halves disagree on the digit):\nthe "
                 "original, the MSE drawer's completion, then samples, each titled with P1's classifier's label",
                 fontsize=10)
    save_figure(fig, path)
