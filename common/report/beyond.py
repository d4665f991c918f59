"""The report's closing part, "Beyond the homework": one screen of what the project measured past the homework's
questions (speed, P4's and P5's design choices, a second drawer for P5), each finding with the result file that
holds it, then what each step took and where the results were made. Each function takes result files
(common.report.results.Metrics) and returns blocks (common.report.blocks); make_report.build puts them in order."""
from ..files import shown_path
from ..train import trained_seconds
from .blocks import Text, esc, minutes, pct, table
from .blocks import heading as titled
from .results import figure


def source(m):
    """A reference to the result file of `m`: a link in markdown and the notebook, its name on the HTML page."""
    path = shown_path(m.file)
    return f"[`{path}`]({path})" if all(c not in path for c in " ()[]<>`") else esc(path)


def heading():
    return [Text(titled(2, "Beyond the homework", "beyond") + "\n\n"
                 "What the project measured past the homework's questions, each with the file that holds it.")]


def findings(p1, rank_bench, step_bench, p3_bench, p4, p4_bench, p5):
    rank = p3_bench["rank"]  # the homework's rank, P2's and P3's
    r20 = rank_bench["ranks"][f"rank {rank}"]
    speed = ", ".join(f"{r20[f'batch_{b}']['speedup']['median']:.1f}x at batch {b}" for b in rank_bench["batches"])
    p1_step = step_bench["rows"][0]
    policy = step_bench["policy"]
    step = (f"P1's step takes {1e3 * p1_step['fp32']['seconds_per_step']['median']:.0f} ms in fp32 "
            f"({pct(p1_step['fp32']['share_of_peak'], 0)} of the fp32 matrix-multiply peak measured in the same run)")
    if policy != "fp32":
        ratio = p1_step[policy]["seconds_per_step"]["median"] / p1_step["fp32"]["seconds_per_step"]["median"]
        step += f" and {ratio:.2f}x that under {policy} autocast, the default policy on this CPU"
    methods = p3_bench["methods"]
    items = [
        f"**Speed of the rank-D networks** ({source(rank_bench)}). Timed side by side in {rank_bench['rounds']} "
        "interleaved rounds (each round runs every network once, in turn, so a change of load hits all alike), the "
        f"rank-{rank} network is faster than the dense one by {speed}, for {r20['flop_ratio']:.1f}x fewer "
        "multiply-adds.",
        f"**Every training step** ({source(step_bench)}): each problem's real step, timed alone; {step}.",
        f"**Other SVDs for P3** ({source(p3_bench)}): `torch.svd_lowrank` costs "
        f"{methods['lowrank']['ratio_to_plain']:.2f}x "
        f"a plain step and keeps a subspace up to {pct(methods['lowrank']['distance_max'], 0)} away from the true "
        f"top {p3_bench['rank']}; the tracker without its extra directions drifts "
        f"{pct(methods['no_oversampling']['distance_max'], 0)} away.",
        p4_findings(p4, p4_bench),
        *p5_findings(p5)]
    return [Text("\n".join(f"- {item}" for item in items)),
            figure(p5, "samples", "The sampling drawer: one sample for each top half of P5's figure; red frame: "
                   "P1's classifier reads another digit.")]


def p4_findings(m, bench):
    by, noise = m["by_noise"]["gru_minus_fc_db"], m["by_noise"]["noise"]
    low, high = min(range(len(by)), key=by.__getitem__), max(range(len(by)), key=by.__getitem__)
    text = (f"**P4 by kind of noise** ({source(m)}): the GRU beats the FC under {sum(x > 0 for x in by)} of "
            f"{len(by)} kinds, by {by[low]:+.2f} dB ({esc(noise[low])}) to {by[high]:+.2f} dB ({esc(noise[high])}).")
    if m["ablation"]:
        rows = m["ablation"]["rows"]
        base = {r["kind"]: r["v_snr_db"]["mean"] for r in rows if r["name"] == r["kind"]}
        change = {r["name"]: r["v_snr_db"]["mean"] - base[r["kind"]] for r in rows if r["name"] != r["kind"]}
        gru = [f"{esc(r['what'])}: {change[r['name']]:+.2f} dB" for r in rows if r["kind"] == "gru" and
               r["name"] in change]
        fc = [change[r["name"]] for r in rows if r["kind"] == "fc" and r["name"] in change]
        epochs = {r["epochs"] for r in rows if r["kind"] == "gru"}
        main = m["models"]["gru"]["config"]["epochs"]
        older = f", each GRU trained {', '.join(map(str, sorted(epochs)))} epochs where the main run trains {main}" \
            if epochs != {main} else ""
        text += (f"\n- **What each choice of P4 is worth** (`python p4_denoise.py --ablation`, one run each, seed "
                 f"{m['ablation']['seed']}{older}): {'; '.join(gru)}"
                 + (f"; the FC's variants move it by {min(fc):+.2f} to {max(fc):+.2f} dB." if fc else "."))
    rtf = bench["cases"]["file_16k_mono_wav"]
    return text + (f"\n- **The `denoise` command** ({source(bench)}) denoises any recording (any rate, stereo, any "
                   f"length, streamed in blocks) at a real-time factor of {rtf['rtf_cpu']:.4f} on "
                   f"{bench['threads']} CPU thread{'s' * (bench['threads'] != 1)}: an "
                   f"hour of audio in {60 * rtf['rtf_cpu']:.1f} minutes.")


def p5_findings(m):
    d, sampler = m["drawing"]["test"], m["sampler"]
    k = sampler["samples_per_image"]
    items = [
        f"**A drawer that commits to one stroke** ({source(m)}). The MSE drawer draws the average of the plausible "
        f"strokes. The sampling drawer ({sampler['params']:,} parameters) has the same LSTM, but its head gives a "
        f"mixture of {sampler['config']['components']} patches of independent pixels, trained by likelihood, and "
        "it draws by picking one component per patch. Its drawings are sharper (sharpness "
        f"{d['sampler']['sharpness']:.3f}, the MSE drawer's {d['mse']['sharpness']:.3f}, the originals' "
        f"{d['original']['sharpness']:.3f}); the closest of {k} samples is nearer the truth (bottom-half MSE "
        f"{d['sampler']['best_of_k_bottom_mse']:.4f} against {d['mse']['bottom_mse']:.4f}), though a single sample "
        f"is farther ({d['sampler']['bottom_mse']:.4f}) and keeps its class less often "
        f"({pct(d['sampler']['class_kept'], 1)} against {pct(d['mse']['class_kept'], 1)})."]
    if m["ablation"]:
        rows = m["ablation"]["rows"]
        steps = [r for r in rows if r["val_mse_change"] is not None]
        biggest = min(steps, key=lambda r: r["val_mse_change"]) if steps else None
        items.append(
            f"**From the homework's LSTM to the MSE drawer** (`python p5_draw.py --ablation`, one change at a time, "
            f"{m['ablation']['epochs']} epochs each): the validation MSE goes from {rows[0]['val_mse']:.4f} to "
            f"{rows[-1]['val_mse']:.4f}"
            + (f"; the largest step is {esc(biggest['change'])} ({biggest['val_mse_change']:+.4f})." if biggest
               else "."))
    return items


# ----------------------------------------------------------------------------- time and machines

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
    record when a re-run reused them (and so took less). Configs hold no time."""
    if name.endswith("/config"):
        return 0
    return max(m["wall_seconds"], training_seconds(name, m) or 0)


def timing(m, pipeline):
    steps = {k: v for k, v in m.items() if not k.endswith("/config")}
    rows = []
    for k, v in steps.items():
        seconds = training_seconds(k, v)
        if k == "p5":
            mse, sampler = drawer_seconds(v)
            trained = (f"{minutes(mse)} + {minutes(sampler)}" + (" at once" if side_by_side(v) else ""))
        else:
            trained = "-" if seconds is None else minutes(seconds)
        rows.append([f"{k.upper()}" if "/" not in k else "benchmark", f"`{v.script}`",
                     str((v.get("machine") or {}).get("threads", "")), minutes(v["wall_seconds"]), trained])
    rows.append(["**all, from scratch**", "`make all`", "", f"**{pipeline['measured']:.1f} min**", ""])
    return [Text(
        titled(3, "What each step took", "beyond-time") + "\n\n"
        "*Wall time* is how long the step ran in the run that wrote these results. *Training* is the training "
        "time recorded in the step's checkpoints when its models were trained; a run that finds a finished "
        "checkpoint with the same configuration reuses it, so its wall time can be much shorter than its training. "
        "The last row adds, for each step, the longer of the two: what `make all` from scratch would take with the "
        "threads each step used.\n\n"
        + table(["step", "script", "threads", "wall time", "training"], rows, align="llrrr"))]


def machines(m):
    """Where the result files were made: one row per distinct machine (metrics.json "machine")."""
    seen = {}
    for name, v in m.items():
        mc = v.get("machine")
        if not mc:
            continue
        key = (mc["cpu"], mc["isa"], mc["bf16_matmul_in_hardware"], mc["torch"], mc["device"], mc.get("gpu"))
        entry = seen.setdefault(key, {"files": [], "precision": set()})
        entry["files"].append(name)
        if mc.get("precision"):
            entry["precision"].add(mc["precision"])
    rows = [[esc(cpu), esc(isa), "yes" if bf16 else "no", esc(torch), esc(device) + (f" ({esc(gpu)})" if gpu else ""),
             ", ".join(sorted(e["precision"])) or "-", ", ".join(e["files"])]
            for (cpu, isa, bf16, torch, device, gpu), e in seen.items()]
    return [Text(
        titled(3, "Where these results were made", "beyond-machines") + "\n\n"
        + table(["CPU", "instruction set", "bf16 matrix instructions", "torch", "device", "training precision",
                 "results"], rows, align="lllllll") +
        "\n\nThe same CPU and torch reproduce every fp32 number bit for bit from the same seed. Another CPU rounds "
        "differently (its vector units sum in another order), so a rerun there varies at the level of a change of "
        "seed: compare with the spreads over seeds above, not digit by digit.")]
