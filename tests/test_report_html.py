"""report.html as a reader sees it: Debian's chromium, driven by Playwright, opens the file with the network cut
(every request that is not the file itself is aborted and recorded). Nothing may be requested, no TeX may be
left in the text, every figure decodes and is shown large enough to read, every audio player loads, the equations
are rendered (MathML), every code cell of the notebook is on the page, the summary names every problem, no "not met"
or "open" comes before the appendix of the project's own targets, and at 900, 1280 and 1600 pixels wide no audio
player overlaps anything and no code block scrolls sideways.

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
    summary: (() => {  // the text of the checklist under the summary's heading
        let t = document.getElementById("summary");
        while (t && t.tagName !== "TABLE") t = t.nextElementSibling;
        return t ? t.innerText : null;
    })(),
    beforeAppendix: (() => {  // the page's text before the appendix's heading
        const range = document.createRange(), appendix = document.getElementById("appendix");
        range.selectNodeContents(document.body);
        if (appendix) range.setEndBefore(appendix);
        return range.toString();
    })(),
    audio: [...document.querySelectorAll("audio")].map(a => ({state: a.readyState, duration: a.duration,
                                                             error: a.error && a.error.code})),
    maths: [...document.querySelectorAll("math")].map(m => ({display: getComputedStyle(m).display,
                                                             width: m.getBoundingClientRect().width})),
    scripts: document.scripts.length,
})"""
AUDIO_LOADED = "() => [...document.querySelectorAll('audio')].every(a => a.readyState === 4 || a.error)"

# at the window's width: every element an audio player's box overlaps (besides the elements holding it), the code
# blocks wider than their box, the players too narrow to show their time and duration, and the figures shown at less
# than MIN_SCALE of their size
LAYOUT = """() => {
    const boxes = [...document.body.querySelectorAll("*")].map(e => [e, e.getBoundingClientRect()])
        .filter(([e, r]) => r.width > 0 && r.height > 0);
    const overlaps = [];
    for (const audio of document.querySelectorAll("audio")) {
        const a = audio.getBoundingClientRect();
        for (const [e, r] of boxes) {
            if (e === audio || e.contains(audio)) continue;
            const x = Math.min(a.right, r.right) - Math.max(a.left, r.left);
            const y = Math.min(a.bottom, r.bottom) - Math.max(a.top, r.top);
            if (x > 0.5 && y > 0.5) overlaps.push(`${e.tagName} "${e.innerText.slice(0, 30)}" by ${x}x${y} px`);
        }
    }
    const scrolling = [...document.querySelectorAll("pre")].filter(p => p.scrollWidth > p.clientWidth + 1)
        .map(p => p.innerText.split("\\n")[0]);
    const narrow = [...document.querySelectorAll("audio")].filter(a => a.getBoundingClientRect().width < 240).length;
    const small = [...document.images].filter(i => i.getBoundingClientRect().width < MIN_SCALE * i.naturalWidth)
        .map(i => i.alt);
    return {overlaps, scrolling, narrow, small};
}"""
WIDTHS = (900, 1280, 1600)


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
            facts["layout"] = {}
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                facts["layout"][width] = page.evaluate(LAYOUT.replace("MIN_SCALE", str(MIN_SCALE)))
                if screenshot:
                    page.screenshot(path=f"{screenshot}-{width}.png", full_page=True)
        finally:
            browser.close()
    return {**facts, "requested": sorted(set(requested))}


# matplotlib's figures here are drawn at 120 dpi with text of 8 to 10 points: 13 to 17 image pixels, so shown at
# 0.55 of their size or more, that text is at least about 9 CSS pixels high
MIN_SCALE = 0.55


def check_offline(path, images, audio, code=()):
    """The page at `path` opened offline shows `images` figures, `audio` players and the `code` cells' sources; its
    summary names every problem; no "not met" or "open" comes before its appendix; at each of WIDTHS no player
    overlaps another element, none is too narrow to show its duration, and no code block scrolls sideways."""
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
    assert page["summary"] is not None, "no checklist under the summary's heading"
    assert all(re.search(rf"^P{n}\b", page["summary"], re.M) for n in range(1, 6)), page["summary"][:300]
    assert not re.search(r"not met|\bopen\b", page["beforeAppendix"], re.I)
    for width, layout in page["layout"].items():
        assert layout["overlaps"] == [], (width, layout["overlaps"][:5])
        assert layout["narrow"] == 0, (width, "audio players too narrow to show their duration")
        assert layout["scrolling"] == [], (width, layout["scrolling"][:3])
        assert layout["small"] == [], (width, "figures shown too small to read", layout["small"])
    return page


def code_cells(notebook):
    """The sources of the notebook's code cells that show the repository's code."""
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and "repository-code" in c.metadata.get("tags", [])]


def test_committed_report_renders_offline():
    """The report a student hands in: what its markdown promises, all of it shown without a network."""
    markdown = (ROOT / "report.md").read_text()
    code = code_cells(ROOT / "report.ipynb")
    assert len(code) >= 12
    check_offline(ROOT / "report.html", images=markdown.count("!["), audio=markdown.count(".wav)"), code=code)
