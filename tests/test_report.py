"""The report: it agrees with results/ and with the code it shows, its notebook runs and stores what its cells
produce, its summary is the homework's checklist with a link to every section, "Beyond the homework" stays short, it
builds from every script's --dry-run output (so a renamed metrics key fails here, not after a full run), `--handin`
writes exactly the hand-in it says, together or not at all, no text of a result file becomes code, and a broken or
untrustworthy result is a one-line error naming the file and the key."""
import ast
import copy
import html.parser
import importlib
import inspect
import json
import os
import re
import shutil
import textwrap
import zipfile
from pathlib import Path

import nbformat
import pytest

import make_report
from common.speech import data as speech_data
from common.cli import UserError
from common.files import ROOT
from common.report.source import code, imports
from common.speech.denoise import ZIP_STAMP as STAMP
from conftest import assert_clean_error, run_main, run_script
from test_report_html import check_offline, code_cells


@pytest.fixture(scope="module")
def built():
    return make_report.build(ROOT / "results")


def test_committed_report_matches_results(built):
    """Every number in report.md is what the builder reads from metrics.json today, and the code it shows is
    today's."""
    markdown, _, _ = built
    assert (ROOT / "report.md").read_text() == markdown, "report.md is stale: run python make_report.py"


def test_committed_notebook_and_html_match_results(built):
    _, nb, html = built
    committed = nbformat.read(ROOT / "report.ipynb", as_version=4)
    assert committed.cells == nb.cells, "report.ipynb is stale: run python make_report.py"
    assert (ROOT / "report.html").read_text() == html, "report.html is stale: run python make_report.py"


def test_notebook_runs_and_stores_what_its_cells_produce():
    """The committed notebook, run top to bottom in a fresh kernel from the repository root, gives exactly the
    outputs it stores (figures, players) and raises nowhere."""
    from nbclient import NotebookClient
    committed = nbformat.read(ROOT / "report.ipynb", as_version=4)
    fresh = copy.deepcopy(committed)
    for cell in fresh.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(fresh, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    ran = [(c.execution_count, c.outputs) for c in fresh.cells if c.cell_type == "code"]
    stored = [(c.execution_count, c.outputs) for c in committed.cells if c.cell_type == "code"]
    assert len(ran) == len(stored) and [i for i, (a, b) in enumerate(zip(ran, stored)) if a != b] == []


def test_code_cells_are_the_repository_code(built):
    """At least twelve code cells hold the repository's own definitions, exactly as Python itself finds their source
    (inspect, on the imported object), with where they come from; each problem shows some."""
    _, nb, html = built
    cells = code_cells_of(nb)
    assert len(cells) >= 12 and all(make_report.CODE[p] for p in ("p1", "p2", "p3", "p4", "p5"))
    for problem, names in make_report.CODE.items():
        for file, name in names:
            obj = importlib.import_module(file.removesuffix(".py").replace("/", "."))
            for part in name.split("."):
                obj = getattr(obj, part)
            source = textwrap.dedent(inspect.getsource(obj)).rstrip("\n")
            shown = [c for c in cells if c.splitlines()[0].startswith(f"# {file}") and source in c]
            assert len(shown) == 1, (problem, file, name)
            assert shown[0].split("\n", 1)[1] == source


def code_cells_of(nb):
    return [c.source for c in nb.cells if c.cell_type == "code" and "repository-code" in c.metadata.get("tags", [])]


def test_a_name_that_moved_is_a_build_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(make_report.CODE, "p5", [("p5_draw.py", "draw_gone")])
    with pytest.raises(UserError, match="p5_draw.py has no draw_gone"):
        make_report.build(ROOT / "results")
    monkeypatch.setitem(make_report.CODE, "p5", [("p5_gone.py", "draw")])
    code_, err = run_main(make_report.main, ["--out", tmp_path], capsys)
    assert code_ == 2 and err.startswith("error: cannot read p5_gone.py") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_shown_code_finds_methods_and_decorators_and_imports_what_it_reads(tmp_path):
    """On a small package: a method dedented, decorators kept, and the imports that let the definitions run, taken
    from how the file binds each name it reads (relative imports made absolute); a name it cannot bind is an
    error."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "util.py").write_text("def helper(x):\n    return x\n")
    (tmp_path / "pkg" / "mod.py").write_text(
        "import functools\nimport numpy as np\nfrom .util import helper\nLIMIT = 3\n\n\n"
        "@functools.cache\ndef f(x, n=LIMIT):\n    y = [i for i in range(n)]\n"
        "    return np.sum(helper(x)) + len(y)\n\n\n"
        "class A:\n    def g(self, z):\n        import os\n        return f(z) + os.sep + undefined_thing\n")
    f = code("pkg/mod.py", "f", root=tmp_path)
    assert f.source.startswith("@functools.cache\ndef f(") and f.lines == (7, 10)
    assert imports([f], root=tmp_path) == "import functools\nimport numpy as np\nfrom pkg.mod import LIMIT\n" \
                                          "from pkg.util import helper"
    g = code("pkg/mod.py", "A.g", root=tmp_path)
    assert g.source.startswith("def g(self, z):\n    import os")
    with pytest.raises(UserError, match="undefined_thing"):
        imports([f, g], root=tmp_path)
    with pytest.raises(UserError, match="pkg/mod.py has no A.h"):
        code("pkg/mod.py", "A.h", root=tmp_path)


def summary_rows(markdown):
    """The rows of the summary's checklist, as lists of cells."""
    part = markdown.split("## Summary", 1)[1].split("\n### ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in part.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row] for row in rows[1:]]


def before_appendix(text):
    return text.split("Appendix: the project's own targets")[0]


def test_summary_is_the_homeworks_checklist(built):
    """One row per deliverable, every problem and the hand-in's rules among them, each with its section's link (an
    anchor in report.md and an id in report.html); P4's row says that the homework's 10 dB cannot be checked here
    and gives this data's numbers; the project's targets wait for the appendix, and no "not met" or "open" comes
    before it."""
    markdown, _, page = built
    rows = summary_rows(markdown)
    assert len(rows) >= 15 and {row[0] for row in rows} == {"P1", "P2", "P3", "P4", "P5", "hand-in"}
    for row in rows:
        anchor = re.fullmatch(r"\[[^]]+\]\(#([a-z0-9-]+)\)", row[-1])[1]
        assert f'<a id="{anchor}"></a>' in markdown and f' id="{anchor}"' in page, anchor
    p4 = json.loads((ROOT / "results/p4/metrics.json").read_text())
    snr, = [row for row in rows if "10 dB" in row[1]]
    assert "cannot be checked here" in snr[2] and "course's data" in snr[1]
    for system in ("fc", "gru"):
        assert f"{p4['v']['systems'][system]['snr_db']['mean']:.2f}" in snr[3]
        assert f"{100 * p4['data_context']['share_of_oracle_gain'][system]:.0f}%" in snr[3]
    for number in (p4["data_context"]["noisy_snr_db"], p4["data_context"]["oracle_ibm_snr_db"]):
        assert f"{number:.2f}" in snr[3]
    for text in (markdown, page):
        assert "Appendix: the project's own targets" in text
        assert not re.search(r"not met|\bopen\b", before_appendix(text), re.I)
    assert markdown.index("## Summary") < markdown.index("## Problem 1") < markdown.index("## Appendix")
    for jargon in ("worst split", "better reference", "goal met", "best public solution", "not reproduced"):
        assert jargon not in markdown


class PageText(html.parser.HTMLParser):
    """The prose of a page, by the <h2> section it sits in (the head, style and code blocks left out)."""

    def __init__(self):
        super().__init__()
        self.sections, self.current, self.skip = {"top": []}, "top", 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "title", "head", "pre"):
            self.skip += 1
        if tag == "h2":
            self.current = dict(attrs).get("id", "h2")
            self.sections.setdefault(self.current, [])

    def handle_endtag(self, tag):
        if tag in ("style", "title", "head", "pre"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.sections[self.current].append(data)


def test_beyond_the_homework_is_at_most_a_fifth_of_the_page(built):
    """The part past the homework is one screen of findings: at most 20% of the page's prose."""
    page = PageText()
    page.feed(built[2])
    size = {name: len(" ".join("".join(parts).split())) for name, parts in page.sections.items()}
    assert "beyond" in size and "appendix" in size and size["beyond"] <= 0.2 * sum(size.values()), size


def test_report_shows_p4_clips_data_context_and_machine(results_copy, tmp_path):
    """Three `v` recordings as noisy / FC / GRU / oracle IBM / clean with their SNRs and three `te` ones: 21 players,
    all of them in one notebook cell; the data context's numbers; one row per distinct machine."""
    path = results_copy / "p4" / "metrics.json"
    m = json.loads(path.read_text())
    m["data_context"]["input_snr_db"].update(min=-4.25, max=4.75)
    m["data_context"]["share_of_oracle_gain"].update(fc=0.123, gru=0.456)
    m["machine"] = {"cpu": "Test CPU 9000", "isa": "AVX512", "bf16_matmul_in_hardware": True, "torch": "9.9",
                    "threads": 7, "device": "cpu", "precision": "bf16"}
    replace(path, json.dumps(m))
    markdown, nb, html = make_report.build(results_copy, tmp_path)
    clips = [clip for split in ("v", "te") for recording in m["examples"][split] for clip in recording["clips"]]
    assert len(clips) == 21 and html.count("<audio ") == 21 and markdown.count(".wav)") == 21
    assert [c["system"] for c in m["examples"]["v"][0]["clips"]] == ["noisy", "fc", "gru", "oracle_ibm", "clean"]
    for clip in clips:  # each clip's label, with its SNR where it has one
        snr = "" if clip["snr_db"] is None else f": {clip['snr_db']:.1f} dB"
        assert f"[{clip['label']}{snr}](results/p4/{clip['path']})" in markdown
    players, = [c for c in nb.cells if "listening" in c.metadata.get("tags", [])]
    assert sum("audio/wav" in str(o.data) for o in players.outputs) == 21
    assert not [c for c in nb.cells if c.cell_type == "code" and "Audio(" in c.source and c is not players]
    assert "-4.25 to 4.75 dB" in markdown and "| 12% |" in markdown and "| 46% |" in markdown
    machines = markdown.split("### Where these results were made")[1].split("\n\n")[1].splitlines()[2:]
    cpus = {json.loads(f.read_text())["machine"]["cpu"] for f in results_copy.rglob("*.json")
            if "machine" in json.loads(f.read_text())}
    assert len(machines) == len(cpus) == 2 and any("Test CPU 9000" in row and "AVX512" in row for row in machines)


def test_a_label_from_a_result_file_cannot_become_code(results_copy, tmp_path, monkeypatch):
    """A clip's label or a recording's name holding a newline and code stays a string in the notebook: the cell of
    recordings is an assignment of a literal and a loop, and running it runs nothing else; the page and report.md
    show the label as text."""
    payload = 'x\nimport os; os.system("touch PWNED")  #'
    path = results_copy / "p4" / "metrics.json"
    m = json.loads(path.read_text())
    m["examples"]["v"][0]["clips"][0]["label"] = payload
    m["examples"]["v"][1]["file"] = "v.wav)\n]\nimport os  # ["
    replace(path, json.dumps(m))
    markdown, nb, page = make_report.build(results_copy, tmp_path)
    players, = [c for c in nb.cells if "listening" in c.metadata.get("tags", [])]
    assign, loop = ast.parse(players.source).body
    assert isinstance(assign, ast.Assign) and isinstance(loop, ast.For)
    examples = ast.literal_eval(assign.value)
    assert examples[0][1][0][0].startswith(payload) and examples[1][0].startswith("v.wav)\n]\nimport os")
    for cell in nb.cells:
        if cell.cell_type == "code":
            for node in ast.walk(ast.parse(cell.source)):
                assert not (isinstance(node, ast.Attribute) and node.attr == "system"), cell.source[:200]
    monkeypatch.chdir(tmp_path)
    shown = []
    exec(players.source, {"html": __import__("html"), "Path": Path, "HTML": str, "Audio": len,
                          "display": lambda *objs: shown.extend(objs)})
    assert not (tmp_path / "PWNED").exists() and len(shown) == 2 * 21 + 6
    assert "\nimport os" not in markdown and "os.system(&quot;touch PWNED&quot;)" in page


def test_handin_zips_the_folder_it_is_given_all_or_nothing(tmp_path, capsys):
    """`--handin DIR --te MYDIR`: the notebook, the page and every tex*.wav of MYDIR (not of a te/ beside it) denoised
    by the committed model, named as its input, with fixed timestamps, and a line saying how many and from where. A
    missing te folder is a one-line error before anything is written; a zip step that fails leaves the previous
    hand-in as it was."""
    mine, beside = tmp_path / "mine", tmp_path / "te"
    mine.mkdir()
    beside.mkdir()
    source = speech_data.ensure_data(None) / "te"  # a clean clone builds data/hw3 from ../shared here
    names = sorted(p.name for p in source.glob("tex*.wav"))
    for name in names[:3]:
        shutil.copy(source / name, mine / name)
    for name in names[3:5]:
        shutil.copy(source / name, beside / name)
    handin = tmp_path / "handin"
    code_, out, err = run_handin(["--handin", handin, "--te", mine], capsys)
    assert code_ == 0, err
    assert f"(3 denoised te files from {mine}/)" in out
    assert sorted(p.name for p in handin.iterdir()) == ["report.html", "report.ipynb", "te_denoised.zip"]
    with zipfile.ZipFile(handin / "te_denoised.zip") as z:
        assert [i.filename for i in z.infolist()] == names[:3]
        assert {i.date_time for i in z.infolist()} == {STAMP}
        assert all(z.read(i).startswith(b"RIFF") for i in z.infolist())
    before = {p.name: p.read_bytes() for p in handin.iterdir()}

    (mine / "tex9999.wav").write_bytes(b"RIFF, but not a recording")  # the zip step fails on it
    code_, out, err = run_handin(["--handin", handin, "--te", mine], capsys)
    assert code_ == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in handin.iterdir()} == before  # nothing half-written beside it either
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".handin")] == []

    code_, out, err = run_handin(["--handin", tmp_path / "again", "--te", tmp_path / "nowhere"], capsys)
    assert code_ == 2 and err.startswith("error: no te folder") and err.count("\n") == 1, err
    assert not (tmp_path / "again").exists()
    code_, out, err = run_handin(["--te", mine], capsys)
    assert code_ == 2 and "--handin" in err


def run_handin(argv, capsys):
    """make_report.main(argv) in-process, as its __main__ runs it: (exit code, stdout, stderr)."""
    from common.cli import run_cli
    capsys.readouterr()
    try:
        run_cli(lambda: make_report.main([str(a) for a in argv]))
        code_ = 0
    except SystemExit as e:
        code_ = e.code
    captured = capsys.readouterr()
    return code_, captured.out, captured.err


def test_html_is_self_contained_and_shows_the_code(built):
    """Everything the page loads is inside it; the math is MathML already; the code is there, highlighted; no
    notebook plumbing."""
    markdown, nb, html = built
    assert html.count('<img src="data:image/png;base64,') == markdown.count("![")
    assert html.count('<audio controls preload="auto" src="data:audio/wav;base64,') == markdown.count(".wav)")
    assert re.findall(r'(?:src|href)="(?!data:|#)[^"]*"', html) == []  # embedded, or an anchor of the page
    anchors = set(re.findall(r'href="#([^"]+)"', html))
    assert anchors and anchors <= set(re.findall(r' id="([^"]+)"', html))
    assert "<script" not in html and "<link" not in html and "url(" not in html and "@import" not in html
    assert html.count("<math ") == markdown.count("$") // 2 - markdown.count("$$") // 2
    assert "$" not in html and "\\frac" not in html
    assert "In [" not in html and "Image(" not in html and "Audio(" not in html
    assert html.count('<pre class="code">') == len(code_cells_of(nb))


# ----------------------------------------------------------------------------- the report of the dry runs

@pytest.fixture(scope="module")
def dry_results(dry_runs, tmp_path_factory):
    """Every script's and benchmark's --dry-run output (conftest's session runs) linked into one results folder laid
    out as results/ is: p1..p5, the P3 and P4 benchmarks' benchmark.json beside their scripts' files, bench/."""
    results = tmp_path_factory.mktemp("dry-results")
    for name in ("p1", "p2", "p3", "p4", "p5"):
        (results / name).mkdir()
        for path in dry_runs[name].iterdir():
            (results / name / path.name).symlink_to(path)
    for bench, folder in (("bench_p3", "p3"), ("bench_p4", "p4")):
        (results / folder / "benchmark.json").symlink_to(dry_runs[bench] / "benchmark.json")
    (results / "bench").mkdir()
    for bench, name in (("bench_rank", "rank_forward.json"), ("bench_train", "train_step.json")):
        (results / "bench" / name).symlink_to(dry_runs[bench] / name)
    return results


@pytest.fixture(scope="module")
def dry_report(dry_results, tmp_path_factory):
    """make_report.py --dry-run on dry_results: (exit code, stderr, the report's folder)."""
    out = tmp_path_factory.mktemp("dry-report")
    proc = run_script("make_report.py", "--dry-run", "--results", dry_results, "--out", out)
    return proc.returncode, proc.stderr, out


def test_report_builds_from_every_dry_run(dry_report, dry_results):
    """The whole builder on today's keys of all five scripts and both benchmarks: a key a script renames, or a
    figure it stops writing, fails here."""
    code_, err, out = dry_report
    assert code_ == 0, err
    markdown = (out / "report.md").read_text()
    for n in range(1, 6):
        assert f"## Problem {n}:" in markdown
    for path in re.findall(r"\]\(([^)]+\.(?:png|wav))\)", markdown):  # links resolve from the report's folder
        assert (out / path).is_file(), path
    # without --dry-run, dry-run results are refused, naming the script to run
    proc = run_script("make_report.py", "--results", dry_results, "--out", out / "full")
    assert_clean_error(proc, "comes from a --dry-run", "python p1_svd.py")


def test_dry_run_report_renders_offline(dry_report, dry_results):
    code_, err, out = dry_report
    assert code_ == 0, err
    markdown = (out / "report.md").read_text()
    check_offline(out / "report.html", images=markdown.count("!["), audio=markdown.count(".wav)"),
                  code=code_cells(out / "report.ipynb"))


# ----------------------------------------------------------------------------- broken results

@pytest.fixture
def results_copy(tmp_path):
    """results/ linked file by file into a temporary folder; a test replaces the files it breaks."""
    shutil.copytree(ROOT / "results", tmp_path / "results", copy_function=os.symlink)
    return tmp_path / "results"


def replace(path, content):
    path.unlink()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("name", list(make_report.SCRIPTS))
def test_missing_result_names_the_script(results_copy, name):
    (results_copy / (f"{name}.json" if "/" in name else f"{name}/metrics.json")).unlink()
    with pytest.raises(UserError, match=make_report.SCRIPTS[name]):
        make_report.build(results_copy)


def test_truncated_metrics_is_one_line_error(results_copy, tmp_path):
    replace(results_copy / "p2" / "metrics.json", "{")
    proc = run_script("make_report.py", "--results", results_copy, "--out", tmp_path / "out")
    assert_clean_error(proc, "p2/metrics.json", "not valid JSON", "p2_factorized.py")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("file, damage, words", [
    ("p3/metrics.json", "{}", ["p3/metrics.json", "has no [", "p3_svd_ste.py"]),
    ("p5/metrics.json", "[]", ["p5/metrics.json", "not an object"]),
    ("p4/benchmark.json", b"\xff\xfe{", ["cannot read", "p4/benchmark.json"]),
    ("p1/metrics.json", lambda m: m.pop("ranks"), ["['ranks']", "p1_svd.py"]),
    ("p4/benchmark.json", lambda m: m["cases"].pop("file_16k_mono_wav"), ["['cases']['file_16k_mono_wav']",
                                                                        "p4_realtime.py"]),
    ("p2/metrics.json", lambda m: m.update(seeds=3), ["p2/metrics.json", "TypeError"]),
    ("p4/metrics.json", lambda m: m["examples"]["v"][0]["clips"][0].update(path="audio/gone.wav"),
     ["p4/audio/gone.wav is missing"]),
    ("p3/metrics.json", lambda m: m["figures"].update(tracking_error="gone.png"), ["p3/gone.png is missing",
                                                                                   "['figures']['tracking_error']"]),
    ("p2/metrics.json", lambda m: m["test_acc"].update(mean=float("nan")), ["['test_acc']['mean']", "is nan"]),
    ("p4/metrics.json", lambda m: m["v"]["systems"]["gru"]["snr_db"].update(std=-float("inf")), ["is -inf"]),
    ("p2/metrics.json", lambda m: m["required"]["test_acc"].update(met="no"),
     ["p2/metrics.json", "['required']['test_acc']['met']", "not true or false"]),
    ("p1/metrics.json", lambda m: m["figures"].update(accuracy_vs_rank=str(ROOT / "results/p2/finetune_curve.png")),
     ["p1/metrics.json", "['figures']['accuracy_vs_rank']", "inside"]),
    ("p1/metrics.json", lambda m: m["figures"].update(accuracy_vs_rank="../p2/finetune_curve.png"),
     ["['figures']['accuracy_vs_rank']", "inside"]),
    ("p4/metrics.json", lambda m: m["examples"]["te"][0]["clips"][0].update(path="audio/../../p3/x.wav"),
     ["['examples']['te'][0]['clips'][0]['path']", "inside"]),
    ("p5/metrics.json", lambda m: m.update(deep=nested(60)), ["p5/metrics.json", "nests more than"]),
])
def test_broken_result_is_one_line_error(results_copy, tmp_path, capsys, file, damage, words):
    """Empty, not an object, not text, a key missing, a value of the wrong type, a figure or a recording gone."""
    path = results_copy / file
    if callable(damage):
        m = json.loads(path.read_text())
        damage(m)
        damage = json.dumps(m)
    replace(path, damage)
    code_, err = run_main(make_report.main, ["--results", results_copy, "--out", tmp_path / "out"], capsys)
    assert code_ == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)


def nested(depth):
    return [nested(depth - 1)] if depth else 0


def test_json_too_deep_for_the_parser_is_one_line_error(results_copy, tmp_path, capsys):
    path = results_copy / "p3" / "metrics.json"
    text = path.read_text().rstrip()
    replace(path, text[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}")
    code_, err = run_main(make_report.main, ["--results", results_copy, "--out", tmp_path / "out"], capsys)
    assert code_ == 2 and err.startswith("error: ") and "p3/metrics.json" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("content", [b"", b"GIF89a not a png at all", b"\x89PNG\r\n\x1a\n" + bytes(24)])
def test_a_figure_that_is_not_a_png_is_one_line_error(results_copy, tmp_path, capsys, content):
    """An empty file, another format, or a PNG signature with no image header is refused, naming the file and key."""
    replace(results_copy / "p1" / "accuracy_vs_rank.png", content)
    code_, err = run_main(make_report.main, ["--results", results_copy, "--out", tmp_path / "out"], capsys)
    assert code_ == 2 and err.count("\n") == 1, err
    assert "p1/metrics.json" in err and "['figures']['accuracy_vs_rank']" in err and "not a PNG" in err, err
    assert not (tmp_path / "out").exists()
