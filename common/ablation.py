"""Ablations: what each design choice is worth, trained like the final model and written to ablation.json, which the
next main run reports when it was made for the same settings. Two kinds:

- one change per variant, each from the main run's settings (`run_ablation`: P4's models);
- from a starting model to the final one, one change per row, each row keeping the changes above it
  (`ablation_configs`, `write_ablation`: P5's drawer).
"""
import argparse
import time

from .cli import UserError
from .files import read_result, save_json, shown_path
from .goals import mean_std
from .train import best_record, describe_diff, trained_seconds


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


def ablation_configs(final, rows, epochs):
    """{row name: its training config}: `final` (the config of the model the ablation explains) with the changes of
    that row and of every row above it, trained for `epochs`. The last row must arrive at `final` itself."""
    configs, changes = {}, {}
    for name, _, overrides in rows:
        changes.update(overrides)
        configs[name] = {**final, **changes, "epochs": epochs}
    wanted = {**final, "epochs": epochs}
    if configs[rows[-1][0]] != wanted:
        raise UserError(f"the ablation ends at the default settings ({describe_diff(configs[rows[-1][0]], wanted)}); "
                        f"run it without changing the model's flags")
    return configs


def ablation_table(rows, configs, histories, params, monitor, mode="min"):
    """One record per row: the best validation `monitor` of its training history (the epoch fit kept), its change
    from the row above, the best epoch, epochs and seconds trained, its parameter count and its config (configs,
    histories and params: {row name: ...})."""
    table = []
    for name, change, _ in rows:
        config, history, n = configs[name], histories[name], params[name]
        best = best_record(history, monitor, mode)
        table.append({"name": name, "change": change, monitor: best[monitor],
                      f"{monitor}_change": None if not table else best[monitor] - table[-1][monitor],
                      "best_epoch": best["epoch"], "epochs_trained": len(history),
                      "train_seconds": trained_seconds(history), "params": n, "config": config})
    return table


def write_ablation(path, rows, configs, histories, params, final, epochs, monitor, mode="min"):
    """ablation.json at `path`: the epochs of every row, the config of the model it explains (`final`) and the
    ablation_table; returns what it wrote."""
    ablation = {"epochs": epochs, "config": final, "rows": ablation_table(rows, configs, histories, params, monitor,
                                                                          mode)}
    save_json(path, ablation)
    return ablation


def read_ablation(path, rerun, **expected):
    """The ablation at `path` if it was made for `expected` (e.g. config=... for P5's, data=..., seed=... for P4's),
    else None (with a line that says why); a damaged file is a one-line error naming `rerun`, the command that
    writes it."""
    ablation = read_result(path, rerun)
    stale = [key for key, value in expected.items() if ablation is not None and ablation.get(key) != value]
    if stale:
        print(f"{shown_path(path)} was made for other settings ({', '.join(stale)}): left out of metrics.json "
              f"(run {rerun} again)")
        return None
    return ablation
