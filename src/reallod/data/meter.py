"""How far a data command has got, for a progress display to show.

The readers of :mod:`reallod.data.io` report the bytes they read of their input to the meter that
:func:`metered` makes current; a command that works on after its reading (``convert from-coco``
parses the whole json, then converts it) starts a :meth:`Meter.phase` of its own. Held in a context
variable, so that no ``progress`` parameter runs through every function between the command and the
reader, and library use (no meter) pays nothing. Pure: the display lives above, in
:mod:`reallod.runs.meter_display`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

BYTES = "bytes"


class Meter:
    """What a data command reports as it goes. The base class ignores everything (no display)."""

    active = False
    """Whether anything watches: readers skip counting when nothing does."""

    def phase(self, what: str, total: int | None, unit: str = BYTES) -> None:
        """A new stage of the work begins: ``total`` units of ``unit`` (None: not known, a pipe's bytes)."""

    def advance(self, n: int) -> None:
        """``n`` more units of the current stage are done."""

    def stop(self) -> None:
        """The command ended (normally or not)."""


_NO_METER = Meter()
_current: ContextVar[Meter | None] = ContextVar("reallod_data_meter", default=None)


def current_meter() -> Meter:
    """The meter the running command reports to (a no-op one when none was set)."""
    return _current.get() or _NO_METER


@contextmanager
def metered(meter: Meter) -> Iterator[Meter]:
    """Make ``meter`` current while the block runs, and stop it at the end (an error included)."""
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)
        meter.stop()


@contextmanager
def unmetered() -> Iterator[None]:
    """Reads in the block go uncounted: a small side file (gold labels) read before the inputs the
    command's total is made of."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def report_read(n: int) -> None:
    """``n`` more bytes of input were read: for readers that do not go through :mod:`reallod.data.io`
    (worker processes over byte ranges report each range in the parent as it is done)."""
    current_meter().advance(n)
