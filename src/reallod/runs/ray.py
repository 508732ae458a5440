"""Jobs as Ray tasks: join (or start) Ray, run one task per job wherever Ray puts it, collect results.

A job that fails does not stop the others; the failures are reported together once all have ended,
so a rerun of a resumable command redoes only what failed. Without an address Ray starts a local
instance, which is shut down again at the end.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from reallod.errors import ConfigError, ReallodError

CANCEL_WAIT_S = 30.0  # how long Ctrl-C waits for the jobs to close their journals before Ray stops


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Ray, joined at ``address`` or started locally (and then shut down on exit)."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--ray {address or '(local)'}: cannot start or reach Ray: {e}") from e
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def map_on_ray(fn: Callable[[Any], Any], jobs: Sequence[Any], *, names: Sequence[str] | None = None,
               on_done: Callable[[int, Any], None] | None = None, what: str = "others") -> list[Any]:
    """``[fn(job) for job in jobs]`` inside a :func:`ray_session`, each call a Ray task (one CPU);
    ``on_done(i, result)`` as each ends. ``fn`` must be module-level, so workers import it instead of
    unpickling code. Failed jobs are reported together at the end (``what`` names the others)."""
    ray = import_ray()
    names = names or [str(i) for i in range(len(jobs))]
    task = ray.remote(num_cpus=1, max_retries=0)(fn)
    refs = {task.remote(job): i for i, job in enumerate(jobs)}
    results: dict[int, Any] = {}
    failures: list[str] = []
    waiting = list(refs)
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            i = refs[ready[0]]
            try:
                results[i] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None) or e
                failures.append(f"{names[i]}: {cause}")
                continue
            if on_done is not None:
                on_done(i, results[i])
    except KeyboardInterrupt:  # Ctrl-C here reaches no worker: each job is told, and ends as on Ctrl-C
        for ref in waiting:
            ray.cancel(ref)
        ray.wait(waiting, num_returns=len(waiting), timeout=CANCEL_WAIT_S)
        raise
    if failures:
        done = f"the {what} are done" if results else "none finished"
        raise ReallodError("; ".join(failures) + f" ({done}; rerun the same command to resume the failed ones)")
    return [results[i] for i in range(len(jobs))]


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--ray needs Ray: pip install 'reallod[dist]'") from e
    return ray


def live_nodes() -> int:
    """How many nodes of the current Ray cluster are alive (at least 1)."""
    ray = import_ray()
    return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
