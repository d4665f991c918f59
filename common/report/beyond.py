"""The report's closing part, "Beyond the homework": what the project measured past the homework's questions (speed,
the SVD tracker and its benchmark, P4's ablation and `denoise` command, P5's sampling drawer and ablation, time
and machine), and P4's listening examples. Each function takes result files (common.report_results.Metrics) and
returns blocks (common.report_blocks); make_report.build puts them in order."""
import statistics

from ..speech.scores import LABELS
from ..train import trained_seconds
from .blocks import Audio, Figures, Listening, Text, minutes, pct, table
from .results import existing, figure



def heading():
    return [Text("## Beyond the homework\n\n"
                 "What the project measured past the homework's questions: speed, the tracked SVD of P3, what each "
                 "design choice of P4 and P5 is worth, a second drawer for P5, and where and how long these results "
                 "took to make.")]


def p1_speed(m, bench):
    """P1's rank-D networks: multiply-adds (metrics.json) and the forward pass timed side by side
    (benchmarks/rank_forward.py: interleaved rounds, two passes)."""
    r, batches = bench["ranks"], bench["batches"]

    def cell(row, b):
        t = row[f"batch_{b}"]
        return (f"{1e3 * t['seconds']['median']:.3f} ms, {t['speedup']['median']:.1f}x"
                + ("" if t["reproduced"] else " (not reproduced)"))
    rows = [[name.replace("rank ", "") if name != "dense" else "dense (baseline)", f"{row['macs']:,}",
             f"{row['flop_ratio']:.1f}x", *(cell(row, b) for b in batches)] for name, row in r.items()]
    return [Text(
        "### P1: what the rank-D networks cost to run\n\n"
        f"Multiply-adds per image, and one forward pass of each network timed by `benchmarks/rank_forward.py` on "
        f"{bench['machine']['cpu']} ({bench['threads']} threads): the networks take turns in each of "
        f"{bench['rounds']} rounds (so a change of load hits them all alike), the median time and its speed-up over "
        f"the dense network, measured in {bench['passes']} passes; *not reproduced* marks a speed-up whose second "
        "pass fell outside the first's interquartile range. At full rank the factorized form costs more than the "
        "dense one, as its parameter count says.\n\n"
        + table(["D", "multiply-adds / image", "fewer multiply-adds",
                 *(f"batch {b}: time, speed-up" for b in batches)], rows)),
        figure(m, "singular_values", "Singular values of the five hidden weights (seed 0); the dotted line is D = 20."),
        figure(m, "params_vs_rank", "Parameters against the rank D.")]


def train_step(bench):
    """Every problem's real training step in fp32 and under the default precision policy
    (benchmarks/train_step.py), against the matmul peak of each precision measured in the same run."""
    policy, peaks = bench["policy"], bench["peaks"]
    kinds = ["fp32"] + (["bf16"] if policy == "bf16" else [])
    rows = []
    for row in bench["rows"]:
        cells = [f"{1e3 * row[k]['seconds_per_step']['median']:.1f} ms ({pct(row[k]['share_of_peak'], 0)} of peak)"
                 for k in kinds]
        if policy == "bf16":
            ratio = row["bf16"]["seconds_per_step"]["median"] / row["fp32"]["seconds_per_step"]["median"]
            cells.append(f"{ratio:.2f}x")
        rows.append([row["name"], str(row["threads"]), str(row["batch_size"]), f"{row['gflop_per_step']:.2f}",
                     *cells, f"{row[policy]['seconds_per_epoch']:.1f} s", f"{row['main_run_epoch_seconds']:.1f} s"])
    fb = bench["p1_forward_backward"]
    peak = ", ".join(f"{k} {v['gflops']:.0f} GFLOP/s" for k, v in peaks[str(bench["machine"]["threads"])].items())
    return [Text(
        "### Every training step, timed\n\n"
        f"`benchmarks/train_step.py` times each problem's real training step (forward, loss, backward, optimizer) "
        f"as `make all` trains it, with its batch size and thread count, in fp32 and under the default precision "
        f"policy (here: {policy}), side by side in one run; the share of peak is the step's floating-point rate "
        f"over a large matmul's measured in the same run ({peak} at {bench['machine']['threads']} threads). An "
        f"epoch is the step times the steps of one epoch; the last column is the epoch the main run recorded (with "
        f"its validation, at the threads the timing table below gives, beside other jobs where they shared the "
        f"cores). P1's forward and backward pass alone: {1e3 * fb['seconds']['median']:.0f} ms, "
        f"{pct(fb['share_of_peak'], 0)} of the {fb['precision']} peak."
        + (f" Not measured here: {bench['not_measured']}." if bench.get("not_measured") else "") + "\n\n"
        + table(["step", "threads", "batch", "GFLOP / step", *(f"{k} step" for k in kinds),
                 *(["bf16 / fp32"] if policy == "bf16" else []), "epoch (benchmark)", "epoch (main run)"], rows))]


def p3_tracking(m, bench):
    r, methods = m["rank"], bench["methods"]
    step = bench["goals"]["amortized_ratio_to_plain"]
    # relative gaps between singular values r and r + 1, every layer of every seed
    gaps = {key: [(S[r - 1] - S[r]) / S[r - 1] for run in m["seeds"] for S in run[key]]
            for key in ("singular_values_before", "singular_values")}
    gap_before, gap_after = (statistics.median(gs) for gs in gaps.values())
    names = [("plain", "plain dense step (no projection)"), ("exact", "P3, exact `torch.linalg.svd`"),
             ("lowrank", "P3, `torch.svd_lowrank`"), ("tracker", "P3, subspace tracker (this repo)"),
             ("no_oversampling", "P3, tracker without oversampling or refresh")]
    rows = [[label, f"{methods[k]['step_ms']:.1f}", f"{methods[k]['ratio_to_plain']:.2f}x",
             f"{methods[k]['error_ratio_max']:.5f}" if "error_ratio_max" in methods[k] else "-",
             pct(methods[k]["distance_max"], 1) if "distance_max" in methods[k] else "-"] for k, label in names]
    t = methods["tracker"]
    return [Text(
        "### P3: making \"SVD every iteration\" cheap\n\n"
        "A full SVD of a 1024 x 1024 matrix costs more than a whole plain training step. Each layer instead tracks "
        "its top singular subspace: one subspace iteration per step, warm-started from the previous step's basis, "
        f"{bench['rank'] + bench['oversample']} vectors wide ({bench['oversample']} beyond the rank: the singular "
        f"values around index {bench['rank']} are close together), then a small SVD (Rayleigh-Ritz), and an exact "
        f"SVD every {bench['refresh_every']} steps. Its error ratio is $\\|W - \\hat W\\|_F / \\|W - W_{{{r}}}\\|_F$ "
        f"($W_{{{r}}}$ the exact truncation: 1 is optimal); the distance $\\|\\hat W - W_{{{r}}}\\|_F / "
        f"\\|W_{{{r}}}\\|_F$ is stricter, since it also sees which of several nearly equal directions were kept. "
        f"During the P3 runs the worst distance was {pct(m['tracking_distance_max'], 1)}.\n\n"
        f"The benchmark (`benchmarks/p3_svd_step.py`, one run, methods interleaved, median of {bench['rounds']} "
        f"steps at batch {bench['batch_size']} on {bench['threads']} CPU thread(s); errors checked every "
        f"{bench['check_every']} steps over {bench['check_steps']} training steps):\n\n"
        + table(["method", "ms / step", "vs plain", "worst error ratio", f"worst distance to $W_{{{r}}}$"], rows) +
        f"\n\nWith the exact refresh amortised ({t['refresh_ms']:.0f} ms every {bench['refresh_every']} steps) the "
        f"tracker's step costs {t['amortized_step_ms']:.1f} ms, {step['measured']:.2f}x the plain step: the forward "
        f"pass and the input gradient run through the rank-{r} factors, and only "
        "$\\partial \\mathcal{L} / \\partial W = g^\\top x$ stays a dense product. Without oversampling the error "
        f"ratio still looks fine, but the kept subspace drifts far from the true top {r}.\n\n"
        "**Singular values pile up at the rank boundary.** Directions just outside the top "
        f"{r} receive gradient, grow until they enter and push another one out: the relative gap "
        f"$(s_{{{r}}} - s_{{{r + 1}}}) / s_{{{r}}}$ falls from {gap_before:.2%} to {gap_after:.3%} (median over "
        f"layers and seeds; the smallest after training is {min(gaps['singular_values']):.1e}). Which of the tied "
        "directions the final SVD keeps is then decided by rounding: the same weights can give rank-"
        f"{r} networks a few test images apart when the SVD runs on a different number of CPU threads, hence "
        f"{len(m['seeds'])} seeds."),
        figure(m, "singular_values", "Singular values before and after straight-through training."),
        figure(m, "tracking_error", "The tracker's error ratio and distance, per epoch and layer.")]


def listening(m):
    """P4's examples as players grouped by recording, each labelled with its system and SNR, after a line saying
    what they are. Reads metrics.json `examples` as {split: [{"file", "clips": [{"system", "label", "path",
    "snr_db"}]}]}, and the older flat form [{"file", "kind", "path"}] of results written before it."""
    groups, kinds = [], {"v": [], "te": []}
    for split in ("v", "te"):
        for e in m["examples"][split]:
            clips = e["clips"] if "clips" in e else [
                {"system": {"denoised": "gru"}.get(x["kind"], x["kind"]), "path": x["path"], "snr_db": None}
                for x in m["examples"][split] if x["file"] == e["file"]]
            heading = f"{e['file']} ({split}" + (", clean source withheld)" if split == "te" else ")")
            if heading not in [h for h, _ in groups]:
                labels = [c.get("label") or LABELS[c["system"]] for c in clips]
                kinds[split] += [label for label in labels if label not in kinds[split]]
                groups.append((heading, [Audio(existing(m.file.parent / c["path"], m), label + (
                    "" if c.get("snr_db") is None else f": {c['snr_db']:.1f} dB")) for c, label in zip(clips, labels)]))
    count = {split: sum(h.endswith(f"({split})") or f"({split}," in h for h, _ in groups) for split in kinds}
    return [Text(
        f"**Listen**: {count['v']} `v` recordings ({', '.join(kinds['v'])}) and {count['te']} `te` recordings "
        f"({', '.join(kinds['te'])}; their clean sources are withheld), each clip labelled with its SNR where the "
        "results record it. report.html and report.ipynb embed the players; report.md links the files."),
        Listening(groups)]


def p4_details(m, bench):
    names = [("noisy", "noisy"), ("fc", "FC"), ("gru", "GRU"), ("oracle_ibm", "oracle IBM")]
    by, g_rtf = m["by_noise"], bench["goals"]["rtf"]
    systems = m["v"]["systems"]
    rows = [[label] + [f"{systems[k][metric]['mean']:.2f}" for metric in ("snr_db", "si_sdr_db")]
            + [f"{systems[k]['snr_db']['median']:.2f}"] for k, label in names]
    noise_rows = [[name] + [f"{by['snr_db'][k][i]:.2f}" for k, _ in names] + [f"{by['gru_minus_fc_db'][i]:+.2f}"]
                  for i, name in enumerate(by["noise"])]
    cases = bench["cases"]
    rtf_rows = [[label, f"{cases[k]['rtf_wall']:.4f}", f"{cases[k]['rtf_cpu']:.4f}"]
                for k, label in [("file_16k_mono_wav", "`denoise` of a 16 kHz mono wav"),
                                 ("file_44.1k_stereo_wav", "`denoise` of a 44.1 kHz stereo wav"),
                                 ("stream_16k_mono_1s_blocks", "streaming, 1 s blocks"),
                                 ("stream_16k_mono_0.1s_blocks", "streaming, 0.1 s blocks"),
                                 ("stage_gru", "of which the model")]]
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
    measure = {"rtf_cpu": "CPU time", "rtf_wall": "wall time"}[g_rtf["measure"]]
    return [Text(
        "### P4: more scores, each kind of noise, each design choice, and the `denoise` command\n\n"
        "Mean SNR and SI-SDR and the median SNR on `v` (dB):\n\n"
        + table(["", "SNR", "SI-SDR", "median SNR"], rows) +
        "\n\nBy kind of noise (mean SNR in dB):\n\n"
        + table(["noise", "noisy", "FC", "GRU", "oracle IBM", "GRU - FC"], noise_rows) + "\n\n" + ablation_text +
        "\n\n**The `denoise` command** (`python p4_denoise.py denoise IN.wav OUT.wav`, or "
        "`denoise IN... --out-dir DIR` for many files and folders with one model load) uses the committed model "
        f"`{m['model_file']}`: any sample rate (resampled to 16 kHz and back), stereo, any length streamed in "
        "blocks that carry the model's state and the STFT overlap (a test checks that the result equals the "
        "whole-file one), every input sample checked, written atomically. Real-time factor (processing time / "
        f"audio duration, one CPU thread, median of {bench['repeats']} runs on {bench['audio_seconds']:.0f} s of "
        f"audio, `benchmarks/p4_realtime.py`; the target is judged on {measure} of the first row):\n\n"
        + table(["case", "real-time factor (wall)", "real-time factor (CPU)"], rtf_rows) +
        f"\n\nThe {m['te_output']['files']} denoised `te` mixtures are zipped as the homework names them by "
        "`make handin`, from the committed model, in seconds."),
        figure(m, "training_curves", "Training loss and `v` SNR per epoch, GRU and FC."),
        figure(m, "snr_gain_vs_input", "SNR gain (output SNR - input SNR) against the input SNR, per `v` file."),
        figure(m, "snr_by_noise", "`v` SNR by kind of noise."),
        figure(m, "spectrograms", "One `v` file: noisy, clean, ideal mask, predicted mask, denoised.")]


def p5_sampling(m):
    d, sampler, sc = m["drawing"], m["sampler"], m["sampler"]["config"]
    k = sampler["samples_per_image"]
    n_examples = len(m["examples"]["indices"])
    names = [("mse", "MSE drawer"), ("sampler", f"sampling drawer ({k} samples each)"),
             ("nearest_neighbour", "nearest training image's bottom"), ("mean_bottom", "mean bottom half"),
             ("original", "original (no drawing)")]
    rows = [[label, f"{d['test'][n]['bottom_mse']:.4f}", f"{d['test'][n]['best_of_k_bottom_mse']:.4f}",
             pct(d["test"][n]["class_kept"], 1), f"{d['test'][n]['sharpness']:.3f}", f"{d['test'][n]['ink']:.3f}",
             f"{d['examples'][n]['bottom_mse']:.4f}", pct(d["examples"][n]["class_kept"], 0)] for n, label in names]
    per_digit = [["MSE drawer"] + [pct(v, 1) for v in m["class_kept_per_digit"].values()],
                 ["sampling drawer"] + [pct(v, 1) for v in m["sampler_class_kept_per_digit"].values()]]
    amb, ablation = m["ambiguous"], m["ablation"]
    if ablation is None:
        ablation_text = ("No ablation was run for these settings (`python p5_draw.py --ablation` trains each "
                         "variant and writes `results/p5/ablation.json`, which the next run reports).")
    else:
        ablation_text = (
            "**What each change is worth** (`python p5_draw.py --ablation`: from the homework's LSTM to the MSE "
            "drawer, one change per row, each row keeping the ones above it, every row trained for "
            f"{ablation['epochs']} epochs with the same seed; one run each):\n\n"
            + table(["change", "parameters", "best validation MSE", "vs the row above", "training time"],
                    [[r["change"], f"{r['params']:,}", f"{r['val_mse']:.4f}",
                      "-" if r["val_mse_change"] is None else f"{r['val_mse_change']:+.4f}",
                      minutes(r["train_seconds"])] for r in ablation["rows"]]))
    return [Text(
        "### P5: a drawer that commits to one stroke\n\n"
        "Minimising the squared error, the MSE drawer draws the average of the plausible next patches, so its "
        f"drawings are blurry. The sampling drawer has the same recurrent structure ({sampler['params']:,} "
        f"parameters), but its head gives a mixture of {sc['components']} patches of independent Bernoulli pixels, "
        "$p(x) = \\sum_k w_k \\prod_i p_{ki}^{x_i} (1 - p_{ki})^{1 - x_i}$, trained by likelihood with teacher "
        f"forcing for up to {sc['epochs']} epochs; it draws by picking a component per patch and taking its pixel "
        "probabilities. A component is one coherent stroke, so a drawing commits to one plausible digit. Its "
        f"teacher-forced test NLL is {sampler['teacher_forced']['test_nll']:.1f} nats per patch, and the MSE of its "
        f"mixture's mean {sampler['teacher_forced']['test_mse_of_mean']:.4f}.\n\n"
        f"Completions of the whole test set and of the {n_examples} shown examples. Best-of-{k}: the closest of the "
        f"{k} samples per image (the usual score for a prediction with several right answers; the single-answer "
        "rows have one). Sharpness is the share of bottom-half pixels within 0.1 of 0 or 1 and ink the mean pixel; "
        "read them together, a blank drawing would be sharp too:\n\n"
        + table(["completion", "bottom-half MSE", f"best-of-{k} MSE", "class kept", "sharpness", "ink",
                 f"bottom-half MSE ({n_examples})", f"class kept ({n_examples})"], rows) +
        "\n\nClass kept per digit (whole test set; the sampling drawer over all its samples):\n\n"
        + table(["drawer"] + [str(i) for i in m["class_kept_per_digit"]], per_digit) +
        f"\n\n**Ambiguous top halves.** The {len(amb['indices'])} test top halves whose 20 nearest training top "
        "halves disagree most about the digit; for each, the samples' classes by P1's classifier: "
        + "; ".join(f"digit {label}: {', '.join(map(str, p))}" for label, p in zip(amb["labels"],
                                                                                 amb["sampler_predicted"]))
        + f" (distinct classes per image: {', '.join(map(str, amb['sampler_classes_per_image']))}; the MSE "
        f"drawer gives one completion each: {', '.join(map(str, amb['mse_predicted']))}).\n\n" + ablation_text),
        figure(m, "side_by_side", "Originals, the MSE drawer's completions, one sample of the sampling drawer, "
               "nearest-neighbour and mean bottom halves; red: class changed."),
        Figures([figure(m, "completions", "The MSE drawer's completions."),
                 figure(m, "samples", "One sample of the sampling drawer for each of the same top halves.")]),
        figure(m, "ambiguous", "Ambiguous top halves: the original, the MSE drawer's completion and 8 samples each."),
        figure(m, "learning_curve", "Validation scores while training."),
        figure(m, "mse_per_patch", "The MSE drawer's teacher-forced test MSE of each predicted patch.")]


def training_seconds(name, m):
    """Training recorded in the checkpoints of one result file (what a run that reuses them did not redo), in
    seconds of wall time: P5's two drawers overlap when they trained side by side (--jobs 2). None: no training."""
    if name == "p1":
        return sum(trained_seconds(run["history"]) for run in m["seeds"])
    if name in ("p2", "p3"):
        return sum(run["train_seconds"] for run in m["seeds"])
    if name == "p4":
        return sum(model["train_seconds"] for model in m["models"].values())
    if name == "p5":
        return (max if side_by_side(m) else sum)(drawer_seconds(m))
    return None


def drawer_seconds(m):
    """P5's two drawers' training times (MSE, sampling), as their histories record them."""
    return trained_seconds(m["history"]), trained_seconds(m["sampler"]["history"])


def side_by_side(m):
    """Whether P5 trained its drawers at the same time (--jobs 2, the default), so that their times overlap."""
    return m.get("jobs", 2) > 1


def step_seconds(name, m):
    """What one step of `make all` from scratch takes at least: its wall time, or the training its checkpoints
    record when a re-run reused them (and so took less)."""
    return max(m["wall_seconds"], training_seconds(name, m) or 0)


def training_time(name, m):
    if name == "p5":
        mse, sampler = drawer_seconds(m)
        return (f"MSE drawer {minutes(mse)}, sampling drawer {minutes(sampler)}"
                + (", side by side" if side_by_side(m) else ", one after the other"))
    seconds = training_seconds(name, m)
    return "-" if seconds is None else minutes(seconds)


def timing(m, pipeline):
    rows = [[f"{k.upper()} (`{v.script}`)" if "/" not in k else f"benchmark (`{v.script}`)",
             str((v.get("machine") or {}).get("threads", "")), minutes(v["wall_seconds"]), training_time(k, v)]
            for k, v in m.items()]
    rows.append(["**total** (each step: its wall time, or its training when a re-run reused it)", "",
                 f"**{pipeline['measured']:.1f} min**", ""])
    return [Text(
        "### Time on this machine\n\n"
        "Wall time of each step of the main job (`make all`) in the run that wrote these results, with the threads "
        "it used, and the training time recorded in the checkpoints (the same when everything was trained in that "
        "run; a re-run that reuses the checkpoints takes minutes, and its wall times say so). A step that ran while "
        "another shared the machine's cores took longer than it would alone; the training-step benchmark above "
        "times each step alone."
        + (" P5 trains its two drawers at the same time, so their training times overlap: each is a part of P5's "
           "wall time, and they do not add up." if side_by_side(m["p5"]) else "") + "\n\n"
        + table(["step", "threads", "wall time", "of which training"], rows, align="lrrl"))]


def machines(m):
    """Where each result file was made: metrics.json "machine" (older files record less)."""
    rows = []
    for name, v in m.items():
        mc = v.get("machine")
        if mc:
            rows.append([name, mc["cpu"], mc["isa"], "yes" if mc["bf16_matmul_in_hardware"] else "no", mc["torch"],
                         str(mc["threads"]), mc["device"] + (f" ({mc['gpu']})" if mc.get("gpu") else ""),
                         mc.get("precision", "-")])
        else:
            rows.append([name, v.get("cpu", "not recorded"), "", "", v.get("torch", ""),
                         str(v.get("threads", v.get("train_threads", ""))), v.get("device", ""), ""])
    return [Text(
        "### Where these results were made\n\n"
        + table(["result", "CPU", "instruction set", "bf16 matrix instructions", "torch", "threads", "device",
                 "training precision"], rows, align="lllllrll") +
        "\n\nOlder result files record less (blank cells). The same CPU and torch reproduce every number bit for bit from the same seed. On another CPU the float "
        "rounding differs (fp32 sums are ordered differently by other vector units), so a rerun there varies at "
        "the level of a change of seed: compare with the spreads over seeds above, not digit by digit.")]
