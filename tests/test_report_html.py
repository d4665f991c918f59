"""report.html as a reader sees it: Debian's chromium, driven by Playwright, opens the file with the network cut
(every request that is not the file itself is aborted and recorded). Nothing may be requested, no TeX may be
left in the text, every figure decodes and is shown large enough to read, every audio player loads, the equations
are rendered (MathML), every code cell of the notebook is on the page, and "not met" appears only as the verdict of
a homework requirement that is not met.

Playwright drives the system's chromium (`apt-get install chromium`; .ci/run installs it); it never downloads a
browser. HW3_CHROMIUM points at another Chromium binary."""
import os
import re
import tempfile
from pathlib import Path

import pytest

from common.files import ROOT

CHROMIUM = Path(os.environ.get("HW3_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# what the page shows, once loaded; read in the page itself
FACTS = """() => ({
    text: document.body.innerText,
    prose: (() => {  // the text without the code blocks
        const body = document.body.cloneNode(true);
        body.querySelectorAll("pre.code").forEach(p => p.remove());
        return body.textContent;
    })(),
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                            shown: i.getBoundingClientRect().width})),
    code: [...document.querySelectorAll("pre.code")].map(p => p.innerText),
    requirements: (() => {  // the text of the table under the heading of the homework's requirements
        let t = [...document.querySelectorAll("h3")].find(h => h.textContent.includes("requirements"));
        while (t && t.tagName !== "TABLE") t = t.nextElementSibling;
        return t ? t.innerText : null;
    })(),
    audio: [...document.querySelectorAll("audio")].map(a => ({state: a.readyState, duration: a.duration,
                                                             error: a.error && a.error.code})),
    maths: [...document.querySelectorAll("math")].map(m => ({display: getComputedStyle(m).display,
                                                             width: m.getBoundingClientRect().width})),
    scripts: document.scripts.length,
})"""
AUDIO_LOADED = "() => [...document.querySelectorAll('audio')].every(a => a.readyState === 4 || a.error)"


def open_offline(path, screenshot=None):
    """FACTS of the page at `path` opened with no network, plus `requested`: every URL it tried to fetch."""
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (install it with `apt-get install chromium`, as .ci/run does, "
                    "or point HW3_CHROMIUM at a Chromium binary)")
    from playwright.sync_api import TimeoutError, sync_playwright

    url = path.resolve().as_uri()
    requested = []

    def cut(route):  # the file itself loads; anything else is recorded and refused
        if route.request.url == url:
            route.continue_()
        else:
            requested.append(route.request.url)
            route.abort()

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                        args=FLAGS, viewport={"width": 1200, "height": 900})
        try:
            browser.route("**/*", cut)
            page = browser.new_page()
            page.on("request", lambda r: r.url.startswith(("data:", url)) or requested.append(r.url))
            page.goto(url, wait_until="load")
            try:
                page.wait_for_function(AUDIO_LOADED, timeout=60_000)
            except TimeoutError:
                pass  # the assertions below say which player did not load
            facts = page.evaluate(FACTS)
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    return {**facts, "requested": sorted(set(requested))}


# matplotlib's figures here are drawn at 120 dpi with text of 8 to 10 points: 13 to 17 image pixels, so shown at
# 0.55 of their size or more, that text is at least about 9 CSS pixels high
MIN_SCALE = 0.55


def check_offline(path, images, audio, code=(), unmet_requirements=0):
    """The page at `path` opened offline shows `images` figures, `audio` players, the `code` cells' sources, and
    "not met" exactly `unmet_requirements` times, all in the requirements' table."""
    page = open_offline(path)
    assert page["requested"] == [], f"{path} asked the network for {page['requested'][:5]}"
    assert page["scripts"] == 0
    for tex in ("$", "\\frac", "\\mathbb"):
        assert tex not in page["prose"], f"raw TeX {tex!r} in the rendered text of {path}"
    assert not re.search(r"\\[A-Za-z]+", page["prose"]), re.findall(r".{30}\\[A-Za-z]+.{10}", page["prose"])[:3]
    assert len(page["images"]) == images
    assert [i for i in page["images"] if not (i["complete"] and i["width"] > 0)] == []
    assert [i["alt"] for i in page["images"] if i["shown"] < MIN_SCALE * i["width"]] == [], "figures shown too small"
    assert len(page["audio"]) == audio
    assert [a for a in page["audio"] if not (a["state"] == 4 and a["duration"] > 0)] == []
    assert page["maths"], "no <math> element: the equations are not rendered"
    assert all("math" in m["display"] and m["width"] > 0 for m in page["maths"]), page["maths"][:3]
    shown = [c.strip() for c in page["code"]]
    assert [c for c in code if c.strip() not in shown] == [], "a code cell of the notebook is not on the page"
    assert page["requirements"] is not None, "no table of the homework's requirements"
    assert page["text"].count("not met") == page["requirements"].count("not met") == unmet_requirements
    return page


def code_cells(notebook):
    """The sources of the notebook's code cells that show the repository's code."""
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and "repository-code" in c.metadata.get("tags", [])]


def unmet_requirements(results):
    """How many of the homework's requirements the result files under `results` judge not met."""
    import json

    from common.goals import REQUIRED
    return sum(not g["met"] for f in results.glob("p*/metrics.json")
               for key, g in (json.loads(f.read_text()).get("required") or {}).items()
               if f"{f.parent.name}.{key}" in REQUIRED)


def test_committed_report_renders_offline():
    """The report a student hands in: what its markdown promises, all of it shown without a network."""
    markdown = (ROOT / "report.md").read_text()
    code = code_cells(ROOT / "report.ipynb")
    assert len(code) >= 6
    check_offline(ROOT / "report.html", images=markdown.count("!["), audio=markdown.count(".wav)"), code=code,
                  unmet_requirements=unmet_requirements(ROOT / "results"))
