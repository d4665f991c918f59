"""Reading back what a run wrote (metrics.json, ablation.json, benchmark.json): one reader, one-line errors."""
import json
from pathlib import Path

from .utils import UserError, shown_path


def read_result(path, rerun):
    """The JSON object at `path`, or None where there is no such file.

    A file that cannot be read, is not JSON or holds no JSON object is a one-line error (UserError) that says to
    delete it or to run `rerun`, the command that writes it, again; nothing is overwritten.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{shown_path(path)} is not readable ({type(e).__name__}); delete it or rerun {rerun}")
    if not isinstance(value, dict):
        raise UserError(f"{shown_path(path)} holds a JSON {type(value).__name__}, not an object; delete it or "
                        f"rerun {rerun}")
    return value
