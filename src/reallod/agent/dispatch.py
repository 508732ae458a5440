"""What ``reallod realign`` does once its arguments are parsed: explain one task of a trace, run the
agent here, or run it in shards as Ray tasks and merge them; and what to show afterwards.

The command only parses, calls :func:`run_realign` and prints :meth:`RealignOutcome.renderables`
(or :attr:`RealignOutcome.text`), so a script or a notebook gets the same run without the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reallod.agent.merge import MergeResult
from reallod.agent.realign import RealignOptions, RealignRun, realign
from reallod.errors import ConfigError
from reallod.runs.progress import RunMonitor

ShardDone = Callable[[int, int, dict[str, Any]], None]
"""Called as each Ray shard finishes: (k from 1, n, the shard run's info dict)."""


@dataclass(frozen=True, slots=True)
class RealignOutcome:
    """One of: ``text`` (an explained task), ``run`` (a run here) or ``merged`` (shards run on Ray)."""

    text: str | None = None
    run: RealignRun | None = None
    merged: MergeResult | None = None

    def renderables(self) -> list[Any]:
        """Rich renderables to print, in order: the summary tables, the run's own numbers and where
        its run report went (a local run), or the merged summary (Ray). Empty for ``text``."""
        from reallod.agent.summary import render

        if self.merged is not None:
            m = self.merged
            merged: list[Any] = [render(m.summary, out=str(m.out), trace=str(m.trace) if m.trace else None,
                                        report=str(m.report) if m.report else None)]
            if m.run_report:
                merged.append(f"run report: {m.run_report[0]} and {m.run_report[1]}")
            return merged
        if self.run is None:
            return []
        from reallod.agent.run_report import run_table

        run = self.run
        shown: list[Any] = [render(run.summary, out=str(run.out), trace=str(run.trace),
                                   report=str(run.report) if run.report else None), run_table(run.info)]
        if run.run_report:
            shown.append(f"run report: {run.run_report[0]} and {run.run_report[1]}")
        return shown


def shard_line(k: int, n: int, info: dict[str, Any]) -> str:
    """One line per finished Ray shard: ``shard K/N: T task(s) (R run now) -> OUT``."""
    return f"shard {k}/{n}: {info['tasks_total']} task(s) ({info['tasks_run']} run now) -> {info['out']}"


def run_realign(opts: RealignOptions | None = None, *, explain: Path | None = None, task: str | None = None,
                ray: str | None = None, ray_shards: int | None = None, monitor: RunMonitor | None = None,
                on_shard_done: ShardDone | None = None) -> RealignOutcome:
    """Explain task ``task`` of the trace ``explain``; or, with ``ray`` (an address, or "local" for a
    local instance), run ``opts`` in ``ray_shards`` shards (default: one per node) on Ray and merge them
    into ``opts.out``; or run ``opts`` here with ``monitor`` watching."""
    if explain is not None:
        if task is None:
            raise ConfigError("--explain needs --task ID")
        from reallod.agent.explain import explain as explain_task

        return RealignOutcome(text=explain_task(explain, task))
    if opts is None:
        raise ConfigError("nothing to run: give the realign options (or a trace to explain)")
    if task is not None:  # a run that goes on without it would not be what was asked
        raise ConfigError("--task ID picks the task --explain TRACE prints: give --explain as well")
    if ray_shards is not None and ray is None:
        raise ConfigError("--ray-shards N splits a --ray run: give --ray [ADDRESS] as well (or --shard K/N for a "
                          "run of your own)")
    if ray is not None:
        from reallod.agent.realign_ray import realign_on_ray

        merged, _ = realign_on_ray(opts, address=None if ray == "local" else ray, shards=ray_shards,
                                   on_shard_done=on_shard_done)
        return RealignOutcome(merged=merged)
    return RealignOutcome(run=realign(opts, monitor=monitor))
