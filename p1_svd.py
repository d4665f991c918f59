"""Problem 1: compress a 5 x 1024 MNIST classifier with the SVD of its weights.

Train the baseline (784 -> 5 x 1024 ReLU -> 10), decompose each hidden weight once, W_l = U S V^T,
and rebuild the net at rank D: W_l ~ U[:, :D] S[:D, :D] V[:, :D]^T for D in {10, 20, 50, 100, 200, full}.
For each D: test accuracy, parameters (S counted as D numbers; biases and the last layer stay dense),
multiply-adds per image, and CPU latency computed the compressed way (x -> Vh x -> S -> U).

    python p1_svd.py              # 3 seeds at full quality (see README for the time on 2 cores)
    python p1_svd.py --dry-run    # a tiny end-to-end run in seconds (64 units a layer; under runs/dry-run/)

Writes results/p1/{metrics.json, config.json, *.png} and checkpoints/p1_baseline_seed{N}.pt,
which P2, P3 and P5 load. A baseline whose checkpoint is finished and whose config is unchanged is
reused, not retrained. The rank-D network (`compress`) and its counts (`cost`) are in common/svd.py,
since P2 and P3 start from them too.
"""
import time

import torch
from torch.utils.data import TensorDataset

from common.data import load_mnist
from common.mnist_mlp import MLP, baseline_path, classification_loss, classification_metrics
from common.goals import required, target
from common.rank_figures import plot_accuracy_vs_rank, plot_params_vs_rank, plot_singular_values
from common.svd import compress, cost, svd
from common.train import evaluate, init_distributed, is_main, resolve_precision, train_or_reuse
from common.utils import (ArgumentParser, TrainingFlags, add_common_args, add_precision_flag, dropout_rate, machine,
                          mean_std, nonnegative_float, pick_device, positive_float, positive_int, resolve_dirs, run_cli,
                          save_config, save_json, seed_everything)

RANKS = ["10", "20", "50", "100", "200", "full"]
FIGURES = ["accuracy_vs_rank", "params_vs_rank", "singular_values"]  # beside metrics.json, as .png


def rank_arg(text):
    if text == "full":
        return text
    if not text.isdigit() or int(text) < 1:
        raise ValueError
    return text


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="train and compress this many baselines (seeds 0..N-1)")
    train = TrainingFlags(p)
    train.add("--width", type=positive_int, default=1024,
              help="units of each of the 5 hidden layers (the homework's 1024; with --dry-run 64 unless given)")
    train.add("--epochs", type=positive_int, default=12, help="baseline training epochs")
    train.add("--batch-size", type=positive_int, default=512,
              help="baseline mini-batch size (with --dry-run 64 unless given: a few steps of learning)")
    train.add("--lr", type=positive_float, default=2e-3, help="peak AdamW learning rate (one-cycle schedule)")
    train.add("--weight-decay", type=nonnegative_float, default=0.01, help="AdamW weight decay")
    train.add("--dropout", type=dropout_rate, default=0.2, help="dropout after every hidden layer")
    add_precision_flag(train)
    p.add_argument("--ranks", nargs="+", type=rank_arg, default=RANKS, metavar="D",
                   help="ranks to evaluate: positive integers and/or 'full'")
    add_common_args(p, out="results/p1")
    args = p.parse_args(argv)
    if any(r != "full" and int(r) > 784 for r in args.ranks):
        p.error(f"--ranks must be at most 784 (the rank of the first layer) or 'full', got {' '.join(args.ranks)}")
    if args.dry_run:  # a few images (load_mnist) through narrower layers: the real code path in seconds
        p.set_defaults(width=64, batch_size=64)
        args = p.parse_args(argv)
        args.epochs, args.seeds = 1, min(args.seeds, 2)
    return args, train


# ----------------------------------------------------------------------------- 1. the baseline

def train_baseline(seed, data, args, flags, device):
    """Train (or reuse) the 5 x 1024 baseline for `seed`; model selection on the validation split."""
    config = {"depth": 5, **flags, "seed": seed, "train_size": len(data["train"][0])}
    seed_everything(seed)  # the initialisation and the dropout masks
    model = MLP(config["width"], config["depth"], config["dropout"]).to(device)
    val_set = TensorDataset(*data["val"])

    def validate(m):
        return {f"val_{k}": v for k, v in evaluate(m, val_set, classification_metrics, device=device).items()}

    history = train_or_reuse(model, classification_loss, TensorDataset(*data["train"]), validate=validate,
                             monitor="val_acc", mode="max", warmup=0.15, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=seed,
                             ckpt_path=baseline_path(args.ckpt_dir, seed), config=config, resume=args.resume,
                             device=device, precision=args.precision, desc=f"p1 baseline seed {seed}",
                             quiet=args.quiet)
    return model, history


# ----------------------------------------------------------------------------- 2. the rank-D networks

@torch.no_grad()
def rank_d_accuracy(model, ranks, test_set, device):
    """(the SVD of each hidden weight, the baseline's test accuracy, {D: test accuracy of the rank-D network}): one
    decomposition per layer, sliced for every rank (None: full)."""
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    test_acc = evaluate(model, test_set, classification_metrics, device=device)["acc"]
    accs = {str(r or "full"): evaluate(compress(model, factors, r), test_set, classification_metrics,
                                       device=device)["acc"] for r in ranks}
    return factors, test_acc, accs


# ----------------------------------------------------------------------------- 3. latency of the rank-D networks

@torch.no_grad()
def latency_ms(model, batch, device, repeats):
    """Median wall time of one forward pass, in milliseconds."""
    x = torch.rand(batch, 784, device=device)
    for _ in range(min(3, repeats)):  # warm-up
        model(x)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args, train = get_args(argv)
    resolve_dirs(args, "p1")
    device = init_distributed(pick_device(args.device))
    args.precision = resolve_precision(args.precision, device)  # what "auto" means on this machine
    data = load_mnist(dry_run=args.dry_run)
    ranks = [None if r == "full" else int(r) for r in args.ranks]
    test_set = TensorDataset(*data["test"])
    t_start = time.time()

    runs = []
    for seed in range(args.seeds):
        t0 = time.time()
        model, history = train_baseline(seed, data, args, train.values(args), device)
        factors, test_acc, accs = rank_d_accuracy(model, ranks, test_set, device)
        runs.append({"seed": seed, "baseline_test_acc": test_acc, "rank_test_acc": accs, "history": history,
                     "singular_values": [S.tolist() for _, S, _ in factors], "seconds": time.time() - t0})
        if is_main():
            print(f"[p1] seed {seed}: baseline test acc {test_acc:.4f}; " +
                  ", ".join(f"D={d}: {a:.4f}" for d, a in accs.items()))

    if not is_main():
        return
    # cost and latency depend on the shapes only: measured once, on the last seed's networks, one run
    repeats = 1 if args.dry_run else 30
    dense_params, dense_macs = cost(model, 0)
    table = {"dense": {"params": dense_params, "macs": dense_macs,
                       "latency_ms_batch1": latency_ms(model, 1, device, repeats * 10),
                       "latency_ms_batch1000": latency_ms(model, 1000, device, repeats)}}
    for r in ranks:
        net = compress(model, factors, r)
        params, macs = cost(model, r)
        table[str(r or "full")] = {"params": params, "macs": macs,
                                   "latency_ms_batch1": latency_ms(net, 1, device, repeats * 10),
                                   "latency_ms_batch1000": latency_ms(net, 1000, device, repeats)}
    for d, row in table.items():
        row["speedup_batch1"] = table["dense"]["latency_ms_batch1"] / row["latency_ms_batch1"]
        row["speedup_batch1000"] = table["dense"]["latency_ms_batch1000"] / row["latency_ms_batch1000"]
        row["params_ratio"] = row["params"] / dense_params
        if d != "dense":
            row["test_acc"] = mean_std([run["rank_test_acc"][d] for run in runs])

    base = mean_std([run["baseline_test_acc"] for run in runs])
    goals = {"baseline_test_acc": target("p1.baseline_test_acc", base["mean"])}
    if "20" in table:  # the rank P2 and P3 work at
        goals["rank_20_test_acc"] = target("p1.rank_20_test_acc", table["20"]["test_acc"]["mean"], rank=20)
    metrics = {"baseline_test_acc": base, "ranks": table, "seeds": runs, "width": args.width, "device": str(device),
               "threads": torch.get_num_threads(), "machine": machine(device, args.precision),
               "dry_run": args.dry_run, "wall_seconds": time.time() - t_start,
               "required": {"baseline_test_acc": required("p1.baseline_test_acc", base["mean"])}, "goals": goals,
               "train_size": len(data["train"][0]), "figures": {name: f"{name}.png" for name in FIGURES}}
    save_json(args.out / "metrics.json", metrics)
    save_config(args.out / "config.json", args)
    plot_accuracy_vs_rank(metrics, args.out / "accuracy_vs_rank.png")
    plot_params_vs_rank(metrics, args.out / "params_vs_rank.png")
    plot_singular_values(runs[0]["singular_values"], 20, args.out / "singular_values.png")
    print(f"[p1] baseline test acc {base['mean']:.4f} +- {base['std']:.4f}; wrote {args.out}/metrics.json")


if __name__ == "__main__":
    run_cli(main)
