"""One resumable run, set up and torn down the same way by every command that journals its work
(``realign``, and ``generate`` inside the data engine's pipeline).

The sequence: the response cache opens, the journal opens (refusing another setup's journal unless
forced; the cache commits before every journal write, so work the journal calls done keeps its
answers); the caller hardens its backends with the cache; :meth:`RunSession.run` keeps the items the
journal lacks in flight and maps every way a run can be stopped (an endpoint down, a disk that
refuses a write) to :class:`RunStopped`, saying what is safe; closing flushes and closes both.

Ctrl-C (SIGINT) at any point of :meth:`RunSession.run` cancels the items in flight (a model loading
or generating in a worker thread is not waited for: see :mod:`reallod.llm.threads`), lets the
journal finish the write in progress, closes the backends, and raises :class:`RunInterrupted`: a
:class:`KeyboardInterrupt` whose message says what the journal holds and that the same command resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reallod.errors import ReallodError
from reallod.llm.cache import ResponseCache, default_cache_path
from reallod.llm.retry import EndpointDown
from reallod.llm.threads import in_daemon_thread
from reallod.runs.drive import drive
from reallod.runs.journal import Journal, JournalWriteError
from reallod.runs.progress import RunMonitor


class RunStopped(ReallodError):
    """The run stopped before the end (endpoint down, disk refused the journal); it can be resumed."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; the message says what is safe. Still a :class:`KeyboardInterrupt`, so
    whatever does not know it treats it as one (the CLI exits 130 and prints the message)."""


def interrupted_message(done: int, unit: str, journal: Path) -> str:
    """What an interrupted run leaves: ``N task(s) are in the journal J; rerun the same command to resume``."""
    return f"{done} {unit} are in the journal {journal}; rerun the same command to resume"


@dataclass(slots=True)
class RunSession:
    """An open journal and response cache; ``unit`` names what the journal holds (for messages)."""

    journal: Journal
    cache: ResponseCache | None
    unit: str = "task(s)"
    stage: str = "The run"

    def run(self, todo: Iterable[Any], work: Callable[[Any], Awaitable[Any]],
            handle: Callable[[Any, Any, float], Awaitable[None]], *, concurrency: int,
            monitor: RunMonitor | None = None, total: int | Callable[[], tuple[int, int]] | None = None,
            aclose: Callable[[], Awaitable[None]] | None = None, resumed: int | None = None) -> int:
        """Run ``todo`` (see :func:`reallod.runs.drive.drive`); returns how many ran.

        ``handle`` journals each result (and may write more); ``total`` is the run's size for the
        progress bar, or a function that counts it and how many of it the journal held when the run
        began (called in a thread, only when someone watches: the journal may hold tasks this run does
        not select, after a smaller ``--limit``); ``resumed`` is the bar's start until then (default: all
        the journal holds); ``aclose`` closes the backends when the run ends, however it ends."""
        monitor = monitor or RunMonitor()

        async def count(counter: Callable[[], tuple[int, int]]) -> None:  # a large input takes a while
            size, held = await in_daemon_thread(counter)
            monitor.set_total(size, resumed=held)

        async def main() -> int:
            counting = None
            if callable(total):
                if type(monitor) is not RunMonitor:
                    counting = asyncio.create_task(count(total))
            elif total is not None:
                monitor.set_total(total)
            monitor.start(resumed=self.journal.resumed if resumed is None else resumed)
            try:
                return await drive(todo, work, handle, concurrency=concurrency)
            finally:
                if counting is not None:
                    counting.cancel()
                    with contextlib.suppress(BaseException):
                        await counting
                monitor.stop()
                await self.journal.drain()
                if aclose is not None:
                    await aclose()

        try:
            return asyncio.run(main())
        except KeyboardInterrupt as e:  # asyncio.run cancelled main() on SIGINT: the journal is whole
            if isinstance(e, RunInterrupted):
                raise
            raise RunInterrupted(interrupted_message(len(self.journal.done), self.unit, self.journal.path)) from e
        except EndpointDown as e:
            safe = f"{len(self.journal.done)} finished {self.unit}"
            raise RunStopped(f"{e}. {self.stage} stopped: {safe} are safe in {self.journal.path}; "
                             "rerun the same command to resume") from e
        except JournalWriteError as e:
            raise RunStopped(str(e)) from e
        except OSError as e:  # an output written beside the journal (the trace)
            safe = f"{len(self.journal.done)} finished {self.unit}"
            raise RunStopped(f"cannot write {e.filename or 'an output'}: {e.strerror or e}; {safe} are safe in "
                             f"{self.journal.path}: rerun the same command to resume") from e


@contextlib.contextmanager
def open_session(journal_path: Path, fp: dict[str, Any], *, meta: dict[str, Any], cache_path: Path | None = None,
                 no_cache: bool = False, force: bool = False, unit: str = "task(s)",
                 stage: str = "The run", retry: Callable[[dict[str, Any]], bool] | None = None
                 ) -> Iterator[RunSession]:
    """The response cache (``cache_path``, else the user's shared one; none with ``no_cache``) and the
    journal of one run (results ``retry`` picks are run again: :meth:`Journal.open`), closed on exit. Ctrl-C inside the block, once the journal is open, becomes
    :class:`RunInterrupted` saying what the journal holds."""
    cache = None if no_cache else ResponseCache(cache_path or default_cache_path())
    journal: Journal | None = None
    try:
        try:
            journal = Journal.open(journal_path, fp, force=force, meta=meta, keep=lambda r: None, retry=retry,
                                   before_write=cache.commit if cache is not None else None)
        except OSError as e:
            parent = journal_path.parent
            why = f"{parent} is not a folder" if parent.exists() and not parent.is_dir() else \
                f"{journal_path}: {e.strerror or e}"
            raise ReallodError(f"cannot create the journal next to the output ({why})") from e
        yield RunSession(journal, cache, unit, stage)
    except KeyboardInterrupt as e:
        if journal is None or isinstance(e, RunInterrupted):
            raise
        raise RunInterrupted(interrupted_message(len(journal.done), unit, journal.path)) from e
    finally:
        if journal is not None:
            journal.close()
        if cache is not None:
            cache.close()
