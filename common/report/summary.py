"""The report's summary, the homework's checklist: one row per deliverable of the homework (each problem's steps that
ask for a number, a figure, a table or a file, and the hand-in's rules), with what the hand-in gives, the measured
value (its spread where it has one) and a link to its section; and the closing appendix, the project's own targets
in one table, each as the result files judged it (`goals` entries: the value measured, its bound, the verdict;
common.goals). GOALS words every target for a reader."""
from ..goals import TARGETS
from .blocks import Text, bound, db, esc, heading, in_minutes, link, minutes, pct, percent, plain, pm, signed, table
from .blocks import times

# ----------------------------------------------------------------------------- the homework's checklist

# the sections the checklist links to (common/report/problems.py's headings), as the report numbers them
SECTIONS = {"p1-baseline": "1.1", "p1-svd": "1.2", "p1-ranks": "1.3", "p2-layer": "2.1", "p2-finetune": "2.2",
            "p3-ste": "3.1", "p3-tracker": "3.2", "p3-result": "3.3", "p4-data": "4.1", "p4-signal": "4.2",
            "p4-models": "4.3", "p4-training": "4.4", "p4-result": "4.5", "p4-listening": "4.6", "p5-model": "5.1",
            "p5-training": "5.2", "p5-drawing": "5.3", "p5-failures": "5.4", "headline": "headline"}


def said(requirement):
    return "**met**" if requirement["met"] else "**missed**"


def checklist(m, counts):
    """The summary: one row per deliverable. `counts`: the report's code cells, figures and recordings."""
    p1, p2, p3, p4, p5 = (m[p] for p in ("p1", "p2", "p3", "p4", "p5"))
    cfg2, cfg3 = m["p2/config"], m["p3/config"]
    r, k = p1["ranks"], str(p2["rank"])
    ranks = [d for d in r if d != "dense"]
    seeds = len(p1["seeds"])
    first = [run["history"][0]["val_acc"] for run in p2["seeds"]]
    start = [run["initial_val_acc"] for run in p2["seeds"]]
    exact = m["p3/benchmark"]["methods"]["exact"]
    systems, context, diff = p4["v"]["systems"], p4["data_context"], p4["gru_minus_fc_db"]
    share = context["share_of_oracle_gain"]
    gru, fc = p4["models"]["gru"], p4["models"]["fc"]
    kept = p5["class_kept_per_digit"]
    worst = min(kept, key=lambda d: kept[d])
    shown = len(p5["examples"]["indices"])
    kept_shown = sum(a == b for a, b in zip(p5["examples"]["labels"], p5["examples"]["mse_predicted"]))
    mse_config = p5["config"]
    rows = [
        ["P1", "Train the 784 -> 5 x 1024 -> 10 ReLU baseline, test accuracy above 98%",
         f"{seeds} baselines (seeds 0 to {seeds - 1})",
         f"{pm(p1['baseline_test_acc'])}: {said(p1['required']['baseline_test_acc'])}", "p1-baseline"],
        ["P1", "SVD each hidden weight once; the rank-D network, computed the cheap way",
         "`svd`, `truncate`, `LowRankLinear`, `compress`",
         f"rank {k}: {r['dense']['macs'] / r[k]['macs']:.1f}x fewer multiply-adds", "p1-svd"],
        ["P1", "Test accuracy at D = " + ", ".join(ranks), "a table and a figure",
         "; ".join(f"{d}: {pm(r[d]['test_acc'])}" for d in ranks), "p1-ranks"],
        ["P1", "Parameters at each D", "a table and a figure",
         f"rank {k}: {r[k]['params']:,}, dense {r['dense']['params']:,} ({1 / r[k]['params_ratio']:.1f}x fewer)",
         "p1-ranks"],
        ["P2", f"The rank-{k} network as W = U V^T, initialised from P1's SVD", "`FactorizedLinear` (S folded into V)",
         f"starts at {pm(p2['initial_test_acc'])}, P1's rank-{k} network", "p2-layer"],
        ["P2", "Fine-tune U and V by backprop, at a smaller-than-usual learning rate",
         f"AdamW at {cfg2['lr']:g}" + (", no warm-up" if cfg2.get("warmup", 0.1) == 0 else "")
         + f", {cfg2['epochs']} epochs; the validation curve",
         f"validation accuracy {pct(sum(first) / len(first))} after epoch 1, {pct(sum(start) / len(start))} at the "
         "start (mean over seeds)", "p2-finetune"],
        ["P2", f"Test accuracy after fine-tuning, above P1's rank {k}", f"{len(p2['seeds'])} seeds",
         f"{pm(p2['test_acc'])}: {said(p2['required']['test_acc'])}", "p2-finetune"],
        ["P3", "A custom gradient: a torch.autograd.Function whose backward is straight-through",
         "`LowRankSTE`; a float64 test checks its gradient", "-", "p3-ste"],
        ["P3", "An SVD of W at every step",
         f"a tracked SVD, exact every {cfg3['refresh_every']} steps; `--refresh-every 1`: exact at every step",
         f"tracked error at most {p3['tracking_error_ratio_max']:.5f}x the exact SVD's; exact at every step: "
         f"{exact['ratio_to_plain']:.1f}x a plain step's time", "p3-tracker"],
        ["P3", f"Test accuracy of the rank-{k} network, about 97%", f"{len(p3['seeds'])} seeds",
         f"{pm(p3['test_acc'])}: {said(p3['required']['test_acc'])}", "p3-result"],
        ["P3", "Compare with P2", "discussed",
         f"P3 - P2: {100 * (p3['test_acc']['mean'] - p2['test_acc']['mean']):+.2f} points", "p3-result"],
        ["P4", "The STFT (1024-point Hann, hop 512) of every file; the ideal binary mask as the target",
         "`stft`, `istft`, `ideal_binary_mask`, `apply_mask`, `snr_db`", "-", "p4-signal"],
        ["P4", "A recurrent network that predicts the mask causally", f"a GRU, {gru['params']:,} parameters", "-",
         "p4-models"],
        ["P4", "The fully-connected baseline",
         f"{fc['config']['model']['layers']} x {fc['config']['model']['hidden']} FC, {fc['params']:,} parameters",
         "-", "p4-models"],
        ["P4", "Mini-batches of sequences; the test files run whole",
         f"windows of {gru['config']['crop']} frames, batch {gru['config']['batch_size']}; `v` and `te` files whole",
         "-", "p4-training"],
        ["P4", "Validation loss curves", "a figure, GRU and FC",
         f"kept epochs: GRU {gru['best_epoch']} of {gru['epochs_run']}, FC {fc['best_epoch']} of {fc['epochs_run']}",
         "p4-training"],
        ["P4", "SNR on `v`; the homework expects a well-tuned FC slightly above 10 dB (> 10 dB) on the course's data",
         "cannot be checked here: the course's data is not available, and P4 runs on a stand-in",
         f"this data: noisy {context['noisy_snr_db']:.2f}, FC {systems['fc']['snr_db']['mean']:.2f}, GRU "
         f"{systems['gru']['snr_db']['mean']:.2f}, oracle IBM {context['oracle_ibm_snr_db']:.2f} dB; the FC "
         f"recovers {pct(share['fc'], 0)} of the oracle's gain, the GRU {pct(share['gru'], 0)}", "p4-result"],
        ["P4", "The recurrent model beats the FC", "paired per file",
         f"{diff['mean']:+.2f} ± {diff['sem']:.2f} dB, better on {diff['files_gru_better']} of {diff['files']} files: "
         f"{said(p4['required']['gru_beats_fc'])}", "p4-result"],
        ["P4", "The denoised `te` signals, zipped", "`te_denoised.zip`, written by `make handin`",
         f"{p4['te_output']['files']} files", "p4-listening"],
        ["P5", "16 patches of 7 x 7 per image; an LSTM trained with teacher forcing on the squared error",
         f"{mse_config['layers']} x {mse_config['hidden']} LSTM and a head, {p5['params']:,} parameters",
         f"teacher-forced test MSE {p5['teacher_forced_mse']['test']:.4f} per pixel", "p5-model"],
        ["P5", "The validation curve per epoch", "a figure",
         f"kept epoch {p5['best_epoch']} of {p5['epochs_trained']}", "p5-training"],
        ["P5", f"Draw the bottom halves of {shown} test digits, the same number of each class",
         "a grid of completions beside the originals",
         f"P1's classifier reads the true digit in {kept_shown} of the {shown} "
         f"({pct(p5['drawing']['test']['mse']['class_kept'], 1)} of the whole test set)", "p5-drawing"],
        ["P5", "Discuss the completions and their failures", "per digit, the misread ones, ambiguous top halves",
         f"the digit kept least often: {worst} ({pct(kept[worst], 1)})", "p5-failures"],
        ["hand-in", "A notebook: the report with its code and LaTeX math", "`report.ipynb`",
         f"{counts['code']} cells of the repository's code; it runs top to bottom in a fresh kernel", "headline"],
        ["hand-in", "Its HTML, with the images and sound embedded", "`report.html`",
         f"{counts['figures']} figures and {counts['clips']} recordings inside the page; nothing fetched from "
         "outside", "p4-listening"],
    ]
    return [Text(
        heading(2, "Summary: the homework's checklist", "summary") + "\n\n"
        "One row per deliverable of the homework. Accuracies are means ± standard deviations over seeds; P4's "
        "spreads are over files. Where the homework sets a bar, the row says whether it is met.\n\n"
        + table(["", "the homework asks for", "delivered", "measured", "section"],
                [row[:-1] + [link(SECTIONS.get(row[-1], "§"), row[-1])] for row in rows], align="lllll") + "\n\n"
        + heading(3, "The headline numbers", "headline"))]


# ----------------------------------------------------------------------------- the project's own targets

ACC = (pct, percent)
GOALS = {  # a target's wording, how its measured value and its bound are written, and what a measured bound is
    "p1.baseline_test_acc": ("P1: the baseline's test accuracy", ACC),
    "p1.rank_20_test_acc": ("P1: test accuracy at rank 20, before any fine-tuning", ACC),
    "p2.test_acc": ("P2: test accuracy after fine-tuning", ACC),
    "p3.test_acc": ("P3: test accuracy of the rank-20 network trained through its SVD", ACC),
    "p3.tracking_error_ratio_max": ("P3: the tracked weight's error over the exact truncation's, worst epoch and "
                                    "layer", (lambda x: f"{x:.5f}", plain)),
    "p3.amortized_ratio_to_plain": ("P3: a tracked training step over a plain one", (times, lambda x: f"{x:g}x")),
    "p4.gru_snr_db": ("P4: the GRU's `v` SNR", (db, lambda x: f"{x:g} dB")),
    "p4.gru_minus_fc_db": ("P4: GRU minus FC, `v` SNR paired per file", (db, lambda x: f"{x:g} dB")),
    "p4.fraction_of_files_gru_better": ("P4: `v` files on which the GRU beats the FC", (lambda x: pct(x, 1), percent)),
    "p4.noise_types_gru_better": ("P4: kinds of noise on which the GRU beats the FC", (plain, plain), "all"),
    "p4.stoi_gru_over_fc": ("P4: STOI, GRU minus FC", (signed, plain)),
    "p4.stoi_fc_over_noisy": ("P4: STOI, FC minus noisy input", (signed, plain)),
    "p4.pesq_gru_over_fc": ("P4: PESQ, GRU minus FC", (signed, plain)),
    "p4.pesq_fc_over_noisy": ("P4: PESQ, FC minus noisy input", (signed, plain)),
    "p4.rtf": ("P4: real-time factor of `denoise` on one CPU thread", (lambda x: f"{x:.4f}", plain)),
    "p5.teacher_forced_test_mse": ("P5: teacher-forced test MSE per pixel", (lambda x: f"{x:.4f}", plain)),
    "p5.mse_drawer_class_kept": ("P5: the MSE drawer's completions that P1's classifier reads as the true digit",
                                 (lambda x: pct(x, 1), percent)),
    "p5.sampler_class_kept": ("P5: the same, for the sampling drawer's samples", (lambda x: pct(x, 1), percent)),
    "p5.sampler_best_of_k_below_mse_drawer": ("P5: bottom-half MSE of the closest sample", (lambda x: f"{x:.4f}",) * 2,
                                              "the MSE drawer's"),
    "p5.sampler_sharpness_closer_to_originals": ("P5: the samples' distance from the originals' sharpness",
                                                 (lambda x: f"{x:.3f}",) * 2, "the MSE drawer's"),
    "p5.mse_drawer_over_best_reference": ("P5: the MSE drawer's bottom-half MSE over the better simple completion's",
                                          (lambda x: f"{x:.2f}", plain)),
    "p1.rank_20_speedup_batch_1": ("P1: rank 20 over dense, one image", (times, lambda x: f"{x:g}x")),
    "p1.rank_20_speedup_batch_1000": ("P1: rank 20 over dense, a batch of 1000", (times, lambda x: f"{x:g}x")),
    "bench.p1_step_ratio": ("P1: a training step under the default precision over an fp32 one",
                            (times, lambda x: f"{x:g}x")),
    "bench.p1_forward_backward_share_of_bf16_peak": ("P1: forward and backward pass, share of the bf16 peak",
                                                     (lambda x: pct(x, 0), percent)),
    "p5.budget_seconds": ("P5: wall time of a run that trains both drawers", (minutes, in_minutes)),
    "pipeline.minutes": ("`make all` from scratch, wall time", (lambda x: f"{x:.1f} min", lambda x: f"{x:g} min")),
}


def problem(name):
    """The problem a result file's goals belong to: "p3" for p3/benchmark; P1's for the rank-D forward benchmark."""
    return "p1" if name == "bench/rank_forward" else name.split("/")[0]


def target_rows(m, pipeline):
    """The project's targets as the result files judged them, in the order of `m`'s problems."""
    found = [(f"{problem(name)}.{key}", entry) for name, metrics in m.items()
             for key, entry in (metrics.get("goals") or {}).items()]
    if m["p5"].get("budget"):
        found.append(("p5.budget_seconds", m["p5"]["budget"]))
    found.append(("pipeline.minutes", pipeline))
    order = list(dict.fromkeys([problem(name) for name in m] + ["pipeline"]))
    rows = []
    for key, g in sorted(found, key=lambda f: order.index(f[0].split(".")[0])):  # stable: in-file order
        what, (show, show_bound), of = (GOALS.get(key, (esc(key), (plain, plain))) + (None,))[:3]
        measured_bound = TARGETS.get(key, (None, 0))[1] is None
        rows.append([what, bound(g, show if measured_bound else show_bound, of if measured_bound else None),
                     show(g["measured"]), "reached" if g["met"] else "open"])
    return rows


def appendix(m, pipeline):
    return [Text(
        heading(2, "Appendix: the project's own targets", "appendix") + "\n\n"
        "Bars this project set itself beyond the homework (`common/goals.py` says why each sits where it does); "
        "*open* marks one these results do not reach.\n\n"
        + table(["target", "bar", "measured", "state"], target_rows(m, pipeline), align="lrrl"))]
