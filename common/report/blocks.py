"""What the report is made of: blocks in reading order (text, code, figures, audio), and how its numbers, bounds
and tables are written. make_report.py composes them; common.report.render turns them into markdown, a notebook
and one HTML page.

Text from a result file (a label, a noise's name, a CPU's) goes into the report through `esc`, which makes it
plain text in markdown: it can add no link, image, math, table cell or line. Headings carry their anchor as
`{#name}` at their end (`heading`); each writer turns it into the anchor its format has.
"""
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Text:
    markdown: str  # math as $...$ and $$...$$; headings may end in {#anchor}


@dataclass
class Code:
    """Source taken from the repository when the report is built (common.report.source)."""
    file: str      # relative to the repository root
    name: str      # "draw", "GRUMasker.forward"
    lines: tuple   # (first, last), 1-based
    source: str    # dedented, as the file has it


@dataclass
class Computed:
    """A cell the report writes itself and runs: `source` (made of this module's text and of values, never of a
    result file's text) and `output`, what it prints."""
    source: str
    output: str


@dataclass
class Figure:
    path: Path     # absolute; the writers make it relative to the report
    caption: str


@dataclass
class Figures:
    """Figures shown side by side (two grids to compare)."""
    figures: list


@dataclass
class Audio:
    path: Path
    label: str     # plain text, as a result file has it (each writer escapes it)


@dataclass
class Listening:
    """Players grouped by recording: [(heading, [Audio, ...]), ...]."""
    groups: list


# ----------------------------------------------------------------------------- text

MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>$|{}#!~])")


def esc(text):
    """`text` (from a result file) as plain markdown text: one line, every markdown character escaped."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(str(text).split()))


def heading(level, title, anchor):
    """A markdown heading that links can reach as #anchor in every format."""
    return f"{'#' * level} {title} {{#{anchor}}}"


def link(text, anchor):
    return f"[{text}](#{anchor})"


# ----------------------------------------------------------------------------- numbers

def pct(x, digits=2):
    return f"{100 * x:.{digits}f}%"


def pm(stat, digits=2, scale=100, unit="%"):
    """'mean ± std' of a mean_std dict."""
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}{unit}"


def percent(x):
    """A bound as a percentage, no more digits than it has: 0.982 -> '98.2%', 0.9 -> '90%'."""
    return f"{100 * x:g}%"


def plain(x):
    return f"{x:g}"


def times(x):
    return f"{x:.2f}x"


def db(x):
    return f"{x:.2f} dB"


def signed(x):
    return f"{x:+.3f}"


def minutes(seconds):
    return f"{seconds / 60:.1f} min"


def in_minutes(seconds):
    return f"{seconds / 60:g} min"


BOUNDS = {"at_least": ">=", "above": ">", "at_most": "<=", "below": "<"}


def bound(g, fmt=plain, of=None):
    """'>= 98.2%' for a bar as metrics.json holds it; `of` names a bound that is itself measured."""
    kind, = [k for k in BOUNDS if k in g]
    return f"{BOUNDS[kind]} {of} ({fmt(g[kind])})" if of else f"{BOUNDS[kind]} {fmt(g[kind])}"


def table(header, rows, align=None):
    """A markdown table; `align` one letter per column, l or r (default: the first left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join({"l": ":---", "r": "---:"}[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
