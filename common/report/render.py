"""The report's blocks (common.report.blocks) written three ways.

- report.md, for readers of the repository: math as $...$, figures and recordings linked from results/.
- report.ipynb, the hand-in notebook: text and math in markdown cells; the repository's code as code cells that
  run (a first cell imports what they use); each figure as a cell whose stored output is exactly what it produces
  in a fresh kernel started at the repository root (IPython's own formatter makes it here), and the recordings in
  one cell that holds their labels and files as data (a Python literal) and shows each label as text.
- report.html, one self-contained page written from the blocks directly: math converted to MathML when the
  report is built (latex2mathml; browsers render MathML natively, so the page needs no script and no font from
  the network), code highlighted (pygments), figures and audio as data: URIs. It opens the same offline, anywhere.

No cell's code is made of a result file's text: code cells are the repository's source, or the report's own text
with values written as Python literals (repr), so a label holding a newline stays inside its string.
"""
import base64
import html
import os
import pprint
import re
from pathlib import Path

from ..files import ROOT
from .blocks import Code, Computed, Figure, Figures, Listening, Text, esc
from .source import imports

NOTEBOOK_IMPORTS = [("html", None, None), ("pathlib", "Path", None), ("IPython.display", "Audio", None),
                    ("IPython.display", "HTML", None), ("IPython.display", "Image", None),
                    ("IPython.display", "display", None)]
ANCHOR = re.compile(r"^(#{1,6} .*?) \{#([A-Za-z0-9-]+)\}$", re.M)  # a heading's {#anchor} (blocks.heading)
MATH = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$", re.S)  # display, inline; \$ is a dollar

# the notebook's one cell of recordings: EXAMPLES becomes a Python literal of (heading, [(label, file), ...])
LISTENING = """# P4's recordings as its metrics.json lists them, (heading, [(label, file), ...]); labels shown as text
examples = EXAMPLES
for heading, clips in examples:
    display(HTML(f"<p><b>{html.escape(heading)}</b></p>"))
    for label, path in clips:
        display(HTML(html.escape(label)), Audio(Path(path).read_bytes()))"""


def link(path, out):
    """`path` relative to the folder `out`, with forward slashes (as markdown and notebooks want)."""
    return Path(os.path.relpath(path, out)).as_posix()


def from_root(path):
    """A path as the notebook's cells name it: relative to the repository root, where its kernel starts."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def comment(text):
    """`text` as the rest of a one-line Python comment: no line breaks, no backticks."""
    return " ".join(text.replace("`", "").split())


def shown_code(c):
    """A Code block as every format shows it: where it comes from, then the source."""
    cls, _, _ = c.name.rpartition(".")
    return f"# {c.file}" + (f", a method of class {cls}" if cls else "") + "\n" + c.source


def figures_of(b):
    return b.figures if isinstance(b, Figures) else [b]


def with_anchors(markdown):
    """A heading's {#anchor} as markdown and Jupyter have it: an empty <a id> before the heading."""
    return ANCHOR.sub(lambda m: f'<a id="{m[2]}"></a>\n\n{m[1]}', markdown)


# ----------------------------------------------------------------------------- markdown

def to_markdown(blocks, out):
    parts = []
    for b in blocks:
        if isinstance(b, Text):
            parts.append(with_anchors(b.markdown))
        elif isinstance(b, Code):
            parts.append(f"```python\n{shown_code(b)}\n```")
        elif isinstance(b, Computed):
            parts.append(f"```python\n{b.source}\n```\n\n```text\n{b.output.rstrip()}\n```")
        elif isinstance(b, (Figure, Figures)):
            parts += [f"![{f.caption}]({link(f.path, out)})\n*{f.caption}*" for f in figures_of(b)]
        elif isinstance(b, Listening):
            parts += [f"**{esc(heading)}**\n\n" + "\n".join(f"- [{esc(a.label)}]({link(a.path, out)})"
                                                              for a in clips) for heading, clips in b.groups]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- notebook

def listening_source(b):
    """The notebook's cell of recordings: LISTENING with the examples as a Python literal."""
    examples = [(heading, [(a.label, from_root(a.path)) for a in clips]) for heading, clips in b.groups]
    literal = pprint.pformat(examples, width=116, sort_dicts=False).replace("\n", "\n" + " " * len("examples = "))
    return LISTENING.replace("EXAMPLES", literal)


def to_notebook(blocks):
    """The hand-in notebook; its outputs are what its cells produce (tests/test_report.py runs it to check)."""
    import nbformat
    from IPython.core.formatters import DisplayFormatter
    from IPython.display import HTML, Image
    from IPython.display import Audio as Player
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    formatter = DisplayFormatter()
    cells = []

    def output(obj, kind):
        data, metadata = formatter.format(obj)
        return new_output(kind, data=data, metadata=metadata)

    for b in blocks:
        if isinstance(b, Text):
            cells.append(new_markdown_cell(with_anchors(b.markdown)))
        elif isinstance(b, Code):
            cells.append(new_code_cell(shown_code(b), metadata={"tags": ["repository-code"]}))
        elif isinstance(b, Computed):
            cells.append(new_code_cell(b.source, metadata={"tags": ["computed"]},
                                       outputs=[new_output("stream", name="stdout", text=b.output)]))
        elif isinstance(b, (Figure, Figures)):
            for f in figures_of(b):
                cells.append(new_code_cell(f"Image(filename={from_root(f.path)!r})  # {comment(f.caption)}",
                                           outputs=[output(Image(filename=str(f.path)), "execute_result")]))
        elif isinstance(b, Listening):
            outputs = []
            for heading, clips in b.groups:  # what LISTENING displays, in the same order
                outputs.append(output(HTML(f"<p><b>{html.escape(heading)}</b></p>"), "display_data"))
                for a in clips:
                    outputs += [output(HTML(html.escape(a.label)), "display_data"),
                                output(Player(a.path.read_bytes()), "display_data")]
            cells.append(new_code_cell(listening_source(b), outputs=outputs, metadata={"tags": ["listening"]}))
    codes = [b for b in blocks if isinstance(b, Code)]
    cells.insert(1, new_code_cell("# What the code below uses, imported as the repository's own files import it "
                                  "(run from the repository root)\n" + imports(codes, NOTEBOOK_IMPORTS)))
    count = 0
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i}"  # nbformat draws random ids; fixed ones keep a rebuilt report's diff to what changed
        if cell.cell_type == "code":
            count += 1
            cell.execution_count = count  # as a fresh kernel numbers them, running top to bottom
            for out in cell.outputs:
                if out.output_type == "execute_result":
                    out.execution_count = count
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"},
                                             "language_info": {"name": "python"}})
    nbformat.validate(nb)
    return nb


# ----------------------------------------------------------------------------- one HTML page

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1, h2, h3 { line-height: 1.2; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; } h3 { margin-top: 2rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; vertical-align: top; } th { background: #f4f4f4; }
code { background: #f4f4f4; padding: 0 0.2em; border-radius: 3px; font-size: 0.9em; }
/* code: up to 120 characters a line without scrolling; wider than the text column where the window allows,
   centred on it, and a smaller font where the window is narrow */
pre.code { --cw: min(62rem, calc(100vw - 2rem)); width: var(--cw); box-sizing: border-box;
           margin: 1rem 0 1rem calc((100% - var(--cw)) / 2); background: #f7f7f9; border: 1px solid #e3e3e8;
           border-radius: 4px; padding: 0.6rem 0.8rem; overflow-x: auto; line-height: 1.4;
           font-size: min(0.8rem, calc((100vw - 4rem) / 73)); }
pre.code code { background: none; padding: 0; font-size: inherit; }
pre.output { background: #fff; border-left: 3px solid #e3e3e8; }
math { font-family: "STIX Two Math", "Cambria Math", "Latin Modern Math", "DejaVu Math TeX Gyre", math;
       font-size: 1.1em; }  /* fonts the reader has: macOS, Windows, TeX, most Linux */
math[display="block"] { margin: 1rem 0; }
/* a figure at its own size (1 image pixel, 1 CSS pixel: matplotlib's 10-point text at 120 dpi is 17 px), never wider
   than the window, centred on the text column, which a wide one overhangs on both sides */
figure.plot { --fw: min(var(--w), calc(100vw - 2rem)); width: var(--fw);
              margin: 1.5rem 0 1.5rem calc((100% - var(--fw)) / 2); }
figure.plot img { width: 100%; display: block; }
figure.plot img.pixels { image-rendering: pixelated; }  /* digit grids: enlarged, not blurred */
figcaption { color: #555; font-style: italic; }
div.row { display: flex; gap: 1rem; justify-content: center; align-items: flex-start; }
div.row figure.plot { margin: 1.5rem 0; flex: 0 1 var(--w); }
/* recordings: a column of at least 25rem each, a label beside each player; a player is never narrower than 15rem,
   where it shows its time and duration, and never wider than its own column */
div.listening { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 25rem), 1fr));
                gap: 1rem 2rem; margin: 1rem 0 1.5rem; }
div.recording { display: grid; grid-template-columns: minmax(0, 1fr) minmax(15rem, 16rem); gap: 0.3rem 0.6rem;
                align-items: center; align-content: start; }
div.recording p { margin: 0; overflow-wrap: anywhere; } div.recording p:first-child { grid-column: 1 / -1; }
div.recording audio { display: block; width: 100%; height: 2.2rem; }
"""
PIXEL_SCALE = 1.4  # a digit grid (no dpi recorded) is shown this much larger than its pixels


def data_uri(path):
    # fixed, not mimetypes.guess_type: that reads the machine's /etc/mime.types (audio/x-wav on some)
    mime = {".wav": "audio/wav", ".png": "image/png"}[path.suffix]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def png_width(path):
    """(width in pixels, whether the file records a resolution: matplotlib's figures do, pixel grids do not)."""
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), b"pHYs" in data[:data.find(b"IDAT")]


def highlight(source):
    from pygments import highlight as pygmentize
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    return pygmentize(source, PythonLexer(), HtmlFormatter(nowrap=True)).rstrip("\n")


def code_style():
    from pygments.formatters import HtmlFormatter
    return HtmlFormatter(style="default").get_style_defs("pre.code")


def to_html(blocks):
    """One self-contained page: markdown by mistune, math as MathML (latex2mathml), code highlighted by pygments,
    figures and audio as data: URIs. No script, stylesheet or font is fetched."""
    import mistune
    from latex2mathml.converter import convert

    markdown = mistune.create_markdown(plugins=["table"])  # escapes any HTML in the text

    def rendered(text):
        maths = []

        def stash(match):  # math out of markdown's way: its _ and * are not emphasis
            maths.append(convert(match[1] or match[2], display="block" if match[1] else "inline"))
            return f"MATH{len(maths) - 1}MATH"

        page = markdown(MATH.sub(stash, text))
        page = re.sub(r"<h([1-6])>(.*?) \{#([A-Za-z0-9-]+)\}</h\1>", r'<h\1 id="\3">\2</h\1>', page)
        page = re.sub(r'<a href="(?!#)[^"]*">(.*?)</a>', r"\1", page)  # a file of the repository: its name only
        return re.sub(r"MATH(\d+)MATH", lambda mt: maths[int(mt[1])], page)

    def inline(text):
        return rendered(text).strip().removeprefix("<p>").removesuffix("</p>")

    def figure(f):
        width, plot = png_width(f.path)
        shown = width if plot else round(PIXEL_SCALE * width)
        return (f'<figure class="plot" style="--w: {shown}px"><img src="{data_uri(f.path)}" '
                f'alt="{html.escape(f.caption.replace("`", ""))}"{"" if plot else " class=pixels"}>'
                f"<figcaption>{inline(f.caption)}</figcaption></figure>")

    body = []
    for b in blocks:
        if isinstance(b, Text):
            body.append(rendered(b.markdown))
        elif isinstance(b, Code):
            body.append(f'<pre class="code"><code>{highlight(shown_code(b))}</code></pre>')
        elif isinstance(b, Computed):
            body.append(f'<pre class="code computed"><code>{highlight(b.source)}</code></pre>\n'
                        f'<pre class="code output"><code>{html.escape(b.output.rstrip())}</code></pre>')
        elif isinstance(b, Figure):
            body.append(figure(b))
        elif isinstance(b, Figures):
            body.append('<div class="row">' + "".join(figure(f) for f in b.figures) + "</div>")
        elif isinstance(b, Listening):
            body.append('<div class="listening">' + "".join(
                f'<div class="recording"><p><strong>{html.escape(heading)}</strong></p>' + "".join(
                    f'<p>{html.escape(a.label)}</p><audio controls preload="auto" src="{data_uri(a.path)}"></audio>'
                    for a in clips) + "</div>" for heading, clips in b.groups) + "</div>")
    title = html.escape(blocks[0].markdown.splitlines()[0].lstrip("# "))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
            f"<style>{STYLE}{code_style()}\n</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
