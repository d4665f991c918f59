"""One explicit, problem-agnostic training loop, evaluation, checkpoints, and torch.distributed plumbing.

Problems differ only by what they pass in:
    loss_fn(model, batch) -> scalar loss tensor           (the homework's objective; an nn.Module if it keeps
                                                           state between steps, which is then checkpointed too)
    validate(model) -> {"name": number, ...}              (called after every epoch)
`train_or_reuse` is how the problems call `fit`: it sets up AdamW and the learning-rate schedule, or
reuses a finished run with the same config instead of training again.

Precision: `fit` runs the forward pass and the loss under bf16 autocast when asked (`precision="bf16"`, see
common/precision.py); the weights, their gradients and the optimizer state stay fp32, and `evaluate` computes in fp32.

`fit` checkpoints every epoch (and on SIGINT/SIGTERM) atomically, with every piece of state needed to
continue bit for bit: model, optimizer, scheduler, epoch and step, RNG state, best-so-far, history.
Under `torchrun` the same loop wraps the model in DistributedDataParallel and shards every epoch with
a DistributedSampler; on a single process that sampler has one replica, so both paths see the same
global batches in the same order.
"""
import copy
import hashlib
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset
from tqdm import tqdm

from .cli import Stopped, UserError, stop_requested, stops_deferred
from .files import atomic_path, file_kind
from .precision import autocast


# ----------------------------------------------------------------------------- optimizer and seeds

def adamw(params, lr, weight_decay, device):
    """AdamW, fused into one kernel per step where this torch offers it on `device` (on a CPU, 5M parameters:
    one pass instead of a dozen; the same update up to rounding)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and every GPU) so that a run is repeatable."""
    if not 0 <= seed < 2**32:
        raise UserError(f"seed {seed} is out of range: seeds go from 0 to {2**32 - 1} (NumPy's are 32-bit)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def n_params(module, buffers=False):
    """The numbers `module` trains (with buffers=True: every number it stores, its buffers too)."""
    return sum(p.numel() for p in module.parameters()) + (sum(b.numel() for b in module.buffers()) if buffers else 0)


# ----------------------------------------------------------------------------- distributed

def init_distributed(device):
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); gloo on CPU, nccl on GPU.

    Returns the device this process should use (cuda:LOCAL_RANK on a GPU machine).
    """
    if "RANK" not in os.environ or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def world():
    """(rank, world_size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main():
    """Only rank 0 writes files and prints."""
    return world()[0] == 0


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


# ----------------------------------------------------------------------------- checkpoints

def tensor_digest(obj):
    """SHA-256 of every tensor in a nested dict/list (names, dtypes, shapes and bytes), in a fixed order."""
    h = hashlib.sha256()

    def feed(x, name):
        if torch.is_tensor(x):
            t = x.detach().cpu().contiguous().reshape(-1)  # 1-D: a 0-d tensor cannot be viewed as bytes
            h.update(f"{name}:{x.dtype}:{tuple(x.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                feed(x[k], f"{name}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                feed(v, f"{name}/{i}")

    feed(obj, "")
    return h.hexdigest()


def save_checkpoint(path, **state):
    """torch.save to a temporary file, then os.replace: an interrupted write never leaves half a file.

    The file carries the SHA-256 of its tensors (`digest`), which `load_checkpoint` verifies.
    """
    if not is_main():
        return
    with atomic_path(path) as tmp:
        torch.save({**state, "digest": tensor_digest(state)}, tmp)


def load_checkpoint(path, config=None):
    """torch.load(weights_only=True) with one-line errors; if `config` is given it must match the file's."""
    path = Path(path)
    kind = file_kind(path)
    if kind != "file":  # a FIFO would block torch.load for ever
        raise UserError(f"checkpoint {path} not found" if kind == "missing" else
                        f"checkpoint {path} is {kind}, not a file; remove it or use another --ckpt-dir")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, not a checkpoint, or holds non-tensor objects (a stop is no Exception)
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable checkpoint ({reason}); delete it and run again")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path} is not a checkpoint written by this project; delete it and run again")
    digest = ckpt.pop("digest", None)
    if digest is None:
        raise UserError(f"{path} carries no digest of its tensors (an older version of this project wrote it); "
                        f"delete it and run again")
    if tensor_digest(ckpt) != digest:
        raise UserError(f"{path} is damaged: its tensors do not match the digest saved with them; "
                        f"delete it and run again")
    for key in ("model", "best_model"):
        weights = ckpt.get(key)
        if isinstance(weights, dict) and not all(torch.isfinite(t).all() for t in weights.values()
                                                 if torch.is_tensor(t) and t.is_floating_point()):
            raise UserError(f"{path} holds non-finite weights (NaN or infinity) in {key!r}; it cannot be used")
    if config is not None and ckpt.get("config") != config:
        raise UserError(f"{path} was written for config {describe_diff(ckpt.get('config'), config)}; "
                        f"delete it or run with the matching settings")
    return ckpt


def describe_diff(old, new):
    """'a=1, b=2' for the keys where `old` differs from `new`, as 'old ... but this run asks for new'."""
    old, new = old or {}, new or {}
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    was = ", ".join(f"{k}={old.get(k)!r}" for k in keys)
    now = ", ".join(f"{k}={new.get(k)!r}" for k in keys)
    return f"{was} but this run asks for {now}"


def prior_run(path, config, resume=False, overwrite=False):
    """What a training run whose checkpoint goes to `path` does with the file it finds there, decided before it
    trains: ("train", None) when there is none or with `overwrite`; ("reuse", ckpt) for a finished run of exactly
    `config`; ("resume", ckpt) for an unfinished one of `config` with `resume`. Anything else would destroy a trained
    model without a word, so it is a one-line error that says what differs and names the ways on (--resume,
    --overwrite). A read-only checkpoint is never replaced. No `path` (a run that keeps no checkpoint): ("train",
    None)."""
    if path is None:
        return "train", None
    kind = file_kind(path)
    if kind == "missing":
        return "train", None
    if kind != "file":
        raise UserError(f"checkpoint {path} is {kind}, not a file; remove it or use another --ckpt-dir")
    read_only = not os.stat(path).st_mode & 0o222
    if overwrite:
        if read_only:
            raise UserError(f"{path} is read-only, and --overwrite never replaces a read-only checkpoint; make it "
                            f"writable or use another --ckpt-dir")
        return "train", None
    ckpt = load_checkpoint(path)
    done = "finished" if ckpt.get("done") else f"unfinished ({ckpt.get('epoch', 0)} epochs done)"
    if ckpt.get("config") != config:
        way_on = ("it is read-only, so it is kept: use another --ckpt-dir" if read_only else
                  "pass --overwrite to replace it, or use another --ckpt-dir")
        raise UserError(f"{path} holds a {done} run with other settings: {describe_diff(ckpt.get('config'), config)}"
                        f"; {way_on}")
    if ckpt.get("done"):
        return "reuse", ckpt
    if not resume:
        raise UserError(f"{path} holds an {done} run of these settings; continue it with --resume, or start it over "
                        f"with --overwrite")
    if read_only:
        raise UserError(f"{path} is read-only, so --resume cannot continue it; make it writable")
    return "resume", ckpt


def best_weights(ckpt):
    """The weights a finished `fit` ended with: the best epoch's if it tracked one, else the last."""
    return ckpt["best_model"] if ckpt.get("best_model") is not None else ckpt["model"]


def _rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- batches

class _WholeBatches(torch.utils.data.Dataset):
    """A TensorDataset that the DataLoader indexes one batch at a time: one gather per tensor instead of one
    Python call per example and a stack. Same examples, same order,
    same values as the plain DataLoader."""

    def __init__(self, dataset):
        self.tensors = dataset.tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitems__(self, indices):
        index = torch.as_tensor(indices)
        return [t[index] for t in self.tensors]


def _as_is(batch):
    return batch


def loader(dataset, batch_size, collate_fn=None, **kwargs):
    """A DataLoader that fetches a TensorDataset (without a collate_fn of its own) a whole batch at a time."""
    if isinstance(dataset, TensorDataset) and collate_fn is None:
        return DataLoader(_WholeBatches(dataset), batch_size=batch_size, collate_fn=_as_is, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, **kwargs)


# ----------------------------------------------------------------------------- evaluation

def to_device(batch, device):
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch.to(device, non_blocking=True) if torch.is_tensor(batch) else batch


@torch.no_grad()
def evaluate(model, dataset, metric_fn, batch_size=1000, device="cpu", collate_fn=None):
    """Mean of each per-example metric over `dataset`: metric_fn(model, batch) -> {name: (batch,) tensor}.

    Under torchrun each rank scores its own shard and the sums are all-reduced, so every rank
    returns the numbers for the whole dataset.
    """
    rank, size = world()
    shard = dataset if size == 1 else TensorDataset(*(t[rank::size] for t in dataset.tensors)) \
        if isinstance(dataset, TensorDataset) else Subset(dataset, range(rank, len(dataset), size))
    was_training = model.training
    model.eval()
    sums, count = {}, torch.zeros((), dtype=torch.float64, device=device)
    for batch in loader(shard, batch_size, collate_fn):
        values = metric_fn(model, to_device(batch, device))
        for name, v in values.items():
            sums[name] = sums.get(name, 0) + v.double().sum()
        count += len(next(iter(values.values())))
    model.train(was_training)
    names = sorted(sums)
    total = torch.stack([sums[n] for n in names] + [count])
    if size > 1:
        dist.all_reduce(total)
    return {n: (total[i] / total[-1]).item() for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- training

class Interrupted(Stopped):
    """SIGINT/SIGTERM stopped a training: the step (or the validation) it was in finished, the checkpoint was saved,
    and --resume continues the run."""


class NonFiniteLoss(UserError):
    """The loss became nan/inf; the last good checkpoint, if any, was kept."""


def fit(model, loss_fn, optimizer, train_set, *, epochs, batch_size, seed, validate=None,
        monitor=None, mode="max", scheduler=None, patience=None, clip_grad=None, collate_fn=None,
        ckpt_path=None, resume=False, overwrite=False, config=None, device="cpu", precision="fp32", desc="train",
        quiet=False, prior=None):
    """Train `model` on `train_set` and return the history (a list of per-epoch dicts).

    loss_fn(model, batch) -> loss; validate(model) -> dict of numbers, after every epoch.
    monitor/mode pick the best epoch from validate's numbers (e.g. "val_acc", "max"); the model ends
    holding the best epoch's weights. The scheduler, if any, steps once per optimizer step.
    patience: stop after that many epochs without improvement. batch_size is the global batch:
    under torchrun each of N ranks takes batch_size / N. precision: "fp32", or "bf16" for the forward pass and
    the loss under bf16 autocast (see `resolve_precision`; the caller's config should record it).
    ckpt_path, config, resume, overwrite: what the run does with a checkpoint already there, see `prior_run` (whose
    answer a caller that already has it passes as `prior`, so the checkpoint is read once).
    SIGINT / SIGTERM stop it after the step or the validation it is in, with the checkpoint saved (Interrupted).
    """
    rank, size = world()
    if batch_size % size:
        raise UserError(f"batch size {batch_size} does not split evenly over {size} processes")
    sampler = DistributedSampler(train_set, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    # a private generator keeps the loader from drawing on the global RNG, so resuming mid-epoch is exact
    batches = loader(train_set, batch_size // size, collate_fn, sampler=sampler,
                     generator=torch.Generator().manual_seed(seed))
    net = DistributedDataParallel(model) if size > 1 else model
    sign = 1.0 if mode == "max" else -1.0

    state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "seconds": 0.0, "history": [], "best_score": -math.inf,
             "best_epoch": -1, "best_model": None, "bad_epochs": 0, "done": False}
    saved = None  # the checkpoint of this run, once there is one
    plan, ckpt = prior if prior is not None else prior_run(ckpt_path, config, resume, overwrite)
    if plan != "train":  # "resume", or "reuse": a finished run with this config (its loop below does nothing)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if isinstance(loss_fn, torch.nn.Module):
            loss_fn.load_state_dict(ckpt["loss"])
        _set_rng_state(ckpt["rng"])
        state.update({k: ckpt[k] for k in state})
        saved = ckpt_path
        if plan == "resume" and is_main() and not quiet:
            print(f"[{desc}] resuming from {ckpt_path} at epoch {state['epoch']} step {state['step']}")

    def checkpoint():
        nonlocal saved
        save_checkpoint(ckpt_path, config=config, model=unwrap(net).state_dict(),
                        optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict() if scheduler is not None else None,
                        loss=loss_fn.state_dict() if isinstance(loss_fn, torch.nn.Module) else None,
                        rng=_rng_state(), **state)
        saved = ckpt_path

    def interrupted(where):
        signum = stop_requested()
        kept = f"checkpoint saved to {saved}, continue with --resume" if saved else "no checkpoint was written"
        return Interrupted(signum, f"[{desc}] {signal.Signals(signum).name} {where}; {kept}")

    # a signal is only recorded while a step, a validation or a checkpoint write runs, and stops the run between them
    with stops_deferred():
        while state["epoch"] < epochs and not state["done"]:
            epoch, started = state["epoch"], time.perf_counter()
            sampler.set_epoch(epoch)
            net.train()
            bar = tqdm(batches, desc=f"[{desc}] epoch {epoch + 1}/{epochs}", leave=False,
                       disable=quiet or not is_main(), dynamic_ncols=True, mininterval=1.0)
            for step, batch in enumerate(bar):
                if step < state["step"]:
                    continue  # resuming mid-epoch: these batches were already trained on
                batch = to_device(batch, device)
                optimizer.zero_grad(set_to_none=True)
                with autocast(precision, device):
                    loss = loss_fn(net, batch)
                if not torch.isfinite(loss):
                    kept = f"the last good checkpoint is kept: {saved}" if saved else "no checkpoint was written"
                    raise NonFiniteLoss(f"[{desc}] loss became {loss.item()} at epoch {epoch + 1} step {step}; "
                                        f"lower the learning rate or check the training data ({kept})")
                loss.backward()
                if clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                state["step"], state["loss_sum"] = step + 1, state["loss_sum"] + loss.item()
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                if stop_requested():
                    state["seconds"] += time.perf_counter() - started
                    if ckpt_path is not None:
                        checkpoint()
                    raise interrupted(f"at epoch {epoch + 1} step {step + 1}")
            bar.close()

            train_loss = torch.tensor(state["loss_sum"] / max(state["step"], 1), dtype=torch.float64)
            if size > 1:
                dist.all_reduce(train_loss)
            record = {"epoch": epoch + 1, "train_loss": train_loss.item() / size,
                      "train_seconds": state["seconds"] + time.perf_counter() - started}
            if validate is not None:
                record.update(validate(unwrap(net)))
            state["history"].append(record)
            state.update(epoch=epoch + 1, step=0, loss_sum=0.0, seconds=0.0)
            if monitor is not None:
                score = sign * record[monitor]
                if score > state["best_score"]:
                    state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0,
                                 best_model=copy.deepcopy(unwrap(net).state_dict()))
                else:
                    state["bad_epochs"] += 1
                    if patience is not None and state["bad_epochs"] >= patience:
                        state["done"] = True
            if state["epoch"] >= epochs:
                state["done"] = True
            if is_main() and not quiet:
                print(f"[{desc}] " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in record.items()), flush=True)
            if ckpt_path is not None:
                checkpoint()
            if stop_requested():  # it came during the validation or the checkpoint write, which finished first
                raise interrupted(f"after epoch {epoch + 1}" + (" (the last: the run is finished)" * state["done"]))

    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    return state["history"]


def trained_seconds(history):
    """The training time a `fit` history records (its epochs' train_seconds; a resumed run's included)."""
    return sum(record["train_seconds"] for record in history)


def best_record(history, monitor, mode="max"):
    """The record of the epoch `fit` kept (the best `monitor`, the first of equals), from a history it returned."""
    pick = max if mode == "max" else min
    return pick(history, key=lambda record: record[monitor])


def train_or_reuse(model, loss_fn, train_set, *, validate, monitor, mode="max", warmup, epochs, batch_size, lr,
                   weight_decay, seed, patience=None, clip_grad=None, collate_fn=None, ckpt_path, config,
                   resume=False, overwrite=False, device="cpu", precision="fp32", desc="train", quiet=False):
    """Train `model` with `fit` under AdamW and a per-step learning-rate schedule, or reuse the finished run at
    `ckpt_path` made with exactly `config` (any other checkpoint there: see `prior_run`).

    warmup > 0: one-cycle, `warmup` of the steps rising from lr / 25 to lr, then cosine down to lr / 25e4;
    warmup = 0: cosine from lr down to 0. The rest goes to `fit`; `config` must record the precision. The caller seeds
    the global RNG (dropout masks) before building `model`. Returns the history; `model` ends holding the best epoch's
    weights, in eval mode.
    """
    plan, done = prior_run(ckpt_path, config, resume, overwrite)
    if plan == "reuse":
        model.load_state_dict(best_weights(done))
        if is_main():
            print(f"[{desc}] reusing the finished run {ckpt_path} (same config)")
        model.eval()
        return done["history"]

    optimizer = adamw(model.parameters(), lr, weight_decay, device)
    steps = epochs * -(-len(train_set) // batch_size)
    if warmup > 0:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warmup)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history = fit(model, loss_fn, optimizer, train_set, epochs=epochs, batch_size=batch_size, seed=seed,
                  validate=validate, monitor=monitor, mode=mode, scheduler=scheduler, patience=patience,
                  clip_grad=clip_grad, collate_fn=collate_fn, ckpt_path=ckpt_path, resume=resume, overwrite=overwrite,
                  config=config, device=device, precision=precision, desc=desc, quiet=quiet, prior=(plan, done))
    model.eval()
    return history
