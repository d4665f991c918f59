"""Ablations: train variants of a run that each change one thing, and write their scores to ablation.json, which
the next main run reports when it was made for the same settings."""
import argparse
import json
import time
from pathlib import Path

from .train import best_record
from .utils import UserError, mean_std, save_json, shown_path


def run_ablation(variants, args, train, score, path, metric, monitor, **record):
    """Train each variant (name, what, kind, {flag: value} overriding `args`) with `train(name, kind, variant_args)
    -> (model, config, history)`, score it with `score(model) -> [value per file]`, and write ablation.json at
    `path`: {"rows": [{name, what, kind, overrides, `metric` (mean, std, sem, median, n), `metric`_per_file,
    best_epoch (the epoch `fit` kept, by `monitor`), epochs, seconds}], **record}."""
    rows = []
    for name, what, kind, overrides in variants:
        started = time.time()
        model, _, history = train(name, kind, argparse.Namespace(**{**vars(args), **overrides}))
        values = score(model)
        rows.append({"name": name, "what": what, "kind": kind, "overrides": overrides,
                     metric: mean_std(values, keep_values=False), f"{metric}_per_file": [round(x, 3) for x in values],
                     "best_epoch": best_record(history, monitor)["epoch"], "epochs": len(history),
                     "seconds": time.time() - started})
        print(f"[ablation] {name}: {metric} {rows[-1][metric]['mean']:.3f}", flush=True)
    save_json(path, {"rows": rows, **record})


def read_ablation(path, **expected):
    """ablation.json at `path` if it exists and holds `expected` (e.g. the data and seed of this run), else None;
    a file that cannot be read is a one-line error."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        ablation = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{shown_path(path)} is not readable ({type(e).__name__}); delete it or run the ablation "
                        f"again") from None
    if not isinstance(ablation, dict) or any(ablation.get(k) != v for k, v in expected.items()):
        return None
    return ablation
