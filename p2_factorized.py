"""Problem 2: fine-tune the rank-20 network as two factors per layer, U (out x 20) and V (in x 20).

Each hidden layer of P1's baseline becomes x -> U (V^T x) + b, initialised from P1's SVD W = U S Vh as
U <- U[:, :20], V^T <- S[:20, :20] Vh[:20] (S folded into V, not dropped: the network starts as exactly
P1's rank-20 network). Then U, V, the biases and the last layer are fine-tuned by backprop at a small
learning rate; the epoch with the best validation accuracy is kept and scored once on the test set.

    python p2_factorized.py              # 3 seeds (seed k starts from checkpoints/p1_baseline_seed{k}.pt)
    python p2_factorized.py --dry-run    # a tiny end-to-end run in seconds (needs `python p1_svd.py --dry-run`)

Writes results/p2/{metrics.json, config.json, finetune_curve.png} and checkpoints/p2_factorized_seed{N}.pt;
a finished fine-tune whose config (the baseline's included) is unchanged is reused, not retrained.

Parameters: the factorized layers store U and V only, rank * (in + out) + out numbers each: 215,370 for the
whole network. P1 counts its rank-20 network with S kept apart (20 more numbers per layer): 215,470.
"""
import time

import torch
import torch.nn as nn

from common.cli import (ArgumentParser, TrainingFlags, add_common_args, bounded_float, bounded_int, dropout_rate,
                        nonnegative_float, pick_device, positive_float, run_cli)
from common.files import resolve_dirs, save_config, save_json
from common.goals import required, target
from common.mnist.data import load_mnist
from common.mnist.finetune import finetune_classifier, finetune_scores, plot_finetune_curve, summarize
from common.mnist.mlp import load_baseline, with_hidden
from common.precision import add_precision_flag, machine, resolve_precision
from common.train import init_distributed, is_main, n_params
from p1_svd import cost, dense_cost, svd


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=bounded_int(1, 100), default=3, help="fine-tune this many baselines (seeds 0..N-1)")
    train = TrainingFlags(p)
    train.add("--rank", type=bounded_int(1, 784), default=20,
              help="columns of U and V in every hidden layer (at most 784, the rank of the first layer)")
    train.add("--epochs", type=bounded_int(1, 1000), default=20, help="fine-tuning epochs")
    train.add("--batch-size", type=bounded_int(1, 8192), default=256, help="mini-batch size")
    train.add("--lr", type=positive_float, default=3e-4,
              help="AdamW learning rate at its peak (after --warmup), then cosine decay; the baseline trained at 2e-3")
    train.add("--warmup", type=bounded_float(0, 0.9), default=0.0,
              help="share of the steps over which the learning rate rises from lr/25 to lr (0: it starts at lr)")
    train.add("--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay")
    train.add("--dropout", type=dropout_rate, default=0.2,
              help="dropout after every hidden layer while fine-tuning (the baseline trained with 0.2)")
    train.add("--shift", type=bounded_int(0, 14), default=1,
              help="shift each training digit by up to this many pixels each way, as the baseline trained (0: off)")
    add_precision_flag(train)
    add_common_args(p, out="results/p2")
    args = p.parse_args(argv)
    if args.dry_run:  # with a few batches (load_mnist): the real architecture and code path in seconds
        args.epochs, args.seeds = 1, min(args.seeds, 2)
    return args, train


# ----------------------------------------------------------------------------- 1. the factorized layer

class FactorizedLinear(nn.Module):
    """x -> U (V^T x) + b with trainable U (out, rank), V (in, rank) and b: rank * (in + out) + out numbers."""

    def __init__(self, U, V, bias):
        super().__init__()
        self.U = nn.Parameter(U.detach().clone().contiguous())        # (out, rank)
        self.V = nn.Parameter(V.detach().clone().contiguous())        # (in, rank)
        self.bias = nn.Parameter(bias.detach().clone().contiguous())  # (out,)

    @classmethod
    def from_svd(cls, U, S, Vh, bias, rank):
        """The rank-`rank` truncation of W = U diag(S) Vh: U[:, :rank] and V^T = diag(S[:rank]) Vh[:rank]."""
        return cls(U[:, :rank], (S[:rank, None] * Vh[:rank]).T, bias)

    def forward(self, x):  # (batch, in) -> (batch, out)
        return torch.addmm(self.bias, x @ self.V, self.U.T)

    def extra_repr(self):
        return f"in={self.V.shape[0]}, out={self.U.shape[0]}, rank={self.U.shape[1]}"


def factorize(model, factors, rank, dropout=0.0):
    """A trainable copy of `model` whose hidden layers are FactorizedLinear, from one SVD per layer."""
    return with_hidden(model, [FactorizedLinear.from_svd(U, S, Vh, layer.bias, rank)
                               for (U, S, Vh), layer in zip(factors, model.hidden)], dropout)


# ----------------------------------------------------------------------------- 2. fine-tuning

def finetune(seed, data, args, flags, device):
    """Factorize baseline `seed` at args.rank and fine-tune it (or reuse a finished fine-tune).

    Returns (the fine-tuned network in eval mode, its history, the network before fine-tuning, the baseline).
    """
    baseline, base_config = load_baseline(args.ckpt_dir, seed, device)
    factors = [svd(layer.weight.detach()) for layer in baseline.hidden]
    initial = factorize(baseline, factors, args.rank).eval()
    config = {**flags, "seed": seed, "train_size": len(data["train"][0]), "baseline": base_config}
    path = args.ckpt_dir / f"p2_factorized_seed{seed}.pt"
    model = factorize(baseline, factors, args.rank, args.dropout)
    history = finetune_classifier(model, data, args, seed=seed, path=path, config=config, device=device,
                                  desc=f"p2 seed {seed}", warmup=args.warmup)
    return model, history, initial, baseline


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args, train = get_args(argv)
    resolve_dirs(args, "p2")
    device = init_distributed(pick_device(args.device))
    args.precision = resolve_precision(args.precision, device)  # what "auto" means on this machine
    data = load_mnist(dry_run=args.dry_run)
    t_start = time.time()

    runs = []
    for seed in range(args.seeds):
        t0 = time.time()
        model, history, initial, baseline = finetune(seed, data, args, train.values(args), device)
        run = {"seed": seed, **finetune_scores(baseline, initial, model, history, data, device),
               "history": history, "seconds": time.time() - t0}
        runs.append(run)
        if is_main():
            print(f"[p2] seed {seed}: rank-{args.rank} test acc {run['initial_test_acc']:.4f} before fine-tuning "
                  f"(= P1), {run['test_acc']:.4f} after (baseline {run['baseline_test_acc']:.4f})")

    if not is_main():
        return
    params = n_params(model, buffers=True)  # everything the factorized network stores
    metrics = {
        "rank": args.rank,
        **summarize(runs),
        "params": params,
        "params_p1": cost(baseline, args.rank)[0],
        "params_dense": dense_cost(baseline)[0],
        "params_note": "params counts what the factorized network stores (S folded into V); params_p1 is P1's "
                       f"count of the same rank-{args.rank} network with S stored apart, {args.rank} more "
                       "numbers per hidden layer",
        "seeds": runs, "device": str(device), "threads": torch.get_num_threads(),
        "machine": machine(device, args.precision), "dry_run": args.dry_run, "wall_seconds": time.time() - t_start}
    acc, initial = metrics["test_acc"]["mean"], metrics["initial_test_acc"]["mean"]
    metrics.update(required={"test_acc": required("p2.test_acc", acc, bound=initial)},  # better than P1 at this rank
                   goals={"test_acc": target("p2.test_acc", acc)},
                   figures={"finetune_curve": "finetune_curve.png"})
    save_json(args.out / "metrics.json", metrics)
    save_config(args.out / "config.json", args)
    make_figures(metrics, args.out)
    acc = metrics["test_acc"]
    print(f"[p2] rank-{args.rank} factorized network, {params:,} parameters: test acc {acc['mean']:.4f} "
          f"+- {acc['std']:.4f} (P1 at D={args.rank}: {metrics['initial_test_acc']['mean']:.4f}); "
          f"wrote {args.out}/metrics.json")


def make_figures(metrics, out):
    plot_finetune_curve(metrics, out / "finetune_curve.png", xlabel="fine-tuning epoch", ylabel="accuracy (%)",
                        title=f"P2: fine-tuning the rank-{metrics['rank']} factorized network")


if __name__ == "__main__":
    run_cli(main)
