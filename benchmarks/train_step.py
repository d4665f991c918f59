"""Benchmark of every problem's training step, in fp32 and under the default precision policy, on this CPU.

Each row is a model exactly as the main run trained it (its checkpoint's config: sizes, batch, dropout, rank),
trained by the project's own loop (`common.train.fit`, data path included) for a few steps at a time:

    p1          the 5 x 1024 MLP baseline
    p2          the rank-20 factorized network (U V^T layers), from P1's baseline
    p3          the dense network trained through its rank-20 SVD (subspace tracker, straight-through gradient)
    p4 gru/fc   the denoisers on fresh mixtures of speech windows (random spectra of the real shapes)
    p5 mse/sampler   the two drawers, on one thread each as P5 trains them side by side

For each: milliseconds per step and per epoch (steps of one epoch of the real training set) in fp32 and under the
default policy (`--precision auto`: bf16 autocast where the CPU has bf16 matrix instructions, else fp32), timed
in interleaved rounds (benchmarks/timing.py); the matrix-product FLOPs of one step (counted by torch's FlopCounterMode,
the LSTM's computed from its shape) and the GFLOP/s they achieve, against the matmul peak of each precision
measured in the same run. On a CPU without bf16 instructions bf16 is emulated, thousands of times slower: its peak
is measured on a small product and no training step is run in it.

    python benchmarks/train_step.py             # a few minutes; needs the main run's checkpoints (make all)
    python benchmarks/train_step.py --dry-run   # seconds (needs the scripts' --dry-run checkpoints)

Writes results/bench/train_step.json (runs/dry-run/bench/ with --dry-run).
"""
import copy
import functools
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import p1_svd as p1  # noqa: E402
import p2_factorized as p2  # noqa: E402
import p3_svd_ste as p3  # noqa: E402
import p4_denoise as p4  # noqa: E402
import p5_draw as p5  # noqa: E402
from benchmarks.timing import interleaved, ratio, summary  # noqa: E402
from common.cli import ArgumentParser, UserError, bounded_int, pick_device, run_cli  # noqa: E402
from common.files import ROOT, save_json  # noqa: E402
from common.goals import target  # noqa: E402
from common.mnist.data import load_mnist  # noqa: E402
from common.mnist.finetune import finetune_loss  # noqa: E402
from common.mnist.mlp import MLP, load_baseline  # noqa: E402
from common.precision import autocast, bf16_in_hardware, machine, resolve_precision, torch_threads  # noqa: E402
from common.speech.data import NoisePool, SpeechWindows, pad_batch  # noqa: E402
from common.speech.stft import BINS  # noqa: E402
from common.train import adamw, fit, load_checkpoint, seed_everything  # noqa: E402
from p1_svd import svd  # noqa: E402


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=bounded_int(1, 1000), default=7, help="interleaved rounds per row")
    p.add_argument("--steps", type=bounded_int(1, 1000), default=4, help="training steps per timed call of the loop")
    p.add_argument("--ckpt-dir", type=Path, default=None,
                   help="the main run's checkpoints (default: checkpoints/, or runs/dry-run/checkpoints with "
                        "--dry-run)")
    p.add_argument("--out", type=Path, default=None,
                   help="where train_step.json goes (default: results/bench, or runs/dry-run/bench with --dry-run)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--dry-run", action="store_true", help="two rounds of one step, to check that everything works")
    args = p.parse_args(argv)
    base = ROOT / "runs" / "dry-run" if args.dry_run else ROOT
    args.ckpt_dir = args.ckpt_dir or base / "checkpoints"
    args.out = args.out or (base / "bench" if args.dry_run else ROOT / "results" / "bench")
    if args.dry_run:
        args.rounds, args.steps = 2, 1
    return args


# ----------------------------------------------------------------------------- the matmul peaks

def peak_gflops(dtype, n, device, rounds):
    """GFLOP/s of an n x n x n matrix product in `dtype`: the median of interleaved rounds, with its spread."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    stat = summary(interleaved({"mm": lambda: a @ b}, rounds, device=device)["mm"])
    return {"gflops": 2 * n ** 3 / stat["median"] / 1e9, "n": n, "seconds": stat}


# ----------------------------------------------------------------------------- the rows

def finished(path):
    """The finished training checkpoint at `path` (what the main run trained)."""
    if not path.exists():
        raise UserError(f"{path} not found; this benchmark times the models the main run trained: run `make all` "
                        f"first (or the scripts with --dry-run, then this with --dry-run)")
    return load_checkpoint(path)


def steps_per_epoch(ckpt):
    """Optimizer steps in one epoch of that run: its schedule's length over its epochs."""
    scheduler = ckpt["scheduler"]
    return scheduler.get("total_steps", scheduler.get("T_max")) // ckpt["config"]["epochs"]


def lstm_flops(model, batch, steps):
    """Matrix-product FLOPs of one training step of a drawer's LSTM, which torch's counter does not see (the CPU
    runs it as one fused kernel): 2 per multiply-add, 4 gates per layer, the backward pass twice the forward."""
    total = 0
    for layer in range(model.lstm.num_layers):
        n_in = model.lstm.input_size if layer == 0 else model.lstm.hidden_size
        total += 2 * 4 * batch * steps * model.lstm.hidden_size * (n_in + model.lstm.hidden_size)
    return 3 * total


def row(name, ckpt, model, loss_fn, train_set, *, clip_grad=None, collate_fn=None, threads=0, uncounted=0):
    c = ckpt["config"]
    return {"name": name, "model": model, "loss_fn": loss_fn, "train_set": train_set, "batch_size": c["batch_size"],
            "clip_grad": clip_grad, "collate_fn": collate_fn, "threads": threads, "uncounted_flops": uncounted,
            "steps_per_epoch": steps_per_epoch(ckpt),
            "main_run_epoch_seconds": sorted(h["train_seconds"] for h in ckpt["history"])[len(ckpt["history"]) // 2]}


def rows(ckpt_dir):
    """Every problem's model as its main run trained it, with its loss and training data."""
    data = load_mnist()
    mnist = TensorDataset(*data["train"])
    p1_ckpt = finished(ckpt_dir / "p1_baseline_seed0.pt")
    baseline, config = load_baseline(ckpt_dir, 0)
    factors = [svd(layer.weight.detach()) for layer in baseline.hidden]
    model = MLP(config["width"], config["depth"], config["dropout"])
    loss_fn = p1.BaselineLoss(model, config["shift"], config["tail_decay"], config["tail_rank"], config["refresh"])
    out = [row("p1 MLP", p1_ckpt, model, loss_fn, mnist)]
    ckpt = finished(ckpt_dir / "p2_factorized_seed0.pt")
    c = ckpt["config"]
    out.append(row("p2 factorized", ckpt, p2.factorize(baseline, factors, c["rank"], c["dropout"]),
                   finetune_loss(c["shift"]), mnist))
    ckpt = finished(ckpt_dir / "p3_ste_seed0.pt")
    c = ckpt["config"]
    out.append(row("p3 straight-through", ckpt, p3.ste_network(baseline, c["rank"], c["oversample"],
                                                                c["refresh_every"], c["dropout"], factors),
                   finetune_loss(c["shift"]), mnist))
    g = torch.Generator().manual_seed(0)  # the compute does not depend on what the speech says
    spectra = [torch.randn(300, BINS, dtype=torch.complex64, generator=g).numpy() for _ in range(40)]
    for kind in ("gru", "fc"):
        ckpt = finished(ckpt_dir / f"p4_{kind}.pt")
        c = ckpt["config"]
        loss_fn = functools.partial(p4.mask_loss, noise=NoisePool(spectra), power=c["loss_power"],
                                    band_fraction=c["band_fraction"])
        out.append(row(f"p4 {kind.upper()}", ckpt, p4.build_masker(c["model"]), loss_fn,
                       SpeechWindows(spectra, c["crop"]), clip_grad=1.0, collate_fn=pad_batch))
    patches = TensorDataset(p5.to_patches(data["train"][0]))
    for kind, loss_fn in (("mse", p5.teacher_forced_loss), ("sampler", p5.likelihood_loss)):
        ckpt = finished(ckpt_dir / f"p5_{kind}_seed0.pt")
        c = ckpt["config"]
        model = p5.make_drawer(c)
        out.append(row(f"p5 {kind} drawer", ckpt, model, loss_fn, patches, clip_grad=c["clip_grad"] or None,
                       threads=1, uncounted=lstm_flops(model, c["batch_size"], p5.N_PATCHES - 1)))
    return out


# ----------------------------------------------------------------------------- timing

def step_flops(r, batch):
    """Matrix-product FLOPs of one forward and backward pass on `batch`, in fp32."""
    with FlopCounterMode(display=False) as counter:
        r["loss_fn"](r["model"], batch).backward()
    r["model"].zero_grad(set_to_none=True)
    return counter.get_total_flops() + r["uncounted_flops"]


def time_row(r, precisions, rounds, steps, device):
    """ms per training step of `r` under each precision, `steps` steps of the real loop (`fit`) per timed call."""
    n = steps * r["batch_size"]
    train_set = r["train_set"]
    subset = (TensorDataset(*(t[:n] for t in train_set.tensors)) if isinstance(train_set, TensorDataset)
              else torch.utils.data.Subset(train_set, range(n)))
    first = next(iter(torch.utils.data.DataLoader(subset, batch_size=r["batch_size"], collate_fn=r["collate_fn"])))
    model = r["model"].to(device).train()
    flops = step_flops(r, [t.to(device) if torch.is_tensor(t) else t for t in first])
    calls = {}
    for precision in precisions:  # each precision its own copy of the model and optimizer
        net = copy.deepcopy(model)
        optimizer = adamw(net.parameters(), 1e-4, 0.0, device)
        calls[precision] = functools.partial(fit, net, r["loss_fn"], optimizer, subset, epochs=1,
                                             batch_size=r["batch_size"], seed=0, clip_grad=r["clip_grad"],
                                             collate_fn=r["collate_fn"], device=device, precision=precision, quiet=True)
    times = interleaved(calls, rounds, device=device, min_seconds=0)
    per_step = {p: summary(t, scale=1 / steps) for p, t in times.items()}
    return flops, per_step, times


def forward_backward(r, precision, rounds, device):
    """Seconds of one forward and backward pass of the classifier alone, cross-entropy on a fixed batch (no optimizer,
    no data path, no shifts or tail decay)."""
    model = copy.deepcopy(r["model"]).to(device).train()
    x, y = (t[:r["batch_size"]].to(device) for t in r["train_set"].tensors)

    def once():
        with autocast(precision, device):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return summary(interleaved({"fb": once}, rounds, device=device)["fb"])


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = get_args(argv)
    t_start = time.time()
    device = pick_device(args.device)
    seed_everything(0)
    policy = resolve_precision("auto", device)
    # where the policy is fp32 (no bf16 matrix instructions), fp32 is the policy: one measurement serves both
    precisions = ["fp32"] + (["bf16"] if policy == "bf16" else [])
    table = rows(args.ckpt_dir)
    peaks = {}
    for threads in sorted({r["threads"] for r in table}):
        with torch_threads(threads):
            n = torch.get_num_threads()
            peaks[str(n)] = {"fp32": peak_gflops(torch.float32, 1024, device, args.rounds),
                             # emulated bf16 takes seconds for 1024^3: a small product tells the story
                             "bf16": peak_gflops(torch.bfloat16, 1024 if policy == "bf16" else 128, device,
                                                 args.rounds)}
    results = []
    for r in table:
        with torch_threads(r["threads"]):
            threads = torch.get_num_threads()
            flops, per_step, times = time_row(r, precisions, args.rounds, args.steps, device)
        entry = {"name": r["name"], "threads": threads, "batch_size": r["batch_size"],
                 "steps_per_epoch": r["steps_per_epoch"], "gflop_per_step": flops / 1e9,
                 "main_run_epoch_seconds": r["main_run_epoch_seconds"]}
        for precision, stat in per_step.items():
            peak = peaks[str(threads)][precision]["gflops"]
            entry[precision] = {"seconds_per_step": stat, "seconds_per_epoch": stat["median"] * r["steps_per_epoch"],
                                "gflops": flops / stat["median"] / 1e9,
                                "share_of_peak": flops / stat["median"] / 1e9 / peak}
        entry["policy"] = policy
        if policy != "fp32":
            entry["ratio_policy_over_fp32"] = ratio(times, policy, "fp32")
        results.append(entry)
        print(f"[bench] {r['name']:22s} {threads} thread(s): " + ", ".join(
            f"{p} {1e3 * entry[p]['seconds_per_step']['median']:.1f} ms/step ({entry[p]['gflops']:.0f} GFLOP/s)"
            for p in precisions), flush=True)

    p1 = table[0]
    fb = forward_backward(p1, policy, args.rounds, device)
    fb_flops = results[0]["gflop_per_step"] * 1e9
    p1_fb = {"precision": policy, "seconds": fb, "gflops": fb_flops / fb["median"] / 1e9,
             "share_of_peak": fb_flops / fb["median"] / 1e9 / peaks[str(torch.get_num_threads())][policy]["gflops"]}
    out = {"policy": policy, "bf16_in_hardware": bf16_in_hardware(device), "peaks": peaks, "rows": results,
           "p1_forward_backward": p1_fb, "rounds": args.rounds, "steps_per_call": args.steps,
           "machine": machine(device, policy), "dry_run": args.dry_run}
    if policy == "bf16":
        out["goals"] = {"p1_step_ratio": target("bench.p1_step_ratio_policy_over_fp32",
                                                results[0]["ratio_policy_over_fp32"]["median"]),
                        "p1_forward_backward_share_of_bf16_peak": target("bench.p1_fwd_bwd_share_of_bf16_peak",
                                                                         p1_fb["share_of_peak"])}
    else:
        out["not_measured"] = ("the speed goals of bf16 (P1's step <= 0.4 x fp32, forward+backward >= 60% of the "
                               "bf16 peak): this CPU has no bf16 matrix instructions, so the default policy is fp32")
    out["wall_seconds"] = time.time() - t_start
    save_json(args.out / "train_step.json", out)
    print(f"[bench] matmul peak at {max(peaks)} thread(s): fp32 {peaks[max(peaks)]['fp32']['gflops']:.0f} GFLOP/s, "
          f"bf16 {peaks[max(peaks)]['bf16']['gflops']:.1f} GFLOP/s (n = {peaks[max(peaks)]['bf16']['n']}); "
          f"P1 forward+backward {p1_fb['gflops']:.0f} GFLOP/s in {policy}; wrote {args.out / 'train_step.json'}")


if __name__ == "__main__":
    run_cli(main)
