"""Benchmark for Problem 3: what "an SVD at every training step" costs, and how close each way gets to optimal.

Times one training step (forward, backward, AdamW step on a batch of MNIST images) of the 5 x 1024 network
started from P1's baseline (seed 0), with P3's settings (rank, batch size, learning rate, dropout):

    plain      dense training without projection: the reference step
    exact      P3 with torch.linalg.svd of every W at every step
    lowrank    P3 with torch.svd_lowrank(W, q=rank + oversample, niter=2) at every step
    tracker    P3 as p3_svd_ste.py runs it: one warm-started subspace iteration per step, an exact SVD
               every --refresh-every steps (its cost is shown amortized over those steps too)
    no_oversampling   the tracker with a basis of exactly `rank` vectors and no refresh (for comparison)

All methods run in the same process in interleaved rounds (benchmarks/timing.py: each round times one step of
each method, in a rotating order), so a busy machine slows them alike; the median step is reported with its
spread, and each method's ratio to the plain step is also taken per round.

Then the error of each approximation, on one P3 training run with the tracker, started from P3's trained
weights (checkpoints/p3_ste_seed0.pt, where the singular values around index 20 have piled up: the hard case
for a tracker) when P3 has run, else from the baseline, at P3's peak learning rate, for refresh_every - 1
steps (so the tracker gets no exact refresh). Every --check-every steps, each method's rank-r approximation
W_hat of that step's W is compared with the exact truncation W_r, worst over the layers and the checks:
    error / optimal   ||W - W_hat||_F / ||W - W_r||_F     1.0 = optimal (Eckart-Young); the bar is 1.01
    distance to W_r   ||W_hat - W_r||_F / ||W_r||_F      stricter: it also counts which of several nearly
                                                         equal singular directions around index r were
                                                         kept, a choice the error does not see

    python benchmarks/p3_svd_step.py             # needs checkpoints/p1_baseline_seed0.pt
    python benchmarks/p3_svd_step.py --dry-run   # seconds (needs `python p1_svd.py --dry-run`)

Prints the table and writes results/p3/benchmark.json (runs/dry-run/p3/benchmark.json with --dry-run).
"""
import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import p3_svd_ste as p3  # noqa: E402
from benchmarks.timing import interleaved, ratio, summary  # noqa: E402
from common.cli import ArgumentParser, bounded_int, pick_device, run_cli  # noqa: E402
from common.files import resolve_dirs, save_json  # noqa: E402
from common.goals import target  # noqa: E402
from common.mnist.data import load_mnist  # noqa: E402
from common.mnist.mlp import MLP, classification_loss, load_baseline  # noqa: E402
from common.precision import machine  # noqa: E402
from common.train import adamw, best_weights, load_checkpoint, seed_everything  # noqa: E402
from p1_svd import svd  # noqa: E402

METHODS = ["plain", "exact", "lowrank", "tracker", "no_oversampling"]


def get_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=bounded_int(1, 1000), default=15, help="timed steps of every method")
    p.add_argument("--warmup", type=bounded_int(1, 100), default=2, help="untimed steps of every method first")
    p.add_argument("--check-steps", type=bounded_int(1, 100_000), default=None,
                   help="training steps of the error check (default: P3's --refresh-every - 1: no exact refresh)")
    p.add_argument("--check-every", type=bounded_int(1, 1000), default=10,
                   help="compare with the exact SVD every this many steps")
    p.add_argument("--seed", type=bounded_int(0, 99), default=0, help="baseline seed, batches and dropout masks")
    p.add_argument("--out", type=Path, default=None,
                   help="where benchmark.json goes (default: results/p3, or runs/dry-run/p3 with --dry-run)")
    p.add_argument("--ckpt-dir", type=Path, default=None,
                   help="where P1's baseline is (default: checkpoints/, or runs/dry-run/checkpoints with --dry-run)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--dry-run", action="store_true", help="a few steps, to check that everything works")
    return p.parse_args(argv)


class RandomizedSVD(p3.SubspaceTracker):
    """The same interface, but every update is torch.svd_lowrank from a fresh random start (niter=2)."""

    @torch.no_grad()
    def update(self, W):
        U, S, V = torch.svd_lowrank(W, q=self.Q.shape[1], niter=2)
        self._store(U[:, :self.rank], S[:self.rank], V[:, :self.rank].T, V)


def build(method, baseline, factors, settings):
    """The network that `method` trains, started from the baseline (whose SVD is `factors`)."""
    if method == "plain":
        net = MLP(baseline.head.in_features, len(baseline.hidden), settings.dropout)
        net.load_state_dict(baseline.state_dict())
        return net.to(baseline.head.weight.device)
    oversample, refresh_every = settings.oversample, settings.refresh_every
    if method == "exact":
        refresh_every = 1  # every update is an exact SVD
    if method == "no_oversampling":
        oversample, refresh_every = 0, 0
    net = p3.ste_network(baseline, settings.rank, oversample, refresh_every, settings.dropout, factors)
    if method == "lowrank":
        for layer, f in zip(net.hidden, factors):
            layer.tracker = RandomizedSVD(layer.weight.detach(), settings.rank, settings.oversample, 0, f)
    return net


def p3_final_weights(ckpt_dir, seed):
    """The dense weights P3 finished with for `seed` (its tracker state left out), or None if it has not run."""
    path = Path(ckpt_dir) / f"p3_ste_seed{seed}.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    if not ckpt.get("done"):
        return None
    return {k: v for k, v in best_weights(ckpt).items() if ".tracker." not in k}


def main(argv=None):
    args = get_args(argv)
    resolve_dirs(args, "p3")
    settings = argparse.Namespace(**p3.DEFAULTS)  # P3's training settings: rank, oversample, refresh_every, batch, lr
    if args.check_steps is None:
        args.check_steps = max(settings.refresh_every - 1, 1) if settings.refresh_every else 100
    if args.dry_run:
        args.rounds, args.warmup, args.check_steps, args.check_every = 1, 1, 2, 2
    device = pick_device(args.device)
    t_start = time.time()
    seed_everything(args.seed)
    baseline, _ = load_baseline(args.ckpt_dir, args.seed)
    baseline = baseline.to(device)
    factors = [svd(layer.weight.detach()) for layer in baseline.hidden]  # every method starts from the exact SVD
    x_train, y_train = load_mnist()["train"]
    gen = torch.Generator().manual_seed(args.seed)

    def batch():
        idx = torch.randint(len(x_train), (settings.batch_size,), generator=gen)
        return x_train[idx].to(device), y_train[idx].to(device)

    # ------------------------------------------------------------------ 1. time per step, interleaved
    nets = {m: build(m, baseline, factors, settings).train() for m in METHODS}
    optimizers = {m: adamw(net.parameters(), settings.lr, settings.weight_decay, device) for m, net in nets.items()}
    xy = batch()  # one batch for every method: they differ by the SVD only

    def step(m):
        optimizers[m].zero_grad(set_to_none=True)
        classification_loss(nets[m], xy).backward()
        optimizers[m].step()

    print(f"[bench] timing {args.rounds} interleaved rounds of one step of each method", flush=True)
    times = interleaved({m: functools.partial(step, m) for m in METHODS}, args.rounds, warmup=args.warmup,
                        min_seconds=0, device=device)
    steps = {m: summary(t) for m, t in times.items()}
    step_ms = {m: 1000 * stat["median"] for m, stat in steps.items()}

    def refresh():  # what the tracker's periodic exact refresh costs (all layers), to amortize it
        for layer in nets["tracker"].hidden:
            layer.tracker.refresh(layer.weight.detach())

    refresh_ms = 1000 * summary(interleaved({"refresh": refresh}, 3 if not args.dry_run else 1, warmup=0,
                                            min_seconds=0, device=device)["refresh"])["median"]
    amortized_ms = step_ms["tracker"] + refresh_ms / settings.refresh_every if settings.refresh_every else None
    del nets, optimizers

    # ------------------------------------------------------------------ 2. errors on one training trajectory
    net = build("tracker", baseline, factors, settings).train()
    start = p3_final_weights(args.ckpt_dir, args.seed)
    if start is not None:  # P3's trained W: singular values pile up around index `rank`, the hard case
        net.load_state_dict(start, strict=False)
        for layer in net.hidden:
            layer.tracker.refresh(layer.weight.detach())
    optimizer = adamw(net.parameters(), settings.lr, settings.weight_decay, device)
    shadow = [p3.SubspaceTracker(layer.weight.detach(), settings.rank, 0, 0) for layer in net.hidden]
    checked = ["exact", "lowrank", "tracker", "no_oversampling"]
    worst = {m: [0.0] * len(net.hidden) for m in checked}      # error ratio to optimal
    distance = {m: [0.0] * len(net.hidden) for m in checked}   # distance to the exact truncation
    r = settings.rank
    print(f"[bench] error check: {args.check_steps} training steps from the "
          f"{'P3' if start is not None else 'baseline'} weights", flush=True)
    for step in range(1, args.check_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        classification_loss(net, batch()).backward()  # the forward pass updated the tracker to this W
        with torch.no_grad():
            for i, layer in enumerate(net.hidden):
                shadow[i].update(layer.weight)
                if step % args.check_every:
                    continue
                W, t = layer.weight, layer.tracker
                U, S, Vh = svd(W)
                W_r = (U[:, :r] * S[:r]) @ Vh[:r]
                Ul, Sl, Vl = torch.svd_lowrank(W, q=t.Q.shape[1], niter=2)  # what RandomizedSVD.update does
                approx = {"exact": W_r, "lowrank": (Ul[:, :r] * Sl[:r]) @ Vl[:, :r].T,
                          "tracker": (t.U * t.S) @ t.Vh, "no_oversampling": (shadow[i].U * shadow[i].S) @ shadow[i].Vh}
                for m, W_hat in approx.items():
                    worst[m][i] = max(worst[m][i], (torch.linalg.norm(W - W_hat) / S[r:].norm()).item())
                    distance[m][i] = max(distance[m][i], (torch.linalg.norm(W_hat - W_r) / W_r.norm()).item())
        optimizer.step()

    methods = {}
    for m in METHODS:
        methods[m] = {"step_ms": step_ms[m], "step": steps[m], "ratio_to_plain": step_ms[m] / step_ms["plain"],
                      "ratio_to_plain_per_round": ratio(times, m, "plain")}
        if m in worst:
            methods[m].update(error_ratio_max=max(worst[m]), error_ratio_per_layer=worst[m],
                              distance_max=max(distance[m]), distance_per_layer=distance[m])
    methods["tracker"].update(refresh_ms=refresh_ms, amortized_step_ms=amortized_ms,
                              amortized_ratio_to_plain=amortized_ms / step_ms["plain"] if amortized_ms else None)
    result = {"methods": methods, "rank": settings.rank, "oversample": settings.oversample,
              "refresh_every": settings.refresh_every, "batch_size": settings.batch_size, "lr": settings.lr,
              "rounds": args.rounds, "check_steps": args.check_steps, "check_every": args.check_every,
              "check_starts_from": "p3" if start is not None else "baseline",
              "device": str(device), "threads": torch.get_num_threads(), "machine": machine(device),
              "dry_run": args.dry_run,
              "wall_seconds": time.time() - t_start}
    if amortized_ms:  # the tracker's step, its exact refresh amortised, against a plain dense step
        result["goals"] = {"amortized_ratio_to_plain": target("p3.amortized_ratio_to_plain",
                                                              amortized_ms / step_ms["plain"])}
    save_json(args.out / "benchmark.json", result)
    print_table(result)
    print(f"[bench] wrote {args.out / 'benchmark.json'}")


def print_table(result):
    names = {"plain": "plain dense step", "exact": "P3, torch.linalg.svd", "lowrank": "P3, torch.svd_lowrank",
             "tracker": "P3, subspace tracker", "no_oversampling": "P3, tracker w/o oversampling+refresh"}
    print(f"one training step, batch {result['batch_size']}, rank {result['rank']}, "
          f"{result['threads']} threads on {result['device']} (median of {result['rounds']})")
    print(f"{'method':38s} {'ms/step':>9s} {'x plain':>8s} {'error / optimal':>16s} {'distance to W_r':>16s}")
    for m, row in result["methods"].items():
        err = f"{row['error_ratio_max']:.5f}" if "error_ratio_max" in row else "-"
        dist = f"{100 * row['distance_max']:.2f}%" if "distance_max" in row else "-"
        print(f"{names[m]:38s} {row['step_ms']:9.1f} {row['ratio_to_plain']:8.2f} {err:>16s} {dist:>16s}")
    t = result["methods"]["tracker"]
    if t["amortized_step_ms"]:
        print(f"{'  with its exact refresh amortized':38s} {t['amortized_step_ms']:9.1f} "
              f"{t['amortized_ratio_to_plain']:8.2f}   (refresh {t['refresh_ms']:.0f} ms every "
              f"{result['refresh_every']} steps)")
    r = result["rank"]
    print(f"error / optimal: worst ||W - W_hat||_F / ||W - W_{r}||_F (1 = optimal; the bar is 1.01); distance to "
          f"W_r: worst ||W_hat - W_{r}||_F / ||W_{r}||_F; both over the 5 layers, every {result['check_every']} of "
          f"{result['check_steps']} training steps from {result['check_starts_from']} weights")


if __name__ == "__main__":
    run_cli(main)
