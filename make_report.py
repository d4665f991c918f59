"""Build report.md, report.ipynb and report.html from results/pN/metrics.json.

No measured number, goal or count in the report is typed here: each is read from a metrics.json (or
benchmark.json) that the scripts wrote, with the paths of their figures, and every bar and goal as the
script judged it (`required` and `goals`: the value judged, its bound and the verdict, see common.utils.goal).
The only numbers typed below are the homework's definitions inside the equations and published references
quoted in the prose. tests/test_report.py rebuilds the report from results/ and checks that it equals the
committed one, and builds it from the --dry-run outputs of every script, so a renamed key fails there.

    python make_report.py              # after the five scripts; `make all` runs it last
    python make_report.py --dry-run    # from the scripts' --dry-run outputs (runs/dry-run/), to check the builder

To add a section, read `build()`: write a function beside section_p1 that takes its result files and returns
a Section (its rows of the summary table and its blocks: Text, Figure, Audio), and add one line there.

report.md is for readers of the repo (math as $...$, figures linked from results/); report.ipynb holds the same
blocks with every figure and audio player embedded; report.html is written from the blocks directly, as one
self-contained page: math converted to MathML when the report is built (latex2mathml; browsers render MathML
natively, so the page needs no script and no font from the network), figures and audio as data: URIs, and no
code cells. It opens the same offline, on any machine.
"""
import base64
import html
import json
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from common.utils import ROOT, ArgumentParser, UserError, atomic_path, goal, run_cli, shown_path

# every result the report reads, and the command that writes it
SCRIPTS = {"p1": "p1_svd.py", "p2": "p2_factorized.py", "p3": "p3_svd_ste.py", "p4": "p4_denoise.py",
           "p5": "p5_draw.py", "p3/benchmark": "benchmarks/p3_svd_step.py", "p4/benchmark": "benchmarks/p4_realtime.py"}
PIPELINE_GOAL_MINUTES = 30  # the project's budget for `make all` on 2 cores; no script owns it, the report sums it


# ----------------------------------------------------------------------------- the report's building blocks

@dataclass
class Text:
    markdown: str


@dataclass
class Figure:
    path: Path  # absolute; the writers make it relative to the report
    caption: str


@dataclass
class Audio:
    path: Path
    label: str


@dataclass
class Section:
    rows: list    # rows of the summary table: what, required, goal, measured, required met, goal met
    blocks: list  # Text, Figure and Audio blocks, in reading order
    train_seconds: float = None  # training time recorded in the checkpoints, for the timing table


class Metrics(dict):
    """One result file's JSON object; a key it lacks is a one-line error naming the file, the key and the script."""

    def __missing__(self, key):
        raise UserError(f"{shown_path(self.file)} has no {self.where}[{key!r}]; rerun: python {self.script} "
                        "(if the script renamed that key, make_report.py must follow)")


def as_metrics(value, file, script, where=""):
    """`value` with every JSON object in it a Metrics that knows where it came from."""
    if isinstance(value, dict):
        m = Metrics({k: as_metrics(v, file, script, f"{where}[{k!r}]") for k, v in value.items()})
        m.file, m.script, m.where = file, script, where
        return m
    if isinstance(value, list):
        return [as_metrics(v, file, script, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_results(results, dry_run=False):
    """{"p1": metrics, ...}; a missing, unreadable or (unless `dry_run`) dry-run result is an error naming the
    script to run."""
    metrics = {}
    for name, script in SCRIPTS.items():
        path = results / (f"{name}.json" if "/" in name else f"{name}/metrics.json")
        if not path.exists():
            raise UserError(f"{shown_path(path)} is missing; run: python {script} (or make all)")
        try:
            m = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {shown_path(path)} ({e}); run: python {script}")
        except json.JSONDecodeError as e:
            raise UserError(f"{shown_path(path)} is not valid JSON ({e}); rerun: python {script}")
        if not isinstance(m, dict):
            raise UserError(f"{shown_path(path)} holds a JSON {type(m).__name__}, not an object; "
                            f"rerun: python {script}")
        if m.get("dry_run") and not dry_run:
            raise UserError(f"{shown_path(path)} comes from a --dry-run; run: python {script} for the full results")
        metrics[name] = as_metrics(m, path, script)
    return metrics


def read(fn, *files):
    """fn(*files); a result file of the wrong shape (a list where a number belongs...) is a one-line error."""
    try:
        return fn(*files)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as e:
        names = " or ".join(shown_path(m.file) for m in files)
        raise UserError(f"{names} is not what make_report.py expects ({type(e).__name__}: {e}); rerun: "
                        + " and ".join(f"python {m.script}" for m in files))


def figure(m, name, caption):
    """The figure the script lists as m["figures"][name] (a path relative to its metrics.json)."""
    return Figure(existing(m.file.parent / m["figures"][name], m), caption)


def existing(path, m):
    if not path.is_file():
        raise UserError(f"{shown_path(path)} is missing (written with {shown_path(m.file)}); rerun: python {m.script}")
    return path


def pct(x, digits=2):
    return f"{100 * x:.{digits}f}%"


def pm(stat, digits=2, scale=100, unit="%"):
    """'mean ± std' of a mean_std dict."""
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}{unit}"


def percent(x):
    """A bound as a percentage, no more digits than it has: 0.982 -> '98.2%', 0.9 -> '90%'."""
    return f"{100 * x:g}%"


def plain(x):
    return f"{x:g}"


def times(x):
    return f"{x:g}x"


BOUNDS = {"at_least": ">=", "above": ">", "at_most": "<=", "below": "<"}


def bound(g, fmt=plain, of=None):
    """'>= 98.2%' for a bar or goal as metrics.json holds it; `of` names a bound that is itself measured."""
    kind, = [k for k in BOUNDS if k in g]
    return f"{BOUNDS[kind]} {of} ({fmt(g[kind])})" if of else f"{BOUNDS[kind]} {fmt(g[kind])}"


def verdict(g):
    """The script's verdict, never recomputed here."""
    return "**met**" if g["met"] else "**not met**"


def judged(label, g, fmt=plain, of=None):
    """'goal >= 98.2%: **met**'."""
    return f"{label} {bound(g, fmt, of)}: {verdict(g)}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "|".join("---:" for _ in header[1:]) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def minutes(seconds):
    return f"{seconds / 60:.1f} min"


# ----------------------------------------------------------------------------- sections

def section_intro():
    return [Text(
        "# Homework 3: compression, custom gradients, recurrent denoising and drawing\n\n"
        "Every number below is read from `results/pN/metrics.json`, written by the committed scripts, and so is "
        "every bar, goal and verdict (`python make_report.py` rebuilds this file; a test checks that it matches the "
        "results). Model selection always uses a validation split carved from the training data; the test sets are "
        "only used for the final numbers.")]


def section_summary(sections, pipeline):
    rows = [row for s in sections.values() for row in s.rows]
    rows.append(["Whole pipeline on this machine", "", bound(pipeline, lambda s: f"{s / 60:g} min"),
                 minutes(pipeline["measured"]), "", verdict(pipeline)])
    return [Text("## Summary\n\n" + table(["what", "required", "goal", "measured", "required met", "goal met"], rows)
                 + "\n\nAccuracies are mean ± standard deviation over seeds (each section says how many); the "
                 "sections below give the details, the references and what did not work.")]


def section_timing(sections, m, pipeline):
    trained = {k: s.train_seconds for k, s in sections.items()}
    rows = [[f"{k.upper()} (`{SCRIPTS[k]}`)" if "/" not in k else f"benchmark (`{SCRIPTS[k]}`)",
             minutes(m[k]["wall_seconds"]), minutes(trained[k]) if k in trained else "-"] for k in SCRIPTS]
    rows.append(["**total**", f"**{minutes(pipeline['measured'])}**", f"**{minutes(sum(trained.values()))}**"])
    return [Text(
        "## Time on this machine\n\n"
        f"Wall time of each step of the main job (`make all`) in the run that wrote these results, on "
        f"{m['p1']['threads']} CPU threads, and the training time recorded in the checkpoints (the same when "
        "everything was trained in that run; a re-run that reuses the checkpoints takes minutes, and its wall "
        "times say so):\n\n"
        + table(["step", "wall time", "of which training"], rows))]


def section_p1(m):
    r = m["ranks"]
    base = m["baseline_test_acc"]
    req, g, g_rank = m["required"]["baseline_test_acc"], m["goals"]["baseline_test_acc"], m["goals"]["rank_20_test_acc"]
    D = g_rank["rank"]
    dD = r[str(D)]
    ranks = [d for d in r if d != "dense"]
    rows = [["dense (baseline)", f"{r['dense']['params']:,}", "1.0x", f"{r['dense']['macs']:,}", pm(base),
             f"{r['dense']['latency_ms_batch1']:.3f}", f"{r['dense']['latency_ms_batch1000']:.1f}", "1.0x / 1.0x"]]
    for d in ranks:
        rows.append([d, f"{r[d]['params']:,}", f"{1 / r[d]['params_ratio']:.1f}x", f"{r[d]['macs']:,}",
                     pm(r[d]["test_acc"]), f"{r[d]['latency_ms_batch1']:.3f}", f"{r[d]['latency_ms_batch1000']:.1f}",
                     f"{r[d]['speedup_batch1']:.1f}x / {r[d]['speedup_batch1000']:.1f}x"])
    h = m["seeds"][0]["history"]
    summary = [["P1 baseline, test accuracy", bound(req, percent), bound(g, percent), pm(base), verdict(req),
                verdict(g)],
               [f"P1 rank {D}, no fine-tuning", "", bound(g_rank, percent), pm(dD["test_acc"]), "", verdict(g_rank)]]
    return Section(summary, [Text(
        "## Problem 1: SVD compression of a 5 x 1024 MNIST classifier\n\n"
        "The baseline is $f(x) = W_6\\,\\sigma(W_5 \\cdots \\sigma(W_1 x + b_1) \\cdots + b_5) + b_6$ with "
        "$W_1 \\in \\mathbb{R}^{1024\\times 784}$, $W_2..W_5 \\in \\mathbb{R}^{1024\\times 1024}$ and ReLU $\\sigma$. "
        "Each hidden weight is decomposed once, $W_l = U_l S_l V_l^\\top$ (`torch.linalg.svd`), and the rank-$D$ "
        "network uses\n\n"
        "$$\\hat W_l = U_l[:, {:}D]\\; S_l[{:}D, {:}D]\\; V_l[:, {:}D]^\\top, \\qquad "
        "\\|W_l - \\hat W_l\\|_F = \\Big(\\sum_{i > D} s_{l,i}^2\\Big)^{1/2}$$\n\n"
        "(the best rank-$D$ approximation, Eckart-Young). It is computed the cheap way, "
        "$x \\mapsto U_l\\,(S_l\\,(V_l^\\top x))$, and stores $D\\,(m + n + 1)$ numbers per $m \\times n$ layer "
        "instead of $mn$; biases and $W_6$ stay dense.\n\n"
        f"**Training.** AdamW with a one-cycle learning-rate schedule, dropout, {h[-1]['epoch']} epochs on the "
        f"{m['train_size']:,}-image training split; the epoch with the best validation accuracy is kept. "
        f"{len(m['seeds'])} seeds, mean ± standard deviation over seeds.\n\n"
        f"**Result.** Baseline test accuracy {pm(base)} ({judged('required', req, percent)}; "
        f"{judged('goal', g, percent)}). "
        f"At $D = {D}$, without any fine-tuning: {pm(dD['test_acc'])} "
        f"({judged('goal', g_rank, percent)}; the homework's reference is about 97%), with "
        f"{dD['params']:,} parameters instead of {r['dense']['params']:,} "
        f"({1 / dD['params_ratio']:.1f}x fewer).\n\n"
        + table(["D", "parameters", "fewer", "multiply-adds / image", "test accuracy", "latency batch 1 (ms)",
                 "latency batch 1000 (ms)", "speed-up (1 / 1000)"], rows) +
        f"\n\nLatency is the median wall time of one forward pass on this machine's CPU ({m['threads']} threads), "
        "measured in one run for all networks; at full rank the factorized form costs more than the dense one, "
        "as its parameter count says."),
        figure(m, "accuracy_vs_rank", "Test accuracy against rank D (log axis)."),
        figure(m, "params_vs_rank", "Parameters against rank D."),
        figure(m, "singular_values",
               f"Singular values of the five hidden weights (seed 0); the dotted line is D = {D}."),
    ], train_seconds=sum(h["train_seconds"] for run in m["seeds"] for h in run["history"]))


def section_p2(m):
    acc, init, k = m["test_acc"], m["initial_test_acc"], m["rank"]
    req, g = m["required"]["test_acc"], m["goals"]["test_acc"]
    same_start = all(run["initial_test_acc"] == p1 for run, p1 in zip(m["seeds"], init["values"]))
    summary = [[f"P2 rank {k} fine-tuned", bound(req, pct, of=f"P1 rank {k}"), bound(g, percent), pm(acc),
                verdict(req), verdict(g)]]
    return Section(summary, [Text(
        f"## Problem 2: fine-tuning the rank-{k} network as two factors\n\n"
        "Each hidden layer becomes $x \\mapsto U_l (V_l^\\top x) + b_l$ with trainable "
        f"$U_l \\in \\mathbb{{R}}^{{m \\times {k}}}$ and $V_l \\in \\mathbb{{R}}^{{n \\times {k}}}$, initialised from "
        "P1's decomposition of the same baseline:\n\n"
        f"$$U_l \\leftarrow U_l[:, {{:}}{k}], \\qquad V_l^\\top \\leftarrow S_l[{{:}}{k}, {{:}}{k}]\\, "
        f"V_l[:, {{:}}{k}]^\\top,$$\n\n"
        f"so the network starts as exactly P1's rank-{k} network (the singular values are folded into $V$, "
        "not dropped; a test compares the logits in float64). $U$, $V$, the biases and the last layer are then "
        "trained by backprop; the epoch with the best validation accuracy is kept.\n\n"
        f"**Result** ({len(m['seeds'])} seeds, seed $k$ fine-tunes baseline $k$): test accuracy {pm(acc)}, up from "
        f"{pm(init)} before fine-tuning (P1 at $D = {k}$"
        f"{', identical for every seed' if same_start else ''}); the dense baseline has {pm(m['baseline_test_acc'])}. "
        f"Required: above P1's $D = {k}$: {verdict(req)}; {judged('goal', g, percent)} "
        "(the best public solution reports 97.99%).\n\n"
        f"**Parameters.** The factorized network stores {m['params']:,} numbers against the baseline's "
        f"{m['params_dense']:,} ({m['params_dense'] / m['params']:.1f}x fewer). P1 counts the same rank-{k} network "
        f"as {m['params_p1']:,}, with $S$ stored apart ({k} more numbers per hidden layer); folding $S$ into $V$ "
        "saves them."),
        figure(m, "finetune_curve", "Validation accuracy while fine-tuning the factors."),
    ], train_seconds=sum(run["train_seconds"] for run in m["seeds"]))


def section_p3(m, bench):
    acc, r = m["test_acc"], m["rank"]
    req_acc, req_err, g = m["required"]["test_acc"], m["required"]["tracking_error_ratio_max"], m["goals"]["test_acc"]
    g_step = bench["goals"]["amortized_ratio_to_plain"]
    methods = bench["methods"]
    # relative gaps between singular values r and r + 1, every layer of every seed
    gaps = {key: [(S[r - 1] - S[r]) / S[r - 1] for run in m["seeds"] for S in run[key]]
            for key in ("singular_values_before", "singular_values")}
    gap_before, gap_after = (statistics.median(gs) for gs in gaps.values())
    gap_min = min(gaps["singular_values"])
    names = [("plain", "plain dense step (no projection)"), ("exact", "P3, exact `torch.linalg.svd`"),
             ("lowrank", "P3, `torch.svd_lowrank`"), ("tracker", "P3, subspace tracker (this repo)"),
             ("no_oversampling", "P3, tracker without oversampling or refresh")]
    rows = []
    for key, label in names:
        method = methods[key]
        rows.append([label, f"{method['step_ms']:.1f}", f"{method['ratio_to_plain']:.2f}x",
                     f"{method['error_ratio_max']:.5f}" if "error_ratio_max" in method else "-",
                     pct(method["distance_max"], 1) if "distance_max" in method else "-"])
    t = methods["tracker"]
    seeds = len(m["seeds"])
    summary = [[f"P3 straight-through rank {r}", bound(req_acc, percent), bound(g, percent), pm(acc), verdict(req_acc),
                verdict(g)],
               ["P3 tracker error / optimal", bound(req_err), "", f"{req_err['measured']:.5f}", verdict(req_err), ""],
               ["P3 tracker step / plain step", "", bound(g_step, times), f"{g_step['measured']:.2f}x", "",
                verdict(g_step)]]
    return Section(summary, [Text(
        "## Problem 3: per-step SVD with a straight-through gradient\n\n"
        "The parameters are the dense $W_l$ (initialised from the baseline), but every forward pass uses the "
        f"rank-{r} projection of the current weight,\n\n"
        f"$$\\hat W_l = U_l[:, {{:}}{r}]\\, S_l[{{:}}{r}, {{:}}{r}]\\, V_l[:, {{:}}{r}]^\\top \\quad "
        "(W_l = U_l S_l V_l^\\top), "
        "\\qquad \\frac{\\partial \\mathcal{L}}{\\partial W_l} := "
        "\\frac{\\partial \\mathcal{L}}{\\partial \\hat W_l},$$\n\n"
        "i.e. the backward pass treats the projection as the identity (straight-through), through a custom "
        "`torch.autograd.Function`; a float64 test checks that $W$ receives exactly the gradient of a linear layer "
        f"with weight $\\hat W$. The network evaluated and reported is the rank-{r} one, built from the exact SVD of "
        f"the final weights ({m['params']:,} parameters).\n\n"
        f"**Result** ({seeds} seeds): test accuracy {pm(acc)}, from {pm(m['initial_test_acc'])} at the start "
        f"({judged('required', req_acc, percent)}; {judged('goal', g, percent)}; the "
        "best public solution reports 97.31%). "
        f"The dense $W$ underneath, used without the projection, scores {pm(m['dense_W_test_acc'])}: its tail is "
        "updated but never used in the forward pass. Straight-through training piles singular values up at the "
        f"rank boundary (figure below): directions just outside the top {r} receive gradient, grow until they enter "
        f"and push another one out. The relative gap $(s_{{{r}}} - s_{{{r + 1}}}) / s_{{{r}}}$ falls from "
        f"{gap_before:.2%} to {gap_after:.3%} (median over layers and seeds; the smallest after training is "
        f"{gap_min:.1e}), so which "
        "of the tied directions the final SVD keeps is decided by rounding: the same trained weights can give "
        f"rank-{r} networks a few test images apart when the SVD runs on a different number of CPU threads. "
        f"Hence the {seeds} seeds.\n\n"
        f"**Making \"SVD every iteration\" cheap.** A full SVD of a 1024 x 1024 matrix costs more than a whole plain "
        f"training step. Each layer instead tracks its top singular subspace: one subspace iteration per step, "
        f"warm-started from the previous step's basis, {bench['rank'] + bench['oversample']} vectors wide "
        f"({bench['oversample']} beyond the rank: the singular values around index {bench['rank']} are close "
        f"together), then a small SVD (Rayleigh-Ritz), and an exact SVD every {bench['refresh_every']} steps. The bar "
        f"is on the error ratio $\\|W - \\hat W\\|_F / \\|W - W_{{{r}}}\\|_F$ ($W_{{{r}}}$ the exact truncation; "
        f"{bound(req_err)}); the distance $\\|\\hat W - W_{{{r}}}\\|_F / \\|W_{{{r}}}\\|_F$ is stricter, since it "
        "also sees which of several nearly "
        f"equal directions were kept. During the P3 runs, checked at every epoch, the worst error ratio was "
        f"{req_err['measured']:.5f} ({verdict(req_err)}) and the worst distance "
        f"{pct(m['tracking_distance_max'], 1)}.\n\n"
        f"The benchmark (`benchmarks/p3_svd_step.py`, one run, methods interleaved, median of {bench['rounds']} "
        f"steps at batch {bench['batch_size']} on {bench['threads']} CPU thread(s); errors checked every "
        f"{bench['check_every']} steps over {bench['check_steps']} training steps):\n\n"
        + table(["method", "ms / step", "vs plain", "worst error ratio", f"worst distance to $W_{{{r}}}$"], rows) +
        f"\n\nWith the exact refresh amortised ({t['refresh_ms']:.0f} ms every {bench['refresh_every']} steps) the "
        f"tracker's step costs {t['amortized_step_ms']:.1f} ms, {g_step['measured']:.2f}x the plain "
        f"step ({judged('goal', g_step, times)}). It can be cheaper than "
        f"the plain step because the forward pass and the input gradient run through the rank-{r} factors; only "
        "$\\partial \\mathcal{L} / \\partial W = g^\\top x$ stays a dense product. Without oversampling the error "
        f"ratio still looks fine, but the kept subspace drifts far from the true top {r}."),
        figure(m, "finetune_curve", f"Validation accuracy of the rank-{r} network while training."),
        figure(m, "tracking_error", "The tracker's error ratio and distance, per epoch and layer."),
        figure(m, "singular_values", "Singular values before and after straight-through training."),
    ], train_seconds=sum(run["train_seconds"] for run in m["seeds"]))


def section_p4(m, bench):
    systems, diff, goals = m["v"]["systems"], m["gru_minus_fc_db"], m["goals"]
    names = [("noisy", "noisy input"), ("fc", "FC baseline (frame by frame)"), ("gru", "GRU (causal)"),
             ("oracle_ibm", "oracle IBM (true sources)")]
    req = m["required"]["gru_beats_fc"]
    g_rtf = bench["goals"]["rtf"]
    measure = {"rtf_cpu": "CPU time", "rtf_wall": "wall time"}[g_rtf["measure"]]
    db = lambda x: f"{x:g} dB"  # noqa: E731

    def stat(name, metric, digits=2):
        x = systems[name][metric]
        return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}"

    rows = [[label, stat(k, "snr_db"), f"{systems[k]['snr_db']['median']:.2f}", stat(k, "si_sdr_db"),
             stat(k, "stoi", 3), stat(k, "pesq")] for k, label in names]
    by = m["by_noise"]
    noise_rows = [[name] + [f"{by['snr_db'][k][i]:.2f}" for k, _ in names] + [f"{by['gru_minus_fc_db'][i]:+.2f}"]
                  for i, name in enumerate(by["noise"])]
    g, f = m["models"]["gru"], m["models"]["fc"]
    gc, fc = g["config"], f["config"]
    cases = bench["cases"]
    rtf_rows = [[label, f"{cases[k]['rtf_wall']:.4f}", f"{cases[k]['rtf_cpu']:.4f}"]
                for k, label in [("file_16k_mono_wav", "`denoise` of a 16 kHz mono wav"),
                                 ("file_44.1k_stereo_wav", "`denoise` of a 44.1 kHz stereo wav"),
                                 ("stream_16k_mono_1s_blocks", "streaming, 1 s blocks"),
                                 ("stream_16k_mono_0.1s_blocks", "streaming, 0.1 s blocks"),
                                 ("stage_gru", "of which the model")]]
    audio = [Audio(existing(m.file.parent / e["path"], m),
                   f"`{split}` {e['file']}: {e['kind']}" + (" (clean withheld)" * (split == "te")))
             for split in ("v", "te") for e in m["examples"][split]]
    summary = [["P4 GRU `v` SNR", bound(req, lambda x: f"{x:.2f} dB", of="FC"), bound(goals["gru_snr_db"], db),
                f"{systems['gru']['snr_db']['mean']:.2f} dB (FC {systems['fc']['snr_db']['mean']:.2f})", verdict(req),
                verdict(goals["gru_snr_db"])],
               ["P4 GRU - FC, `v` SNR (paired)", "", bound(goals["gru_minus_fc_db"], db),
                f"{diff['mean']:.2f} ± {diff['sem']:.2f} dB", "", verdict(goals["gru_minus_fc_db"])],
               ["P4 files where the GRU beats the FC", "", bound(goals["fraction_of_files_gru_better"], percent),
                pct(diff["fraction_gru_better"], 1), "", verdict(goals["fraction_of_files_gru_better"])],
               ["P4 noise types where the GRU beats the FC", "", bound(goals["noise_types_gru_better"]),
                f"{goals['noise_types_gru_better']['measured']:g}", "", verdict(goals["noise_types_gru_better"])],
               ["P4 STOI and PESQ: GRU > FC > noisy", "", "all four differences > 0",
                ", ".join(f"{goals[k]['measured']:+.3f}" for k in ("stoi_gru_over_fc", "stoi_fc_over_noisy",
                                                                   "pesq_gru_over_fc", "pesq_fc_over_noisy")), "",
                "**met**" if all(goals[k]["met"] for k in ("stoi_gru_over_fc", "stoi_fc_over_noisy",
                                                           "pesq_gru_over_fc", "pesq_fc_over_noisy")) else
                "**not met**"],
               [f"P4 `denoise` real-time factor ({measure})", "", bound(g_rtf), f"{g_rtf['measured']:.4f}", "",
                verdict(g_rtf)]]
    ablation = m["ablation"]
    if ablation is None:
        ablation_text = ("No ablation was run for this data and seed (`python p4_denoise.py --ablation` trains "
                         "each variant and writes `results/p4/ablation.json`, which the next main run reports).")
    else:
        base = {r["kind"]: r["v_snr_db"]["mean"] for r in ablation["rows"] if r["name"] == r["kind"]}
        ablation_text = (
            "**What each choice is worth** (`python p4_denoise.py --ablation`: each row changes one thing of the "
            f"main run's recipe and trains with the same seed, {ablation['seed']}; one run each, so differences "
            "of a tenth of a dB are within noise):\n\n"
            + table(["variant", "model", "`v` SNR (dB)", "vs the main run's model"],
                    [[r["what"], r["kind"].upper(), f"{r['v_snr_db']['mean']:.2f}",
                      "-" if r["name"] == r["kind"] else f"{r['v_snr_db']['mean'] - base[r['kind']]:+.2f}"]
                     for r in ablation["rows"]]))
    return Section(summary, [Text(
        "## Problem 4: a recurrent speech denoiser\n\n"
        "A mixture $x = s + n$ becomes its STFT $X$ (1024-point Hann window, hop 512: 513 bins per frame). The "
        "target is the ideal binary mask $M_{f,t} = 1$ where $|S_{f,t}| > |N_{f,t}|$, else 0. A model reads the "
        "magnitudes frame by frame and predicts $\\hat M_{:,t} \\in [0, 1]^{513}$; the speech estimate is "
        "$\\hat s = \\mathrm{iSTFT}(\\hat M \\odot X)$ and the score is "
        "$\\mathrm{SNR} = 10 \\log_{10} \\big(\\sum_t s_t^2 / \\sum_t (s_t - \\hat s_t)^2\\big)$, averaged over "
        f"the {m['v']['files']} validation (`v`) files, with SI-SDR, STOI and wideband PESQ beside it.\n\n"
        "**The two models differ by memory.** The FC baseline sees the current frame only: "
        f"{fc['model']['layers']} hidden layers of {fc['model']['hidden']} on the standardised log spectrum "
        f"$z_t$ ({f['params']:,} parameters). The GRU is causal, the mask at frame $t$ from frames $1..t$ "
        "(the homework's equation 12): beside $z_t$ it reads $z_t - \\mu_t$, the frame's distance from the running "
        f"mean $\\mu_t = \\sum_{{k \\le t}} a^{{t-k}} z_k / \\sum_{{k \\le t}} a^{{t-k}}$ "
        f"($a = {gc['model']['alpha']}$, a time constant of {1 / (1 - gc['model']['alpha']):.0f} frames; where the "
        "noise is steady, $\\mu_t$ is mostly the noise), projects both to "
        f"$x_t = \\mathrm{{ReLU}}(\\mathrm{{LayerNorm}}(W_p [z_t, z_t - \\mu_t]))$ of width {gc['model']['proj']}, "
        f"and runs $h_t = \\mathrm{{GRU}}(h_{{t-1}}, x_t)$ with {gc['model']['hidden']} units; "
        "$\\hat M_{:,t} = \\mathrm{sigmoid}(W_o h_t + W_s x_t + b)$ "
        f"({g['params']:,} parameters). Both live in `common/denoiser.py`, the module the `denoise` command runs.\n\n"
        "**Training.** The same loss and mixtures for both: binary cross-entropy against the IBM, each bin weighted "
        "by $|X|$ (the loud bins are the ones the SNR counts), on mixtures made anew at every step: each of the "
        f"{m['data']['distinct_training_sentences']} distinct training sentences (the "
        f"{m['data']['files']['tr']} training files hold each one under several noises), cut into windows, each "
        f"window used {gc['repeats']} times per epoch with a random stretch of one of the "
        f"{m['data']['noise_recordings']} training noise recordings at a random SNR in [-5, 5] dB, half of them "
        "band-limited. Each model has its own best width, window length and learning rate within about the same "
        f"training time: GRU {gc['epochs']} epochs of {gc['crop']}-frame windows at learning rate {gc['lr']:g} "
        f"({minutes(g['train_seconds'])}, best epoch {g['best_epoch']}); FC {fc['epochs']} epochs of "
        f"{fc['crop']}-frame windows at {fc['lr']:g} ({minutes(f['train_seconds'])}, best epoch {f['best_epoch']}). "
        "The epoch kept is the one with the best `v` SNR (so `v` also selects the epoch; the homework has no "
        "other labelled split).\n\n"
        "**Result** on `v` (mean ± standard deviation over files):\n\n"
        + table(["", "SNR (dB)", "median SNR", "SI-SDR (dB)", "STOI", "PESQ (wb)"], rows) +
        f"\n\nThe GRU beats the FC by {diff['mean']:.2f} ± {diff['sem']:.2f} dB (paired per file, mean ± standard "
        f"error), on {diff['files_gru_better']} of {diff['files']} files "
        f"({judged('goal', goals['fraction_of_files_gru_better'], percent)}) and on "
        f"{goals['noise_types_gru_better']['measured']:g} of {len(by['noise'])} kinds of noise. Required, the RNN "
        f"beats the FC: {verdict(req)}. Goals: GRU {bound(goals['gru_snr_db'], db)}: "
        f"{verdict(goals['gru_snr_db'])}; GRU - FC {bound(goals['gru_minus_fc_db'], db)}: "
        f"{verdict(goals['gru_minus_fc_db'])}. The oracle IBM, the ceiling of binary masking, reaches "
        f"{systems['oracle_ibm']['snr_db']['mean']:.2f} dB. By kind of noise (mean SNR in dB):\n\n"
        + table(["noise", "noisy", "FC", "GRU", "oracle IBM", "GRU - FC"], noise_rows) +
        "\n\n" + ablation_text + "\n\n"
        "**The `denoise` command** (`python p4_denoise.py denoise IN.wav OUT.wav`, or "
        "`denoise IN... --out-dir DIR` for many files and folders with one model load) uses the committed model "
        f"`{m['model_file']}`: any sample rate (resampled to 16 kHz and back), stereo mixed to mono, any length "
        "streamed in blocks that carry the model's state and the STFT overlap (a test checks that the result equals "
        "the whole-file one), every input sample checked, written atomically. Real-time factor (processing time / "
        f"audio duration, one CPU thread, median of {bench['repeats']} runs on {bench['audio_seconds']:.0f} s of "
        f"audio, `benchmarks/p4_realtime.py`; goal {bound(g_rtf)} for the first row, judged on {measure}: "
        f"{verdict(g_rtf)}):\n\n"
        + table(["case", "real-time factor (wall)", "real-time factor (CPU)"], rtf_rows) +
        f"\n\nThe {m['te_output']['files']} denoised test mixtures are written by that command "
        f"(`{m['te_output']['command']}`) and zipped as `{m['te_output']['zip']}` for hand-in; they are rebuilt "
        "from the committed model in seconds."),
        figure(m, "training_curves", "Training loss and `v` SNR per epoch, GRU and FC."),
        figure(m, "snr_histogram", "SNR over the `v` files: noisy, FC, GRU, oracle IBM."),
        figure(m, "snr_gain_vs_input", "SNR gain (output SNR - input SNR) against the input SNR, per `v` file."),
        figure(m, "snr_by_noise", "`v` SNR by kind of noise."),
        figure(m, "spectrograms", "One `v` file: noisy, clean, ideal mask, predicted mask, denoised."),
        Text("Listen (report.html and report.ipynb embed the players; report.md links the files):"),
    ] + audio, train_seconds=sum(model["train_seconds"] for model in m["models"].values()))


def section_p5(m):
    tf, d, goals = m["teacher_forced_mse"], m["drawing"], m["goals"]
    sampler, c, sc = m["sampler"], m["config"], m["sampler"]["config"]
    k = sampler["samples_per_image"]
    n_examples = len(m["examples"]["indices"])
    names = [("lstm", "MSE drawer (the homework's LSTM)"), ("sampler", f"sampling drawer ({k} samples each)"),
             ("nearest_neighbour", "nearest neighbour (top half, L2)"), ("mean_bottom", "mean bottom half"),
             ("original", "original (no drawing)")]
    rows = [[label, f"{d['test'][n]['bottom_mse']:.4f}", f"{d['test'][n]['best_of_k_bottom_mse']:.4f}",
             pct(d["test"][n]["class_kept"], 1), f"{d['test'][n]['sharpness']:.3f}", f"{d['test'][n]['ink']:.3f}",
             f"{d['examples'][n]['bottom_mse']:.4f}", pct(d["examples"][n]["class_kept"], 0)] for n, label in names]
    per_digit = [["MSE drawer"] + [pct(v, 1) for v in m["class_kept_per_digit"].values()],
                 ["sampling drawer"] + [pct(v, 1) for v in m["sampler_class_kept_per_digit"].values()]]
    lstm, samples = d["test"]["lstm"], d["test"]["sampler"]
    amb = m["ambiguous"]
    g = {key: goals[key] for key in ("teacher_forced_test_mse", "mse_drawer_class_kept", "sampler_class_kept",
                                     "sampler_best_of_k_below_mse_drawer", "sampler_sharpness_closer_to_originals",
                                     "lstm_mse_over_best_reference")}
    summary = [["P5 teacher-forced test MSE (MSE drawer)", "", bound(g["teacher_forced_test_mse"]), f"{tf['test']:.4f}",
                "", verdict(g["teacher_forced_test_mse"])],
               ["P5 MSE drawer's completions keep their class (test)", "",
                bound(g["mse_drawer_class_kept"], percent), pct(lstm["class_kept"], 1), "",
                verdict(g["mse_drawer_class_kept"])],
               ["P5 sampled completions keep their class (test)", "", bound(g["sampler_class_kept"], percent),
                pct(samples["class_kept"], 1), "", verdict(g["sampler_class_kept"])],
               [f"P5 best-of-{k} sampled bottom-half MSE (test)", "",
                bound(g["sampler_best_of_k_below_mse_drawer"], lambda x: f"{x:.4f}", of="the MSE drawer's"),
                f"{samples['best_of_k_bottom_mse']:.4f}", "", verdict(g["sampler_best_of_k_below_mse_drawer"])],
               ["P5 sharpness: samples' distance from the originals'", "",
                bound(g["sampler_sharpness_closer_to_originals"], lambda x: f"{x:.3f}", of="the MSE drawer's"),
                f"{g['sampler_sharpness_closer_to_originals']['measured']:.3f}", "",
                verdict(g["sampler_sharpness_closer_to_originals"])],
               ["P5 MSE drawer's bottom-half MSE / the better reference's (worst split)", "",
                bound(g["lstm_mse_over_best_reference"]), f"{g['lstm_mse_over_best_reference']['measured']:.2f}", "",
                verdict(g["lstm_mse_over_best_reference"])]]
    if m["budget"] is not None:
        summary.append(["P5 run that trains both drawers", "", bound(m["budget"], lambda s: f"{s / 60:g} min"),
                        minutes(m["budget"]["measured"]), "", verdict(m["budget"])])
    ablation = m["ablation"]
    if ablation is None:
        ablation_text = ("No ablation was run for these settings (`python p5_draw.py --ablation` trains each "
                         "variant and writes `results/p5/ablation.json`, which the next run reports).")
    else:
        ablation_text = (
            "**What each change is worth** (`python p5_draw.py --ablation`: from the homework's LSTM to the MSE "
            f"drawer above, one change per row, each row keeping the ones above it, every row trained for "
            f"{ablation['epochs']} epochs with the same seed; one run each):\n\n"
            + table(["change", "parameters", "best validation MSE", "vs the row above", "training time"],
                    [[r["change"], f"{r['params']:,}", f"{r['val_mse']:.4f}",
                      "-" if r["val_mse_change"] is None else f"{r['val_mse_change']:+.4f}",
                      minutes(r["train_seconds"])] for r in ablation["rows"]]))
    return Section(summary, [Text(
        "## Problem 5: LSTMs that draw the bottom half of digits\n\n"
        "Each 28 x 28 image becomes a sequence $X_1..X_{16}$ of 7 x 7 patches (rows of patches, top-left to "
        "bottom-right, 49 values each). An LSTM reads the patches and a head predicts the next one. To draw, a "
        "drawer reads $X_1..X_8$ (the top half), which predicts $X_9$, then runs 7 single steps, each fed its own "
        "previous patch; the given top half is kept exactly. Two drawers share the recurrent structure:\n\n"
        "- **The MSE drawer** (the homework's model): $Y_t = \\mathrm{sigmoid}(\\mathrm{head}(h_t)) \\approx "
        "X_{t+1}$, trained with teacher forcing on "
        "$\\mathcal{L} = \\frac{1}{15 \\cdot 49} \\sum_{t=1}^{15} \\|Y_t - X_{t+1}\\|^2$. "
        "What minimises this loss is the average of the plausible next patches, so its drawings are blurry.\n"
        f"- **The sampling drawer**: its head gives a mixture of {sc['components']} patches of independent "
        "Bernoulli pixels, $p(x) = \\sum_k w_k \\prod_i p_{ki}^{x_i} (1 - p_{ki})^{1 - x_i}$, trained by "
        "likelihood with teacher forcing; it draws by picking a component per patch and taking its pixel "
        "probabilities. A component is one coherent stroke, so a drawing commits to one plausible digit.\n\n"
        f"**Model.** One recurrent structure for both: {c['layers']} x {c['hidden']} LSTM units reading each patch "
        + ("beside the one-hot of its position (patch 4 to 5 jumps to the next row; told where it is, the LSTM "
           "need not count), " if c["position"] else "") +
        (f"and a head with a hidden layer of {c['head_hidden']} ReLU units" if c["head_hidden"] else
         "and a linear head") +
        (" that also sees the next patch's already drawn neighbours (left, above, above-right)" if c["neighbours"]
         else "") +
        f" ({m['params']:,} parameters; the sampling drawer {sampler['params']:,}). Adam with a cosine schedule "
        f"from {c['lr']:g}, batch {c['batch_size']}, up to {c['epochs']} epochs (the sampling drawer "
        f"{sc['epochs']}) with early stopping (patience {c['patience']}) on the validation score; "
        f"{c['train_size']:,} training images and {c['val_size']:,} for validation (the homework validates on the "
        f"test set; here the test set only gives the numbers below). Best epochs: {m['best_epoch']} of "
        f"{m['epochs_trained']} (MSE drawer), {sampler['best_epoch']} of {sampler['epochs_trained']} (sampling "
        "drawer).\n\n"
        f"**Result.** Teacher-forced MSE per pixel of the MSE drawer: {tf['val']:.4f} on validation, "
        f"{tf['test']:.4f} on test ({judged('goal', g['teacher_forced_test_mse'])}; the one public solution "
        f"reports 0.0287 on validation). The sampling drawer's teacher-forced test NLL is "
        f"{sampler['teacher_forced']['test_nll']:.1f} nats per patch, and the MSE of its mixture's mean "
        f"{sampler['teacher_forced']['test_mse_of_mean']:.4f}. Completions of the whole test set, scored against "
        "the originals' bottom halves and by P1's seed-0 baseline classifier (class kept = it still gives the true "
        f"label). Best-of-{k}: the closest of the {k} samples per image (the usual score for a prediction with "
        "several right answers; the single-answer rows have one). Sharpness: the share of bottom-half pixels "
        "within 0.1 of 0 or 1. MNIST's strokes are nearly binary, an average of strokes is gray, so a "
        "drawing as sharp as the originals is one that commits (read it beside class kept and ink, the mean pixel: "
        "a blank drawing would be sharp too):\n\n"
        + table(["completion", "bottom-half MSE", f"best-of-{k} MSE", "class kept", "sharpness", "ink",
                 f"bottom-half MSE ({n_examples})", f"class kept ({n_examples})"], rows) +
        "\n\nClass kept per digit (whole test set; the sampling drawer over all its samples):\n\n"
        + table(["drawer"] + [str(i) for i in m["class_kept_per_digit"]], per_digit) +
        f"\n\n**Ambiguous top halves.** The {len(amb['indices'])} test top halves whose 20 nearest training top "
        "halves disagree most about the digit; for each, the samples' classes by P1's classifier: "
        + "; ".join(f"digit {label}: {', '.join(map(str, p))}" for label, p in zip(amb["labels"],
                                                                                 amb["sampler_predicted"]))
        + f" (distinct classes per image: {', '.join(map(str, amb['sampler_classes_per_image']))}; the MSE "
        f"drawer gives one completion each: {', '.join(map(str, amb['lstm_predicted']))}).\n\n" + ablation_text),
        figure(m, "side_by_side", "Originals, the MSE drawer's completions, one sample of the sampling drawer, "
               "nearest-neighbour and mean bottom halves; red: class changed."),
        figure(m, "completions", "The MSE drawer's 100 completions, a row per digit."),
        figure(m, "samples", "One sample of the sampling drawer for each of the same 100 top halves."),
        figure(m, "ambiguous", "Ambiguous top halves: the original, the MSE drawer's completion and 8 samples each."),
        figure(m, "originals", "The 100 original test digits."),
        figure(m, "learning_curve", "Validation scores while training."),
        figure(m, "mse_per_patch", "The MSE drawer's teacher-forced test MSE of each predicted patch."),
    ], train_seconds=sum(h["train_seconds"] for h in m["history"] + m["sampler"]["history"]))


# ----------------------------------------------------------------------------- the report

def build(results=ROOT / "results", out=ROOT, dry_run=False):
    """(markdown, notebook, html) of the report on the results under `results`, linking figures from `out`.

    The report in reading order. To add a section: write a function beside section_p1 that reads its result
    files (load_results' keys) and returns a Section, and add it to `sections` below; the summary table and the
    timing table pick it up from there."""
    m = load_results(results, dry_run)
    sections = {"p1": read(section_p1, m["p1"]),
                "p2": read(section_p2, m["p2"]),
                "p3": read(section_p3, m["p3"], m["p3/benchmark"]),
                "p4": read(section_p4, m["p4"], m["p4/benchmark"]),
                "p5": read(section_p5, m["p5"])}
    wall = read(lambda *files: sum(f["wall_seconds"] for f in files), *m.values())
    pipeline = goal(wall, at_most=60 * PIPELINE_GOAL_MINUTES)
    blocks = (section_intro() + section_summary(sections, pipeline) + [b for s in sections.values() for b in s.blocks]
              + read(lambda *files: section_timing(sections, m, pipeline), *m.values()))
    return to_markdown(blocks, out), to_notebook(blocks, out), to_html(blocks)


# ----------------------------------------------------------------------------- writers

def link(path, out):
    """`path` relative to the report's folder, with forward slashes (as markdown and notebooks want)."""
    return Path(os.path.relpath(path, out)).as_posix()


def to_markdown(blocks, out):
    parts = []
    for b in blocks:
        if isinstance(b, Text):
            parts.append(b.markdown)
        elif isinstance(b, Figure):
            parts.append(f"![{b.caption}]({link(b.path, out)})\n*{b.caption}*")
        elif isinstance(b, Audio):  # a list of links, one line each
            item = f"- [{b.label}]({link(b.path, out)})"
            if parts and parts[-1].startswith("- ["):
                parts[-1] += "\n" + item
            else:
                parts.append(item)
    return "\n\n".join(parts) + "\n"


def data_uri(path):
    # fixed, not mimetypes.guess_type: that reads the machine's /etc/mime.types (audio/x-wav on some)
    mime = {".wav": "audio/wav", ".png": "image/png"}[path.suffix]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def to_notebook(blocks, out):
    """Markdown cells for the text; figures and audio as embedded outputs of small display cells."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    cells = []
    for b in blocks:
        if isinstance(b, Text):
            cells.append(new_markdown_cell(b.markdown))
        elif isinstance(b, Figure):
            png = base64.b64encode(b.path.read_bytes()).decode()
            cells.append(new_code_cell(
                f"Image(filename={link(b.path, out)!r})  # {b.caption}",
                outputs=[new_output("display_data", data={"image/png": png, "text/plain": b.caption})]))
        elif isinstance(b, Audio):
            player = f'<p>{b.label}</p><audio controls src="{data_uri(b.path)}"></audio>'
            cells.append(new_code_cell(
                f"Audio(filename={link(b.path, out)!r})  # {b.label}",
                outputs=[new_output("display_data", data={"text/html": player, "text/plain": b.label})]))
    cells.insert(1, new_code_cell("from IPython.display import Audio, Image"))
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i}"  # nbformat draws random ids; fixed ones keep a rebuilt report's diff to what changed
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.validate(nb)
    return nb


MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.S)  # display, inline

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1, h2 { line-height: 1.2; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; } th { background: #f4f4f4; }
code { background: #f4f4f4; padding: 0 0.2em; border-radius: 3px; font-size: 0.9em; }
math { font-family: "STIX Two Math", "Cambria Math", "Latin Modern Math", "DejaVu Math TeX Gyre", math;
       font-size: 1.1em; }  /* fonts the reader has: macOS, Windows, TeX, most Linux */
math[display="block"] { margin: 1rem 0; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; } figcaption { color: #555; font-style: italic; }
figure.audio { margin: 0.5rem 0; display: flex; gap: 1rem; align-items: center; }
figure.audio figcaption { min-width: 22rem; }
"""


def to_html(blocks):
    """One self-contained page: markdown by mistune, math as MathML (latex2mathml), figures and audio as data:
    URIs. No script, stylesheet or font is fetched, and no code is shown."""
    import mistune
    from latex2mathml.converter import convert

    markdown = mistune.create_markdown(plugins=["table"])

    def rendered(text):
        maths = []

        def stash(match):  # math out of markdown's way: its _ and * are not emphasis
            maths.append(convert(match[1] or match[2], display="block" if match[1] else "inline"))
            return f"MATH{len(maths) - 1}MATH"

        return re.sub(r"MATH(\d+)MATH", lambda mt: maths[int(mt[1])], markdown(MATH.sub(stash, text)))

    def inline(text):
        return rendered(text).strip().removeprefix("<p>").removesuffix("</p>")

    body = []
    for b in blocks:
        if isinstance(b, Text):
            body.append(rendered(b.markdown))
        elif isinstance(b, Figure):
            body.append(f'<figure><img src="{data_uri(b.path)}" alt="{html.escape(b.caption.replace("`", ""))}">'
                        f"<figcaption>{inline(b.caption)}</figcaption></figure>")
        elif isinstance(b, Audio):
            body.append(f'<figure class="audio"><figcaption>{inline(b.label)}</figcaption>'
                        f'<audio controls preload="auto" src="{data_uri(b.path)}"></audio></figure>')
    title = html.escape(blocks[0].markdown.splitlines()[0].lstrip("# "))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=None,
                   help="folder holding p1/ .. p5/ (default: results, or runs/dry-run with --dry-run)")
    p.add_argument("--out", type=Path, default=None, help="where report.md, report.ipynb and report.html go "
                   "(default: the repository root, or runs/dry-run/report with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="accept the scripts' --dry-run results, to check the builder in seconds")
    args = p.parse_args(argv)
    results = args.results or ROOT / ("runs/dry-run" if args.dry_run else "results")
    out = args.out or (ROOT / "runs/dry-run/report" if args.dry_run else ROOT)
    import nbformat
    markdown, nb, page = build(results, out, args.dry_run)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown)
    with atomic_path(out / "report.ipynb") as tmp:
        nbformat.write(nb, str(tmp))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page)
    print(f"wrote {shown_path(out / 'report.md')}, report.ipynb and report.html")


if __name__ == "__main__":
    run_cli(main)
