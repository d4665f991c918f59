"""An ablation: from a starting model to the final one, one change per row, each row keeping the changes above it.

Each row is (name, what changes, {config key: new value}); the rows are trained like the final model, for the same
number of epochs, and the table says what each change is worth on the validation score.
"""
from .results import read_result
from .train import best_record, describe_diff
from .utils import UserError, save_json


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
                      "train_seconds": sum(r["train_seconds"] for r in history), "params": n, "config": config})
    return table


def write_ablation(path, rows, configs, histories, params, final, epochs, monitor, mode="min"):
    """ablation.json at `path`: the epochs of every row, the config of the model it explains (`final`) and the
    ablation_table; returns what it wrote."""
    ablation = {"epochs": epochs, "config": final, "rows": ablation_table(rows, configs, histories, params, monitor,
                                                                          mode)}
    save_json(path, ablation)
    return ablation


def read_ablation(path, config, rerun):
    """The ablation at `path` if it explains the model trained with `config` (its "config"), else None (with a line
    that says why); a damaged file is a one-line error naming `rerun`."""
    ablation = read_result(path, rerun)
    if ablation is not None and ablation.get("config") != config:
        print(f"{path} was made for other settings: left out of metrics.json (run {rerun} again)")
        return None
    return ablation
