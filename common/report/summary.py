"""The report's summary: the homework's requirements and, in a table apart, the project's own targets, each as the
result files judged it (`required` and `goals` entries: the value measured, its bound, the verdict; common.goals).
GOALS words every bar for a reader."""
from ..goals import REQUIRED, TARGETS
from .blocks import Text, bound, db, in_minutes, minutes, pct, percent, plain, signed, table, times

# the summary's wording of every bar (keys of common.goals): what, how the measured value and the bound are written,
# and what a bound measured in the same run is
ACC = (pct, percent)
GOALS = {
    "p1.baseline_test_acc": ("P1: the baseline's test accuracy", ACC),
    "p1.rank_20_test_acc": ("P1: test accuracy at rank 20, before any fine-tuning", ACC),
    "p2.test_acc": ("P2: test accuracy of the rank-20 factors after fine-tuning", ACC, "P1's rank-20 network"),
    "p3.test_acc": ("P3: test accuracy of the rank-20 network trained through its SVD", ACC),
    "p3.tracking_error_ratio_max": ("P3: error of the tracked rank-20 weight over the exact truncation's, worst "
                                    "epoch and layer", (lambda x: f"{x:.5f}", plain)),
    "p3.amortized_ratio_to_plain": ("P3: a training step through the tracked SVD over a plain step",
                                    (times, lambda x: f"{x:g}x")),
    "p4.gru_beats_fc": ("P4: the GRU's `v` SNR", (db, db), "the FC baseline's"),
    "p4.gru_snr_db": ("P4: the GRU's `v` SNR", (db, lambda x: f"{x:g} dB")),
    "p4.gru_minus_fc_db": ("P4: GRU minus FC, `v` SNR paired per file", (db, lambda x: f"{x:g} dB")),
    "p4.fraction_of_files_gru_better": ("P4: `v` files on which the GRU beats the FC", (lambda x: pct(x, 1), percent)),
    "p4.noise_types_gru_better": ("P4: kinds of noise on which the GRU beats the FC", (plain, plain), "all"),
    "p4.perceptual_order": ("P4: STOI and PESQ rank GRU over FC over the noisy input", (signed, plain)),  # older files:
    "p4.stoi_gru_over_fc": ("P4: STOI, GRU minus FC", (signed, plain), None, "p4.perceptual_order"),
    "p4.stoi_fc_over_noisy": ("P4: STOI, FC minus noisy input", (signed, plain), None, "p4.perceptual_order"),
    "p4.pesq_gru_over_fc": ("P4: PESQ, GRU minus FC", (signed, plain), None, "p4.perceptual_order"),
    "p4.pesq_fc_over_noisy": ("P4: PESQ, FC minus noisy input", (signed, plain), None, "p4.perceptual_order"),
    "p4.rtf": ("P4: real-time factor of `denoise` on one CPU thread", (lambda x: f"{x:.4f}", plain)),
    "p5.teacher_forced_test_mse": ("P5: the MSE drawer's teacher-forced test MSE per pixel",
                                   (lambda x: f"{x:.4f}", plain)),
    "p5.mse_drawer_class_kept": ("P5: the MSE drawer's completions that keep their class (test)",
                                 (lambda x: pct(x, 1), percent)),
    "p5.sampler_class_kept": ("P5: sampled completions that keep their class (test)", (lambda x: pct(x, 1), percent)),
    "p5.sampler_best_of_k_below_mse_drawer": ("P5: bottom-half MSE of the closest of the sampling drawer's samples "
                                              "(test)", (lambda x: f"{x:.4f}",) * 2, "the MSE drawer's"),
    "p5.sampler_sharpness_closer_to_originals": ("P5: distance of the samples' sharpness from the originals'",
                                                 (lambda x: f"{x:.3f}",) * 2, "the MSE drawer's"),
    "p5.mse_drawer_over_best_reference": ("P5: the MSE drawer's bottom-half MSE over that of the better simple "
                                        "completion (the nearest training image's bottom half, or the mean bottom "
                                        "half), on the test set and on the shown examples, whichever is higher",
                                        (lambda x: f"{x:.2f}", plain)),
    "p1.rank_20_speedup_batch_1": ("P1: one image through the rank-20 network, speed-up over dense",
                                      (times, lambda x: f"{x:g}x")),
    "p1.rank_20_speedup_batch_1000": ("P1: a batch of 1000 through the rank-20 network, speed-up over dense",
                                         (times, lambda x: f"{x:g}x")),
    "bench.p1_step_ratio": ("P1: a training step under the default precision over an fp32 step",
                            (times, lambda x: f"{x:g}x")),
    "bench.p1_forward_backward_share_of_bf16_peak": ("P1: forward and backward pass, share of the bf16 matmul peak",
                                                     (lambda x: pct(x, 0), percent)),
    "p5.budget_seconds": ("P5: wall time of a run that trains both drawers", (minutes, in_minutes)),
    "pipeline.minutes": ("The whole main job (`make all`) from scratch, wall time", (lambda x: f"{x:.1f} min",
                                                                        lambda x: f"{x:g} min")),
}


def problem(name):
    """The problem a result file's goals belong to: "p3" for p3/benchmark; P1's for the rank-D forward benchmark."""
    return "p1" if name == "bench/rank_forward" else name.split("/")[0]


def goal_rows(m, pipeline):
    """(the homework's requirements, the project's targets) as the result files judged them, in the order of `m`'s
    problems."""
    found = [(f"{problem(name)}.{key}", entry, part == "required") for name, metrics in m.items()
             for part in ("required", "goals") for key, entry in (metrics.get(part) or {}).items()]
    if m["p5"].get("budget"):
        found.append(("p5.budget_seconds", m["p5"]["budget"], False))
    found.append(("pipeline.minutes", pipeline, False))
    required, targets, grouped = [], [], {}
    order = [problem(name) for name in m] + ["pipeline"]
    for key, g, as_required in sorted(found, key=lambda f: order.index(f[0].split(".")[0])):  # stable: in-file order
        what, (show, show_bound), of, part_of = (GOALS.get(key, (key, (plain, plain))) + (None, None))[:4]
        as_required = as_required and key in REQUIRED
        if (REQUIRED if as_required else TARGETS).get(key, (None, 0))[1] is None:  # a bound measured in the run
            show_bound = show
        else:
            of = None
        if as_required:
            required.append([what, bound(g, show_bound, of), show(g["measured"]),
                             "**met**" if g["met"] else "**not met**"])
        elif part_of and part_of in grouped:  # one row for the parts of one target (older files judge each part apart)
            grouped[part_of][2] += ", " + show(g["measured"])
            grouped[part_of][3] = "reached" if grouped[part_of][3] == "reached" and g["met"] else "open"
        else:
            why = g.get("why") or TARGETS.get(part_of or key, (None, None, ""))[2]
            row = [GOALS[part_of][0] if part_of else what, bound(g, show_bound, of) + " each" * bool(part_of),
                   show(g["measured"]), "reached" if g["met"] else "open", why]
            targets.append(row)
            if part_of:
                grouped[part_of] = row
    return required, targets


def summary(m, pipeline):
    """The report's summary: the homework's requirements (met / not met), then the project's own targets."""
    required, targets = goal_rows(m, pipeline)
    return [Text(
        "## Summary\n\n### The homework's requirements\n\n"
        + table(["requirement", "bound", "measured", "verdict"], required) +
        "\n\nAccuracies are means over seeds; each problem's section gives their number and spread.\n\n"
        "### The project's own targets\n\n"
        "Bars this project set itself beyond the homework, each with the reason it sits where it does. *Open* marks "
        "one these results do not reach.\n\n"
        + table(["target", "bar", "measured", "state", "why this bar"], targets, align="lrrll"))]
