"""Our HTML in a real browser (Playwright driving Chromium): the reports a run writes open from disk
without a broken image, a dead link or a console error, and ``cxr app`` takes an upload through
its page. Skipped locally without Chromium; ``CXR_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from app_fixtures import ALWAYS, chest_like, monochrome1_dicom, png_bytes, tiny_run
from browser_fixtures import (
    PageWatch,
    free_port,
    local_pages,
    page_problems,
    stop_process_group,
    wait_for_port,
)

from cxr_helpers.paths import project_root

pytestmark = pytest.mark.slow


def _pages_of_run(index):
    """A run's index.html and every local page it links to (its reports, ../index.html)."""
    return [index, *local_pages(index)]


def test_the_checker_sees_each_kind_of_problem(browser, tmp_path):  # noqa: F811
    (tmp_path / "there.html").write_text("ok")
    page = tmp_path / "p.html"
    page.write_text("<h2 id='a%C2%B7b'>x</h2><a href='#a%C2%B7b'>ok</a><a href='there.html'>ok</a>"
                    "<img src='missing.png'><a href='gone.csv'>x</a><a href='#nowhere'>x</a>"
                    "<script>console.error('boom')</script>")
    problems = "\n".join(page_problems(browser, page))
    for expected in ("broken image missing.png", "dead link gone.csv", "dead anchor #nowhere",
                     "console error: boom", "request failed: file://"):
        assert expected in problems, problems
    assert "there.html" not in problems and "a%C2%B7b" not in problems


def test_local_demo_pages_open_cleanly(browser):  # noqa: F811
    """outputs/demo (``make report``), when this checkout has one; CI has none and skips it."""
    index = project_root() / "outputs" / "demo" / "index.html"
    if not index.is_file():
        pytest.skip(f"{index} not found (make report writes it)")
    problems = [p for page in _pages_of_run(index) for p in page_problems(browser, page)]
    assert not problems, "\n".join(problems) + "\n(an old run? make report renders it again)"


def test_cxr_app_takes_png_and_dicom_uploads_through_its_page(browser, tmp_path):  # noqa: F811
    """``cxr app`` on a free port: the page states model, training data and research use; a PNG, an
    11 MB MONOCHROME1 DICOM (over tornado's default 10 MiB message limit) and a junk file go in
    through the page's file chooser; findings and an overlay appear for the images, one error line
    for the junk; no console error. The server (and its kernel) are always stopped."""
    run = tiny_run(tmp_path)
    (tmp_path / "chest.png").write_bytes(png_bytes(chest_like()))
    big = np.kron(chest_like(), np.ones((30, 37), np.uint8))  # 2400 x 2368, 16 bit: 11.4 MB
    dicom = monochrome1_dicom(tmp_path / "big_m1.dcm", big)
    assert dicom.stat().st_size > 10 * 1024 * 1024
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom")
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen([sys.executable, "-m", "cxr_helpers.run.cli", "app", str(run), "--port", str(port),
                                 "--no-browser"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    page = None
    try:
        wait_for_port(port, proc, log)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        watch = PageWatch(page)
        page.goto(f"http://127.0.0.1:{port}/", wait_until="load", timeout=180_000)
        page.wait_for_selector("button.widget-upload", timeout=180_000)
        text = page.inner_text("body")
        assert "Research use only" in text and "Training data: synthetic, config 'tiny-app'" in text
        assert "test_resnet" in text and "show_app(" not in text  # the model named, no code shown
        assert "up to 512 MB per upload" in text
        with page.expect_file_chooser() as chooser:  # FileUpload's <input type=file> exists only on click
            page.click("button.widget-upload")
        chooser.value.set_files([tmp_path / "chest.png", dicom, tmp_path / "junk.dcm"])
        page.wait_for_function("document.querySelectorAll('.cxr-result').length === 3", timeout=120_000)
        cards = page.eval_on_selector_all(".cxr-result", """els => els.map(e => ({
            name: e.dataset.name, text: e.innerText, problem: e.querySelector('.cxr-error')?.innerText ?? '',
            overlays: Array.from(e.querySelectorAll('.cxr-overlay img')).map(i => [i.closest('figure').dataset.finding, i.naturalWidth])}))""")
        by_name = {c["name"]: c for c in cards}
        for name in ("chest.png", "big_m1.dcm"):
            assert f"Called: {ALWAYS}" in by_name[name]["text"]
            assert [f for f, w in by_name[name]["overlays"] if w > 0] == [ALWAYS]
        junk = by_name["junk.dcm"]
        assert junk["overlays"] == [] and junk["problem"].startswith("junk.dcm: ") and "\n" not in junk["problem"]
        assert by_name["chest.png"]["problem"] == ""
        assert not watch.errors, "\n".join(watch.errors)
    finally:
        if page is not None:
            page.close()
        stop_process_group(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
