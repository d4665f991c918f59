"""Reading the result files the report is built from: each metrics.json, benchmark.json or config.json becomes a dict
that knows its file and the script that writes it, so a missing key, a wrong type or a missing figure is a one-line
error naming the file, the key and the command that rebuilds it.

Nothing is taken on trust: every number must be finite, every verdict a boolean, the nesting bounded, and every
figure or recording a real PNG or WAV inside the results folder its file came from (a relative path, no `..`).
"""
import json
import math
import re
from pathlib import Path, PurePosixPath

from ..cli import UserError
from ..files import shown_path
from .blocks import Audio, Figure

MAX_DEPTH = 40  # the deepest result file nests 7 levels; a deeper one is not one a script wrote
VERDICTS = {"met", "reproduced", "dry_run", "bf16_matmul_in_hardware", "bf16_in_hardware"}  # booleans
SAFE_PATH = re.compile(r"[\w.-]+(/[\w.-]+)*")  # what the scripts name their files: no spaces, quotes or brackets
SIGNATURES = {".png": (b"\x89PNG\r\n\x1a\n", 0, b"IHDR", 12), ".wav": (b"RIFF", 0, b"WAVE", 8)}


class Metrics(dict):
    """One result file's JSON object; a key it lacks is a one-line error naming the file, the key and the script."""

    def __missing__(self, key):
        raise UserError(f"{shown_path(self.file)} has no {self.where}[{key!r}]; rerun: python {self.script} "
                        "(if the script renamed that key, make_report.py must follow)")


def refuse(file, script, where, problem):
    raise UserError(f"{shown_path(file)}: {where or 'the file'} {problem}; rerun: python {script}")


def checked(value, file, script):
    """`value` (parsed JSON) with every object in it a Metrics that knows where it came from; a non-finite number,
    a verdict that is not a boolean or nesting deeper than MAX_DEPTH is a one-line error naming the key."""
    def walk(v, where, depth):
        if depth > MAX_DEPTH:
            refuse(file, script, where, f"nests more than {MAX_DEPTH} levels deep")
        if isinstance(v, float) and not math.isfinite(v):
            refuse(file, script, where, f"is {v}, not a finite number")
        if isinstance(v, dict):
            m = Metrics()
            for k, x in v.items():
                if k in VERDICTS and not isinstance(x, bool):
                    refuse(file, script, f"{where}[{k!r}]", f"is {x!r}, not true or false")
                m[k] = walk(x, f"{where}[{k!r}]", depth + 1)
            m.file, m.script, m.where = file, script, where
            return m
        if isinstance(v, list):
            return [walk(x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v)]
        return v
    return walk(value, "", 0)


def result_path(results, name):
    """results/p1/metrics.json for "p1", results/p3/benchmark.json for "p3/benchmark"."""
    return results / (f"{name}.json" if "/" in name else f"{name}/metrics.json")


def load_results(results, scripts, dry_run=False):
    """{name: metrics} for every `scripts` {name: the script that writes it}; a missing, unreadable, untrustworthy
    or (unless `dry_run`) dry-run result is an error naming the script to run."""
    metrics = {}
    for name, script in scripts.items():
        path = result_path(results, name)
        if not path.is_file():
            raise UserError(f"{shown_path(path)} is missing; run: python {script} (or make all)")
        try:
            m = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {shown_path(path)} ({e}); run: python {script}")
        except json.JSONDecodeError as e:
            raise UserError(f"{shown_path(path)} is not valid JSON ({e}); rerun: python {script}")
        except RecursionError:
            raise UserError(f"{shown_path(path)} nests more than {MAX_DEPTH} levels deep; rerun: python {script}")
        if not isinstance(m, dict):
            raise UserError(f"{shown_path(path)} holds a JSON {type(m).__name__}, not an object; "
                            f"rerun: python {script}")
        metrics[name] = checked(m, path, script)
        if m.get("dry_run") and not dry_run:
            raise UserError(f"{shown_path(path)} comes from a --dry-run; run: python {script} for the full results")
    return metrics


def read(fn, *files):
    """fn(*files); a result file of the wrong shape (a list where a number belongs...) is a one-line error."""
    try:
        return fn(*files)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as e:
        names = " or ".join(shown_path(m.file) for m in files)
        raise UserError(f"{names} is not what make_report.py expects ({type(e).__name__}: {e}); rerun: "
                        + " and ".join(f"python {m.script}" for m in files))


def attached(m, key):
    """The file that m[key] names (a path relative to the folder of m's result file), checked: it must lie inside
    that folder (relative, no `..`), exist, and be the PNG or WAV its name says."""
    rel, where = m[key], f"{m.where}[{key!r}]"
    folder = m.file.parent
    if not isinstance(rel, str) or not SAFE_PATH.fullmatch(rel) or ".." in PurePosixPath(rel).parts:
        refuse(m.file, m.script, where, f"is {rel!r}: a figure or recording must be a plain relative path inside "
                                        f"{shown_path(folder)}/")
    path = folder / rel
    if path.suffix not in SIGNATURES:
        refuse(m.file, m.script, where, f"names {rel!r}, not a .png or .wav file")
    if not path.is_file():
        raise UserError(f"{shown_path(path)} is missing (named in {shown_path(m.file)} at {where}); rerun: "
                        f"python {m.script}")
    head, at, tag, tag_at = SIGNATURES[path.suffix]
    with open(path, "rb") as f:
        data = f.read(32)
    if data[at:at + len(head)] != head or data[tag_at:tag_at + len(tag)] != tag or (
            path.suffix == ".png" and (data[16:20] == bytes(4) or data[20:24] == bytes(4))):
        refuse(m.file, m.script, where, f"names {shown_path(path)}, which is not a {path.suffix[1:].upper()} file")
    return Path(path)


def figure(m, name, caption):
    """The figure the script lists as m["figures"][name] (a path relative to its metrics.json)."""
    return Figure(attached(m["figures"], name), caption)


def clip(m, key, label):
    """The recording m[key] names (relative to its metrics.json), labelled."""
    return Audio(attached(m, key), label)
