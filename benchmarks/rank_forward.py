"""Benchmark for Problem 1: how much faster the rank-D network answers than the dense baseline, on this CPU.

The homework says the rank-D network "can reduce the amount of computation". Its multiply-adds per image fall
from 5.0 M (dense) to 0.22 M at rank 20, 23x fewer; this measures how much of that the CPU turns into time.
For one trained baseline (P1's seed 0) and its rank-D networks (p1_svd.compress, one SVD per layer),
one forward pass under torch.inference_mode() at batch 1 (one image: latency) and batch 1000 (throughput):

    dense         the baseline MLP as trained (its own forward)
    rank D        P1's rank-D network for every D, through its fast inference path (common/mnist/fused.py)

All variants of a batch size run in interleaved rounds (benchmarks/timing.py), so a busy moment slows them alike;
every figure is the median over the rounds with its spread, and each speed-up is computed per round, then
summarised. The whole measurement runs twice (two passes): the second pass says whether the figures reproduce
within their spread.

    python benchmarks/rank_forward.py             # about a minute; needs checkpoints/p1_baseline_seed0.pt
    python benchmarks/rank_forward.py --dry-run   # seconds (needs `python p1_svd.py --dry-run`)

Writes results/bench/rank_forward.json (runs/dry-run/bench/ with --dry-run).
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import interleaved, ratio, summary  # noqa: E402
from common.cli import ArgumentParser, UserError, bounded_int, pick_device, run_cli, thread_count  # noqa: E402
from common.files import ROOT, save_json  # noqa: E402
from common.goals import target  # noqa: E402
from common.mnist.fused import fast  # noqa: E402
from common.mnist.mlp import load_baseline  # noqa: E402
from common.precision import machine, torch_threads  # noqa: E402
from p1_svd import compress, cost, default_ranks, dense_cost, rank_name, svd  # noqa: E402



def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=bounded_int(0, 99), default=0, help="the P1 baseline to compress")
    p.add_argument("--batches", type=bounded_int(1, 10_000), nargs="+", default=[1, 1000], help="batch sizes to time")
    p.add_argument("--rounds", type=bounded_int(1, 1000), default=30, help="interleaved rounds per batch size and pass")
    p.add_argument("--passes", type=bounded_int(1, 100), default=2, help="independent repeats of the whole measurement")
    p.add_argument("--threads", type=thread_count(), default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--ckpt-dir", type=Path, default=None,
                   help="where P1's baseline is (default: checkpoints/, or runs/dry-run/checkpoints with --dry-run)")
    p.add_argument("--out", type=Path, default=None,
                   help="where rank_forward.json goes (default: results/bench, or runs/dry-run/bench with --dry-run)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--dry-run", action="store_true", help="a few rounds, to check that everything works")
    args = p.parse_args(argv)
    base = ROOT / "runs" / "dry-run" if args.dry_run else ROOT
    args.ckpt_dir = args.ckpt_dir or base / "checkpoints"
    args.out = args.out or (base / "bench" if args.dry_run else ROOT / "results" / "bench")
    if args.dry_run:
        args.rounds, args.passes = 3, 2
    return args


def measure(networks, batch, rounds, device):
    """One pass at one batch size: {name: per-variant summary (seconds)}, and the speed-up of each over dense."""
    x = torch.rand(batch, 784, device=device)
    with torch.inference_mode():
        times = interleaved({name: (lambda net=net: net(x)) for name, net in networks.items()}, rounds,
                            device=device)
    return {name: {"seconds": summary(t), "speedup": ratio(times, "dense", name)} for name, t in times.items()}


def reproduced(first, second):
    """Whether the second pass's median speed-up lies within the first pass's interquartile range, or vice versa."""
    a, b = first["speedup"], second["speedup"]
    return a["q1"] <= b["median"] <= a["q3"] or b["q1"] <= a["median"] <= b["q3"]


def main(argv=None):
    args = get_args(argv)
    t_start = time.time()
    device = pick_device(args.device)
    baseline, config = load_baseline(args.ckpt_dir, args.seed)
    baseline = baseline.to(device)
    factors = [svd(layer.weight.detach()) for layer in baseline.hidden]  # once, sliced for every rank
    width = baseline.head.in_features
    ranks = {rank_name(r, width): r for r in default_ranks(width)}  # P1's
    networks = {"dense": baseline,
                **{f"rank {name}": fast(compress(baseline, factors, r)) for name, r in ranks.items()}}
    macs = {"dense": dense_cost(baseline)[1], **{f"rank {name}": cost(baseline, r)[1] for name, r in ranks.items()}}
    # the arithmetic the rank-D network skips, checked before it is timed: fp32 logits agree with the dense ones
    # to rounding at full rank
    x = torch.rand(64, 784, device=device)
    with torch.inference_mode():
        full_error = (networks["rank full"](x) - baseline(x)).abs().max().item()
    if full_error > 1e-3:
        raise UserError(f"the full-rank network differs from the baseline by {full_error:.2g}; not timing it")

    with torch_threads(args.threads):
        threads = torch.get_num_threads()
        passes = [{str(batch): measure(networks, batch, args.rounds, device) for batch in args.batches}
                  for _ in range(args.passes)]
    table = {}
    for name in networks:
        table[name] = {"macs": macs[name], "flop_ratio": macs["dense"] / macs[name]}
        for batch in map(str, args.batches):
            first, *rest = [p[batch][name] for p in passes]
            table[name][f"batch_{batch}"] = {**first, "passes": [p[batch][name] for p in passes],
                                            "reproduced": all(reproduced(first, other) for other in rest)}
    result = {"baseline": {"seed": args.seed, "config": config}, "ranks": table, "batches": args.batches,
              "rounds": args.rounds, "passes": args.passes, "threads": threads, "machine": machine(device),
              "dry_run": args.dry_run, "full_rank_max_abs_difference": full_error,
              "wall_seconds": time.time() - t_start}
    if "rank 20" in table and {1, 1000} <= set(args.batches):
        result["goals"] = {f"rank_20_speedup_batch_{b}": target(f"p1.rank_20_speedup_batch_{b}",
                                                                 table["rank 20"][f"batch_{b}"]["speedup"]["median"],
                                                                 threads=threads)
                           for b in (1, 1000)}
    save_json(args.out / "rank_forward.json", result)
    print_table(result)
    print(f"[bench] wrote {args.out / 'rank_forward.json'}")


def print_table(result):
    print(f"one forward pass, {result['threads']} threads on {result['machine']['cpu']}: median of "
          f"{result['rounds']} interleaved rounds (spread = interquartile range / median), "
          f"pass 1 of {result['passes']}")
    head = "".join(f"{f'batch {b}: ms':>20s}{'speed-up':>16s}" for b in result["batches"])
    print(f"{'network':12s}{'FLOP ratio':>11s}{head}")
    for name, row in result["ranks"].items():
        cells = ""
        for b in result["batches"]:
            r = row[f"batch_{b}"]
            ms, up = r["seconds"], r["speedup"]
            cells += f"{1e3 * ms['median']:13.4f} ({100 * ms['spread']:3.0f}%)"
            cells += f"{up['median']:9.1f}x ({100 * up['spread']:2.0f}%)" + ("" if r["reproduced"] else "!")
        print(f"{name:12s}{row['flop_ratio']:10.1f}x{cells}")
    print("!: the second pass's speed-up fell outside the first pass's spread")


if __name__ == "__main__":
    run_cli(main)
