"""Problem 1: compress a 5 x 1024 MNIST classifier with the SVD of its weights.

Train the baseline (784 -> 5 x 1024 ReLU -> 10), decompose each hidden weight once, W_l = U S V^T,
and rebuild the net at rank D: W_l ~ U[:, :D] S[:D, :D] V[:, :D]^T for D in {10, 20, 50, 100, 200, full}.
For each D: test accuracy, parameters (S counted as D numbers; biases and the last layer stay dense) and
multiply-adds per image. (What the rank-D networks' forward passes cost in time: benchmarks/rank_forward.py.)

The baseline's recipe is any technique taught, chosen to be both accurate and compressible: digits shifted by
up to a pixel (accuracy), and a spectral-tail decay that pulls each weight's energy beyond rank 20 towards zero
(what the rank-20 network drops). Shifts alone raise the baseline and lower rank 20; the decay alone the opposite.

    python p1_svd.py              # 3 seeds at full quality (see README for the time on 2 cores)
    python p1_svd.py --dry-run    # a tiny end-to-end run in seconds (64 units a layer; under runs/dry-run/)

Writes results/p1/{metrics.json, config.json, *.png} and checkpoints/p1_baseline_seed{N}.pt,
which P2, P3 and P5 load. A baseline whose checkpoint is finished and whose config is unchanged is
reused, not retrained. P2 and P3 start from this script's SVD, rank-D network (`compress`) and counts (`cost`).
"""
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from common.ablation import read_ablation
from common.cli import (ArgumentParser, TrainingFlags, add_common_args, bounded_int, dropout_rate, nonnegative_float,
                        pick_device, positive_float, run_cli)
from common.files import resolve_dirs, save_config, save_json
from common.goals import mean_std, required, target
from common.mnist.data import load_mnist, shifted
from common.mnist.figures import plot_accuracy_vs_rank, plot_params_vs_rank, plot_singular_values
from common.mnist.fused import fast
from common.mnist.mlp import (DEPTH, MAX_WIDTH, MLP, baseline_path, classification_loss, classification_metrics,
                              with_hidden)
from common.precision import add_precision_flag, full_precision, machine, resolve_precision
from common.train import (best_record, evaluate, init_distributed, is_main, seed_everything, train_or_reuse,
                          trained_seconds, unwrap)

RANKS = [10, 20, 50, 100, 200, "full"]  # the homework's D; "full" keeps every singular value
FIGURES = ["accuracy_vs_rank", "params_vs_rank", "singular_values"]  # beside metrics.json, as .png


def rank_arg(text):
    """A rank D from the command line: a positive integer, or "full"."""
    if text == "full":
        return text
    if not text.isdigit() or int(text) < 1:
        raise ValueError
    return int(text)


def default_ranks(width):
    """The homework's D that a network of this width has, as ints (full rank: the width), ascending."""
    return sorted({width if r == "full" else r for r in RANKS if r == "full" or r < width})


def rank_name(rank, width):
    """How results name a rank: "full" for the hidden layers' width (every singular value kept), else the number."""
    return "full" if rank == width else str(rank)


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=bounded_int(1, 100), default=3,
                   help="train and compress this many baselines (seeds 0..N-1)")
    train = TrainingFlags(p)
    train.add("--width", type=bounded_int(1, MAX_WIDTH), default=1024,
              help="units of each of the 5 hidden layers (the homework's 1024; with --dry-run 64 unless given)")
    train.add("--epochs", type=bounded_int(1, 1000), default=16, help="baseline training epochs")
    train.add("--batch-size", type=bounded_int(1, 8192), default=512,
              help="baseline mini-batch size (with --dry-run 64 unless given: a few steps of learning)")
    train.add("--lr", type=positive_float, default=2e-3, help="peak AdamW learning rate (one-cycle schedule)")
    train.add("--weight-decay", type=nonnegative_float, default=0.01, help="AdamW weight decay")
    train.add("--dropout", type=dropout_rate, default=0.2, help="dropout after every hidden layer")
    train.add("--shift", type=bounded_int(0, 14), default=1,
              help="move each training digit by a random whole number of pixels, up to this many each way (0: off)")
    train.add("--tail-decay", type=nonnegative_float, default=2e-3,
              help="strength of the spectral-tail decay, (decay / 2) sum_l ||W_l - its rank-R part||^2 (0: off)")
    train.add("--tail-rank", type=bounded_int(1, 784), default=20, help="R: the rank whose tail the decay shrinks")
    train.add("--refresh", type=bounded_int(1, 100_000), default=50,
              help="recompute the top-R singular vectors of each weight every this many steps")
    add_precision_flag(train)
    p.add_argument("--ablation", action="store_true",
                   help="also train the recipe's ablation: seed 0 without the shifts, the tail decay, or both")
    p.add_argument("--ranks", nargs="+", type=rank_arg, default=None, metavar="D",
                   help="ranks to evaluate: positive integers up to --width, and/or 'full' (default: 10 20 50 100 200 "
                        "full, those below the width)")
    add_common_args(p, out="results/p1")
    args = p.parse_args(argv)
    if args.dry_run:  # a few images (load_mnist) through narrower layers: the real code path in seconds
        p.set_defaults(width=64, batch_size=64)
        args = p.parse_args(argv)
        args.epochs, args.seeds = 1, min(args.seeds, 2)
    if args.ranks is None:
        args.ranks = default_ranks(args.width)
    if any(r != "full" and r > args.width for r in args.ranks):
        p.error(f"--ranks must be at most the width ({args.width}) or 'full', got {' '.join(map(str, args.ranks))}")
    args.ranks = sorted({args.width if r == "full" else r for r in args.ranks})  # ints; the width is full rank
    return args, train


# ----------------------------------------------------------------------------- 1. the baseline

class BaselineLoss(nn.Module):
    """Cross-entropy on shifted digits plus the spectral-tail decay
        (tail_decay / 2) sum_l ||W_l - U_l U_l^T W_l V_l V_l^T||_F^2,
    U_l, V_l the top-R singular vectors of W_l: the energy the rank-R network would drop. The bases are recomputed
    (exact SVD, fp32) every `refresh` steps and held constant in between; they and the step count are this module's
    state, saved in the checkpoint, so a resumed run continues exactly."""

    def __init__(self, model, shift, tail_decay, tail_rank, refresh):
        super().__init__()
        self.shift, self.tail_decay, self.refresh = shift, tail_decay, refresh
        for i, layer in enumerate(model.hidden):
            out_features, in_features = layer.weight.shape
            rank = min(tail_rank, out_features, in_features)
            self.register_buffer(f"U{i}", torch.zeros(out_features, rank))  # (out, R)
            self.register_buffer(f"V{i}", torch.zeros(in_features, rank))   # (in, R)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, model, batch):
        x, y = batch
        loss = classification_loss(model, (shifted(x, self.shift), y))
        if not self.tail_decay:
            return loss
        weights = [layer.weight for layer in unwrap(model).hidden]
        bases = [(getattr(self, f"U{i}"), getattr(self, f"V{i}")) for i in range(len(weights))]
        with full_precision(x.device):
            if self.step % self.refresh == 0:
                with torch.no_grad():
                    for W, (U, V) in zip(weights, bases):
                        U_all, _, Vh_all = torch.linalg.svd(W, full_matrices=False)
                        U.copy_(U_all[:, :U.shape[1]])
                        V.copy_(Vh_all[:V.shape[1]].T)
            self.step += 1
        if torch.is_autocast_enabled(x.device.type):  # the bf16 policy: the tail in bf16, one product each way
            dtype = torch.get_autocast_dtype(x.device.type)
            tail = sum(TailEnergy.apply(W, U, V, dtype) for W, (U, V) in zip(weights, bases))
        else:
            tail = sum((W - U @ (U.T @ W @ V) @ V.T).square().sum() for W, (U, V) in zip(weights, bases))
        return loss + 0.5 * self.tail_decay * tail


class TailEnergy(torch.autograd.Function):
    """||W - U U^T W V V^T||_F^2 for orthonormal U (out, R) and V (in, R), computed in `dtype`, and its gradient
    2 (W - U U^T W V V^T): the tail's own projection adds nothing to it (U U^T (W - U U^T W V V^T) V V^T = 0), so
    the backward pass is the saved tail times 2, where autograd through the formula takes four more products."""

    @staticmethod
    def forward(ctx, W, U, V, dtype):
        ctx.W_dtype = W.dtype
        W, U, V = (t.to(dtype) for t in (W, U, V))
        tail = torch.addmm(W, U @ (U.T @ W @ V), V.T, alpha=-1)  # (out, in)
        ctx.save_for_backward(tail)
        return torch.linalg.vector_norm(tail, dtype=torch.promote_types(dtype, torch.float32)) ** 2

    @staticmethod
    def backward(ctx, grad):
        tail, = ctx.saved_tensors
        return torch.mul(tail, 2 * grad, out=torch.empty_like(tail, dtype=ctx.W_dtype)), None, None, None


def train_baseline(seed, data, flags, args, device, name="baseline"):
    """Train (or reuse) the baseline of `seed` with the training `flags` (TrainingFlags' values); model selection on
    the validation split. `name`: "baseline", or an ablation row's (its own checkpoint)."""
    config = {"depth": DEPTH, **flags, "seed": seed, "train_size": len(data["train"][0])}
    seed_everything(seed)  # the initialisation and the dropout masks
    model = MLP(config["width"], config["depth"], config["dropout"]).to(device)
    loss = BaselineLoss(model, flags["shift"], flags["tail_decay"], flags["tail_rank"], flags["refresh"]).to(device)
    val_set = TensorDataset(*data["val"])

    def validate(m):
        return {f"val_{k}": v for k, v in evaluate(m, val_set, classification_metrics, device=device).items()}

    ckpt = baseline_path(args.ckpt_dir, seed) if name == "baseline" else args.ckpt_dir / f"p1_{name}_seed{seed}.pt"
    history = train_or_reuse(model, loss, TensorDataset(*data["train"]), validate=validate, monitor="val_acc",
                             mode="max", warmup=0.15, epochs=flags["epochs"], batch_size=flags["batch_size"],
                             lr=flags["lr"], weight_decay=flags["weight_decay"], seed=seed, ckpt_path=ckpt,
                             config=config, resume=args.resume, overwrite=args.overwrite, device=device,
                             precision=args.precision, desc=f"p1 {name} seed {seed}", quiet=args.quiet)
    return model, history


# The recipe's ablation (seed 0, the main run's schedule): what the shifts and the tail decay each do to the baseline
# and to its rank-20 network. The last row, both, is the main run's seed 0. `python p1_svd.py --ablation` trains them.
ABLATION = [("plain", "cross-entropy and AdamW only", {"shift": 0, "tail_decay": 0.0}),
            ("shifts", "+ random shifts", {"tail_decay": 0.0}),
            ("tail_decay", "+ spectral-tail decay", {"shift": 0}),
            ("both", "+ both (this script's defaults)", {})]
ABLATION_RUN = "python p1_svd.py --ablation"  # what writes ablation.json


def ablation_rows(data, flags, args, ranks, test_set, device, final):
    """One record per ABLATION row: its baseline's and its rank-D networks' test accuracies, its kept epoch and its
    training time (`final`: the main run's seed 0, the row with no change)."""
    rows = []
    for name, what, overrides in ABLATION:
        if overrides:
            model, history = train_baseline(0, data, {**flags, **overrides}, args, device, name=f"ablation_{name}")
            _, test_acc, accs = rank_d_accuracy(model, ranks, test_set, device)
        else:
            test_acc, accs, history = final["baseline_test_acc"], final["rank_test_acc"], final["history"]
        rows.append({"name": name, "what": what, "overrides": overrides, "baseline_test_acc": test_acc,
                     "rank_test_acc": accs, "best_epoch": best_record(history, "val_acc", "max")["epoch"],
                     "train_seconds": trained_seconds(history)})
        print(f"[p1] ablation {name}: baseline {test_acc:.4f}, rank 20 {accs.get('20', float('nan')):.4f}")
    return rows


# ----------------------------------------------------------------------------- 2. the rank-D networks

def svd(W):
    """Thin SVD (U, S, Vh) of a (out, in) weight, W = U diag(S) Vh: U (out, k), S (k,), Vh (k, in), k = min(out, in).
    Computed once per layer and sliced for every rank."""
    return torch.linalg.svd(W, full_matrices=False)


def truncate(U, S, Vh, rank):
    """The first `rank` singular triplets: U[:, :D], S[:D], Vh[:D]; a rank >= k keeps them all."""
    return U[:, :rank], S[:rank], Vh[:rank]


class LowRankLinear(nn.Module):
    """x -> U (S * (Vh x)) + b: a linear layer stored and computed as its rank-D factors, D * (in + out + 1)
    numbers and multiply-adds instead of in * out."""

    def __init__(self, U, S, Vh, bias):
        super().__init__()
        self.register_buffer("U", U.contiguous())    # (out, D)
        self.register_buffer("S", S.contiguous())    # (D,)
        self.register_buffer("Vh", Vh.contiguous())  # (D, in)
        self.register_buffer("bias", bias.detach().clone())  # (out,)

    def forward(self, x):  # (batch, in) -> (batch, out)
        return F.linear(F.linear(x, self.Vh).mul_(self.S), self.U, self.bias)  # (batch, D) scaled by S, then out

    def extra_repr(self):
        return f"in={self.Vh.shape[1]}, out={self.U.shape[0]}, rank={self.S.numel()}"


def compress(model, factors, rank):
    """P1's rank-D network: a copy of the MLP `model` whose hidden layers are LowRankLinear at `rank`,
    from factors [(U, S, Vh), ...], the SVD of each hidden weight. The last layer is copied as it is; eval mode."""
    layers = [LowRankLinear(*truncate(U, S, Vh, rank), layer.bias) for (U, S, Vh), layer in zip(factors, model.hidden)]
    return with_hidden(model, layers).eval()


def low_rank_cost(shapes, rank):
    """(parameters, multiply-adds per input vector) of the layers `shapes` [(out, in), ...] at `rank`.

    Each layer stores U (out x D), S (D numbers), Vh (D x in) and its bias (out), and computes
    Vh x (D * in), then S (D), then U (out * D), with D = min(rank, out, in).
    """
    params = macs = 0
    for out, n_in in shapes:
        d = min(rank, out, n_in)
        params += d * (n_in + 1 + out) + out
        macs += d * (n_in + 1 + out)
    return params, macs


def cost(model, rank):
    """(parameters, multiply-adds per image) of the MLP `model` with its hidden layers at `rank`; the last layer
    stays dense."""
    params, macs = low_rank_cost([tuple(layer.weight.shape) for layer in model.hidden], rank)
    return params + model.head.weight.numel() + model.head.bias.numel(), macs + model.head.weight.numel()


def dense_cost(model):
    """(parameters, multiply-adds per image) of the dense MLP `model` itself."""
    layers = [*model.hidden, model.head]
    params = sum(layer.weight.numel() + layer.bias.numel() for layer in layers)
    return params, sum(layer.weight.numel() for layer in layers)


@torch.no_grad()
def rank_d_accuracy(model, ranks, test_set, device):
    """(the SVD of each hidden weight, the baseline's test accuracy, {D: test accuracy of the rank-D network}): one
    decomposition per layer, sliced for every rank. The rank-D networks run through their fast
    inference path (common/mnist/fused.py: the same function, tested equal)."""
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    test_acc = evaluate(model, test_set, classification_metrics, device=device)["acc"]
    accs = {rank_name(r, model.head.in_features): evaluate(fast(compress(model, factors, r)), test_set,
                                                           classification_metrics, device=device)["acc"]
            for r in ranks}
    return factors, test_acc, accs


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args, train = get_args(argv)
    resolve_dirs(args, "p1")
    device = init_distributed(pick_device(args.device))
    args.precision = resolve_precision(args.precision, device)  # what "auto" means on this machine
    data = load_mnist(dry_run=args.dry_run)
    ranks = args.ranks
    test_set = TensorDataset(*data["test"])
    t_start = time.time()

    runs = []
    for seed in range(args.seeds):
        t0 = time.time()
        model, history = train_baseline(seed, data, train.values(args), args, device)
        factors, test_acc, accs = rank_d_accuracy(model, ranks, test_set, device)
        runs.append({"seed": seed, "baseline_test_acc": test_acc, "rank_test_acc": accs, "history": history,
                     "singular_values": [S.tolist() for _, S, _ in factors], "seconds": time.time() - t0})
        if is_main():
            print(f"[p1] seed {seed}: baseline test acc {test_acc:.4f}; " +
                  ", ".join(f"D={d}: {a:.4f}" for d, a in accs.items()))

    if not is_main():
        return
    flags, path = train.values(args), args.out / "ablation.json"
    if args.ablation:
        ablation = {"seed": 0, "config": flags, "rows": ablation_rows(data, flags, args, ranks, test_set, device,
                                                                      runs[0])}
        save_json(path, ablation)
    else:  # an earlier --ablation run's, if it was made for these settings
        ablation = read_ablation(path, ABLATION_RUN, config=flags, seed=0)

    # the counts depend on the shapes only
    dense_params, dense_macs = dense_cost(model)
    table = {"dense": {"params": dense_params, "macs": dense_macs}}
    for r in ranks:
        params, macs = cost(model, r)
        table[rank_name(r, args.width)] = {"params": params, "macs": macs}
    for d, row in table.items():
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
               "recipe": {k: flags[k] for k in ("shift", "tail_decay", "tail_rank", "refresh")},
               "ablation": ablation, "train_size": len(data["train"][0]),
               "figures": {name: f"{name}.png" for name in FIGURES}}
    save_json(args.out / "metrics.json", metrics)
    save_config(args.out / "config.json", args)
    plot_accuracy_vs_rank(metrics, args.out / "accuracy_vs_rank.png")
    plot_params_vs_rank(metrics, args.out / "params_vs_rank.png")
    plot_singular_values(runs[0]["singular_values"], 20, args.out / "singular_values.png")
    print(f"[p1] baseline test acc {base['mean']:.4f} +- {base['std']:.4f}; wrote {args.out}/metrics.json")


if __name__ == "__main__":
    run_cli(main)
