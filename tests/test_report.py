"""The report: it agrees with results/, the notebook is valid with everything embedded, missing results are named."""
import shutil

import nbformat
import pytest

import make_report
from common.utils import ROOT, UserError


@pytest.fixture(scope="module")
def built():
    return make_report.build(ROOT / "results")


def test_committed_report_matches_results(built):
    """Every number in report.md is what the builder reads from metrics.json today."""
    markdown, _ = built
    assert (ROOT / "report.md").read_text() == markdown, "report.md is stale: run python make_report.py"


def test_committed_notebook_matches_results(built):
    _, nb = built
    committed = nbformat.read(ROOT / "report.ipynb", as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in nb.cells]


def test_notebook_is_valid_and_embeds_figures_and_audio(built):
    markdown, nb = built
    nbformat.validate(nb)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    pngs = [o for o in outputs if "image/png" in o.data]
    audios = [o for o in outputs if "data:audio/wav;base64," in o.data.get("text/html", "")]
    assert len(pngs) == markdown.count("![") and len(pngs) >= 10
    assert len(audios) >= 6


def test_html_is_self_contained(built):
    _, nb = built
    html = make_report.to_html(nb)
    assert html.count("data:image/png;base64,") >= 10
    assert html.count("data:audio/wav;base64,") >= 6
    assert 'src="results/' not in html  # nothing points back into the repo


@pytest.mark.parametrize("name", list(make_report.SCRIPTS))
def test_missing_result_names_the_script(tmp_path, name):
    shutil.copytree(ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("*.wav", "*.png", "*.pt"))
    (tmp_path / "results" / (f"{name}.json" if "/" in name else f"{name}/metrics.json")).unlink()
    with pytest.raises(UserError, match=make_report.SCRIPTS[name]):
        make_report.build(tmp_path / "results")
