"""Screenshot of ``cxr app`` after an upload, for the README (docs/images/app.png).

    .venv/bin/python scripts/app_screenshot.py outputs/demo outputs/demo/predict_inputs/syn_000008.dcm \
        outputs/demo/predict_inputs/syn_000050.png --out docs/images/app.png

Starts ``cxr app RUN`` on a free localhost port, uploads FILES through the page's file chooser in
headless Chromium (Playwright, the system browser: CXR_CHROMIUM or chromium on PATH), waits for a
card per file and saves a full-page PNG. The server is always stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"app_screenshot: cxr app exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    sys.exit(f"app_screenshot: nothing listened on port {port} within {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default="docs/images/app.png")
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    exe = os.environ.get("CXR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        sys.exit("app_screenshot: no Chromium found (apt-get install -y chromium, or set CXR_CHROMIUM)")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cxr_helpers.run.cli", "app", args.run_dir, "--port", str(port),
                             "--no-browser"], start_new_session=True)  # fmt: skip
    try:
        _wait(port, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load", timeout=180_000)
            page.wait_for_selector("button.widget-upload", timeout=180_000)
            with page.expect_file_chooser() as chooser:
                page.click("button.widget-upload")
            chooser.value.set_files(args.files)
            page.wait_for_function(f"document.querySelectorAll('.cxr-result').length === {len(args.files)}",
                                   timeout=180_000)  # fmt: skip
            page.wait_for_timeout(500)  # images decoded and laid out
            height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*')).map(e => e.scrollHeight))")
            page.set_viewport_size({"width": args.width, "height": min(int(height) + 40, 6000)})  # Voilà scrolls inside
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
