"""Fixtures for the demo tests: a tiny random detector, pages served on 127.0.0.1, headless Chromium.

Every page is started on a free port of 127.0.0.1 and closed when its tests end. Nothing is
downloaded: the detector is built from a config with the offline bert-base-uncased vocabulary, the
agent's roles are scripted (tests/agent/scripted.py).
"""

from __future__ import annotations

import os
import socket

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
pytest.importorskip("gradio", reason="gradio is the demo extra (part of dev)")

from reallod.cli.common import quiet_transformers
from tests.demo.browser import ARGS, CHROMIUM, require_browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    quiet_transformers()  # no weight-loading progress bars or advisory warnings in the test output


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test module: Playwright's sync API holds an event loop on the main thread
    while it runs, which other modules' ``asyncio.run`` must not meet."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    try:
        yield pg
    finally:
        context.close()


MODEL_LIMITS_KW = dict(max_pixels=1_000_000, max_expressions=8, timeout_s=60.0)
AGENT_DELAY_S = 0.15  # per role call: slow enough to watch the page fill in, fast enough for a test


@pytest.fixture(scope="session")
def model_demo(tiny_detector):
    """The Real-Model page with the tiny detector, on a free port of 127.0.0.1."""
    from reallod.demo.limits import DemoLimits
    from reallod.demo.model_app import serve_model_demo
    from reallod.demo.server import ServerOptions

    with serve_model_demo(tiny_detector, ServerOptions(server_port=free_port()),
                          limits=DemoLimits(**MODEL_LIMITS_KW), block=False) as running:
        yield running


@pytest.fixture(scope="session")
def agent_demo():
    """The agent page with scripted roles that answer after a short delay, on 127.0.0.1."""
    from reallod.demo.agent_app import serve_agent_demo
    from reallod.demo.server import ServerOptions
    from tests.demo.doubles import astronaut_roles

    with serve_agent_demo(astronaut_roles(AGENT_DELAY_S), ServerOptions(server_port=free_port()),
                          config_name="scripted", block=False) as running:
        yield running


@pytest.fixture(scope="session")
def small_upload_demo(tiny_detector):
    """The Real-Model page with a 30 kB upload limit (the bundled coffee.jpg is 55 kB)."""
    from reallod.demo.limits import DemoLimits
    from reallod.demo.model_app import serve_model_demo
    from reallod.demo.server import ServerOptions

    with serve_model_demo(tiny_detector, ServerOptions(server_port=free_port()),
                          limits=DemoLimits(max_upload_mb=0.03), block=False) as running:
        yield running
