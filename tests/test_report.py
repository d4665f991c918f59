"""The report: it agrees with results/ and with the code it shows, its notebook runs and stores what its cells
produce, its summary keeps the homework's requirements apart from the project's targets, it builds from every
script's --dry-run output (so a renamed metrics key fails here, not after a full run), `--handin` writes the hand-in,
and a broken result is a one-line error."""
import copy
import importlib
import inspect
import json
import os
import re
import shutil
import textwrap
import zipfile

import nbformat
import pytest

import make_report
from common.speech import data as speech_data
from common.cli import UserError
from common.files import ROOT
from common.goals import REQUIRED
from common.report.source import code, imports
from common.speech.denoise import ZIP_STAMP as STAMP
from conftest import assert_clean_error, run_main, run_script
from test_report_html import check_offline, code_cells, unmet_requirements


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
    """At least six code cells hold the repository's own definitions, exactly as Python itself finds their source
    (inspect, on the imported object), with where they come from; each problem shows some."""
    _, nb, html = built
    cells = code_cells_of(nb)
    assert len(cells) >= 6
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


def tables(markdown):
    """{heading: [rows as lists of cells]} of every table under a ### heading."""
    found = {}
    for part in re.split(r"^### ", markdown, flags=re.M)[1:]:
        heading, body = part.split("\n", 1)
        rows = [line.strip("|").split(" | ") for line in body.split("\n## ")[0].splitlines()
                if line.startswith("| ") and not line.startswith("|:")]
        found[heading] = [[c.strip() for c in row] for row in rows[1:]]
    return found


def test_summary_holds_requirements_apart_from_targets(built):
    """The first table: the homework's requirements and nothing else, each met or not met; the targets, neutrally
    worded, each with why it is set there; no "not met" anywhere else, no undefined jargon."""
    markdown = built[0]
    t = tables(markdown)
    results = {f.parent.name: json.loads(f.read_text()) for f in (ROOT / "results").glob("p*/metrics.json")}
    required = [(p, k) for p, m in results.items() for k in (m.get("required") or {}) if f"{p}.{k}" in REQUIRED]
    requirements, targets = t["The homework's requirements"], t["The project's own targets"]
    assert list(t)[0] == "The homework's requirements" and len(requirements) == len(required) >= 4
    assert {row[-1] for row in requirements} <= {"**met**", "**not met**"}
    assert not any("tracked" in row[0] for row in requirements)  # P3's tracker is the project's, not the homework's
    assert {row[3] for row in targets} <= {"reached", "open"} and all(row[4] for row in targets)
    assert markdown.count("not met") == sum(row[-1] == "**not met**" for row in requirements)
    for jargon in ("worst split", "better reference", "goal met"):
        assert jargon not in markdown


def test_report_shows_p4_clips_data_context_and_machine(results_copy, tmp_path):
    """Three `v` recordings as noisy / FC / GRU / oracle IBM / clean with their SNRs and three `te` ones: 21 players,
    labelled without backticks; the data context's numbers; where the results were made."""
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
    players = [c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith("Audio(")]
    assert len(players) == 21 and not any("`" in p.split("#", 1)[1] for p in players)
    assert "-4.25 to 4.75 dB" in markdown and "| 12% |" in markdown and "| 46% |" in markdown
    assert "Test CPU 9000" in markdown and "AVX512" in markdown


def test_handin_writes_the_report_and_the_denoised_te_zip(tmp_path, capsys):
    """`make handin`: the notebook, the page and every te file denoised by the committed model, named as its input,
    with fixed timestamps; a missing te folder is a one-line error before anything is written."""
    te = tmp_path / "te"
    te.mkdir()
    source = speech_data.ensure_data(None) / "te"  # a clean clone builds data/hw3 from ../shared here
    for name in sorted(p.name for p in source.glob("*.wav"))[:3]:
        shutil.copy(source / name, te / name)
    code_, err = run_main(make_report.main, ["--handin", tmp_path / "handin", "--te", te], capsys)
    assert code_ == 0, err
    assert sorted(p.name for p in (tmp_path / "handin").iterdir()) == ["report.html", "report.ipynb",
                                                                        "te_denoised.zip"]
    with zipfile.ZipFile(tmp_path / "handin" / "te_denoised.zip") as z:
        assert [i.filename for i in z.infolist()] == sorted(p.name for p in te.iterdir())
        assert {i.date_time for i in z.infolist()} == {STAMP}
        assert all(z.read(i).startswith(b"RIFF") for i in z.infolist())
    code_, err = run_main(make_report.main, ["--handin", tmp_path / "again", "--te", tmp_path / "nowhere"], capsys)
    assert code_ == 2 and err.startswith("error: no te folder") and err.count("\n") == 1, err
    assert not (tmp_path / "again").exists()


def test_html_is_self_contained_and_shows_the_code(built):
    """Everything the page loads is inside it; the math is MathML already; the code is there, highlighted; no
    notebook plumbing."""
    markdown, nb, html = built
    assert html.count('<img src="data:image/png;base64,') == markdown.count("![")
    assert html.count('<audio controls preload="auto" src="data:audio/wav;base64,') == markdown.count(".wav)")
    assert re.findall(r'(?:src|href)="(?!data:)[^"]*"', html) == []
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
                  code=code_cells(out / "report.ipynb"), unmet_requirements=unmet_requirements(dry_results))


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
    ("p4/benchmark.json", lambda m: m["cases"].pop("stage_gru"), ["['cases']['stage_gru']", "p4_realtime.py"]),
    ("p2/metrics.json", lambda m: m.update(seeds=3), ["p2/metrics.json", "TypeError"]),
    ("p4/metrics.json", lambda m: m["examples"]["v"][0]["clips"][0].update(path="audio/gone.wav"),
     ["p4/audio/gone.wav is missing"]),
    ("p3/metrics.json", lambda m: m["figures"].update(tracking_error="gone.png"), ["p3/gone.png is missing"]),
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
