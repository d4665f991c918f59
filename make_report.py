"""Build the hand-in, report.ipynb (and report.html, report.md), from results/ and the repository's own code.

Per problem: the method and its math, the code that implements it, the decisive table and figure, and what they
mean against the homework's expectation; then a summary of the homework's requirements and, apart, the project's
own targets (common/report_summary.py); everything else closes the report under "Beyond the homework"
(common/report_beyond.py).

No measured number, bar or verdict is typed here: each is read from a metrics.json or benchmark.json that the
scripts wrote (`required` and `goals`: the value judged, its bound and the verdict, see common.goals), with the
paths of their figures. The code shown is found by name in its file when the report is built (CODE below), so
it is the code that ran; a name that moved is a build error. The numbers typed below are the homework's own
definitions in the equations and the references quoted in the prose.

    python make_report.py              # after the five scripts; `make all` runs it last
    python make_report.py --dry-run    # from the scripts' --dry-run outputs (runs/dry-run/), to check the builder

To add a section (a benchmark's results, say): add its result file to SCRIPTS (the key "bench/train_step" reads
results/bench/train_step.json), write a function in common/report_beyond.py that takes its metrics and returns
blocks (Text, Code, Figure, Figures, Listening: common/report_blocks.py), and add one line to `build` below; its
goals join the targets table by themselves when their keys are in common/goals.py.

The three files (common/report_render.py): report.md for readers of the repo (math as $...$, figures linked);
report.ipynb, whose cells run top to bottom in a fresh kernel from the repository root and whose stored outputs are
what they produce; report.html, one self-contained page (MathML, embedded figures and audio, no script).
"""
from pathlib import Path

from common.report import beyond
from common.cli import ArgumentParser, run_cli
from common.files import ROOT, atomic_path, shown_path
from common.goals import target
from common.report.blocks import Figures, Text, bound, pct, percent, pm, table
from common.report.handin import te_files, write_te_zip
from common.report.render import to_html, to_markdown, to_notebook
from common.report.results import figure, load_results, read
from common.report.source import code
from common.report.summary import summary

# every result the report reads, and the command that writes it
SCRIPTS = {"p1": "p1_svd.py", "p2": "p2_factorized.py", "p3": "p3_svd_ste.py", "p4": "p4_denoise.py",
           "p5": "p5_draw.py", "p3/benchmark": "benchmarks/p3_svd_step.py", "p4/benchmark": "benchmarks/p4_realtime.py",
           "bench/rank_forward": "benchmarks/rank_forward.py", "bench/train_step": "benchmarks/train_step.py"}

# the code each problem shows, (file, name) as the repository has it today: a name that moves is fixed here only
CODE = {"p1": [("p1_svd.py", "truncate"), ("p1_svd.py", "LowRankLinear"), ("p1_svd.py", "compress"),
               ("p1_svd.py", "BaselineLoss")],
        "p2": [("p2_factorized.py", "FactorizedLinear")],
        "p3": [("p3_svd_ste.py", "LowRankSTE")],
        "p4": [("p4_denoise.py", "ideal_binary_mask"), ("p4_denoise.py", "GRUMasker.forward")],
        "p5": [("p5_draw.py", "draw")]}

# ----------------------------------------------------------------------------- the homework, problem by problem

def said(requirement):
    """A requirement's verdict in the prose ("not met" is the summary's word, in its table only)."""
    return "met" if requirement["met"] else "missed"


def intro():
    return [Text(
        "# Homework 3: compression, custom gradients, recurrent denoising and drawing\n\n"
        "For each problem: the method and its math, the code that implements it, the decisive result and what it "
        "means against the homework's expectation. The code cells are the repository's own source, copied by name "
        "from its files when this report is built (so it is the code that ran), and they run: the notebook executes "
        "top to bottom in a fresh kernel started at the repository root. Every number, bar and verdict is read from "
        "`results/pN/metrics.json`, written by the committed scripts; `python make_report.py` rebuilds the report "
        "and a test checks that it matches them. What goes beyond the homework (ablations, benchmarks, timing) "
        "closes the report.\n\n"
        "**Model selection.** P1, P2, P3 and P5 pick their epoch on a validation split carved from MNIST's training "
        "images and use the test set for the final numbers only. P4 picks its epoch on `v` and reports `v`; its "
        "untouched test set is `te`, whose clean sources are withheld: it is denoised and handed in.")]


def section_p1(m):
    r, base = m["ranks"], m["baseline_test_acc"]
    req = m["required"]["baseline_test_acc"]
    ranks = [d for d in r if d != "dense"]
    rows = [["dense (baseline)", f"{r['dense']['params']:,}", "1.0x", pm(base)]]
    rows += [[d, f"{r[d]['params']:,}", f"{1 / r[d]['params_ratio']:.1f}x", pm(r[d]["test_acc"])] for d in ranks]
    numeric = [d for d in ranks if d != "full"]  # ascending
    near = [base["mean"] - r[d]["test_acc"]["mean"] <= 0.002 for d in numeric]  # within 0.2 points
    first = next((i for i in range(len(numeric)) if all(near[i:])), len(numeric))
    fall = [f"from $D = {numeric[first]}$ on, it is within 0.2 points of the baseline with "
            f"{1 / r[numeric[first]]['params_ratio']:.1f}x fewer parameters"] if first < len(numeric) else []
    fall += [f"at $D = {d}$ it keeps {pm(r[d]['test_acc'])}" for d in reversed(numeric[:first])]
    h, rec = m["seeds"][0]["history"], m["recipe"]
    return [Text(
        "## Problem 1: SVD compression of a 5 x 1024 MNIST classifier\n\n"
        "The baseline is $f(x) = W_6\\,\\sigma(W_5 \\cdots \\sigma(W_1 x + b_1) \\cdots + b_5) + b_6$ with "
        "$W_1 \\in \\mathbb{R}^{1024\\times 784}$, $W_2..W_5 \\in \\mathbb{R}^{1024\\times 1024}$ and ReLU $\\sigma$. "
        "Each hidden weight is decomposed once, $W_l = U_l S_l V_l^\\top$ (`torch.linalg.svd`), and the rank-$D$ "
        "network uses\n\n"
        "$$\\hat W_l = U_l[:, {:}D]\\; S_l[{:}D, {:}D]\\; V_l[:, {:}D]^\\top, \\qquad "
        "\\|W_l - \\hat W_l\\|_F = \\Big(\\sum_{i > D} s_{l,i}^2\\Big)^{1/2},$$\n\n"
        "the best rank-$D$ approximation (Eckart-Young). It is computed the cheap way, "
        "$x \\mapsto U_l\\,(S_l\\,(V_l^\\top x))$, and stores $D\\,(m + n + 1)$ numbers per $m \\times n$ layer "
        "instead of $mn$; biases and $W_6$ stay dense. The SVD is computed once per layer and sliced for every "
        "$D$ (`truncate`); `compress` rebuilds the network with `LowRankLinear` layers:"),
        *[code(f, n) for f, n in CODE["p1"][:3]],
        Text(
        f"**Training.** AdamW with a one-cycle learning-rate schedule and dropout, {h[-1]['epoch']} epochs on "
        f"{m['train_size']:,} training images; the epoch with the best validation accuracy is kept. "
        f"{len(m['seeds'])} seeds (mean ± standard deviation over seeds). The homework lets the baseline use any "
        "technique taught, and this one is trained to be compressible as well as accurate: each training digit is "
        f"moved by a random offset of up to {rec['shift']} pixel{'s' * (rec['shift'] != 1)} each way (accuracy), and "
        f"a spectral-tail decay $\\frac{{\\lambda}}{{2}}\\sum_l \\|W_l - U_l U_l^\\top W_l V_l V_l^\\top\\|_F^2$ "
        f"($\\lambda = {rec['tail_decay']:g}$), with $U_l, V_l$ the top-{rec['tail_rank']} singular vectors of $W_l$ "
        f"recomputed every {rec['refresh']} steps, shrinks the energy the rank-{rec['tail_rank']} network drops:"),
        *[code(f, n) for f, n in CODE["p1"][3:]],
        *p1_ablation(m),
        Text(
        f"**Result.** The baseline's test accuracy is {pm(base)} (the homework asks for {bound(req, percent)}: "
        f"{said(req)}). Rebuilt at rank $D$:\n\n"
        + table(["D", "parameters", "fewer than dense", "test accuracy"], rows)),
        figure(m, "accuracy_vs_rank", "Test accuracy against the rank D."),
        Text(
        f"As the homework expects, accuracy falls as $D$ shrinks, and at full rank the rebuilt network is the "
        f"baseline itself ({pm(r['full']['test_acc'])}; stored as three factors it then costs "
        f"{r['full']['params']:,} numbers, more than the dense {r['dense']['params']:,}). "
        + "; ".join(fall)[:1].upper() + "; ".join(fall)[1:] +
        ". The singular values of the trained weights are in Beyond the homework.")]


def p1_ablation(m):
    """The recipe's ablation (python p1_svd.py --ablation), when metrics.json has one."""
    if not m.get("ablation"):
        return [Text("*The recipe's ablation has not been run (`python p1_svd.py --ablation`).*")]
    rows = [[row["what"], pct(row["baseline_test_acc"]), pct(row["rank_test_acc"]["20"]),
             pct(row["rank_test_acc"]["50"]) if "50" in row["rank_test_acc"] else "-", str(row["best_epoch"])]
            for row in m["ablation"]["rows"]]
    return [Text(
        "What each part of the recipe does (seed 0, the same schedule; the last row is the main run's seed 0). The "
        "shifts and the decay pull in opposite directions on their own; together they give both:\n\n"
        + table(["recipe", "baseline test accuracy", "rank 20", "rank 50", "best epoch"], rows, align="lrrrr"))]


def section_p2(m):
    acc, init, k = m["test_acc"], m["initial_test_acc"], m["rank"]
    req = m["required"]["test_acc"]
    same_start = all(run["initial_test_acc"] == p1 for run, p1 in zip(m["seeds"], init["values"]))
    rows = [[f"P1's rank-{k} network (where P2 starts)", pm(init), f"{m['params_p1']:,}"],
            [f"P2: the rank-{k} factors, fine-tuned", pm(acc), f"{m['params']:,}"],
            ["dense baseline", pm(m["baseline_test_acc"]), f"{m['params_dense']:,}"]]
    return [Text(
        f"## Problem 2: fine-tuning the rank-{k} network as two factors\n\n"
        "Each hidden layer becomes $x \\mapsto U_l (V_l^\\top x) + b_l$ with trainable "
        f"$U_l \\in \\mathbb{{R}}^{{m \\times {k}}}$ and $V_l \\in \\mathbb{{R}}^{{n \\times {k}}}$, initialised from "
        "P1's decomposition of the same baseline:\n\n"
        f"$$U_l \\leftarrow U_l[:, {{:}}{k}], \\qquad V_l^\\top \\leftarrow S_l[{{:}}{k}, {{:}}{k}]\\, "
        f"V_l[:, {{:}}{k}]^\\top,$$\n\n"
        f"so the network starts as exactly P1's rank-{k} network: the singular values are folded into $V$, not "
        "dropped (`from_svd`; a test compares the logits in float64). $U$, $V$, the biases and the last layer are "
        "then trained by backprop; the epoch with the best validation accuracy is kept."),
        *[code(f, n) for f, n in CODE["p2"]],
        Text(
        f"**Result** ({len(m['seeds'])} seeds; seed $k$ fine-tunes baseline $k$"
        f"{', and every seed starts from exactly its P1 network' if same_start else ''}):\n\n"
        + table(["network", "test accuracy", "parameters"], rows) +
        f"\n\n(P1 stores $S$ apart, {k} more numbers per hidden layer; folding it into $V$ saves them.)"),
        figure(m, "finetune_curve", "Validation accuracy while fine-tuning the factors; epoch 0 is P1's network."),
        Text(
        f"The homework asks that fine-tuning improve on P1's rank-{k} network ({said(req)}): it moves the test "
        f"accuracy by {100 * (acc['mean'] - init['mean']):+.2f} points, and ends "
        f"{100 * abs(m['baseline_test_acc']['mean'] - acc['mean']):.2f} points "
        f"{'below' if acc['mean'] < m['baseline_test_acc']['mean'] else 'above'} the dense baseline with "
        f"{m['params_dense'] / m['params']:.1f}x fewer parameters. Truncation lost accuracy because the other layers "
        "were trained for the full weights; a few epochs of training let them adapt to the rank-"
        f"{k} ones (the best public solution we know reports 97.99%).")]


def section_p3(m):
    acc, r, seeds = m["test_acc"], m["rank"], len(m["seeds"])
    rows = [[f"start: P1's rank-{r} network", pm(m["initial_test_acc"])],
            [f"after training, rank {r} (the network reported)", pm(acc)],
            ["the dense $W$ underneath, without the projection", pm(m["dense_W_test_acc"])],
            ["dense baseline", pm(m["baseline_test_acc"])]]
    req = m["required"]["test_acc"]
    tracked = m.get("goals", {}).get("tracking_error_ratio_max") or m["required"]["tracking_error_ratio_max"]
    return [Text(
        "## Problem 3: per-step SVD with a straight-through gradient\n\n"
        "The parameters are the dense $W_l$ (initialised from the baseline), but every forward pass uses the "
        f"rank-{r} projection of the current weight,\n\n"
        f"$$\\hat W_l = U_l[:, {{:}}{r}]\\, S_l[{{:}}{r}, {{:}}{r}]\\, V_l[:, {{:}}{r}]^\\top \\quad "
        "(W_l = U_l S_l V_l^\\top), "
        "\\qquad \\frac{\\partial \\mathcal{L}}{\\partial W_l} := "
        "\\frac{\\partial \\mathcal{L}}{\\partial \\hat W_l},$$\n\n"
        "i.e. the backward pass treats the projection as the identity (straight-through). That is a custom "
        "`torch.autograd.Function`: the forward pass runs through the factors, the backward pass hands $W$ "
        "exactly the gradient of a linear layer with weight $\\hat W$ (a float64 test checks it):"),
        *[code(f, n) for f, n in CODE["p3"]],
        Text(
        f"$U, S, V$ are the SVD of the current $W$ at every step. A full SVD of a 1024 x 1024 matrix costs more "
        f"than a plain training step, so each layer tracks its top singular subspace instead (Beyond the "
        f"homework); checked against the exact SVD at every epoch, the tracked $\\hat W$'s error was at worst "
        f"{tracked['measured']:.5f} times the exact truncation's (1: as good as the exact SVD). The network evaluated and reported is the "
        f"rank-{r} one, built from the exact SVD of the final weights ({m['params']:,} parameters).\n\n"
        f"**Result** ({seeds} seeds):\n\n" + table(["network", "test accuracy"], rows)),
        figure(m, "finetune_curve", f"Validation accuracy of the rank-{r} network while training."),
        Text(
        f"The homework expects about 97% ({bound(req, percent)}: {said(req)}); training "
        f"through the projection reaches {pm(acc)}, {100 * (acc['mean'] - m['initial_test_acc']['mean']):+.2f} "
        "points from where it starts (the best public solution we know reports 97.31%). The dense $W$ underneath "
        f"scores {pm(m['dense_W_test_acc'])} without the projection: its tail is updated but never used in the "
        "forward pass, so only the projected network is meaningful.")]


def section_p4(m):
    systems, diff = m["v"]["systems"], m["gru_minus_fc_db"]
    req = m["required"]["gru_beats_fc"]
    noisy, oracle = systems["noisy"]["snr_db"]["mean"], systems["oracle_ibm"]["snr_db"]["mean"]
    context = m.get("data_context") or {}
    inputs = context.get("input_snr_db") or {"min": min(m["per_file"]["snr_db"]["noisy"]),
                                             "max": max(m["per_file"]["snr_db"]["noisy"])}
    share = context.get("share_of_oracle_gain") or {
        k: (systems[k]["snr_db"]["mean"] - noisy) / (oracle - noisy) for k in ("fc", "gru")}
    names = [("noisy", "noisy input"), ("fc", "FC baseline (one frame)"), ("gru", "GRU (causal)"),
             ("oracle_ibm", "oracle IBM (true sources)")]
    stat = lambda k, metric, d=2: f"{systems[k][metric]['mean']:.{d}f} ± {systems[k][metric]['std']:.{d}f}"  # noqa
    rows = [[label, stat(k, "snr_db"), pct(share[k], 0) if k in share else {"noisy": "0%", "oracle_ibm": "100%"}[k],
             stat(k, "stoi", 3), stat(k, "pesq")] for k, label in names]
    g, f = m["models"]["gru"], m["models"]["fc"]
    gc, fc = g["config"], f["config"]
    return [Text(
        "## Problem 4: a recurrent speech denoiser\n\n"
        "A mixture $x = s + n$ becomes its STFT $X$ (1024-point Hann window, hop 512: 513 bins per frame). The "
        "target is the ideal binary mask (IBM), $M_{f,t} = 1$ where $|S_{f,t}| > |N_{f,t}|$, else 0. A model reads "
        "the magnitudes frame by frame and predicts $\\hat M_{:,t} \\in [0, 1]^{513}$; the speech estimate is "
        "$\\hat s = \\mathrm{iSTFT}(\\hat M \\odot X)$, scored by "
        "$\\mathrm{SNR} = 10 \\log_{10} \\big(\\sum_t s_t^2 / \\sum_t (s_t - \\hat s_t)^2\\big)$ per file.\n\n"
        f"**The data.** The course's recordings are not in this repository: `{m['data']['folder']}` is a stand-in "
        "rebuilt in the course's layout from real speech and noise recordings, every mixture at an input SNR drawn "
        f"from [-5, 5] dB (on `v`: {inputs['min']:.2f} to {inputs['max']:.2f} dB). The noisy input scores "
        f"{noisy:.2f} dB on `v`, and the oracle IBM, computed from the true sources, {oracle:.2f} dB: the ceiling "
        "of any binary mask with this STFT. The homework's \"slightly above 10 dB\" for a well-tuned FC is a number "
        "of the course's data, whose voices, noises and SNRs set both the start and the ceiling; on this data 10 dB "
        f"would be {pct((10 - noisy) / (oracle - noisy), 0)} of the way from the noisy input to the oracle. What "
        "carries over is that share of the oracle's gain, (model - noisy) / (oracle - noisy).\n\n"
        "**The two models differ by memory.** The FC baseline sees the current frame only: "
        f"{fc['model']['layers']} hidden layers of {fc['model']['hidden']} on the standardised log spectrum $z_t$ "
        f"({f['params']:,} parameters). The GRU is causal, the mask at frame $t$ from frames $1..t$: beside $z_t$ "
        "it reads $z_t - \\mu_t$, the frame's distance from the running mean "
        "$\\mu_t = \\sum_{k \\le t} a^{t-k} z_k / \\sum_{k \\le t} a^{t-k}$ "
        f"($a = {gc['model']['alpha']}$; where the noise is steady, $\\mu_t$ is mostly the noise), projects both to "
        f"$x_t = \\mathrm{{ReLU}}(\\mathrm{{LayerNorm}}(W_p [z_t, z_t - \\mu_t]))$ of width {gc['model']['proj']}, "
        f"runs $h_t = \\mathrm{{GRU}}(h_{{t-1}}, x_t)$ with {gc['model']['hidden']} units and reads out "
        f"$\\hat M_{{:,t}} = \\mathrm{{sigmoid}}(W_o h_t + W_s x_t + b)$ ({g['params']:,} parameters). The IBM and "
        "the GRU's forward pass:"),
        *[code(f, n) for f, n in CODE["p4"]],
        Text(
        "**Training.** The same loss and mixtures for both: binary cross-entropy against the IBM, each bin weighted "
        "by $|X|$ (the loud bins are the ones the SNR counts), on mixtures made anew at every step from the "
        f"{m['data']['distinct_training_sentences']} distinct training sentences and random stretches of the "
        f"training noises at random SNRs. GRU: {gc['epochs']} epochs at learning rate {gc['lr']:g}; FC: "
        f"{fc['epochs']} epochs at {fc['lr']:g}. The epoch kept is the one with the best `v` SNR, so `v` also "
        "selects the epoch (the homework has no other labelled split); `te`, whose sources are withheld, is the "
        "untouched test: its denoised files are the hand-in.\n\n"
        f"**Result** on the {m['v']['files']} `v` files (mean ± standard deviation over files):\n\n"
        + table(["", "SNR (dB)", "share of the oracle's gain", "STOI", "PESQ (wideband)"], rows)),
        figure(m, "snr_histogram", "SNR over the `v` files: noisy input, FC, GRU, oracle IBM."),
        Text(
        f"The homework asks that the recurrent model beat the frame-wise FC ({said(req)}): GRU minus FC is "
        f"{diff['mean']:+.2f} ± {diff['sem']:.2f} dB paired per file (mean ± standard error), the GRU better on "
        f"{diff['files_gru_better']} of {diff['files']} files. Memory is what the GRU adds: it carries the noise it "
        f"has heard so far, which one frame cannot tell apart from speech. It recovers {pct(share['gru'], 0)} of "
        f"the oracle's gain, the FC {pct(share['fc'], 0)}. STOI and PESQ "
        + ("order the three the same way" if all(systems["gru"][k]["mean"] > systems["fc"][k]["mean"] >
                                                 systems["noisy"][k]["mean"] for k in ("stoi", "pesq"))
           else "do not order the three the same way (table)") + "."),
        *beyond.listening(m)]


def section_p5(m):
    tf, d = m["teacher_forced_mse"], m["drawing"]["test"]
    c = m["config"]
    names = [("mse", "MSE drawer (the homework's LSTM)"), ("nearest_neighbour", "nearest training image's bottom"),
             ("mean_bottom", "mean bottom half"), ("original", "original (no drawing)")]
    rows = [[label, f"{d[n]['bottom_mse']:.4f}", pct(d[n]["class_kept"], 1), f"{d[n]['sharpness']:.3f}"]
            for n, label in names]
    grids = [figure(m, "originals", "The original test digits."),
             figure(m, "completions", "The MSE drawer's completions of the same top halves; red frame: P1's classifier "
                    "reads another digit.")]
    return [Text(
        "## Problem 5: an LSTM that draws the bottom half of digits\n\n"
        "Each 28 x 28 image becomes a sequence $X_1..X_{16}$ of 7 x 7 patches (rows of patches, top-left to "
        "bottom-right, 49 values each). An LSTM reads the patches and a head predicts the next one, "
        "$Y_t = \\mathrm{sigmoid}(\\mathrm{head}(h_t)) \\approx X_{t+1}$, trained with teacher forcing on "
        "$\\mathcal{L} = \\frac{1}{15 \\cdot 49} \\sum_{t=1}^{15} \\|Y_t - X_{t+1}\\|^2$. To draw, it reads "
        "$X_1..X_8$ (the top half), which predicts $X_9$, then runs 7 single steps, each fed its own previous patch; "
        "the given top half is kept exactly:"),
        *[code(f, n) for f, n in CODE["p5"]],
        Text(
        f"**Model.** {c['layers']} x {c['hidden']} LSTM units reading each patch"
        + (" beside the one-hot of its position" if c["position"] else "")
        + (f", and a head with a hidden layer of {c['head_hidden']} ReLU units" if c["head_hidden"] else
           ", and a linear head")
        + (" that also sees the next patch's already drawn neighbours (left, above, above-right)"
           if c["neighbours"] else "") +
        f" ({m['params']:,} parameters). Adam with a cosine schedule from {c['lr']:g}, batch {c['batch_size']}, up "
        f"to {c['epochs']} epochs with early stopping on {c['val_size']:,} validation images (the homework "
        "validates on the test set; here the test set only gives the numbers below).\n\n"
        f"**Result.** Teacher-forced MSE per pixel: {tf['val']:.4f} on validation, {tf['test']:.4f} on test. "
        "Completing the whole test set from its top halves, scored against the originals' bottom halves, by P1's "
        "seed-0 classifier (class kept: it still reads the true digit) and by sharpness (the share of "
        "bottom-half pixels within 0.1 of 0 or 1), beside two simple completions:\n\n"
        + table(["completion", "bottom-half MSE", "class kept", "sharpness"], rows)),
        Figures(grids),
        Text(
        "As the homework expects of a model trained on the squared error, the drawings are the average of the "
        "plausible strokes: " + ("blurrier than" if d["mse"]["sharpness"] < d["original"]["sharpness"] else
                                 "as sharp as") + f" the originals (sharpness {d['mse']['sharpness']:.3f} against "
        f"{d['original']['sharpness']:.3f}). Their bottom-half MSE is {d['mse']['bottom_mse']:.4f}, against "
        f"{d['nearest_neighbour']['bottom_mse']:.4f} for the bottom half of the training image whose top is nearest, "
        f"and P1's classifier reads {pct(d['mse']['class_kept'], 1)} of them as the original digit "
        f"({pct(d['nearest_neighbour']['class_kept'], 1)} for the nearest image's). Beyond the homework, a second "
        "drawer samples one plausible stroke instead of averaging them.")]


# ----------------------------------------------------------------------------- the report

def build(results=ROOT / "results", out=ROOT, dry_run=False):
    """(markdown, notebook, html) of the report on the results under `results`, markdown links relative to `out`.

    The report in reading order; each section reads its result files (SCRIPTS' keys) through `read`, which turns
    a file of the wrong shape into a one-line error naming the script to rerun."""
    m = load_results(results, SCRIPTS, dry_run)
    seconds = read(lambda *files: sum(beyond.step_seconds(name, f) for name, f in zip(m, files)), *m.values())
    pipeline = target("pipeline.minutes", seconds / 60)
    blocks = (intro() + read(summary, m, pipeline)
              + read(section_p1, m["p1"]) + read(section_p2, m["p2"]) + read(section_p3, m["p3"])
              + read(section_p4, m["p4"]) + read(section_p5, m["p5"])
              + beyond.heading()
              + read(beyond.p1_speed, m["p1"], m["bench/rank_forward"])
              + read(beyond.train_step, m["bench/train_step"])
              + read(beyond.p3_tracking, m["p3"], m["p3/benchmark"])
              + read(beyond.p4_details, m["p4"], m["p4/benchmark"])
              + read(beyond.p5_sampling, m["p5"])
              + read(beyond.timing, m, pipeline)
              + read(beyond.machines, m))
    return to_markdown(blocks, out), to_notebook(blocks), to_html(blocks)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=None,
                   help="folder holding p1/ .. p5/ (default: results, or runs/dry-run with --dry-run)")
    p.add_argument("--out", type=Path, default=None, help="where report.md, report.ipynb and report.html go "
                   "(default: the repository root, or runs/dry-run/report with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="accept the scripts' --dry-run results, to check the builder in seconds")
    p.add_argument("--handin", type=Path, default=None, metavar="DIR",
                   help="write the hand-in into DIR instead (`make handin`: handin/): report.ipynb, report.html and "
                        "te_denoised.zip, every te mixture denoised by the results' p4/denoiser.pt")
    p.add_argument("--te", type=Path, default=ROOT / "data" / "hw3" / "te",
                   help="the te folder denoised for the hand-in (default: data/hw3/te)")
    args = p.parse_args(argv)
    results = args.results or ROOT / ("runs/dry-run" if args.dry_run else "results")
    out = args.handin or args.out or (ROOT / "runs/dry-run/report" if args.dry_run else ROOT)
    if args.handin:  # before anything is built or written
        te_files(args.te)
    import nbformat
    markdown, nb, page = build(results, out, args.dry_run)
    if not args.handin:
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(markdown)
    with atomic_path(out / "report.ipynb") as tmp:
        nbformat.write(nb, str(tmp))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page)
    if args.handin:
        files = write_te_zip(out / "te_denoised.zip", args.te, results / "p4" / "denoiser.pt")
        print(f"wrote {shown_path(out)}/: report.ipynb, report.html and te_denoised.zip ({files} denoised te files)")
    else:
        print(f"wrote {shown_path(out / 'report.md')}, report.ipynb and report.html")


if __name__ == "__main__":
    run_cli(main)
