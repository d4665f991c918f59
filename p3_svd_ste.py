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

from common.data import load_mnist
from common.finetune import finetune_classifier, finetune_scores, plot_finetune_curve, summarize
from common.mnist_mlp import MLP, accuracy, classification_metrics, load_baseline
from common.plot import plt, save_figure
from common.svd import compress, cost, svd
from common.train import evaluate, init_distributed, is_main
from common.utils import (ArgumentParser, goal, add_common_args, bounded_int, dropout_rate, mean_std, nonnegative_float,
                          nonnegative_int, pick_device, positive_float, positive_int, resolve_dirs, run_cli,
                          save_config, save_json)


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=positive_int, default=3, help="fine-tune this many baselines (seeds 0..N-1)")
    p.add_argument("--rank", type=bounded_int(1, 784), default=20,
                   help="rank of the projection W_hat used in the forward pass (at most 784, the first layer's rank)")
    p.add_argument("--oversample", type=nonnegative_int, default=10,
                   help="extra directions the subspace tracker carries beyond --rank")
    p.add_argument("--refresh-every", type=nonnegative_int, default=200,
                   help="replace the tracked subspace by an exact SVD every this many steps (0: never)")
    p.add_argument("--epochs", type=positive_int, default=10, help="fine-tuning epochs")
    p.add_argument("--batch-size", type=positive_int, default=256, help="mini-batch size")
    p.add_argument("--lr", type=positive_float, default=5e-4,
                   help="peak AdamW learning rate (warm-up then cosine decay); the baseline trained at 2e-3")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay")
    p.add_argument("--dropout", type=dropout_rate, default=0.1, help="dropout after every hidden layer while training")
    add_common_args(p, out="results/p3")
    args = p.parse_args(argv)
    if args.dry_run:  # with a few batches (load_mnist): the real architecture and code path in seconds
        args.epochs, args.seeds = 1, min(args.seeds, 2)
    return args


# ----------------------------------------------------------------------------- 1. the straight-through gradient

class LowRankSTE(torch.autograd.Function):
    """y = x W_hat^T + b with W_hat = U diag(S) Vh, the rank-r projection of W; dL/dW = dL/dW_hat.

    Forward: through the factors, x -> ((x Vh^T) * S) U^T + b, r * (in + out) multiply-adds per row instead
    of in * out. Backward: the projection W -> W_hat counts as the identity (straight-through), so W gets
    exactly the gradient of a linear layer with weight W_hat, g^T x. U, S, Vh are the tracker's (no gradient).
    """

    @staticmethod
    def forward(ctx, x, W, U, S, Vh, bias):  # x (batch, in), W (out, in), U (out, r), S (r,), Vh (r, in)
        ctx.save_for_backward(x, U, S, Vh)
        return torch.addmm(bias, (x @ Vh.T) * S, U.T)

    @staticmethod
    def backward(ctx, g):  # g = dL/dy, (batch, out)
        x, U, S, Vh = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x = ((g @ U) * S) @ Vh if need[0] else None  # g W_hat, through the factors
        grad_W = g.T @ x if need[1] else None               # dL/dW_hat, passed straight through to W
        grad_b = g.sum(0) if need[5] else None
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
    All state lives in buffers, so a checkpoint holds it and a resumed run continues bit for bit.
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
        U, S, Vh = svd(W) if factors is None else factors
        self._store(U[:, :self.rank], S[:self.rank], Vh[:self.rank], Vh[:self.Q.shape[1]].T)

    @torch.no_grad()
    def update(self, W):
        self.updates += 1
        if self.refresh_every and self.updates % self.refresh_every == 0:
            self.refresh(W)
        else:
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
    net = MLP(baseline.head.in_features, len(baseline.hidden), dropout)
    net.head.load_state_dict(baseline.head.state_dict())
    for i, layer in enumerate(baseline.hidden):
        net.hidden[i] = SVDSTELinear(layer.weight, layer.bias, rank, oversample, refresh_every,
                                     factors[i] if factors is not None else None)
    return net.to(baseline.head.weight.device)


@torch.no_grad()
def rank_network(model, rank):
    """(the rank-`rank` network from the exact SVD of each current W (P1's construction), the SVDs)."""
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    return compress(model, factors, rank), factors


@torch.no_grad()
def tracking_errors(model, factors):
    """How good the tracker's next W_hat (one subspace iteration from its basis, on the current W) is, per layer.

    ratio: ||W - W_hat||_F / ||W - W_r||_F, W_r the exact rank-r truncation (1.0 = optimal; the bar is 1.01).
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
    net = MLP(model.head.in_features, len(model.hidden))
    net.load_state_dict({k: v for k, v in model.state_dict().items() if ".tracker." not in k})
    return net.to(model.head.weight.device).eval()


# ----------------------------------------------------------------------------- 4. training

def train(seed, data, args, device):
    """Train baseline `seed` through its rank-r projection (or reuse a finished run).

    Returns (the trained STE network, its history, the baseline, P1's rank-r network where training started).
    """
    baseline, base_config = load_baseline(args.ckpt_dir, seed)
    baseline = baseline.to(device)
    initial, factors = rank_network(baseline, args.rank)  # one SVD per layer serves both
    config = {"rank": args.rank, "oversample": args.oversample, "refresh_every": args.refresh_every,
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "weight_decay": args.weight_decay, "dropout": args.dropout, "seed": seed,
              "train_size": len(data["train"][0]), "baseline": base_config,
              "version": 2}  # bump when what a run records changes, so older checkpoints are not reused
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
    args = get_args(argv)
    resolve_dirs(args, "p3")
    device = init_distributed(pick_device(args.device))
    data = load_mnist(dry_run=args.dry_run)
    t_start = time.time()

    runs = []
    for seed in range(args.seeds):
        t0 = time.time()
        model, history, baseline, initial = train(seed, data, args, device)
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
        "params_dense": cost(baseline, 0)[0],
        "tracking_error_ratio_max": max(r["tracking_error_ratio_max"] for r in runs),
        "tracking_distance_max": max(r["tracking_distance_max"] for r in runs),
        "seeds": runs, "device": str(device), "threads": torch.get_num_threads(),
        "dry_run": args.dry_run, "wall_seconds": time.time() - t_start}
    acc = metrics["test_acc"]["mean"]
    metrics.update(required={"test_acc": goal(acc, above=0.97),
                             "tracking_error_ratio_max": goal(metrics["tracking_error_ratio_max"], at_most=1.01)},
                   goals={"test_acc": goal(acc, at_least=0.982)},
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

    run = metrics["seeds"][0]
    epochs = [h["epoch"] for h in run["history"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i in range(len(run["history"][0]["tracking_error_ratio"])):
        left.plot(epochs, [100 * (h["tracking_error_ratio"][i] - 1) for h in run["history"]], marker=".",
                  label=f"W{i + 1}")
        right.plot(epochs, [100 * h["tracking_distance"][i] for h in run["history"]], marker=".", label=f"W{i + 1}")
    left.axhline(1.0, color="r", ls="--", lw=1, label="bar: 1% above optimal")
    left.set(xlabel="epoch", ylabel="error above optimal (%)", title="||W - W_hat|| / ||W - W_r|| - 1")
    right.set(xlabel="epoch", ylabel="distance (%)", title="||W_hat - W_r|| / ||W_r||")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"P3: the subspace tracker against the exact rank-{r} SVD (seed {run['seed']}, end of each epoch)")
    save_figure(fig, out / "tracking_error.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for i, ax in zip([0, len(run["singular_values"]) - 1], axes):
        for key, label in [("singular_values_before", "baseline"), ("singular_values", "after P3")]:
            S = run[key][i]
            ax.plot(range(1, len(S) + 1), S, marker=".", ms=3, label=label)
        ax.axvline(r + 0.5, color="k", ls=":", lw=1, label=f"rank {r}")
        ax.set(xlabel="index", ylabel="singular value", title=f"W{i + 1} (seed {run['seed']})")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("P3: the largest singular values before and after straight-through training")
    save_figure(fig, out / "singular_values.png")


if __name__ == "__main__":
    run_cli(main)
