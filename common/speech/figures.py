"""Problem 4's figures: training curves, the SNR over the `v` files (histogram, gain against input SNR, by kind of
noise) and one file's spectrograms with its ideal and predicted masks. Each is written beside metrics.json."""
import numpy as np

from .scores import LABELS
from .stft import RATE, stft


def make_figures(metrics, v, masks, outputs, out):
    """The figures from metrics.json's numbers, `v` (dicts with x, X, s, mask), the masks and outputs of each system;
    returns {name: file name} (relative to metrics.json, as make_report.py reads it)."""
    from ..plot import plt, save_figure

    history, systems = metrics["history"], metrics["v"]["systems"]
    colors = {"gru": "C0", "fc": "C1", "noisy": "0.5", "oracle_ibm": "k"}
    figures = {}

    def save(fig, name, **kw):
        save_figure(fig, out / name, **kw)
        figures[name.removesuffix(".png")] = name  # relative to metrics.json, as make_report.py reads it

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for kind in ("gru", "fc"):
        epochs, color = [h["epoch"] for h in history[kind]], colors[kind]
        ax1.plot(epochs, [h["train_loss"] for h in history[kind]], color=color, marker=".", label=f"{LABELS[kind]} tr")
        ax1.plot(epochs, [h["val_loss"] for h in history[kind]], color=color, ls="--", label=f"{LABELS[kind]} v")
        ax2.plot(epochs, [h["val_snr"] for h in history[kind]], color=color, marker=".", label=LABELS[kind])
        best = metrics["models"][kind]["best_epoch"]
        ax2.plot([best], [history[kind][best - 1]["val_snr"]], "o", mfc="none", color=color, ms=9)
    for kind, ls in (("oracle_ibm", ":"), ("noisy", "-.")):
        mean = systems[kind]["snr_db"]["mean"]
        ax2.axhline(mean, color=colors[kind], ls=ls, lw=1, label=f"{LABELS[kind]} {mean:.1f} dB")
    ax1.set(xlabel="epoch", ylabel="|X|-weighted BCE against the IBM", title="P4: loss (solid: tr, dashed: v)")
    ax2.set(xlabel="epoch", ylabel="mean SNR on v (dB)", title="P4: v SNR per epoch (circle: kept epoch)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, "training_curves.png")

    per_file = metrics["per_file"]["snr_db"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bins = np.linspace(min(min(x) for x in per_file.values()), max(max(x) for x in per_file.values()), 40)
    for kind in ("noisy", "fc", "gru", "oracle_ibm"):
        stat = systems[kind]["snr_db"]
        ax.hist(per_file[kind], bins=bins, histtype="step", lw=1.5, color=colors[kind],
                label=f"{LABELS[kind]}: {stat['mean']:.2f} +- {stat['std']:.2f} dB")
    ax.set(xlabel="SNR of the recovered speech (dB)", ylabel="files",
           title=f"P4: SNR over the {len(v)} v files (mean +- std)")
    ax.set_ylim(top=1.4 * ax.get_ylim()[1])  # room for the legend
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    ax.grid(alpha=0.3)
    save(fig, "snr_histogram.png")

    noisy_snr = np.array(per_file["noisy"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    edges = np.linspace(np.floor(noisy_snr.min()), np.ceil(noisy_snr.max()), 6)
    for kind in ("fc", "gru", "oracle_ibm"):
        gain = np.array(per_file[kind]) - noisy_snr
        ax.scatter(noisy_snr, gain, s=4, alpha=0.35, color=colors[kind])
        which = np.clip(np.digitize(noisy_snr, edges) - 1, 0, len(edges) - 2)
        centres = [(edges[j] + edges[j + 1]) / 2 for j in range(len(edges) - 1) if (which == j).any()]
        means = [gain[which == j].mean() for j in range(len(edges) - 1) if (which == j).any()]
        ax.plot(centres, means, color=colors[kind], marker="o", label=f"{LABELS[kind]} (mean per 2 dB of input)")
    ax.set(xlabel="input SNR of the mixture (dB)", ylabel="SNR gain (dB)", title="P4: SNR gain against input SNR (v)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, "snr_gain_vs_input.png")

    by_noise = metrics["by_noise"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    kinds = ["noisy", "fc", "gru", "oracle_ibm"]
    positions = np.arange(len(by_noise["snr_db"]["gru"]))
    for j, kind in enumerate(kinds):
        ax.bar(positions + (j - 1.5) * 0.2, by_noise["snr_db"][kind], width=0.2, color=colors[kind], label=LABELS[kind])
    ax.set_xticks(positions, [str(name) for name in by_noise["noise"][:len(positions)]], rotation=20)
    ax.set(ylabel="mean SNR on v (dB)", title="P4: v SNR by kind of noise (file number mod 10)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(top=1.25 * max(max(by_noise["snr_db"][kind]) for kind in kinds))
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    save(fig, "snr_by_noise.png")

    i = int(np.argsort(per_file["gru"])[len(v) // 2])  # a typical file: the median GRU SNR
    f, M_hat = v[i], masks["gru"][i]
    ref = np.abs(f["X"]).max()

    def db(S):
        return 20 * np.log10(np.maximum(np.abs(S), 1e-5 * ref) / ref)

    panels = [("noisy |X| (dB)", db(f["X"]), "magma"), ("clean |S| (dB)", db(stft(f["s"])), "magma"),
              ("ideal binary mask", f["mask"], "gray"), ("predicted mask (GRU)", M_hat, "gray"),
              (f"denoised (dB), SNR {per_file['gru'][i]:.1f} dB", db(stft(outputs["gru"][i])), "magma")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.6, 8.6), sharex=True, layout="constrained")
    extent = [0, len(f["x"]) / RATE, 0, RATE / 2000]
    for ax, (title, image, cmap) in zip(axes, panels):
        shown = ax.imshow(image.T, origin="lower", aspect="auto", extent=extent, cmap=cmap,
                          vmin=-80 if cmap == "magma" else 0, vmax=0 if cmap == "magma" else 1)
        ax.set(ylabel="kHz", title=title)
        fig.colorbar(shown, ax=ax, pad=0.01)
    axes[-1].set_xlabel(f"seconds ({f['name']})")
    save(fig, "spectrograms.png", dpi=100)  # five noisy images: fewer pixels keep the file small
    return figures

