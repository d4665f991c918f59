"""Figures of the rank-D networks: P1's accuracy and parameters against the rank and the baseline's singular values,
and P3's subspace tracker and singular values before and after training through the rank-r projection.

Each takes the metrics.json its script wrote (or a part of it) and the path of the .png.
"""
from ..plot import plt, save_figure


def rank_positions(metrics):
    """The ranks of P1's metrics.json in order, where each sits on a log axis (full rank at the hidden layers' width,
    or beyond the largest D when that is wider) and its tick label."""
    ranks = [d for d in metrics["ranks"] if d != "dense"]
    numeric = [int(d) for d in ranks if d != "full"]
    full_x = max([metrics["width"]] + [2 * d for d in numeric if d >= metrics["width"]])
    xs = [full_x if d == "full" else int(d) for d in ranks]
    labels = [f"full\n({metrics['width']})" if d == "full" else d for d in ranks]
    return ranks, xs, labels


def plot_accuracy_vs_rank(metrics, path, span=0.05):
    """P1: test accuracy (mean +- std over the seeds) of the rank-D network for every D, full rank included, and the
    dense baseline. The axis shows the ranks within `span` of the baseline (all of them when fewer than two are);
    a rank below that range sits on the axis's floor as a downward triangle labelled with its accuracy."""
    ranks, xs, labels = rank_positions(metrics)
    base = metrics["baseline_test_acc"]
    mean = {d: 100 * metrics["ranks"][d]["test_acc"]["mean"] for d in ranks}
    std = {d: 100 * metrics["ranks"][d]["test_acc"]["std"] for d in ranks}
    shown = [d for d in ranks if mean[d] >= 100 * (base["mean"] - span)]
    shown = shown if len(shown) > 1 else ranks  # too few near the baseline: the whole range
    low = min([mean[d] - std[d] for d in shown] + [100 * base["mean"]])
    top = max([mean[d] + std[d] for d in shown] + [100 * base["mean"]])
    pad = 0.08 * max(top - low, 0.1)
    floor = low - 2 * pad
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = dict(zip(ranks, xs))
    ax.errorbar([x[d] for d in shown], [mean[d] for d in shown], yerr=[std[d] for d in shown], marker="o", capsize=3,
                label="rank-D network")
    for d in ranks:
        if d not in shown:  # off the axis: marked on its floor, with its value
            ax.plot([x[d]], [floor + 0.4 * pad], marker="v", color="C0", ms=8, clip_on=False)
            ax.annotate(f"D = {d}: {mean[d]:.1f}%", (x[d], floor + 0.4 * pad), xytext=(8, 4),
                        textcoords="offset points", fontsize=9, color="C0")
    ax.axhline(100 * base["mean"], color="k", ls="--", lw=1, label=f"baseline {100 * base['mean']:.2f}%")
    ax.set(xscale="log", xlabel="rank D", ylabel="test accuracy (%)", ylim=(floor, top + 2 * pad),
           title=f"P1: accuracy of the rank-D network (mean +- std, {len(metrics['seeds'])} seeds)")
    ax.set_xticks(xs, labels)
    ax.minorticks_off()
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_params_vs_rank(metrics, path):
    """P1: parameters of the rank-D network against D, full rank included, and the dense baseline's."""
    ranks, xs, labels = rank_positions(metrics)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(xs, [metrics["ranks"][d]["params"] for d in ranks], marker="o", label="rank-D network")
    ax.axhline(metrics["ranks"]["dense"]["params"], color="k", ls="--", lw=1,
               label=f"baseline {metrics['ranks']['dense']['params']:,}")
    ax.set(xscale="log", yscale="log", xlabel="rank D", ylabel="parameters", title="P1: parameters against rank")
    ax.set_xticks(xs, labels)
    ax.minorticks_off()
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_singular_values(spectra, rank, path):
    """P1: the singular values of each hidden weight (`spectra`, one list per layer, seed 0), the rank P2 and P3
    work at marked."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, S in enumerate(spectra):
        ax.plot(range(1, len(S) + 1), S, label=f"W{i + 1}")
    ax.axvline(rank, color="k", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="index", ylabel="singular value",
           title="P1: singular values of the baseline's weights (seed 0)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_tracking_error(metrics, path):
    """P3: per layer and epoch (first seed), how far the tracker's W-hat is from the exact rank-r truncation W_r:
    its error above the optimal one (with the target) and its distance to W_r."""
    r, run = metrics["rank"], metrics["seeds"][0]
    bound = metrics["goals"]["tracking_error_ratio_max"]["at_most"]
    epochs = [h["epoch"] for h in run["history"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for i in range(len(run["history"][0]["tracking_error_ratio"])):
        left.plot(epochs, [100 * (h["tracking_error_ratio"][i] - 1) for h in run["history"]], marker=".",
                  label=f"W{i + 1}")
        right.plot(epochs, [100 * h["tracking_distance"][i] for h in run["history"]], marker=".", label=f"W{i + 1}")
    left.axhline(100 * (bound - 1), color="r", ls="--", lw=1, label=f"target: {100 * (bound - 1):g}% above optimal")
    left.set(xlabel="epoch", ylabel="error above optimal (%)",
             title=rf"$\|W - \hat{{W}}\|_F \;/\; \|W - W_{{{r}}}\|_F - 1$")
    right.set(xlabel="epoch", ylabel="distance (%)", title=rf"$\|\hat{{W}} - W_{{{r}}}\|_F \;/\; \|W_{{{r}}}\|_F$")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"P3: the tracked Ŵ against the exact rank-{r} SVD (seed {run['seed']}, end of each epoch)")
    save_figure(fig, path)


def plot_singular_values_before_after(metrics, path):
    """P3: the largest singular values of the first and last hidden weight, before (P1's baseline) and after
    straight-through training (first seed)."""
    r, run = metrics["rank"], metrics["seeds"][0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, ax in zip([0, len(run["singular_values"]) - 1], axes):
        for key, label in [("singular_values_before", "baseline"), ("singular_values", "after P3")]:
            S = run[key][i]
            ax.plot(range(1, len(S) + 1), S, marker=".", ms=3, label=label)
        ax.axvline(r + 0.5, color="k", ls=":", lw=1, label=f"rank {r}")
        ax.set(xlabel="index", ylabel="singular value", title=f"W{i + 1} (seed {run['seed']})")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("P3: the largest singular values before and after straight-through training")
    save_figure(fig, path)
