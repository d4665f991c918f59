"""Tiny trainings side by side for the process tests: `python tests/tiny_jobs.py CKPT_DIR OUT [--jobs N] [--resume]`.

Trains N small MLPs (seeds 0..N-1) through common.train.fit, two processes at a time (common/processes.py's
run_jobs, as P5 trains its drawers), each checkpointing to CKPT_DIR/job{seed}.pt, and saves their histories to OUT.
Each step sleeps a little, so that a test can stop the run at any moment: while the processes start, while they
train, or by killing this parent outright.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli import run_cli  # noqa: E402
from common.processes import run_jobs  # noqa: E402
from common.train import fit, seed_everything  # noqa: E402


def train_one(seed, ckpt, resume, step_seconds):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(400, 8, generator=g), torch.randint(0, 2, (400,), generator=g))
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss_fn(m, batch):
        time.sleep(step_seconds)
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    history = fit(model, loss_fn, optimizer, data, epochs=4, batch_size=20, seed=seed, ckpt_path=ckpt, resume=resume,
                  config={"seed": seed}, desc=f"job {seed}", quiet=True)
    return [h["train_loss"] for h in history], model.state_dict()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("ckpt_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--step-seconds", type=float, default=0.05)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    args.ckpt_dir.mkdir(parents=True, exist_ok=True)
    results = run_jobs(train_one, [(seed, args.ckpt_dir / f"job{seed}.pt", args.resume, args.step_seconds)
                                   for seed in range(args.jobs)], workers=args.workers, threads=1)
    torch.save(results, args.out)
    print("done", flush=True)


if __name__ == "__main__":
    run_cli(main)
