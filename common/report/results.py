"""Reading the result files the report is built from: each metrics.json or benchmark.json becomes a dict that
knows its file and the script that writes it, so a missing key, a wrong type or a missing figure is a one-line
error naming the file and the command that rebuilds it."""
import json

from ..cli import UserError
from ..files import shown_path
from .blocks import Figure


class Metrics(dict):
    """One result file's JSON object; a key it lacks is a one-line error naming the file, the key and the script."""

    def __missing__(self, key):
        raise UserError(f"{shown_path(self.file)} has no {self.where}[{key!r}]; rerun: python {self.script} "
                        "(if the script renamed that key, make_report.py must follow)")


def as_metrics(value, file, script, where=""):
    """`value` with every JSON object in it a Metrics that knows where it came from."""
    if isinstance(value, dict):
        m = Metrics({k: as_metrics(v, file, script, f"{where}[{k!r}]") for k, v in value.items()})
        m.file, m.script, m.where = file, script, where
        return m
    if isinstance(value, list):
        return [as_metrics(v, file, script, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def result_path(results, name):
    """results/p1/metrics.json for "p1", results/p3/benchmark.json for "p3/benchmark"."""
    return results / (f"{name}.json" if "/" in name else f"{name}/metrics.json")


def load_results(results, scripts, dry_run=False):
    """{name: metrics} for every `scripts` {name: the script that writes it}; a missing, unreadable or (unless
    `dry_run`) dry-run result is an error naming the script to run."""
    metrics = {}
    for name, script in scripts.items():
        path = result_path(results, name)
        if not path.exists():
            raise UserError(f"{shown_path(path)} is missing; run: python {script} (or make all)")
        try:
            m = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {shown_path(path)} ({e}); run: python {script}")
        except json.JSONDecodeError as e:
            raise UserError(f"{shown_path(path)} is not valid JSON ({e}); rerun: python {script}")
        if not isinstance(m, dict):
            raise UserError(f"{shown_path(path)} holds a JSON {type(m).__name__}, not an object; "
                            f"rerun: python {script}")
        if m.get("dry_run") and not dry_run:
            raise UserError(f"{shown_path(path)} comes from a --dry-run; run: python {script} for the full results")
        metrics[name] = as_metrics(m, path, script)
    return metrics


def read(fn, *files):
    """fn(*files); a result file of the wrong shape (a list where a number belongs...) is a one-line error."""
    try:
        return fn(*files)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as e:
        names = " or ".join(shown_path(m.file) for m in files)
        raise UserError(f"{names} is not what make_report.py expects ({type(e).__name__}: {e}); rerun: "
                        + " and ".join(f"python {m.script}" for m in files))


def existing(path, m):
    """`path`, a file that the result file `m` refers to; gone, it is an error naming the script."""
    if not path.is_file():
        raise UserError(f"{shown_path(path)} is missing (written with {shown_path(m.file)}); rerun: python {m.script}")
    return path


def figure(m, name, caption):
    """The figure the script lists as m["figures"][name] (a path relative to its metrics.json)."""
    return Figure(existing(m.file.parent / m["figures"][name], m), caption)
