"""A tiny training run for the resume tests: `python tests/tiny_fit.py CKPT OUT [--kill-at E:S] [--resume] ...`.

It trains a small MLP with dropout, AdamW and a one-cycle schedule on fixed random data through
common.train.fit, then saves the final weights and history to OUT. --kill-at E:S sends the process
a signal (SIGKILL by default) just before step S of epoch E, the way a user or a cluster would stop it
(--kill-in-validation E: during epoch E's validation). Its loss keeps state (a count of its calls), which the
checkpoint carries.
The tests run it in a subprocess where it is killed (SIGKILL), else in-process: main(argv).
"""
import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli import run_cli  # noqa: E402
from common.train import evaluate, fit, seed_everything  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("ckpt", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--kill-at", default=None, help="E:S, 1-based epoch, 0-based step")
    p.add_argument("--signal", default="SIGKILL")
    p.add_argument("--kill-in-validation", type=int, default=None, help="send --signal in epoch E's validation")
    p.add_argument("--nan-at-epoch", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 20, generator=g), torch.randint(0, 3, (600,), generator=g)
    train, val = TensorDataset(x[:500], y[:500]), TensorDataset(x[500:], y[500:])
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    epochs, batch = 6, 50
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=epochs * 10)
    kill = tuple(map(int, args.kill_at.split(":"))) if args.kill_at else None
    seen = {"epoch": 1, "step": 0}

    class Loss(torch.nn.Module):
        """Cross-entropy weighted by a count of its own calls: a loss with state (as P1's is), which the
        checkpoint must carry for the resumed run to be the same run."""

        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, m, batch):
            xb, yb = batch
            if kill == (seen["epoch"], seen["step"]):
                os.kill(os.getpid(), getattr(signal, args.signal))
            seen["step"] += 1
            self.calls += 1
            loss = torch.nn.functional.cross_entropy(m(xb), yb) * (1 + (self.calls % 7) / 7)
            return loss * float("nan") if seen["epoch"] == args.nan_at_epoch else loss

    def validate(m):
        if seen["epoch"] == args.kill_in_validation:
            os.kill(os.getpid(), getattr(signal, args.signal))
        seen["epoch"], seen["step"] = seen["epoch"] + 1, 0
        return {"val_loss": evaluate(m, val, lambda m, b: {"loss": torch.nn.functional.cross_entropy(
            m(b[0]), b[1], reduction="none")})["loss"]}

    if args.resume and args.ckpt.exists():  # line the kill counter up with where the checkpoint left off
        ckpt = torch.load(args.ckpt, weights_only=True)
        seen.update(epoch=ckpt["epoch"] + 1, step=ckpt["step"])
    history = fit(model, Loss(), optimizer, train, epochs=epochs, batch_size=batch, seed=0, validate=validate,
                  monitor="val_loss", mode="min", scheduler=scheduler, ckpt_path=args.ckpt, resume=args.resume,
                  config={"lr": args.lr}, quiet=True)
    for h in history:
        h.pop("train_seconds")
    torch.save({"model": model.state_dict(), "history": history}, args.out)


if __name__ == "__main__":
    run_cli(main)
