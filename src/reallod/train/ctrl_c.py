"""Ctrl-C during training: stop at once, and never lose the interrupt.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. Where that is code
whose exceptions Python only reports — a fork hook while DataLoader workers start, a ``__del__`` — the
interrupt is printed as "Exception ignored in ..." and training goes on (seen in our tests: about one
Ctrl-C in ten during the first batches). :class:`CtrlC` remembers the signal so the loop raises it again
at the next batch, and keeps such reports off the terminal once Ctrl-C was pressed: they are the lost
interrupt itself, or the complaints of what it left half-built (a DataLoader iterator missing the
attributes its ``__del__`` needs).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class CtrlC:
    """Installs a SIGINT handler (main thread, only where Python's default one is in place: a job started
    with SIGINT ignored stays so) and a filter on unraisable-exception reports; both are undone on exit."""

    def __init__(self) -> None:
        self.pressed = False
        self._handler: Any = None
        self._hook: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._handler = signal.signal(signal.SIGINT, self._on_signal)
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._on_unraisable
        return self

    def __exit__(self, *exc: object) -> None:
        sys.unraisablehook = self._hook
        if self._handler is not None:
            signal.signal(signal.SIGINT, self._handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def _on_unraisable(self, unraisable: Any) -> None:
        if not self.pressed:
            self._hook(unraisable)

    def check(self) -> None:
        """Raise the interrupt again if code that swallows exceptions caught it."""
        if self.pressed:
            raise KeyboardInterrupt
