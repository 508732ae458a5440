"""Headless Chromium for the browser tests: Debian's package driven by Python Playwright.

``make test`` installs ``/usr/bin/chromium`` when it is missing (as root); Playwright's own browser
download is never used. Without the background-networking flags a closed network makes Chromium
misbehave.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "demo"


def require_browser() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (make test installs it: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is part of the dev extra")


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/demo/ (kept for a person to look at)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
