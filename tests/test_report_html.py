"""report.html as a reader sees it: Debian's chromium, driven by Playwright, opens the file with the network cut
(every request that is not the file itself is aborted and recorded). Nothing may be requested, no TeX may be
left in the text, every figure decodes, every audio player loads, and the equations are rendered (MathML).

Playwright drives the system's chromium (`apt-get install chromium`; .ci/run installs it); it never downloads a
browser. HW3_CHROMIUM points at another Chromium binary."""
import os
import re
import tempfile
from pathlib import Path

import pytest

from common.utils import ROOT

CHROMIUM = Path(os.environ.get("HW3_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# what the page shows, once loaded; read in the page itself
FACTS = """() => ({
    text: document.body.innerText,
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
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


def check_offline(path, images, audio):
    page = open_offline(path)
    assert page["requested"] == [], f"{path} asked the network for {page['requested'][:5]}"
    assert page["scripts"] == 0
    for tex in ("$", "\\frac", "\\mathbb"):
        assert tex not in page["text"], f"raw TeX {tex!r} in the rendered text of {path}"
    assert not re.search(r"\\[A-Za-z]+", page["text"]), re.findall(r".{30}\\[A-Za-z]+.{10}", page["text"])[:3]
    assert len(page["images"]) == images
    assert [i for i in page["images"] if not (i["complete"] and i["width"] > 0)] == []
    assert len(page["audio"]) == audio
    assert [a for a in page["audio"] if not (a["state"] == 4 and a["duration"] > 0)] == []
    assert page["maths"], "no <math> element: the equations are not rendered"
    assert all("math" in m["display"] and m["width"] > 0 for m in page["maths"]), page["maths"][:3]
    return page


def test_committed_report_renders_offline():
    """The report a student hands in: what its markdown promises, all of it shown without a network."""
    markdown = (ROOT / "report.md").read_text()
    check_offline(ROOT / "report.html", images=markdown.count("!["), audio=markdown.count(".wav)"))
