"""report.html, opened in a real headless browser (Debian's ``chromium``): every image loads, the table has one row
per run (the same rows as report.md), the gallery one entry per photo with one image per run, a click on a photo
puts the runs side by side, nothing is fetched from anywhere; the screenshot the README shows is not blank.

Two real runs of 2 steps (U-Net, ResNet-9; the ResNet run under a name full of HTML) feed ``write_report`` with the
launcher's winner section, as ``launcher report`` does. Without chromium the browser tests skip, or fail under
CYCLEGAN_REQUIRE_EXTRAS=1 (CI installs it).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REQUIRE_EXTRAS_ENV, TINY, run_cli, skip_or_fail

pytestmark = [pytest.mark.xdist_group("report_html")]  # one worker trains the two runs, for the three tests
TWO_STEPS = [*TINY, "train.steps=2", "train.log_every=1", "eval.at_end=false"]
RUNS = {'r9 <b>&"x"</b>': "resnet9-small", "un": "smoke"}  # shown name -> experiment (a name is user input)
N_PHOTOS = 4
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--hide-scrollbars",
            "--no-first-run"]

# Injected into a copy of the page (its CSP extended by this script's hash), after the page's own script. Once the
# document is parsed, it clicks the second photo: the images of the comparison then delay the load event like the
# page's own, so at load every image has loaded or failed, and what the browser shows is written, as JSON, into
# <pre id=selfcheck> before chromium's --dump-dom (which waits for the load event) reads the DOM.
CHECK = """
const box = document.getElementById("compare"), out = {};
document.addEventListener("DOMContentLoaded", () => {
  out.open_before_click = !box.hidden;
  document.querySelectorAll("#gallery figure.photo")[1].querySelector("button")
    .dispatchEvent(new MouseEvent("click", {bubbles: true}));
});
window.addEventListener("load", () => {
  const loaded = (images) => images.filter((i) => i.complete && i.naturalWidth > 0).length;
  const big = Array.from(box.querySelectorAll("img"));
  const page = Array.from(document.images).filter((i) => !box.contains(i));
  out.images = page.length; out.loaded = loaded(page);
  out.rows = Array.from(document.querySelectorAll("#runs tbody tr"),
                        (tr) => Array.from(tr.cells, (c) => c.textContent));
  out.gallery = Array.from(document.querySelectorAll("#gallery figure.photo"),
                           (f) => Array.from(f.querySelectorAll("img"), (i) => i.dataset.label));
  out.sections = Array.from(document.querySelectorAll("section.extra h2"), (h) => h.textContent);
  out.verdict = document.querySelector(".verdict")?.textContent;
  out.open_after_click = !box.hidden; out.compare_loaded = loaded(big);
  out.compare_captions = Array.from(box.querySelectorAll("figcaption"), (c) => c.textContent);
  const second = document.querySelectorAll("#gallery figure.photo")[1];
  const small = Array.from(second.querySelectorAll("img"), (i) => i.src);
  out.compare_same_images = big.map((i) => i.src).join() === small.join();
  out.hash = location.hash;
  document.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape"}));
  out.open_after_escape = !box.hidden;
  const pre = document.createElement("pre");
  pre.id = "selfcheck"; pre.textContent = JSON.stringify(out);
  document.body.append(pre);
});
"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        skip_or_fail("chromium is not installed (apt-get install chromium)", REQUIRE_EXTRAS_ENV)
    return path


def browse(page: Path, profile: Path, *args: str) -> str:
    """Chromium, headless, on ``page`` with a fresh profile; its stdout."""
    profile.mkdir()
    proc = subprocess.run([chromium(), *HEADLESS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from cyclegan_dist.eval.report import summarize, write_report
    from launcher.report import winner_report

    work = tmp_path_factory.mktemp("report-html")
    summaries = []
    for i, (name, exp) in enumerate(RUNS.items()):
        run_dir = work / f"run{i}"
        run_cli("train", "--config", exp, "--run-dir", run_dir, "--set", *TWO_STEPS, timeout=300)
        summaries.append(summarize(run_dir, name))
    section, _ = winner_report(summaries, list(RUNS.values()))
    write_report(summaries, work / "report", n_photos=N_PHOTOS, title="two runs <& friends>",
                 command="python -m launcher report --exp resnet9-small,smoke", sections=[section])
    return work / "report"


def markdown_rows(text: str) -> list[list[str]]:
    """The rows of report.md's first table (the runs)."""
    table = text.split("\n\n")[2].splitlines()
    return [[cell.strip().replace("\\|", "|") for cell in line.strip().strip("|").split(" | ")] for line in table[2:]]


def test_the_page_is_one_file_that_fetches_nothing_and_escapes_names(report):
    text = (report / "report.html").read_text()
    assert not re.search(r"https?:|url\(|@import", text, re.I), "an external URL in report.html"
    markup = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    targets = re.findall(r"\b(?:src|href|action|srcset|poster)\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s>]+)", markup)
    assert len(targets) == 1 + N_PHOTOS * (1 + len(RUNS))  # the curves, each photo and each run's translation
    assert all(t.startswith(('"data:image/png;base64,', '"data:image/jpeg;base64,')) for t in targets), targets
    csp = re.search(r'http-equiv=Content-Security-Policy content="([^"]*)"', text).group(1)
    assert csp.startswith("default-src 'none'; img-src data:;"), csp
    evil = next(name for name in RUNS if "<" in name)
    assert evil not in text and html.escape(evil) in text
    assert "<title>two runs &lt;&amp; friends&gt;</title>" in text
    md = (report / "report.md").read_text()
    assert "## Which generator has the lower MiFID?" in md and "(report.html)" in md
    assert sorted(row[0] for row in markdown_rows(md)) == sorted(RUNS)


def test_in_chromium_every_image_loads_one_row_per_run_and_a_click_compares(report, tmp_path):
    page = (report / "report.html").read_text()
    digest = base64.b64encode(hashlib.sha256(CHECK.encode()).digest()).decode()
    checked = page.replace("script-src ", f"script-src 'sha256-{digest}' ", 1).replace(
        "</body>", f"<script>{CHECK}</script></body>", 1)
    copy = report / "checked.html"  # beside the original: the same relative world
    copy.write_text(checked)
    try:
        dom = browse(copy, tmp_path / "profile", "--dump-dom")
    finally:
        copy.unlink()
    found = re.search(r'<pre id="selfcheck">(.*?)</pre>', dom, re.S)
    assert found, f"the check did not run: {dom[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    print(json.dumps(seen, indent=1))
    assert seen["images"] == 1 + N_PHOTOS * (1 + len(RUNS)) and seen["loaded"] == seen["images"]
    md_rows = markdown_rows((report / "report.md").read_text())
    assert seen["rows"] == md_rows and len(seen["rows"]) == len(RUNS)  # one table, two renderings
    labels = [f"{name} ({gen})" for name, gen in zip(RUNS, ("resnet_9blocks", "unet_32"))]
    assert seen["gallery"] == [["photo (input)", *labels]] * N_PHOTOS
    assert seen["sections"] == ["Which generator has the lower MiFID?"]
    assert seen["verdict"].startswith("No winner: no run has an MiFID evaluation")
    assert not seen["open_before_click"] and seen["open_after_click"] and not seen["open_after_escape"]
    assert seen["compare_loaded"] == 1 + len(RUNS) and seen["compare_same_images"]
    assert seen["compare_captions"] == ["photo (input)", *labels] and seen["hash"] == "#photo-2"


def test_screenshot_for_the_readme_is_not_blank(report, tmp_path):
    shot = tmp_path / "screenshot.png"
    browse(report / "report.html", tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000")
    with Image.open(shot) as picture:
        assert picture.size == (1280, 2000)
        pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    assert pixels.var() > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # photos and curves, not a page of text alone
