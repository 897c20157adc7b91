"""Helpers for tests that drive the web page in a real Chromium through Playwright.

Not a test module. Playwright's own browser download needs the internet, so the
tests use Debian's ``chromium`` (``scripts/setup.sh apt`` installs it) through
``executable_path``. :func:`missing_reason` says why the browser tests must skip
on a machine without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = Path(os.environ.get("ALTYAZI_TEST_CHROMIUM", "/usr/bin/chromium"))

# Headless, offline, and quiet: no sandbox (tests may run as root), no GPU, no
# background calls home that would slow the start or fail without a network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is absent; install Debian's chromium (scripts/setup.sh apt, or apt-get install chromium)"
    if shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None:
        return "ffmpeg and espeak-ng are needed to make the test clip (scripts/setup.sh apt)"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser; closed (with Playwright) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageProblems:
    """Console errors and uncaught exceptions of a page; a CSP violation is a console error."""

    def __init__(self, page: Any) -> None:
        self.messages: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.messages.append(f"uncaught: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        text = msg.text
        # The API's own refusals (a 415 in the bad-upload test) are logged by Chromium
        # as failed resource loads; those are expected answers, not page faults.
        if "Failed to load resource" in text:
            return
        self.messages.append(text)


def save_screenshot(page: Any, path: Path, *, full_page: bool = True) -> Path:
    """A PNG screenshot, overwriting ``path``; device scale 1 keeps it small."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="hide")
    return path
