"""Starting a demo page: Gradio offline, bound to 127.0.0.1 unless asked otherwise, limits applied.

Gradio is told not to phone home (``GRADIO_ANALYTICS_ENABLED=False``, no share link unless ``--share``),
never renders on a Node server, and serves files only from its upload cache and the bundled examples.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reallod.demo.examples import EXAMPLES_DIR
from reallod.demo.limits import DemoLimits
from reallod.errors import ConfigError

log = logging.getLogger("reallod.demo")

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
               "GRADIO_SSR_MODE": "False"}


def import_gradio() -> Any:
    """``gradio``, imported with analytics and version checks switched off (set before the import)."""
    os.environ.update(OFFLINE_ENV)
    import gradio

    return gradio


def upload_roots() -> list[Path]:
    """Where files a page may open can lie: Gradio's upload cache and the bundled examples."""
    import_gradio()
    from gradio.utils import get_upload_folder

    return [Path(get_upload_folder()), EXAMPLES_DIR]


def prune(folder: Path, pattern: str, keep: int) -> None:
    """Delete the oldest files matching ``pattern`` in ``folder`` so that at most ``keep`` remain.

    A page writes one download per request into its own temporary folder; this bounds the folder.
    """
    def age(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    files = sorted(folder.glob(pattern), key=age)
    for p in files[: max(0, len(files) - keep)]:
        p.unlink(missing_ok=True)


@dataclass(frozen=True)
class ServerOptions:
    """Where and how a page is served (the published demo's options)."""

    server_name: str = "127.0.0.1"
    server_port: int | None = 7860
    share: bool = False
    debug: bool = False


@dataclass
class RunningDemo:
    """A page started without blocking (tests, notebooks); ``close`` stops its server."""

    blocks: Any
    url: str
    share_url: str | None = None
    cleanup: Callable[[], None] | None = None

    def close(self) -> None:
        try:
            self.blocks.close()
        finally:
            if self.cleanup is not None:
                self.cleanup()

    def __enter__(self) -> RunningDemo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


GRADIO_SHARE_HINT = "* To create a public link, set `share=True` in `launch()`."
SHARE_HINT = "* To create a public link, pass --share (anyone with the link can use the page)."


class _GradioHints:
    """Stands in for stdout while Gradio starts: its advice to set ``share=True`` in ``launch()`` (code
    the user never wrote) becomes the command's own ``--share``; everything else passes through."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text.replace(GRADIO_SHARE_HINT, SHARE_HINT))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def launch(blocks: Any, options: ServerOptions, limits: DemoLimits, *, block: bool = True,
           cleanup: Callable[[], None] | None = None) -> RunningDemo:
    """Serve ``blocks``; with ``block`` (the CLI) this returns only when the server stops.

    ``cleanup`` runs when the page is closed (or, with ``block``, when the server stops).
    """
    if options.server_name not in LOOPBACK:
        print(f"warning: serving on {options.server_name}: the page is reachable from other machines",
              file=sys.stderr)
    if options.share:
        print("warning: --share asks Gradio for a public link: anyone with it can use this page",
              file=sys.stderr)
    # Fairness and work slots are enforced by the handlers (ClientGate, WorkSlots); Gradio's queue
    # only bounds how many requests the page holds at once.
    blocks.queue(max_size=limits.queue_size, default_concurrency_limit=limits.queue_size)
    stdout = sys.stdout
    sys.stdout = _GradioHints(stdout)  # the hint is printed before launch() blocks; restored below
    try:
        _, local_url, share_url = blocks.launch(
            server_name=options.server_name, server_port=options.server_port, share=options.share,
            debug=options.debug and block, prevent_thread_lock=not block, max_file_size=limits.max_file_size,
            allowed_paths=[str(EXAMPLES_DIR)], show_error=False, quiet=not block, ssr_mode=False,
            mcp_server=False, enable_monitoring=False, footer_links=["api"], inbrowser=False)
    except OSError as e:  # port taken, address not on this machine
        if cleanup is not None:
            cleanup()
        raise ConfigError(f"cannot serve on {options.server_name}:{options.server_port}: {e}") from e
    finally:
        if isinstance(sys.stdout, _GradioHints):
            sys.stdout = stdout
    running = RunningDemo(blocks, str(local_url), share_url, cleanup)
    if block:  # the server has stopped
        running.close()
    return running
