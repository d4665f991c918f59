"""The report: it agrees with results/, it builds from every script's --dry-run output (so a renamed metrics key
fails here, not after a full run), the HTML is self-contained, and a broken result is a one-line error."""
import json
import os
import re
import shutil

import nbformat
import pytest

import make_report
from common.utils import ROOT, UserError
from conftest import assert_clean_error, run_main, run_script
from test_report_html import check_offline


@pytest.fixture(scope="module")
def built():
    return make_report.build(ROOT / "results")


def test_committed_report_matches_results(built):
    """Every number in report.md is what the builder reads from metrics.json today."""
    markdown, _, _ = built
    assert (ROOT / "report.md").read_text() == markdown, "report.md is stale: run python make_report.py"


def test_committed_notebook_and_html_match_results(built):
    _, nb, html = built
    committed = nbformat.read(ROOT / "report.ipynb", as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in nb.cells]
    assert (ROOT / "report.html").read_text() == html, "report.html is stale: run python make_report.py"


def test_notebook_is_valid_and_embeds_figures_and_audio(built):
    markdown, nb, _ = built
    nbformat.validate(nb)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    pngs = [o for o in outputs if "image/png" in o.data]
    audios = [o for o in outputs if "data:audio/wav;base64," in o.data.get("text/html", "")]
    assert len(pngs) == markdown.count("![") and len(pngs) >= 10
    assert len(audios) == markdown.count(".wav)") >= 6


def test_html_is_self_contained_and_shows_no_code(built):
    """Everything the page loads is inside it; the math is MathML already; no notebook plumbing."""
    markdown, _, html = built
    assert html.count('<img src="data:image/png;base64,') == markdown.count("![")
    assert html.count('<audio controls preload="auto" src="data:audio/wav;base64,') == markdown.count(".wav)")
    assert re.findall(r'(?:src|href)="(?!data:)[^"]*"', html) == []
    assert "<script" not in html and "<link" not in html and "url(" not in html and "@import" not in html
    assert html.count("<math ") == markdown.count("$") // 2 - markdown.count("$$") // 2
    assert "$" not in html and "\\frac" not in html
    assert "In [" not in html and "Image(" not in html and "Audio(" not in html


# ----------------------------------------------------------------------------- the report of the dry runs

@pytest.fixture(scope="module")
def dry_results(dry_p1, tmp_path_factory):
    """Every script's and benchmark's --dry-run output in one temporary results folder (P1: conftest's run)."""
    results = tmp_path_factory.mktemp("dry-results")
    ckpt = results / "ckpt"
    ckpt.mkdir()
    (ckpt / "p1_baseline_seed0.pt").symlink_to(dry_p1[1] / "p1_baseline_seed0.pt")
    (results / "p1").symlink_to(dry_p1[0])
    for command in (["p2_factorized.py", "--seeds", "1", "--quiet", "--out", results / "p2"],
                    ["p3_svd_ste.py", "--seeds", "1", "--quiet", "--out", results / "p3"],
                    ["p4_denoise.py", "--quiet", "--out", results / "p4"],
                    ["p5_draw.py", "--quiet", "--out", results / "p5"],
                    ["benchmarks/p3_svd_step.py", "--out", results / "p3"]):
        proc = run_script(*command, "--dry-run", "--ckpt-dir", ckpt)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    proc = run_script("benchmarks/p4_realtime.py", "--dry-run", "--out", results / "p4",
                      "--model", results / "p4" / "denoiser.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results


@pytest.fixture(scope="module")
def dry_report(dry_results):
    """make_report.py --dry-run on dry_results: (exit code, stderr, the report's folder)."""
    out = dry_results / "report"
    proc = run_script("make_report.py", "--dry-run", "--results", dry_results, "--out", out)
    return proc.returncode, proc.stderr, out


def test_report_builds_from_every_dry_run(dry_report):
    """The whole builder on today's keys of all five scripts and both benchmarks: a key a script renames, or a
    figure it stops writing, fails here."""
    code, err, out = dry_report
    assert code == 0, err
    markdown = (out / "report.md").read_text()
    for n in range(1, 6):
        assert f"## Problem {n}:" in markdown
    for path in re.findall(r"\]\(([^)]+\.(?:png|wav))\)", markdown):  # links resolve from the report's folder
        assert (out / path).is_file(), path
    # without --dry-run, dry-run results are refused, naming the script to run
    proc = run_script("make_report.py", "--results", out.parent, "--out", out)
    assert_clean_error(proc, "comes from a --dry-run", "python p1_svd.py")


def test_dry_run_report_renders_offline(dry_report):
    code, err, out = dry_report
    assert code == 0, err
    markdown = (out / "report.md").read_text()
    check_offline(out / "report.html", images=markdown.count("!["), audio=markdown.count(".wav)"))


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
    ("p3/metrics.json", "{}", ["p3/metrics.json", "['test_acc']", "p3_svd_ste.py"]),
    ("p5/metrics.json", "[]", ["p5/metrics.json", "not an object"]),
    ("p4/benchmark.json", b"\xff\xfe{", ["cannot read", "p4/benchmark.json"]),
    ("p1/metrics.json", lambda m: m["goals"].pop("rank_20_test_acc"), ["['goals']['rank_20_test_acc']"]),
    ("p4/benchmark.json", lambda m: m["cases"].pop("stage_gru"), ["['cases']['stage_gru']", "p4_realtime.py"]),
    ("p2/metrics.json", lambda m: m.update(seeds=3), ["p2/metrics.json", "TypeError"]),
    ("p3/metrics.json", lambda m: m["figures"].update(tracking_error="gone.png"), ["p3/gone.png is missing"]),
])
def test_broken_result_is_one_line_error(results_copy, tmp_path, capsys, file, damage, words):
    """Empty, not an object, not text, a key missing, a value of the wrong type, a figure gone."""
    path = results_copy / file
    if callable(damage):
        m = json.loads(path.read_text())
        damage(m)
        damage = json.dumps(m)
    replace(path, damage)
    code, err = run_main(make_report.main, ["--results", results_copy, "--out", tmp_path / "out"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
