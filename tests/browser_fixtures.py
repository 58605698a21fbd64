"""Playwright + Debian's Chromium for the browser tests: find the browser, open pages, list problems.

Playwright's own browser download is not reachable here, so the system Chromium is launched by
path (``CXR_CHROMIUM`` or ``chromium``/``chromium-browser`` on PATH). Without one the tests skip
with the reason; with ``CXR_REQUIRE_BROWSER=1`` (set by ``.ci/run``) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlparse

import pytest

PROBLEMS_JS = """() => {
  const out = {broken: [], anchors: [], local: []};
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) out.broken.push(img.getAttribute('src').slice(0, 80));
  }
  const here = location.href.split('#')[0];
  for (const el of document.querySelectorAll('[href], [src]')) {
    const raw = el.getAttribute('href') ?? el.getAttribute('src');
    if (!raw || raw.startsWith('data:') || raw.startsWith('javascript:')) continue;
    const url = new URL(raw, location.href);
    if (url.protocol !== 'file:') continue;
    if (url.href.split('#')[0] === here) {
      const frag = raw.includes('#') ? raw.slice(raw.indexOf('#') + 1) : '';
      let decoded = frag;
      try { decoded = decodeURIComponent(frag); } catch (e) {}
      const found = [frag, decoded].some(id => document.getElementById(id) || document.getElementsByName(id).length);
      if (frag && !found) out.anchors.push(raw);  // as browsers do: the raw fragment, then decoded
    } else {
      out.local.push([raw, url.pathname]);
    }
  }
  return out;
}"""


def _require_browser() -> bool:
    return os.environ.get("CXR_REQUIRE_BROWSER", "") not in ("", "0")


def _skip_or_fail(msg: str) -> None:
    if _require_browser():
        pytest.fail(msg + " (CXR_REQUIRE_BROWSER=1: browser tests must run here)")
    pytest.skip(msg)


def chromium_path() -> Optional[str]:
    """The Chromium to drive: ``CXR_CHROMIUM``, else the first of chromium/chromium-browser on PATH."""
    env = os.environ.get("CXR_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright), one per session; skipped/failed as the module docstring says."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("playwright not installed: pip install -c constraints.txt -e '.[app]'")
    exe = chromium_path()
    if exe is None:
        _skip_or_fail("no Chromium found (apt-get install -y chromium, or set CXR_CHROMIUM=/path/to/chrome)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


class PageWatch:
    """A page plus every console error, uncaught exception and failed request seen on it."""

    def __init__(self, page: Any):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text[:300]}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {str(e)[:300]}"))
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url[:120]} ({r.failure})"))


def page_problems(browser: Any, path: Path) -> list[str]:
    """Open ``path`` from disk (file:// URL) and list what a reader would trip over: broken images
    (naturalWidth 0), local links/sources to files that do not exist, ``#anchors`` with no target,
    console errors, uncaught exceptions and failed requests. Empty when the page is clean."""
    page = browser.new_page()
    watch = PageWatch(page)
    try:
        page.goto(path.resolve().as_uri(), wait_until="load")
        found = page.evaluate(PROBLEMS_JS)
    finally:
        page.close()
    problems = [f"broken image {src}" for src in found["broken"]]
    problems += [f"dead anchor {a}" for a in found["anchors"]]
    problems += [f"dead link {raw}" for raw, target in found["local"] if not Path(unquote(target)).exists()]
    return [f"{path}: {p}" for p in problems + watch.errors]


def local_pages(page: Path) -> list[Path]:
    """The local .html files ``page`` links to (resolved, existing ones only), parsed from its hrefs."""
    import re

    out = []
    for href in re.findall(r"href=['\"]([^'\"#]+\.html)", page.read_text(errors="replace")):
        url = urlparse(href)
        if url.scheme in ("", "file"):
            target = (page.parent / unquote(url.path)).resolve()
            if target.is_file():
                out.append(target)
    return list(dict.fromkeys(out))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Return once something accepts connections on ``port``; fail with the server's ``log`` if
    ``proc`` exits first or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before listening:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listened on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True``: it and its kernels (same group)."""
    import signal

    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
