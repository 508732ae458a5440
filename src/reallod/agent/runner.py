"""Runs tasks through the workflow and streams each result to the trace as soon as it is finished.

One task is one coroutine; at most ``concurrency`` run at once and new ones are started as old ones
finish, so a run over millions of tasks holds only the tasks in flight, never the whole input or all
results. Every task ends with a result: an input problem or a broken image becomes a failed result
with its reason before any model is called, and the workflow itself turns task-level trouble into a
failed result. :func:`realign` is the whole command: tasks → trace → Real-Data → summary (→ report).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reallod.agent import workflow
from reallod.agent.assemble import POLICIES, Policy, assemble
from reallod.agent.images import ImageError, ImageLoader
from reallod.agent.inputs import TaskItem, TaskProblem, detect_format, iter_tasks, load_captions
from reallod.agent.roles import Roles
from reallod.agent.summary import RunSummary, summarize
from reallod.agent.task import TaskResult
from reallod.agent.trace import TraceWriter, read_trace, trace_path_for
from reallod.errors import ConfigError

ResultSink = Callable[[TaskItem, TaskResult], None]


async def run_one(item: TaskItem, roles: Roles, images: ImageLoader, *, max_cycles: int) -> TaskResult:
    """The result of one task; never raises for a problem of the task itself."""
    if isinstance(item, TaskProblem):
        return item.as_result()
    try:
        await asyncio.to_thread(images.check, item)  # header only: cheap, and off the event loop
    except ImageError as e:
        return TaskResult(item.task_id, "failed", item.raw_expression, item.raw_expression, 0,
                          error=str(e), error_kind=e.kind)
    try:
        return await workflow.run_task(item, roles, load_image=images.loader_for(item), max_cycles=max_cycles)
    except Exception as e:  # a bug or an unforeseen backend failure must not end a long run
        return TaskResult(item.task_id, "failed", item.raw_expression, item.raw_expression, 0,
                          error=f"unexpected {type(e).__name__}: {e}", error_kind="agent_error")


async def run_tasks(items: Iterable[TaskItem], roles: Roles, images: ImageLoader, sink: ResultSink, *,
                    max_cycles: int = 3, concurrency: int = 1) -> int:
    """Run every task, at most ``concurrency`` at a time, handing each result to ``sink`` as it
    finishes (in completion order). Returns the number of tasks run."""
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    pending: dict[asyncio.Task[TaskResult], TaskItem] = {}
    source = iter(items)
    done_count = 0

    def start_more() -> None:
        for item in itertools.islice(source, concurrency - len(pending)):
            pending[asyncio.create_task(run_one(item, roles, images, max_cycles=max_cycles))] = item

    try:
        start_more()
        while pending:
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                item = pending.pop(fut)
                sink(item, fut.result())
                done_count += 1
            start_more()
    finally:
        for fut in pending:
            fut.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return done_count


# ---------------------------------------------------------------------------------------------
# the whole command
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RealignOptions:
    input: Path
    config: str
    out: Path
    images: Path | None = None  # default: the input file's folder
    captions: Path | None = None
    max_cycles: int | None = None  # default: the config's (3)
    limit: int | None = None
    unresolved: Policy = "keep"
    source: str = "realigned"  # pairs' source name when the input is a published task list
    base_url: str | None = None
    llm_base_url: str | None = None
    vlm_base_url: str | None = None
    report_dir: Path | None = None
    concurrency: int | None = None  # default: the config's (1)


@dataclass(slots=True)
class RealignRun:
    out: Path
    trace: Path
    summary: RunSummary
    report: Path | None = None


def realign(opts: RealignOptions, *, roles: Roles | None = None) -> RealignRun:
    """Run the agent over an input file and write Real-Data, the trace, and optionally a report.

    ``roles`` replaces the ones built from ``opts.config`` (tests pass scripted roles).
    """
    if opts.max_cycles is not None and opts.max_cycles < 1:
        raise ConfigError("--max-cycles must be at least 1")
    if opts.limit is not None and opts.limit < 0:
        raise ConfigError("--limit must not be negative")
    if opts.unresolved not in POLICIES:
        raise ConfigError(f"--unresolved {opts.unresolved!r}: expected drop, keep or negative")
    fmt = detect_format(opts.input)
    captions = load_captions(opts.captions) if opts.captions else None
    images = ImageLoader(opts.images if opts.images is not None else opts.input.parent)
    agent, max_cycles, concurrency = str(opts.config), opts.max_cycles or 3, opts.concurrency or 1
    if roles is None:
        from reallod.agent.config import build_roles, load_agent_config

        cfg = load_agent_config(opts.config, base_url=opts.base_url, llm_base_url=opts.llm_base_url,
                                vlm_base_url=opts.vlm_base_url)
        agent, max_cycles, concurrency = cfg.name, opts.max_cycles or cfg.max_cycles, opts.concurrency or cfg.concurrency
        roles = build_roles(cfg)
    trace_path = trace_path_for(opts.out)
    if trace_path.resolve() == opts.out.resolve() or opts.out.resolve() == opts.input.resolve():
        raise ConfigError(f"--out {opts.out} would overwrite the input or the trace")
    header = {"input": str(opts.input), "format": fmt, "images": str(images.root), "config": str(opts.config),
              "agent": agent, "roles": roles.describe(), "max_cycles": max_cycles, "limit": opts.limit,
              "captions": str(opts.captions) if opts.captions else None}
    started = time.perf_counter()
    tasks = iter_tasks(opts.input, captions=captions, fmt=fmt)
    if opts.limit is not None:
        tasks = itertools.islice(tasks, opts.limit)

    async def run() -> None:
        try:
            with TraceWriter(trace_path, header) as trace:
                await run_tasks(tasks, roles, images, trace.write, max_cycles=max_cycles,
                                concurrency=concurrency)
        finally:
            await roles.aclose()

    asyncio.run(run())
    _, entries = read_trace(trace_path)
    results: dict[str, dict[str, Any]] = {}
    summary = summarize(_collect(entries, results))
    summary.assembly = assemble(fmt, opts.input, results, opts.out, policy=opts.unresolved, source=opts.source,
                                agent=agent, captions=captions, limit=opts.limit)
    summary.wall_s = time.perf_counter() - started
    report = None
    if opts.report_dir is not None:
        from reallod.agent.report import write_report

        report = write_report(trace_path, opts.report_dir, images=images)
    return RealignRun(opts.out, trace_path, summary, report)


_OUTPUT_FIELDS = ("verdict", "expression", "raw_expression", "cycles", "error", "error_kind")


def _collect(entries: Iterable[dict[str, Any]], into: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pass results through to the summary while keeping the few fields the output needs."""
    for entry in entries:
        result = entry["result"]
        into[entry["task_id"]] = {k: result.get(k) for k in _OUTPUT_FIELDS}
        yield result
