"""Problem 3: train the dense weights through their rank-20 SVD, with a straight-through gradient.

The parameters are the dense W of every hidden layer, initialised from P1's baseline. Every forward pass
uses W_hat = U[:, :20] S[:20, :20] V[:, :20]^T of the current W; the backward pass treats the projection
W -> W_hat as the identity (a custom torch.autograd.Function), so W receives exactly the gradient that a
linear layer with weight W_hat would. The network evaluated and reported is the rank-20 one, built from the
exact SVD of the final W (P1's rank-20 network, 215,470 parameters).

An exact SVD of a 1024 x 1024 matrix at every step would cost several plain training steps. Instead each
layer tracks its top singular subspace: one warm-started subspace iteration per step on the previous
step's basis, with `--oversample` extra directions (the singular values around index 20 are close, so
the basis must be wider than 20 to keep up) and an exact SVD every `--refresh-every` steps.
benchmarks/p3_svd_step.py times this against exact and randomized SVD.

    python p3_svd_ste.py              # 3 seeds (seed k starts from checkpoints/p1_baseline_seed{k}.pt)
    python p3_svd_ste.py --dry-run    # a tiny end-to-end run in seconds (needs `python p1_svd.py --dry-run`)

Writes results/p3/{metrics.json, config.json, finetune_curve.png, tracking_error.png, singular_values.png} and
checkpoints/p3_ste_seed{N}.pt; a finished run whose config (the baseline's included) is unchanged is reused.
"""
import time

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from common.cli import (ArgumentParser, TrainingFlags, add_common_args, bounded_int, dropout_rate, nonnegative_float,
                        pick_device, positive_float, run_cli)
from common.files import resolve_dirs, save_config, save_json
from common.goals import mean_std, required, target
from common.mnist.data import load_mnist
from common.mnist.figures import plot_singular_values_before_after, plot_tracking_error
from common.mnist.finetune import finetune_classifier, finetune_scores, plot_finetune_curve, summarize
from common.mnist.fused import fast
from common.mnist.mlp import accuracy, classification_metrics, load_baseline, with_hidden
from common.precision import add_precision_flag, full_precision, machine, resolve_precision
from common.train import evaluate, init_distributed, is_main
from p1_svd import compress, cost, dense_cost, svd

# P3's training settings, declared once: the flags below default to them, and benchmarks/p3_svd_step.py times a
# training step with them without parsing a command line.
DEFAULTS = {"rank": 20, "oversample": 10, "refresh_every": 200, "epochs": 10, "batch_size": 256, "lr": 5e-4,
            "weight_decay": 0.0, "dropout": 0.1, "shift": 1}


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=bounded_int(1, 100), default=3, help="fine-tune this many baselines (seeds 0..N-1)")
    train = TrainingFlags(p)
    train.add("--rank", type=bounded_int(1, 784), default=DEFAULTS["rank"],
              help="rank of the projection W-hat used in the forward pass (at most 784, the first layer's rank)")
    train.add("--oversample", type=bounded_int(0, 256), default=DEFAULTS["oversample"],
              help="extra directions the subspace tracker carries beyond --rank")
    train.add("--refresh-every", type=bounded_int(0, 100_000), default=DEFAULTS["refresh_every"],
              help="replace the tracked subspace by an exact SVD every this many steps (0: never)")
    train.add("--epochs", type=bounded_int(1, 1000), default=DEFAULTS["epochs"], help="fine-tuning epochs")
    train.add("--batch-size", type=bounded_int(1, 8192), default=DEFAULTS["batch_size"], help="mini-batch size")
    train.add("--lr", type=positive_float, default=DEFAULTS["lr"],
              help="peak AdamW learning rate (warm-up then cosine decay); the baseline trained at 2e-3")
    train.add("--weight-decay", type=nonnegative_float, default=DEFAULTS["weight_decay"], help="AdamW weight decay")
    train.add("--dropout", type=dropout_rate, default=DEFAULTS["dropout"],
              help="dropout after every hidden layer while training")
    train.add("--shift", type=bounded_int(0, 14), default=DEFAULTS["shift"],
              help="shift each training digit by up to this many pixels each way, as the baseline trained (0: off)")
    add_precision_flag(train)
    add_common_args(p, out="results/p3")
    args = p.parse_args(argv)
    if args.dry_run:  # with a few batches (load_mnist): the real architecture and code path in seconds
        args.epochs, args.seeds = 1, min(args.seeds, 2)
    return args, train


# ----------------------------------------------------------------------------- 1. the straight-through gradient

class LowRankSTE(torch.autograd.Function):
    """y = x W_hat^T + b with W_hat = U diag(S) Vh, the rank-r projection of W; dL/dW = dL/dW_hat.

    Forward: through the factors, x -> ((x Vh^T) * S) U^T + b, r * (in + out) multiply-adds per row instead
    of in * out. Backward: the projection W -> W_hat counts as the identity (straight-through), so W gets
    exactly the gradient of a linear layer with weight W_hat, g^T x. U, S, Vh are the tracker's (no gradient).

    Precision: the forward pass computes in the wider of x's and the factors' dtypes (under bf16 autocast its
    products run in bf16); the backward pass, which autograd runs outside autocast, computes in the dtype of the
    incoming gradient (the forward's: bf16 under autocast, as a plain linear layer's would) and returns each
    gradient in the dtype of its input, so the fp32 W gets an fp32 gradient.
    """

    @staticmethod
    def forward(ctx, x, W, U, S, Vh, bias):  # x (batch, in), W (out, in), U (out, r), S (r,), Vh (r, in)
        ctx.save_for_backward(x, U, S, Vh)
        ctx.dtypes = x.dtype, W.dtype, bias.dtype
        dtype = torch.promote_types(x.dtype, U.dtype)  # bf16 activations of an fp32 network: fp32
        return torch.addmm(bias.to(dtype), (x.to(dtype) @ Vh.T) * S, U.T)

    @staticmethod
    def backward(ctx, g):  # g = dL/dy, (batch, out)
        x, U, S, Vh = (t.to(g.dtype) for t in ctx.saved_tensors)
        x_dtype, W_dtype, bias_dtype = ctx.dtypes
        need = ctx.needs_input_grad
        grad_x = (((g @ U) * S) @ Vh).to(x_dtype) if need[0] else None  # g W_hat, through the factors
        grad_W = (g.T @ x).to(W_dtype) if need[1] else None               # dL/dW_hat, passed straight through to W
        grad_b = g.sum(0).to(bias_dtype) if need[5] else None
        return grad_x, grad_W, None, None, None, grad_b


# ----------------------------------------------------------------------------- 2. tracking the top singular subspace

def subspace_iteration(W, Q, rank):
    """One step of subspace iteration warm-started from Q, then Rayleigh-Ritz.

    W (out, in); Q (in, k), an orthonormal basis of (roughly) W's top-k right singular subspace.
    Returns W's approximate top-`rank` triplets U (out, rank), S (rank,), Vh (rank, in), and the next basis
    (in, k): all k right Ritz vectors. Two products with W, 2 * out * in * k multiply-adds, and an SVD of k x in.
    """
    P, _ = torch.linalg.qr(W @ Q)                                  # (out, k): orthonormal basis of range(W Q)
    Ub, S, Vh = torch.linalg.svd(P.T @ W, full_matrices=False)     # (k, in) = Ub diag(S) Vh, small
    return P @ Ub[:, :rank], S[:rank], Vh[:rank], Vh.T


class SubspaceTracker(nn.Module):
    """The top-`rank` singular triplets (U, S, Vh) of a matrix that changes a little at every update.

    update(W) runs one subspace iteration from the previous basis (rank + oversample directions wide);
    every `refresh_every`-th update (0: never) is an exact SVD instead, which also undoes any drift.
    All state lives in buffers, so a checkpoint holds it and a resumed run continues bit for bit. Both run in fp32
    even inside a bf16 forward pass (no QR or SVD in bf16, and the basis must stay orthonormal).
    """

    def __init__(self, W, rank, oversample=10, refresh_every=200, factors=None):
        super().__init__()
        out, n_in = W.shape
        self.rank, self.refresh_every = min(rank, out, n_in), refresh_every
        k = min(self.rank + oversample, out, n_in)
        self.register_buffer("U", W.new_zeros(out, self.rank))
        self.register_buffer("S", W.new_zeros(self.rank))
        self.register_buffer("Vh", W.new_zeros(self.rank, n_in))
        self.register_buffer("Q", W.new_zeros(n_in, k))  # the warm start: approximate top-k right singular vectors
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.refresh(W, factors)

    @torch.no_grad()
    def refresh(self, W, factors=None):
        """Exact: the top triplets and basis from torch.linalg.svd of W (or from `factors`, W's SVD, if given)."""
        with full_precision(W.device):
            U, S, Vh = svd(W) if factors is None else factors
            self._store(U[:, :self.rank], S[:self.rank], Vh[:self.rank], Vh[:self.Q.shape[1]].T)

    @torch.no_grad()
    def update(self, W):
        self.updates += 1
        if self.refresh_every and self.updates % self.refresh_every == 0:
            self.refresh(W)
        else:
            with full_precision(W.device):
                self._store(*subspace_iteration(W, self.Q, self.rank))

    def _store(self, U, S, Vh, Q):
        self.U.copy_(U)
        self.S.copy_(S)
        self.Vh.copy_(Vh)
        self.Q.copy_(Q)

    def extra_repr(self):
        return f"rank={self.rank}, width={self.Q.shape[1]}, refresh_every={self.refresh_every}"


# ----------------------------------------------------------------------------- 3. the network

class SVDSTELinear(nn.Module):
    """A linear layer with a dense trainable weight W whose forward pass uses W's rank-r projection W_hat.

    In training mode every forward pass first updates the tracker to the current W; in eval mode W does
    not change and the last estimate is used.
    """

    def __init__(self, weight, bias, rank, oversample, refresh_every, factors=None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())  # (out, in)
        self.bias = nn.Parameter(bias.detach().clone())      # (out,)
        self.tracker = SubspaceTracker(self.weight.detach(), rank, oversample, refresh_every, factors)

    def forward(self, x):  # (batch, in) -> (batch, out)
        if self.training and torch.is_grad_enabled():
            self.tracker.update(self.weight.detach())
        t = self.tracker
        return LowRankSTE.apply(x, self.weight, t.U, t.S, t.Vh, self.bias)

    def extra_repr(self):
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}"


def ste_network(baseline, rank, oversample=10, refresh_every=200, dropout=0.0, factors=None):
    """A copy of the baseline whose hidden layers train through their rank-`rank` projection.

    `factors`: the SVD of each baseline weight, if the caller has computed it already.
    """
    factors = factors if factors is not None else [None] * len(baseline.hidden)
    return with_hidden(baseline, [SVDSTELinear(layer.weight, layer.bias, rank, oversample, refresh_every, f)
                                  for layer, f in zip(baseline.hidden, factors)], dropout)


@torch.no_grad()
def rank_network(model, rank):
    """(the rank-`rank` network from the exact SVD of each current W (P1's construction), the SVDs)."""
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    return fast(compress(model, factors, rank)), factors  # run through the fast inference path (the same function)


@torch.no_grad()
def tracking_errors(model, factors):
    """How good the tracker's next W_hat (one subspace iteration from its basis, on the current W) is, per layer.

    ratio: ||W - W_hat||_F / ||W - W_r||_F, W_r the exact rank-r truncation (1.0 = optimal; the target is 1.01).
    distance: ||W_hat - W_r||_F / ||W_r||_F, stricter: it also sees which of several nearly equal singular
    directions around index r were kept, a choice the error does not notice.
    """
    ratios, distances = [], []
    for layer, (U, S, Vh) in zip(model.hidden, factors):
        W, r = layer.weight, layer.tracker.rank
        U_hat, S_hat, Vh_hat, _ = subspace_iteration(W, layer.tracker.Q, r)
        W_hat, W_r = (U_hat * S_hat) @ Vh_hat, (U[:, :r] * S[:r]) @ Vh[:r]
        ratios.append((torch.linalg.norm(W - W_hat) / S[r:].norm()).item())
        distances.append((torch.linalg.norm(W_hat - W_r) / torch.linalg.norm(W_r)).item())
    return ratios, distances


def dense_network(model):
    """The plain MLP with the dense W themselves as weights (what the STE network would be without projection)."""
    dense = [nn.Linear(layer.weight.shape[1], layer.weight.shape[0]) for layer in model.hidden]
    for linear, layer in zip(dense, model.hidden):
        linear.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    return with_hidden(model, dense).eval()


# ----------------------------------------------------------------------------- 4. training

def train(seed, data, args, flags, device):
    """Train baseline `seed` through its rank-r projection (or reuse a finished run).

    Returns (the trained STE network, its history, the baseline, P1's rank-r network where training started).
    """
    baseline, base_config = load_baseline(args.ckpt_dir, seed, device)
    initial, factors = rank_network(baseline, args.rank)  # one SVD per layer serves both
    config = {**flags, "seed": seed, "train_size": len(data["train"][0]), "baseline": base_config}
    path = args.ckpt_dir / f"p3_ste_seed{seed}.pt"
    model = ste_network(baseline, args.rank, args.oversample, args.refresh_every, args.dropout, factors)
    val_set = TensorDataset(*data["val"])

    def validate(m):
        """Select on the network that is reported: the rank-r one from the exact SVD of the current W."""
        net, factors = rank_network(m, args.rank)
        record = {f"val_{k}": v for k, v in evaluate(net, val_set, classification_metrics, device=device).items()}
        record["tracking_error_ratio"], record["tracking_distance"] = tracking_errors(m, factors)
        return record

    history = finetune_classifier(model, data, args, seed=seed, path=path, config=config, device=device,
                                  desc=f"p3 seed {seed}", validate=validate)
    return model, history, baseline, initial


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args, train_flags = get_args(argv)
    resolve_dirs(args, "p3")
    device = init_distributed(pick_device(args.device))
    args.precision = resolve_precision(args.precision, device)  # what "auto" means on this machine
    data = load_mnist(dry_run=args.dry_run)
    t_start = time.time()

    runs = []
    for seed in range(args.seeds):
        t0 = time.time()
        model, history, baseline, initial = train(seed, data, args, train_flags.values(args), device)
        final, factors = rank_network(model, args.rank)
        start = [torch.linalg.svdvals(layer.weight.detach()) for layer in baseline.hidden]
        run = {"seed": seed, **finetune_scores(baseline, initial, final, history, data, device),
               "dense_W_test_acc": accuracy(dense_network(model), data["test"], device),
               "tracking_error_ratio_max": max(max(r["tracking_error_ratio"]) for r in history),
               "tracking_distance_max": max(max(r["tracking_distance"]) for r in history),
               "singular_values_before": [S[:4 * args.rank].tolist() for S in start],  # the largest 4 * rank
               "singular_values": [S[:4 * args.rank].tolist() for _, S, _ in factors],
               "history": history, "seconds": time.time() - t0}
        runs.append(run)
        if is_main():
            print(f"[p3] seed {seed}: rank-{args.rank} test acc {run['initial_test_acc']:.4f} before (= P1), "
                  f"{run['test_acc']:.4f} after; tracker error <= {run['tracking_error_ratio_max']:.5f} x optimal")

    if not is_main():
        return
    metrics = {
        "rank": args.rank,
        **summarize(runs),
        "dense_W_test_acc": mean_std([r["dense_W_test_acc"] for r in runs]),
        "params": cost(baseline, args.rank)[0],  # the rank-r network that is evaluated (S stored apart)
        "params_dense": dense_cost(baseline)[0],
        "tracking_error_ratio_max": max(r["tracking_error_ratio_max"] for r in runs),
        "tracking_distance_max": max(r["tracking_distance_max"] for r in runs),
        "seeds": runs, "device": str(device), "threads": torch.get_num_threads(),
        "machine": machine(device, args.precision), "dry_run": args.dry_run, "wall_seconds": time.time() - t_start}
    acc = metrics["test_acc"]["mean"]
    metrics.update(required={"test_acc": required("p3.test_acc", acc)},
                   goals={"test_acc": target("p3.test_acc", acc),
                          "tracking_error_ratio_max": target("p3.tracking_error_ratio_max",
                                                             metrics["tracking_error_ratio_max"])},
                   figures={"finetune_curve": "finetune_curve.png", "tracking_error": "tracking_error.png",
                            "singular_values": "singular_values.png"})
    save_json(args.out / "metrics.json", metrics)
    save_config(args.out / "config.json", args)
    make_figures(metrics, args.out)
    a = metrics["test_acc"]
    print(f"[p3] rank-{args.rank} network, {metrics['params']:,} parameters: test acc {a['mean']:.4f} "
          f"+- {a['std']:.4f} (P1 at D={args.rank}: {metrics['initial_test_acc']['mean']:.4f}); "
          f"wrote {args.out}/metrics.json")


def make_figures(metrics, out):
    r = metrics["rank"]
    plot_finetune_curve(metrics, out / "finetune_curve.png", xlabel="epoch",
                        ylabel="accuracy of the rank-%d network (%%)" % r,
                        title=f"P3: straight-through training through the rank-{r} SVD")
    plot_tracking_error(metrics, out / "tracking_error.png")
    plot_singular_values_before_after(metrics, out / "singular_values.png")


if __name__ == "__main__":
    run_cli(main)
