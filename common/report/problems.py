"""The homework's part of the report, problem by problem: for each, the method and its math, the code that implements
it (CODE: found by name in its file when the report is built), its recipe, the tables and figures the homework asks
for, and what they mean against the homework's expectation. Each section takes its result files
(common.report.results.Metrics) and returns blocks (common.report.blocks); make_report.build puts them in order.

Every number is read from the result files; the numbers typed here are the homework's own: its definitions in the
equations and its expectations (P4's 10 dB). Section and step headings carry the anchors the checklist links to.
"""
from collections import Counter

from ..speech.scores import LABELS
from .blocks import Figures, Listening, Text, bound, esc, heading, pct, percent, pm, table
from .results import clip, figure
from .source import code

# the code each problem shows, (file, name) as the repository has it today: a name that moves is fixed here only
CODE = {"p1": [("p1_svd.py", "svd"), ("p1_svd.py", "truncate"), ("p1_svd.py", "LowRankLinear"),
               ("p1_svd.py", "compress"), ("p1_svd.py", "BaselineLoss"), ("common/train.py", "fit")],
        "p2": [("p2_factorized.py", "FactorizedLinear")],
        "p3": [("p3_svd_ste.py", "LowRankSTE"), ("p3_svd_ste.py", "subspace_iteration"),
               ("p3_svd_ste.py", "SubspaceTracker")],
        "p4": [("common/speech/stft.py", "stft"), ("common/speech/stft.py", "istft"),
               ("common/speech/stft.py", "snr_db"), ("p4_denoise.py", "ideal_binary_mask"),
               ("p4_denoise.py", "apply_mask"), ("p4_denoise.py", "GRUMasker"), ("p4_denoise.py", "FCMasker"),
               ("p4_denoise.py", "mixture")],
        "p5": [("p5_draw.py", "to_patches"), ("p5_draw.py", "MSEDrawer"), ("p5_draw.py", "draw")]}


def shown(problem, *names):
    """The Code blocks of CODE[problem] whose names are `names` (all of them when none is given)."""
    return [code(f, n) for f, n in CODE[problem] if not names or n in names]


def check_code():
    """Every (file, name) of CODE found: a name that moved is a build error, whichever section shows it."""
    for entries in CODE.values():
        for file, name in entries:
            code(file, name)


def said(requirement):
    return "met" if requirement["met"] else "missed"


def lr_words(lr, warmup):
    """The learning-rate schedule of common.train.train_or_reuse in words."""
    return (f"learning rate {lr:g} from the first step, decaying along a cosine to 0" if warmup == 0 else
            f"learning rate rising from {lr / 25:g} to {lr:g} over the first {pct(warmup, 0)} of the steps, then "
            "decaying along a cosine")


# ----------------------------------------------------------------------------- the homework, problem by problem

def intro(p4):
    return [Text(
        "# Homework 3: compression, custom gradients, recurrent denoising and drawing\n\n"
        "The summary below is the homework's checklist: one row per deliverable, with its measured value and a link "
        "to its section. Each problem's section gives the method and its math, the code that implements it (the "
        "repository's own source, copied by name when this report is built, so it is the code that ran; the "
        "notebook runs it top to bottom in a fresh kernel started at the repository root), its recipe, and the "
        "numbers and figures, each read from the `results/` files that the committed scripts wrote. Model "
        "selection uses a validation split carved from MNIST's training images (P1, P2, P3, P5); P4 selects on "
        "`v`, its only labelled split besides `tr`.\n\n"
        f"**P4 runs on a stand-in data set.** The course's speech data is not available here, so P4 trains and is "
        f"scored on `{esc(p4['data']['folder'])}`, a data set rebuilt in the course's layout (`tr`, `v`, `te`, the "
        "same file names and roles) from real recordings (speech of the VCC 2016 corpus and LibriSpeech, noises from "
        "CC-licensed recordings; `../shared/data/hw3/README.md` lists them). Its voices, noises and SNRs are not "
        "the course's, so the homework's figure for P4 cannot be checked on it. P4 gives this data's own references "
        "instead: the noisy input, and the oracle IBM (the ideal binary mask computed from the true sources, the "
        "usual ceiling of binary masking), with each model's share of the oracle's gain, "
        "(model - noisy) / (oracle - noisy), which is what carries over from one data set to another.")]


def section_p1(m, cfg):
    r, base, req, rec = m["ranks"], m["baseline_test_acc"], m["required"]["baseline_test_acc"], m["recipe"]
    ranks = [d for d in r if d != "dense"]
    rows = [["dense (baseline)", f"{r['dense']['params']:,}", "1.0x", pm(base)]]
    rows += [[d, f"{r[d]['params']:,}", f"{1 / r[d]['params_ratio']:.1f}x", pm(r[d]["test_acc"])] for d in ranks]
    numeric = [d for d in ranks if d != "full"]  # ascending
    near = [base["mean"] - r[d]["test_acc"]["mean"] <= 0.002 for d in numeric]  # within 0.2 points
    first = next((i for i in range(len(numeric)) if all(near[i:])), len(numeric))
    fall = [f"from $D = {numeric[first]}$ on, it is within 0.2 points of the baseline with "
            f"{1 / r[numeric[first]]['params_ratio']:.1f}x fewer parameters"] if first < len(numeric) else []
    fall += [f"at $D = {d}$ it keeps {pm(r[d]['test_acc'])}" for d in reversed(numeric[:first])]
    fall = "; ".join(fall)
    seeds = len(m["seeds"])
    return [Text(
        "## Problem 1: SVD compression of a 5 x 1024 MNIST classifier {#p1}\n\n"
        + heading(3, "1.1 The baseline", "p1-baseline") + "\n\n"
        "The classifier is $f(x) = W_6\\,\\sigma(W_5 \\cdots \\sigma(W_1 x + b_1) \\cdots + b_5) + b_6$ with "
        "$W_1 \\in \\mathbb{R}^{1024\\times 784}$, $W_2..W_5 \\in \\mathbb{R}^{1024\\times 1024}$ and ReLU $\\sigma$. "
        f"**Recipe:** AdamW (peak learning rate {cfg['lr']:g}, one-cycle schedule: a warm-up, then cosine decay; "
        f"weight decay "
        f"{cfg['weight_decay']:g}), dropout {cfg['dropout']:g}, {cfg['epochs']} epochs of batch {cfg['batch_size']} "
        f"on {m['train_size']:,} training images, {seeds} seeds (0 to {seeds - 1}; mean ± standard deviation over "
        "them); the epoch with the best validation accuracy is kept. The homework lets the baseline use any "
        "technique taught, and this one is trained to be compressible as well as accurate: each training digit is "
        f"moved by a random offset of up to {rec['shift']} pixel{'s' * (rec['shift'] != 1)} each way, and a "
        f"**rank-{rec['tail_rank']} spectral-tail penalty** "
        f"$\\frac{{\\lambda}}{{2}}\\sum_l \\|W_l - U_l U_l^\\top W_l V_l V_l^\\top\\|_F^2$ "
        f"($\\lambda = {rec['tail_decay']:g}$; $U_l, V_l$ the top-{rec['tail_rank']} singular vectors of $W_l$, "
        f"recomputed every {rec['refresh']} steps) shrinks the energy that the rank-{rec['tail_rank']} network "
        "drops. " + p1_penalty_effect(m) + "\n\n"
        f"**Result:** the baseline's test accuracy is {pm(base)} (the homework asks for {bound(req, percent)}: "
        f"{said(req)})."),
        *shown("p1", "BaselineLoss"),
        *p1_ablation(m),
        Text(
        "Every problem trains with the same loop, `fit` in `common/train.py`: a step is the forward pass and the "
        "loss (under the precision policy's autocast), the backward pass and an optimizer step; validation after "
        "every epoch keeps the best epoch's weights, and the checkpoint written every epoch makes a stopped run "
        "resumable:"),
        *shown("p1", "fit"),
        Text(
        heading(3, "1.2 The SVD and the rank-D network", "p1-svd") + "\n\n"
        "Each hidden weight is decomposed once, $W_l = U_l S_l V_l^\\top$ (`torch.linalg.svd`), and the rank-$D$ "
        "network uses\n\n"
        "$$\\hat W_l = U_l[:, {:}D]\\; S_l[{:}D, {:}D]\\; V_l[:, {:}D]^\\top, \\qquad "
        "\\|W_l - \\hat W_l\\|_F = \\Big(\\sum_{i > D} s_{l,i}^2\\Big)^{1/2},$$\n\n"
        "the best rank-$D$ approximation (Eckart-Young). It is computed the cheap way, "
        "$x \\mapsto U_l\\,(S_l\\,(V_l^\\top x))$, and stores $D\\,(m + n + 1)$ numbers per $m \\times n$ layer "
        "instead of $mn$; biases and $W_6$ stay dense. The SVD is computed once per layer and sliced for every "
        "$D$ (`truncate`); `compress` rebuilds the network with `LowRankLinear` layers:"),
        *shown("p1", "svd", "truncate", "LowRankLinear", "compress"),
        Text(
        heading(3, "1.3 Accuracy and parameters at each rank", "p1-ranks") + "\n\n"
        f"Test accuracy ({seeds} seeds) and parameters of the rank-$D$ network, every $D$ from the same SVD:\n\n"
        + table(["D", "parameters", "fewer than dense", "test accuracy"], rows)),
        figure(m, "accuracy_vs_rank", "Test accuracy against the rank D (mean and standard deviation over seeds)."),
        figure(m, "params_vs_rank", "Parameters against the rank D."),
        Text(
        f"As the homework expects, accuracy falls as $D$ shrinks, and at full rank the rebuilt network is the "
        f"baseline itself ({pm(r['full']['test_acc'])}; stored as three factors it then costs "
        f"{r['full']['params']:,} numbers, more than the dense {r['dense']['params']:,}). "
        + fall[:1].upper() + fall[1:] + "."
        + (f" The singular values show why: the penalty pushed each weight's energy into its first "
           f"{rec['tail_rank']} directions." if rec["tail_decay"] else "")),
        figure(m, "singular_values", f"Singular values of the five hidden weights (seed 0); the dotted line is "
               f"D = {rec['tail_rank']}.")]


def p1_penalty_effect(m):
    """What the recipe does to the rank-D networks, against plain training (ablation.json's first and last rows)."""
    if not m.get("ablation"):
        return "(Its effect is measured by `python p1_svd.py --ablation`, not run for these results.)"
    plain, final = m["ablation"]["rows"][0], m["ablation"]["rows"][-1]
    moved = [f"{'lifts' if final['rank_test_acc'][d] > plain['rank_test_acc'][d] else 'lowers'} $D = {d}$ from "
             f"{pct(plain['rank_test_acc'][d])} to {pct(final['rank_test_acc'][d])}"
             for d in ("20", "10") if d in plain["rank_test_acc"] and d in final["rank_test_acc"]]
    return (f"Against plain training ({esc(plain['what'])}; seed {m['ablation']['seed']}, the table below), this "
            f"recipe {' and '.join(moved)}, and moves the baseline from {pct(plain['baseline_test_acc'])} to "
            f"{pct(final['baseline_test_acc'])}: P2 and P3 start from a stronger rank-20 network than plain training "
            "would give, which leaves them less to add.")


def p1_ablation(m):
    """The recipe's ablation (python p1_svd.py --ablation), when metrics.json has one."""
    if not m.get("ablation"):
        return []
    rows = [[esc(row["what"]), pct(row["baseline_test_acc"]),
             *(pct(row["rank_test_acc"][d]) if d in row["rank_test_acc"] else "-" for d in ("10", "20", "50")),
             str(row["best_epoch"])] for row in m["ablation"]["rows"]]
    return [Text(
        f"What each part of the recipe does (`python p1_svd.py --ablation`: seed {m['ablation']['seed']}, the same "
        "schedule, one run each; the last row is the main run's seed 0):\n\n"
        + table(["recipe", "baseline test accuracy", "rank 10", "rank 20", "rank 50", "best epoch"], rows))]


def section_p2(m, cfg, p1_cfg):
    acc, init, k = m["test_acc"], m["initial_test_acc"], m["rank"]
    req = m["required"]["test_acc"]
    same_start = all(run["initial_test_acc"] == p1 for run, p1 in zip(m["seeds"], init["values"]))
    rows = [[f"P1's rank-{k} network (where P2 starts)", pm(init), f"{m['params_p1']:,}"],
            [f"P2: the rank-{k} factors, fine-tuned", pm(acc), f"{m['params']:,}"],
            ["dense baseline", pm(m["baseline_test_acc"]), f"{m['params_dense']:,}"]]
    first = first_epoch(m)
    warmup = cfg.get("warmup", 0.1)  # results written before --warmup existed fine-tuned with 10% warm-up
    best = [run["best_epoch"] for run in m["seeds"]]
    return [Text(
        f"## Problem 2: fine-tuning the rank-{k} network as two factors {{#p2}}\n\n"
        + heading(3, "2.1 The U V^T layer", "p2-layer") + "\n\n"
        "Each hidden layer becomes $x \\mapsto U_l (V_l^\\top x) + b_l$ with trainable "
        f"$U_l \\in \\mathbb{{R}}^{{m \\times {k}}}$ and $V_l \\in \\mathbb{{R}}^{{n \\times {k}}}$, initialised from "
        "P1's decomposition of the same baseline:\n\n"
        f"$$U_l \\leftarrow U_l[:, {{:}}{k}], \\qquad V_l^\\top \\leftarrow S_l[{{:}}{k}, {{:}}{k}]\\, "
        f"V_l[:, {{:}}{k}]^\\top,$$\n\n"
        f"so the network starts as exactly P1's rank-{k} network: the singular values are folded into $V$, not "
        "dropped (`from_svd`; a test compares the logits in float64). It stores "
        f"{m['params']:,} numbers, {m['params_p1'] - m['params']} fewer than P1's count of the same network, "
        "which keeps $S$ apart."),
        *shown("p2"),
        Text(
        heading(3, "2.2 Fine-tuning", "p2-finetune") + "\n\n"
        f"$U$, $V$, the biases and the last layer are trained by backprop. **Recipe:** AdamW, "
        f"{lr_words(cfg['lr'], warmup)} (the homework advises a smaller-than-usual learning rate: P1's baseline "
        f"trained at a peak of {p1_cfg['lr']:g}), weight decay {cfg['weight_decay']:g}, dropout {cfg['dropout']:g}, "
        f"digits shifted by up to {cfg['shift']} pixel as in P1, {cfg['epochs']} epochs of batch {cfg['batch_size']}, "
        f"{len(m['seeds'])} seeds (seed $k$ fine-tunes baseline $k$"
        f"{'; every seed starts from exactly its P1 network' if same_start else ''}); the epoch with the best "
        f"validation accuracy is kept (epochs {', '.join(map(str, best))} of {cfg['epochs']}). "
        f"{first['sentence']}\n\n"
        + table(["network", "test accuracy", "parameters"], rows)),
        figure(m, "finetune_curve", "Validation accuracy while fine-tuning the factors; epoch 0 is P1's network."),
        Text(
        f"The homework asks that fine-tuning improve on P1's rank-{k} network ({said(req)}): it moves the test "
        f"accuracy by {100 * (acc['mean'] - init['mean']):+.2f} points, and ends "
        f"{100 * abs(m['baseline_test_acc']['mean'] - acc['mean']):.2f} points "
        f"{'below' if acc['mean'] < m['baseline_test_acc']['mean'] else 'above'} the dense baseline with "
        f"{m['params_dense'] / m['params']:.1f}x fewer parameters. Truncation lost accuracy because each layer was "
        f"trained with the full weights of the others; a few epochs let them adapt to the rank-{k} ones.")]


def first_epoch(m):
    """Epoch 1's validation accuracy against the SVD initialisation's (epoch 0), mean over seeds and worst seed
    (P2's, or P3's: both record them alike)."""
    change = [run["history"][0]["val_acc"] - run["initial_val_acc"] for run in m["seeds"]]
    start = sum(run["initial_val_acc"] for run in m["seeds"]) / len(m["seeds"])
    after = sum(run["history"][0]["val_acc"] for run in m["seeds"]) / len(m["seeds"])
    return {"start": start, "after": after, "worst": min(change),
            "sentence": f"After the first epoch the validation accuracy is {pct(after)} against the SVD "
                        f"initialisation's {pct(start)} (mean over seeds; worst seed {100 * min(change):+.2f} "
                        "points): the first epoch keeps what the initialisation gave, within 0.3 points on every "
                        "seed."
                        if min(change) >= -0.003 else
                        f"After the first epoch the validation accuracy is {pct(after)} against the SVD "
                        f"initialisation's {pct(start)} (mean over seeds; worst seed {100 * min(change):+.2f} "
                        "points): the first epoch loses some of what the initialisation gave, and later ones win "
                        "it back."}


def section_p3(m, cfg, bench, p2):
    acc, r, seeds = m["test_acc"], m["rank"], len(m["seeds"])
    req = m["required"]["test_acc"]
    rows = [[f"start: P1's rank-{r} network", pm(m["initial_test_acc"])],
            [f"after training, rank {r} (the network reported)", pm(acc)],
            ["the dense $W$ underneath, without the projection", pm(m["dense_W_test_acc"])],
            [f"P2: the rank-{r} factors fine-tuned", pm(p2["test_acc"])],
            ["dense baseline", pm(m["baseline_test_acc"])]]
    exact, tracker = bench["methods"]["exact"], bench["methods"]["tracker"]
    step = bench["goals"]["amortized_ratio_to_plain"]["measured"]
    gaps = {key: sorted((S[r - 1] - S[r]) / S[r - 1] for run in m["seeds"] for S in run[key])
            for key in ("singular_values_before", "singular_values")}
    median = {key: g[len(g) // 2] for key, g in gaps.items()}
    curves = {run["seed"]: [run["initial_val_acc"]] + [h["val_acc"] for h in run["history"]] for run in m["seeds"]}
    drop, seed, i = max((a - b, seed, i) for seed, acc in curves.items()
                        for i, (a, b) in enumerate(zip(acc, acc[1:])))  # the largest fall from one epoch to the next
    around = " -> ".join(pct(a) for a in curves[seed][max(i - 1, 0):i + 3])
    diff = 100 * (acc["mean"] - p2["test_acc"]["mean"])
    return [Text(
        "## Problem 3: per-step SVD with a straight-through gradient {#p3}\n\n"
        + heading(3, "3.1 The straight-through gradient", "p3-ste") + "\n\n"
        "The parameters are the dense $W_l$ (initialised from the baseline), but every forward pass uses the "
        f"rank-{r} projection of the current weight,\n\n"
        f"$$\\hat W_l = U_l[:, {{:}}{r}]\\, S_l[{{:}}{r}, {{:}}{r}]\\, V_l[:, {{:}}{r}]^\\top \\quad "
        "(W_l = U_l S_l V_l^\\top), "
        "\\qquad \\frac{\\partial \\mathcal{L}}{\\partial W_l} := "
        "\\frac{\\partial \\mathcal{L}}{\\partial \\hat W_l},$$\n\n"
        "i.e. the backward pass treats the projection as the identity (straight-through). That is a custom "
        "`torch.autograd.Function`: the forward pass runs through the factors, the backward pass hands $W$ "
        "exactly the gradient of a linear layer with weight $\\hat W$ (a float64 test checks it):"),
        *shown("p3", "LowRankSTE"),
        Text(
        heading(3, "3.2 The SVD at every step, and its tracker", "p3-tracker") + "\n\n"
        f"The homework computes $U, S, V$ by an SVD of the current $W$ at every step. An exact SVD of every layer at "
        f"every step (`python p3_svd_ste.py --refresh-every 1`, the homework's method as written) makes a training "
        f"step cost {exact['ratio_to_plain']:.1f}x a plain one ({exact['step_ms']:.0f} ms against "
        f"{bench['methods']['plain']['step_ms']:.0f} ms, `benchmarks/p3_svd_step.py`). The runs reported here "
        "approximate it: each layer tracks its top singular subspace across steps, one subspace iteration per "
        f"step, warm-started from the previous step's basis, {bench['rank'] + bench['oversample']} directions wide "
        f"({bench['oversample']} beyond the rank, since the singular values around index {r} are close together), "
        "followed by an exact SVD of $W$ restricted to that subspace (the Rayleigh-Ritz step: the best "
        f"rank-{r} approximation within it), and an exact SVD every {cfg['refresh_every']} steps "
        f"(`--refresh-every {cfg['refresh_every']}`). Checked against the exact SVD at the end of every epoch, the "
        f"tracked $\\hat W$'s error $\\|W - \\hat W\\|_F$ was at most {m['tracking_error_ratio_max']:.5f} times "
        f"the exact truncation's (1: equal within rounding), and $\\hat W$ was at most "
        f"{pct(m['tracking_distance_max'], 2)} away from the exact $W_{{{r}}}$ "
        f"($\\|\\hat W - W_{{{r}}}\\|_F / \\|W_{{{r}}}\\|_F$). A tracked step costs {tracker['step_ms']:.0f} ms, "
        f"{step:.2f}x a plain step with the refresh amortised: the forward pass and the input gradient run "
        f"through the rank-{r} factors. The network evaluated and reported is built from the exact SVD of the "
        "final weights:"),
        *shown("p3", "subspace_iteration", "SubspaceTracker"),
        figure(m, "tracking_error", "The tracker's error against the exact truncation, and its distance to it, per "
               "epoch and layer (seed 0)."),
        Text(
        heading(3, "3.3 Result, and P2 against P3", "p3-result") + "\n\n"
        f"**Recipe:** AdamW, peak learning rate {cfg['lr']:g} (one-cycle: a warm-up, then cosine decay), weight decay "
        f"{cfg['weight_decay']:g}, dropout {cfg['dropout']:g}, digits shifted by up to {cfg['shift']} pixel, "
        f"{cfg['epochs']} epochs of batch {cfg['batch_size']}, {seeds} seeds; the epoch whose rank-{r} network "
        f"(from the exact SVD) has the best validation accuracy is kept. Test accuracy ({seeds} seeds, "
        f"{m['params']:,} parameters):\n\n" + table(["network", "test accuracy"], rows)),
        figure(m, "finetune_curve", f"Validation accuracy of the rank-{r} network while training; epoch 0 is P1's."),
        Text(
        f"The homework expects about 97% ({bound(req, percent)}: {said(req)}); training through the projection "
        f"reaches {pm(acc)}, {100 * (acc['mean'] - m['initial_test_acc']['mean']):+.2f} points from where it "
        f"starts. The dense $W$ underneath scores {pm(m['dense_W_test_acc'])} without the projection: its tail is "
        "updated but never used in the forward pass, so only the projected network is meaningful.\n\n"
        f"**P2 against P3.** P3 ends {abs(diff):.2f} points {'below' if diff < 0 else 'above'} P2, although the "
        "homework prefers P3. P3 trains the full weights, so the kept subspace itself can change during training; "
        "here that freedom costs stability: directions just outside the top "
        f"{r} receive gradient, grow until they enter and push another one out, so the gap between the {r}th and "
        f"{r + 1}st singular values, $(s_{{{r}}} - s_{{{r + 1}}}) / s_{{{r}}}$, falls from "
        f"{pct(median['singular_values_before'], 1)} "
        f"to {pct(median['singular_values'], 2)} (median over layers and seeds). Which of the nearly tied "
        "directions is kept then changes from one step to the next, and so does the network: the validation "
        f"accuracy falls by up to {100 * drop:.2f} points from one epoch to the next (seed {seed}, from epoch "
        f"{max(i - 1, 0)}: {around}). P2's network, "
        "$U V^\\top$, moves smoothly with its parameters; P3's is the top-"
        f"{r} projection of $W$, which jumps when two singular values around the {r}th trade places. "
        + "In the first epoch the validation accuracy moves by {:+.2f} points for P2 and {:+.2f} for P3 (means over "
        "seeds).".format(*(100 * (e["after"] - e["start"]) for e in (first_epoch(p2), first_epoch(m))))),
        figure(m, "singular_values", "The largest singular values of the first and last hidden weight, before and "
               "after straight-through training.")]


def section_p4(m):
    systems, diff, context = m["v"]["systems"], m["gru_minus_fc_db"], m["data_context"]
    req = m["required"]["gru_beats_fc"]
    noisy, oracle, share = context["noisy_snr_db"], context["oracle_ibm_snr_db"], context["share_of_oracle_gain"]
    names = [("noisy", "noisy input"), ("fc", "FC baseline (one frame)"), ("gru", "GRU (causal)"),
             ("oracle_ibm", "oracle IBM (true sources)")]
    stat = lambda k, metric, d=2: f"{systems[k][metric]['mean']:.{d}f} ± {systems[k][metric]['std']:.{d}f}"  # noqa
    rows = [[label, stat(k, "snr_db"), pct(share[k], 0) if k in share else {"noisy": "0%", "oracle_ibm": "100%"}[k],
             stat(k, "stoi", 3), stat(k, "pesq")] for k, label in names]
    g, f, data = m["models"]["gru"], m["models"]["fc"], m["data"]
    gc, fc = g["config"], f["config"]
    files = data["files"]
    seconds = lambda frames: frames * 512 / 16000  # noqa: E731  (hop 512 at 16 kHz)
    return [Text(
        "## Problem 4: a recurrent speech denoiser {#p4}\n\n"
        + heading(3, "4.1 The data", "p4-data") + "\n\n"
        f"`{esc(data['folder'])}` holds the course's three splits: `tr`, {files['tr']} mixtures with their speech "
        f"and noise (`trx`, `trs`, `trn`), `v`, {files['v']} with theirs, and `te`, {files['te']} mixtures whose "
        "sources are withheld, as in the course (it is a stand-in, see the top of the report). Each sentence is "
        f"recorded under ten kinds of noise, so `tr` holds {data['distinct_training_sentences']} distinct sentences. "
        "**Training does not read the `trx` mixtures as given:** every step mixes each training sentence (`trs`) "
        "with a random stretch of a training noise (`trn`) scaled to a random SNR over the data's own range, so no "
        f"mixture is seen twice (`mixture`, below). On `v` (input SNRs {context['input_snr_db']['min']:.2f} to "
        f"{context['input_snr_db']['max']:.2f} dB) the noisy input scores {noisy:.2f} dB and the oracle IBM, the "
        f"mask computed from the true sources and the usual ceiling of binary masking, {oracle:.2f} dB. The homework "
        "expects a well-tuned FC slightly above 10 dB on the course's data, whose voices, noises and SNRs set both "
        f"that start and that ceiling; on this data 10 dB would be {pct((10 - noisy) / (oracle - noisy), 0)} of the "
        "way from the noisy input to the oracle.\n\n"
        + heading(3, "4.2 STFT, ideal binary mask, masked inverse STFT and SNR", "p4-signal") + "\n\n"
        "A mixture $x = s + n$ becomes its STFT $X$ (1024-point Hann window, hop 512: 513 bins per frame; a test "
        "checks it against librosa). The target is the ideal binary mask (IBM), $M_{f,t} = 1$ where "
        "$|S_{f,t}| > |N_{f,t}|$, else 0. A model reads the magnitudes frame by frame and predicts "
        "$\\hat M_{:,t} \\in [0, 1]^{513}$; the speech estimate keeps the noisy phase, "
        "$\\hat s = \\mathrm{iSTFT}(\\hat M \\odot X)$, and is scored by "
        "$\\mathrm{SNR} = 10 \\log_{10} \\big(\\sum_t s_t^2 / \\sum_t (s_t - \\hat s_t)^2\\big)$ per file:"),
        *shown("p4", "stft", "istft", "snr_db", "ideal_binary_mask", "apply_mask"),
        Text(
        heading(3, "4.3 The recurrent model and the FC baseline", "p4-models") + "\n\n"
        "**They differ by memory.** The FC baseline sees the current frame only: "
        f"{fc['model']['layers']} hidden layers of {fc['model']['hidden']} on the standardised log spectrum $z_t$ "
        f"({f['params']:,} parameters). The GRU is causal, the mask at frame $t$ from frames $1..t$: beside $z_t$ "
        "it reads $z_t - \\mu_t$, the frame's distance from the running mean "
        "$\\mu_t = \\sum_{k \\le t} a^{t-k} z_k / \\sum_{k \\le t} a^{t-k}$ "
        f"($a = {gc['model']['alpha']}$; where the noise is steady, $\\mu_t$ is mostly the noise), projects both to "
        f"$x_t = \\mathrm{{ReLU}}(\\mathrm{{LayerNorm}}(W_p [z_t, z_t - \\mu_t]))$ of width {gc['model']['proj']}, "
        f"runs $h_t = \\mathrm{{GRU}}(h_{{t-1}}, x_t)$ with {gc['model']['hidden']} units and reads out "
        f"$\\hat M_{{:,t}} = \\mathrm{{sigmoid}}(W_o h_t + W_s x_t + b)$ ({g['params']:,} parameters):"),
        *shown("p4", "GRUMasker", "FCMasker"),
        Text(
        heading(3, "4.4 Training: mini-batches, fresh mixtures, the curves", "p4-training") + "\n\n"
        f"**Mini-batches** are (batch, frames, 513) tensors: {gc['batch_size']} windows of {gc['crop']} frames "
        f"({seconds(gc['crop']):.1f} s) for the GRU and {fc['batch_size']} of {fc['crop']} frames for the FC, cut "
        "from the training sentences' STFTs, each window used "
        f"{gc['repeats']} times per epoch with a new noise and SNR each time; a sentence shorter than a window is "
        "zero-padded, and its padded frames carry no weight in the loss. The GRU starts each window from a zero "
        "state. **`v` and `te` files run whole:** the recurrence runs over each file from its first frame to its "
        "last (files batched by length, the padding after each file's end, where a causal model cannot see it). "
        "**Loss:** binary cross-entropy against the IBM, each bin weighted by $|X|$ (the loud bins are the ones the "
        f"SNR counts). **Recipe:** AdamW, one-cycle schedule (a warm-up, then cosine decay), weight decay "
        f"{gc['weight_decay']:g}, dropout {gc['model']['dropout']:g}, seed {gc['seed']}; the GRU {gc['epochs']} "
        f"epochs at a peak learning rate of {gc['lr']:g}, the FC {fc['epochs']} epochs at {fc['lr']:g}. The epoch "
        "kept is the one with the best `v` SNR (epoch "
        f"{g['best_epoch']} of {g['epochs_run']} for the GRU, {f['best_epoch']} of {f['epochs_run']} for the FC), so "
        "`v` also selects the epoch; `te`, whose sources are withheld, is the untouched test."),
        *shown("p4", "mixture"),
        figure(m, "training_curves", "Training and validation (`v`) loss, and the `v` SNR, per epoch: GRU and FC."),
        Text(
        heading(3, "4.5 Result", "p4-result") + "\n\n"
        f"On the {m['v']['files']} `v` files (mean ± standard deviation over files):\n\n"
        + table(["", "SNR (dB)", "share of the oracle's gain", "STOI", "PESQ (wideband)"], rows) + "\n\n"
        f"The homework asks that the recurrent model beat the frame-wise FC ({said(req)}): GRU minus FC is "
        f"{diff['mean']:+.2f} ± {diff['sem']:.2f} dB paired per file (mean ± standard error), the GRU better on "
        f"{diff['files_gru_better']} of {diff['files']} files. Memory is what the GRU adds: it carries the noise it "
        f"has heard so far, which one frame cannot tell apart from speech. It recovers {pct(share['gru'], 0)} of "
        f"the oracle's gain, the FC {pct(share['fc'], 0)}. STOI (intelligibility, Taal et al. 2011) and wideband PESQ "
        "(quality, ITU-T P.862.2) "
        + ("order the three the same way" if all(systems["gru"][k]["mean"] > systems["fc"][k]["mean"] >
                                                 systems["noisy"][k]["mean"] for k in ("stoi", "pesq"))
           else "do not order the three the same way (table)") + "."),
        figure(m, "snr_histogram", "SNR over the `v` files: noisy input, FC, GRU, oracle IBM."),
        figure(m, "snr_by_noise", "`v` SNR by kind of noise."),
        figure(m, "spectrograms", "One `v` file: noisy, clean, ideal mask, predicted mask, denoised."),
        Text(
        heading(3, "4.6 Listening, and the denoised te files", "p4-listening") + "\n\n"
        f"`make handin` writes `te_denoised.zip`: the {m['te_output']['files']} `te` mixtures denoised by the "
        f"committed GRU (`{esc(m['model_file'])}`), each named as its input, for the course to score against its "
        "withheld sources. " + listening_intro(m)),
        listening(m)]


def listening_groups(m):
    """P4's examples grouped by recording: [(heading, [Audio, ...])], each clip labelled with its system and SNR."""
    groups = []
    for split in ("v", "te"):
        for e in m["examples"][split]:
            heading = f"{e['file']} ({split}" + (", clean source withheld)" if split == "te" else ")")
            clips = [clip(c, "path", (c.get("label") or LABELS[c["system"]])
                          + ("" if c.get("snr_db") is None else f": {c['snr_db']:.1f} dB")) for c in e["clips"]]
            groups.append((heading, clips))
    return groups


def listening_intro(m):
    counts = {split: len(m["examples"][split]) for split in ("v", "te")}
    kinds = {split: list(dict.fromkeys(c.get("label") or LABELS[c["system"]] for e in m["examples"][split]
                                       for c in e["clips"])) for split in ("v", "te")}
    return (f"To listen: {counts['v']} `v` recordings ({esc(', '.join(kinds['v']))}) and {counts['te']} `te` "
            f"recordings ({esc(', '.join(kinds['te']))}; their clean sources are withheld), each clip labelled with "
            "its SNR where it is known. report.html and report.ipynb embed the players; report.md links the files.")


def listening(m):
    return Listening(listening_groups(m))


def section_p5(m, cfg):
    tf, d, c = m["teacher_forced_mse"], m["drawing"]["test"], m["config"]
    ex = m["examples"]
    names = [("mse", "MSE drawer (the homework's LSTM)"), ("nearest_neighbour", "nearest training image's bottom"),
             ("mean_bottom", "mean bottom half"), ("original", "original (no drawing)")]
    rows = [[label, f"{d[n]['bottom_mse']:.4f}", pct(d[n]["class_kept"], 1),
             pct(m["drawing"]["examples"][n]["class_kept"], 0), f"{d[n]['sharpness']:.3f}"] for n, label in names]
    per_class = Counter(ex["labels"])
    flips = Counter((a, b) for a, b in zip(ex["labels"], ex["mse_predicted"]) if a != b)
    count = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}
    flip_words = ", ".join(f"{count.get(n, n)} {a}{'s' * (n > 1)} read as {b}" for (a, b), n in
                           sorted(flips.items(), key=lambda kv: (-kv[1], kv[0])))
    kept = m["class_kept_per_digit"]
    worst = sorted(kept, key=lambda k: kept[k])[:3]
    amb = m["ambiguous"]
    split = sum(n > 1 for n in amb["sampler_classes_per_image"])
    best = m["best_epoch"]
    return [Text(
        "## Problem 5: an LSTM that draws the bottom half of digits {#p5}\n\n"
        + heading(3, "5.1 Patches and the drawer", "p5-model") + "\n\n"
        "Each 28 x 28 image becomes a sequence $X_1..X_{16}$ of 7 x 7 patches (rows of patches, top-left to "
        "bottom-right, 49 values each). A *drawer* is a model that reads such a sequence and predicts the next "
        "patch; the homework's, called the MSE drawer here, is an LSTM whose head predicts "
        "$Y_t = \\mathrm{sigmoid}(\\mathrm{head}(h_t)) \\approx X_{t+1}$, trained on the squared error. This one has "
        f"{c['layers']} x {c['hidden']} LSTM units reading each patch"
        + (" beside the one-hot of its position" if c["position"] else "")
        + (f", and a head with a hidden layer of {c['head_hidden']} ReLU units" if c["head_hidden"] else
           ", and a linear head")
        + (" that also sees the next patch's already drawn neighbours (left, above, above-right)"
           if c["neighbours"] else "") + f" ({m['params']:,} parameters):"),
        *shown("p5", "to_patches", "MSEDrawer"),
        Text(
        heading(3, "5.2 Training", "p5-training") + "\n\n"
        "Teacher forcing: the drawer reads $X_1..X_{15}$ and is scored on "
        "$\\mathcal{L} = \\frac{1}{15 \\cdot 49} \\sum_{t=1}^{15} \\|Y_t - X_{t+1}\\|^2$. **Recipe:** Adam (no "
        f"weight decay), {lr_words(c['lr'], 0)}, batch {c['batch_size']}, up to {c['epochs']} epochs on "
        f"{c['train_size']:,} training images, stopped after {c['patience']} epochs without improvement on "
        f"{c['val_size']:,} validation images (the homework validates on the test set; here the test set only gives "
        f"the final numbers), seed {c['seed']}. The epoch kept is epoch {best} of the {m['epochs_trained']} trained. "
        "Teacher-forced "
        f"MSE per pixel: {tf['val']:.4f} on validation, {tf['test']:.4f} on test."),
        figure(m, "learning_curve", "Training and validation loss per epoch (right: the sampling drawer of Beyond the "
               "homework)."),
        figure(m, "mse_per_patch", "The MSE drawer's teacher-forced test MSE of each predicted patch."),
        Text(
        heading(3, "5.3 Drawing the bottom halves", "p5-drawing") + "\n\n"
        "To draw, the drawer reads $X_1..X_8$ (the top half), which predicts $X_9$, then runs 7 single steps, each "
        "fed its own previous patch; the given top half is kept exactly:"),
        *shown("p5", "draw"),
        Text(
        f"The figures show {len(ex['indices'])} test digits, {min(per_class.values())} of each class, drawn at "
        f"random with a fixed seed ({cfg['examples_seed']}). Each completion is scored against the original's "
        "bottom half (bottom-half MSE), by whether P1's baseline classifier (seed 0) still reads the true digit "
        "(*class kept*: the share of completions it does), and by *sharpness*, the share of bottom-half pixels "
        "within 0.1 of 0 or 1 (MNIST's strokes are nearly binary; an average of strokes is gray). Beside two simple "
        "completions, on the whole test set and on the shown digits:\n\n"
        + table(["completion", "bottom-half MSE", "class kept", f"class kept ({len(ex['indices'])} shown)",
                 "sharpness"], rows)),
        Figures([figure(m, "originals", "The original test digits (a row per digit)."),
                 figure(m, "completions", "The MSE drawer's completions of the same top halves; below the blue line: "
                        "drawn; red frame: P1's classifier reads another digit.")]),
        Text(
        "As the homework expects of a model trained on the squared error, the drawings are the average of the "
        "plausible strokes: " + ("blurrier than" if d["mse"]["sharpness"] < d["original"]["sharpness"] else
                                 "as sharp as") + f" the originals (sharpness {d['mse']['sharpness']:.3f} against "
        f"{d['original']['sharpness']:.3f}). Their bottom-half MSE is {d['mse']['bottom_mse']:.4f}, against "
        f"{d['nearest_neighbour']['bottom_mse']:.4f} for the bottom half of the training image whose top is "
        "nearest.\n\n"
        + heading(3, "5.4 Where it fails", "p5-failures") + "\n\n"
        f"Of the {len(ex['indices'])} shown, P1's classifier reads {sum(flips.values())} as another digit"
        + (f": {flip_words}" if flips else "") + ". Over the whole test set the digits kept least often are "
        + ", ".join(f"{k} ({pct(kept[k], 1)})" for k in worst) + ". Where a top half fits more than one digit, a "
        "drawer trained on the squared error draws the average of the bottoms that fit it, between the digits, and "
        "the classifier may read the other one. The "
        f"clearest cases are the {len(amb['indices'])} test top halves whose {sum(amb['neighbour_votes'][0])} nearest "
        "training top halves "
        f"disagree most about the digit: the MSE drawer gives one completion each, and the sampling drawer of "
        f"Beyond the homework draws more than one digit from {split} of them.\n\n"
        + table(["drawer"] + [str(i) for i in kept], [["MSE drawer, class kept"] + [pct(v, 1) for v in kept.values()]],
                align="l" + "r" * len(kept))),
        figure(m, "ambiguous", "Ambiguous top halves: the original, the MSE drawer's completion and samples of the "
               "sampling drawer, each titled with P1's classifier's reading.")]
