"""``reallod realign``: tasks through the workflow, many at once, with exactly-once results that
survive any crash.

One task is one coroutine, kept in flight by :func:`reallod.runs.drive.drive` inside a run session
(:mod:`reallod.runs.session`: response cache, journal, hardened backends, progress). The calls of one task stay in order (the workflow awaits each); images are decoded and views encoded
in worker threads. Every task ends with a result: an input problem or a broken image becomes a failed
result with its reason before any model is called, and the workflow turns task-level trouble into a
failed result.

:func:`realign` is the whole command. A task counts as done once its result is in the journal
(``OUT.journal.jsonl``, fsync'ed, group-committed); the trace line follows. A rerun of the same
command skips what the journal holds, so a run killed at any moment (``kill -9`` included) resumes
with nothing redone, lost or doubled; a changed config or input is refused (``force_resume`` accepts
a changed config, never another input). The output, the summary and ``--report`` are built from the journal at the end, the output
written atomically. A down endpoint or a disk that refuses the journal stops the run cleanly
(:class:`RunStopped`) with the journal intact; Ctrl-C stops it within a second or two, whatever it is
doing (loading a model included), with :class:`RunInterrupted` saying how many tasks the journal holds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from reallod.agent import workflow
from reallod.agent.assemble import Policy, Results, Select, assemble, check_policy, output_source
from reallod.agent.inputs import (
    InputFormat,
    TaskItem,
    TaskProblem,
    detect_format,
    iter_tasks,
    load_captions,
    shard_key,
)
from reallod.agent.ordering import group_by_image
from reallod.agent.roles import Roles
from reallod.agent.run_roles import harden, roles_fingerprint, roles_settings
from reallod.agent.summary import RunSummary, summarize
from reallod.agent.task import TaskResult
from reallod.agent.trace import TraceWriter, result_to_json, trace_path_for
from reallod.data.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_HINT
from reallod.data.io import AtomicWriter, check_gzip_whole, check_writable, same_file, written_over
from reallod.errors import ConfigError
from reallod.llm.cache import default_cache_path
from reallod.llm.endpoints import Endpoints
from reallod.runs.drive import drive
from reallod.runs.image_root import ImageError, ImageLoader
from reallod.runs.journal import (
    Journal,
    check_journaled_output,
    fingerprint_file,
    iter_journal,
    journal_path_for,
)
from reallod.runs.progress import RunMonitor
from reallod.runs.session import RunInterrupted, RunSession, RunStopped, interrupted_message, open_session
from reallod.runs.shard import in_shard, parse_shard

ResultSink = Callable[[TaskItem, TaskResult], Awaitable[None] | None]

DEFAULT_CONCURRENCY = 64


async def run_one(item: TaskItem, roles: Roles, images: ImageLoader, *, max_cycles: int) -> TaskResult:
    """The result of one task; never raises for a problem of the task itself."""
    if isinstance(item, TaskProblem):
        return item.as_result()
    try:
        if images.knows(item.image_path):  # another task of this image read its header
            images.check(item)
        else:  # the header, off the event loop
            await asyncio.to_thread(images.check, item)
    except ImageError as e:
        return TaskResult(item.task_id, "failed", item.raw_expression, item.raw_expression, 0,
                          error=str(e), error_kind=e.kind)
    try:
        return await workflow.run_task(item, roles, load_image=images.loader_for(item), max_cycles=max_cycles)
    except ConfigError:
        raise  # run-level (a model that cannot load, an endpoint that is down): stops the run
    except Exception as e:  # a bug or an unforeseen backend failure must not end a long run
        return TaskResult(item.task_id, "failed", item.raw_expression, item.raw_expression, 0,
                          error=f"unexpected {type(e).__name__}: {e}", error_kind="agent_error")


async def run_tasks(items: Iterable[TaskItem], roles: Roles, images: ImageLoader, sink: ResultSink, *,
                    max_cycles: int = 3, concurrency: int = 1) -> int:
    """Run every task, at most ``concurrency`` at a time, handing each result to ``sink`` as it
    finishes (in completion order; ``sink`` may be async). Returns the number of tasks run."""

    async def handle(item: TaskItem, result: TaskResult, _elapsed: float) -> None:
        out = sink(item, result)
        if asyncio.iscoroutine(out):
            await out

    return await drive(items, lambda item: run_one(item, roles, images, max_cycles=max_cycles), handle,
                       concurrency=concurrency)


# ---------------------------------------------------------------------------------------------
# what the journal keeps of a result
# ---------------------------------------------------------------------------------------------

_OUTPUT_FIELDS = ("verdict", "expression", "raw_expression", "cycles", "error", "error_kind")
_STEP_FIELDS = ("cycle", "role", "attempts", "repaired", "prompt_tokens", "completion_tokens", "latency_s",
                "decision")
MAX_ERROR_CHARS = 500


def journal_entry(result: TaskResult, elapsed_s: float) -> dict[str, Any]:
    """The compact result the journal keeps: what the output, the summary and agent-eval need
    (verdict, expressions, error, and per call: role, view, attempts, requests when retries made them
    more, tokens, time, and what of it the response cache answered when it answered any); the trace has the rest (prompts, raw replies)."""
    full = result_to_json(result)
    entry = {k: full.get(k) for k in ("task_id", *_OUTPUT_FIELDS)}
    if entry["error"]:
        entry["error"] = str(entry["error"])[:MAX_ERROR_CHARS]
    entry["notes"] = full.get("notes") or []
    entry["elapsed_s"] = round(elapsed_s, 4)
    steps = []
    for step in full.get("steps") or []:
        s = {k: step.get(k) for k in _STEP_FIELDS}
        view = step.get("view") or None
        s["view"] = {"name": view.get("name"), "crop_box": view.get("crop_box")} if view else None
        if step.get("error"):
            s["error"] = str(step["error"])[:MAX_ERROR_CHARS]
        if step.get("requests", s["attempts"]) != s["attempts"]:  # retries: kept only then
            s["requests"] = step["requests"]
        if any(step.get("cached") or ()):
            s["cached"] = step["cached"]
        steps.append(s)
    entry["steps"] = steps
    return entry


# ---------------------------------------------------------------------------------------------
# the whole command
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RealignOptions:
    input: Path
    config: str
    out: Path
    images: Path | None = None  # default: the input file's folder
    max_pixels: int = DEFAULT_MAX_PIXELS  # the largest image decoded; a task with a larger one fails
    captions: Path | None = None
    max_cycles: int | None = None  # default: the config's (3)
    limit: int | None = None
    unresolved: Policy = "keep"
    source: str | None = None  # pairs' source name when the input is a published task list (default: realigned)
    base_url: str | None = None
    llm_base_url: str | None = None
    vlm_base_url: str | None = None
    report_dir: Path | None = None  # the readable HTML/Markdown report of each task
    concurrency: int | None = None  # default: the config's (64 unless it says otherwise)
    report: Path | None = None  # the run summary as JSON + Markdown
    shard: str | None = None  # "K/N"
    cache: Path | None = None  # default: $REALLOD_CACHE/responses.sqlite (~/.cache/reallod)
    no_cache: bool = False
    force_resume: bool = False
    endpoint_limit: int | None = None  # requests in flight per endpoint (default: the concurrency)
    format: InputFormat | None = None  # default: recognised from the content (an empty file is refused)
    input_id: str | None = None  # what the journal fingerprints as the input (default: its content hash)


@dataclass(slots=True)
class RealignRun:
    out: Path
    trace: Path
    summary: RunSummary
    report: Path | None = None
    journal: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    run_report: tuple[Path, Path] | None = None


def selection(fmt: InputFormat, shard: tuple[int, int] | None) -> Select | None:
    """Which tasks (by id and image) belong to this run's shard."""
    if shard is None:
        return None
    return lambda task_id, image_path: in_shard(shard_key(task_id, image_path, fmt), shard)


def select_tasks(items: Iterable[TaskItem], select: Select | None, limit: int | None) -> Iterator[TaskItem]:
    """The shard's tasks, then the first ``limit`` of them (assemble counts the same way)."""
    if select is not None:
        items = (item for item in items if select(item.task_id, item.image_path))
    if limit is not None:
        items = itertools.islice(items, limit)
    return iter(items)


def keep_selected(results: Results, tasks: Callable[[], Iterable[TaskItem]]) -> Results:
    """``results`` (the journal's) less the tasks this run does not select (``tasks()``): those of an
    earlier run with a larger ``--limit``, or of records since gone from an input named by ``input_id``
    stay in the journal for a later run, but are no part of this run's output, summary or report. One
    pass over the tasks when the journal holds no other, a second to pick them out otherwise."""
    if sum(1 for item in tasks() if item.task_id in results) == len(results):
        return results
    kept = Results()
    for item in tasks():
        if (result := results.get(item.task_id)) is not None:
            kept[item.task_id] = result
    return kept


def retry_failed(tasks: Callable[[], Iterable[TaskItem]], opts: RealignOptions) -> Callable[[dict[str, Any]], bool]:
    """Which of the journal's results this run takes out to run again (``Journal.open``'s ``retry``): the
    failed ones of the tasks it selects (``tasks()``). A failed task that a smaller ``--limit`` (or an input
    named by ``input_id`` that lost it) leaves out stays failed in the journal, for a later run to run again
    and report. The selected ids are gathered at the first failed result, and only when the journal may
    hold other tasks (the fingerprint holds the input's content and the shard)."""
    every = opts.limit is None and opts.input_id is None
    selected: set[str] | None = None

    def retry(entry: dict[str, Any]) -> bool:
        nonlocal selected
        if entry.get("verdict") != "failed":
            return False
        if every:
            return True
        if selected is None:
            selected = {item.task_id for item in tasks()}
        return entry.get("task_id") in selected

    return retry


def record_assembly(journal_path: Path, header: dict[str, Any], policy: Policy, source: str) -> None:
    """Write ``--unresolved`` and the output pairs' source into the journal's header (its ``meta``), which
    ``realign merge`` reads to assemble the shards as they were; a rerun with other ones (it only
    re-assembles) replaces them. The journal is written aside and renamed over the old one, under the
    run's lock."""
    meta = header.get("meta") or {}
    if meta.get("unresolved") == policy and meta.get("source") == source:
        return
    new = {**header, "meta": {**meta, "unresolved": policy, "source": source}}
    try:
        with open(journal_path, "rb") as f, AtomicWriter(journal_path) as w:
            f.readline()  # the old header
            w.write(orjson.dumps(new) + b"\n")
            while block := f.read(1 << 20):
                w.write(block)
    except OSError as e:
        raise RunStopped(f"cannot record --unresolved {policy} and --source {source} in the journal {journal_path}: "
                         f"{e.strerror or e}; the finished tasks are safe in it: rerun the same command once that is "
                         "fixed (nothing is redone)") from e
    header["meta"] = new["meta"]


def realign(opts: RealignOptions, *, roles: Roles | None = None, monitor: RunMonitor | None = None) -> RealignRun:
    """Run the agent over an input file and write Real-Data, the trace, and optionally reports.

    ``roles`` replaces the ones built from ``opts.config`` (tests pass scripted roles); ``monitor``
    watches the run (a progress bar). Raises :class:`RunStopped` when the run had to stop early.
    """
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    if opts.max_cycles is not None and opts.max_cycles < 1:
        raise ConfigError("--max-cycles must be at least 1")
    if opts.limit is not None and opts.limit < 1:
        raise ConfigError(f"--limit {opts.limit}: must be at least 1 (the number of tasks to run; leave it out "
                          "to run them all)")
    check_policy(opts.unresolved)
    if opts.concurrency is not None and opts.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    if opts.endpoint_limit is not None and opts.endpoint_limit < 1:
        raise ConfigError("--endpoint-limit must be at least 1")
    shard = parse_shard(opts.shard)
    fmt = opts.format or detect_format(opts.input)
    source = output_source(fmt, opts.source)
    captions = load_captions(opts.captions) if opts.captions else None
    images = image_loader(opts)
    trace_path, journal_path = check_outputs(opts)
    check_gzip_whole(opts.input)  # a cut .gz fails here, not once its readable part has run

    agent, max_cycles, concurrency = str(opts.config), opts.max_cycles or 3, opts.concurrency or DEFAULT_CONCURRENCY
    if roles is None:
        from reallod.agent.agent_config import build_roles, load_agent_config

        cfg = load_agent_config(opts.config, base_url=opts.base_url, llm_base_url=opts.llm_base_url,
                                vlm_base_url=opts.vlm_base_url)
        agent, max_cycles, concurrency = cfg.name, opts.max_cycles or cfg.max_cycles, opts.concurrency or cfg.concurrency
        roles = build_roles(cfg)
    shard_text = f"{shard[0]}/{shard[1]}" if shard else None
    fp = {"config": roles_fingerprint(roles), "input": opts.input_id or fingerprint_file(opts.input),
          "captions": fingerprint_file(opts.captions) if opts.captions else None,
          "max_cycles": max_cycles, "format": fmt, "shard": shard_text}
    meta = {"input": str(opts.input.resolve()), "format": fmt, "agent": agent, "config": str(opts.config),
            "captions": str(opts.captions.resolve()) if opts.captions else None,
            "images": str(images.root.resolve()), "shard": shard_text, "max_cycles": max_cycles,
            "unresolved": opts.unresolved, "source": source,  # not fingerprinted: another only re-assembles
            "settings": roles_settings(roles)}  # names what a changed config changed
    select = selection(fmt, shard)

    def tasks() -> Iterator[TaskItem]:
        return select_tasks(iter_tasks(opts.input, captions=captions, fmt=fmt), select, opts.limit)

    with open_session(journal_path, fp, meta=meta, cache_path=opts.cache, no_cache=opts.no_cache,
                      force=opts.force_resume, retry=retry_failed(tasks, opts)) as session:
        roles, endpoints = harden(roles, cache=session.cache, endpoint_limit=opts.endpoint_limit or concurrency)
        header = {"input": str(opts.input), "format": fmt, "images": str(images.root), "config": str(opts.config),
                  "agent": agent, "roles": roles.describe(), "max_cycles": max_cycles, "limit": opts.limit,
                  "captions": str(opts.captions) if opts.captions else None, "shard": shard_text}
        stages["prepare"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        ran = _run(opts, fmt, tasks, images, roles, endpoints, session, trace_path, header, max_cycles,
                   concurrency, monitor)
        stages["agent"] = time.perf_counter() - t1
        lock = session.journal.keep_lock()  # held until the output is written
    journal, cache = session.journal, session.cache
    finished = len(journal.done)
    journal.done.clear()  # closed: its ids are read back with the results below, not held twice at the peak

    t2 = time.perf_counter()
    results = Results()  # small per task: a run over millions of tasks holds all of them here
    summary = RunSummary()
    try:
        record_assembly(journal_path, journal.header, opts.unresolved, source)
        for tid, entry in iter_journal(journal_path):
            results.add(tid, entry)
            summary.add(entry)
        # the fingerprint holds the input's content and the shard: the journal holds only tasks this run
        # selects, unless --limit leaves some out or the input is named by input_id (its content may change)
        if opts.limit is not None or opts.input_id is not None:
            selected = keep_selected(results, tasks)
            if selected is not results:
                results = selected
                summary = summarize(entry for tid, entry in iter_journal(journal_path) if tid in results)
        summary.assembly = assemble(fmt, opts.input, results, opts.out, policy=opts.unresolved, source=source,
                                    agent=agent, captions=captions, limit=opts.limit, select=select)
    except OSError as e:
        raise RunStopped(f"cannot write the output {opts.out}: {e.strerror or e}; the {len(results)} finished "
                         f"task(s) are safe in {journal_path}: rerun the same command once that is fixed "
                         "(nothing is redone)") from e
    except KeyboardInterrupt as e:  # the output is written atomically: none, or the whole of it
        raise RunInterrupted(interrupted_message(finished, "task(s)", journal_path)) from e
    finally:
        if lock is not None:
            lock.release()
    stages["output"] = time.perf_counter() - t2
    report = None
    if opts.report_dir is not None:
        from reallod.agent.task_report import write_report

        t3 = time.perf_counter()
        report = write_report(trace_path, opts.report_dir, images=images, tasks=results)
        stages["report"] = time.perf_counter() - t3
    summary.wall_s = time.perf_counter() - t0
    totals = endpoints.totals()
    info = {"input": str(opts.input), "out": str(opts.out), "journal": str(journal_path), "trace": str(trace_path),
            "agent": agent, "shard": shard_text, "concurrency": concurrency,
            "tasks_total": summary.tasks, "tasks_resumed": max(summary.tasks - ran, 0),
            "tasks_retried": journal.retried,
            "tasks_run": ran,
            "tasks_per_s": ran / stages["agent"] if stages["agent"] > 0 else 0.0,
            "cache": None if cache is None else str(cache.path),
            "requests": {"sent": totals.calls, "cache_hits": totals.cache_hits, "retries": dict(totals.retries),
                         "gave_up": dict(totals.failures)},
            "stages_s": {k: round(v, 3) for k, v in stages.items()}, "wall_s": round(summary.wall_s, 3)}
    run = RealignRun(opts.out, trace_path, summary, report, journal_path, info)
    if opts.report is not None:
        from reallod.agent.run_report import write_run_report

        run.run_report = write_run_report(opts.report, summary, info)
    return run


def image_loader(opts: RealignOptions) -> ImageLoader:
    """The run's images: ``--images``, else the input's folder."""
    return ImageLoader(opts.images if opts.images is not None else opts.input.parent, max_pixels=opts.max_pixels,
                       hint=MAX_PIXELS_HINT)


def read_files(opts: RealignOptions) -> dict[str, Path]:
    """What a run reads and must never write over (what it is → path): the input, the captions, and the
    files it shares with other runs (:func:`shared_files`)."""
    read = {"the input": opts.input, "the --captions file": opts.captions, **shared_files(opts.config, opts.cache)}
    return {what: Path(path) for what, path in read.items() if path is not None}


def shared_files(config: str | Path, cache: Path | None) -> dict[str, Path | None]:
    """Files a run shares with others, which no output may replace whatever its options: the agent config
    and the response caches (the one given, and the user's shared one even with --no-cache: other runs'
    answers are in it)."""
    from reallod.agent.agent_config import resolve_config_path

    try:
        path: Path | None = resolve_config_path(config)
    except ConfigError:  # loading it says so, before any model call
        path = None
    return {"the agent config": path, "the response cache (--cache)": cache,
            "the shared response cache": default_cache_path()}


def check_cache_options(cache: Path | None, no_cache: bool) -> None:
    """Refuse ``--cache`` with ``--no-cache``: one of them would be ignored."""
    if no_cache and cache is not None:
        raise ConfigError(f"--cache {cache} and --no-cache contradict each other (--no-cache neither reads "
                          "nor writes a response cache): give one of them")


def check_outputs(opts: RealignOptions) -> tuple[Path, Path]:
    """The run's trace and journal (beside ``--out``); refuses, before any model is called, an output,
    trace, journal, ``--report`` or ``--report-dir`` over a file the run reads (:func:`read_files`) or
    over one another, and outputs that could not be written at the end."""
    check_cache_options(opts.cache, opts.no_cache)
    check_journaled_output(opts.out)
    trace_path, journal_path = trace_path_for(opts.out), journal_path_for(opts.out)
    written = {"its output": opts.out, "its trace": trace_path, "its journal": journal_path}
    if len({p.resolve() for p in written.values()}) < 3:
        raise ConfigError(f"--out {opts.out} would overwrite the trace or the journal: give an --out ending in .jsonl")
    read = read_files(opts)
    images = opts.images if opts.images is not None else opts.input.parent
    for its, other in written.items():
        if what := written_over(other, read, images):
            raise ConfigError(f"--out {opts.out} would overwrite {what} with {its}: give another --out")
    check_output(opts.out, "--out")
    kept = {**read, "the --out output": opts.out, "the run's trace": trace_path, "the run's journal": journal_path}
    if opts.report is not None:
        check_report(opts.report, kept)
    if opts.report_dir is not None:
        from reallod.agent.run_report import report_paths

        reports = report_paths(opts.report) if opts.report is not None else ()
        check_report_dir(opts.report_dir, {**kept, **{f"the --report file {p.name}": p for p in reports}},
                         read, images)
    return trace_path, journal_path


def check_output(path: Path, option: str) -> None:
    """Refuse, before any task runs (and is paid for), an output that could not be written at the end."""
    if Path(path).is_dir():  # realign's own wording of it; the rest is every command's check
        raise ConfigError(f"{option} {path} is a folder: give the path of a file")
    check_writable(path, option=option)


def check_report(report: str | os.PathLike, kept: Mapping[str, Path]) -> None:
    """Refuse, before any task runs, a ``--report`` whose files (``report_paths``: JSON and Markdown) could
    not be written or would overwrite one of ``kept`` (what it is → path): the input, the run's files."""
    from reallod.agent.run_report import report_paths

    for path in report_paths(report):
        check_output(path, "--report")
        for what, other in kept.items():
            if same_file(path, other):
                raise ConfigError(f"--report {report} would overwrite {what} ({other}) with {path}: "
                                  "give another --report")


def check_report_dir(report_dir: Path, kept: Mapping[str, Path], read: Mapping[str, Path], images: Path) -> None:
    """Refuse, before any task runs, a ``--report-dir`` whose files could not be written at the end (a file
    in the way of the folder or of its ``img`` folder, a folder named as a page) or would replace what the
    run reads or writes: its pages (``index.html``, ``index.md``) over one of ``kept`` (what it is → path)
    or an image, its pictures (in ``img``) among the images of the image root ``images`` or in the
    folder of a file the run reads (``read``)."""
    option, pictures = "--report-dir", report_dir / "img"
    check_writable(report_dir, option=option, folder=True,
                   hint=f"give another {option}, or remove the file")
    check_writable(pictures, option=option, folder=True,
                   hint=f"the report's pictures go in this folder: remove the file, or give another {option}")
    for page in (report_dir / "index.html", report_dir / "index.md"):
        check_writable(page, option=option, hint=f"remove it, or give another {option}")
        if what := written_over(page, kept, images):
            raise ConfigError(f"{option} {report_dir} would overwrite {what} with its {page.name}: "
                              f"give another {option}")
    for what, folder in {"the image root --images": images,
                         **{f"the folder of {w}": p.parent for w, p in read.items()}}.items():
        if same_file(pictures, folder):
            raise ConfigError(f"{option} {report_dir} would write its pictures into {what} ({folder}), "
                              f"among files the run reads: give another {option}")


def _run(opts: RealignOptions, fmt: InputFormat, tasks: Callable[[], Iterator[TaskItem]], images: ImageLoader,
         roles: Roles, endpoints: Endpoints, session: RunSession, trace_path: Path, header: dict[str, Any],
         max_cycles: int, concurrency: int, monitor: RunMonitor | None) -> int:
    """Run the tasks (of ``tasks()``: this run's) the journal does not hold yet; returns how many ran."""
    monitor = monitor or RunMonitor()
    if hasattr(monitor, "in_flight"):
        monitor.in_flight = endpoints.in_flight  # type: ignore[attr-defined]
    journal = session.journal
    done = journal.done
    ordered = group_by_image(tasks()) if fmt == "tasks" else tasks()
    todo = (item for item in ordered if item.task_id not in done)

    def count() -> tuple[int, int]:  # this run's tasks, and those of them the journal holds
        size = held = 0
        for item in tasks():
            size += 1
            held += item.task_id in done
        return size, held

    trace = TraceWriter(trace_path, header, append=journal.resumed > 0, keep=done)
    try:
        if journal.resumed:
            _recover_trace(trace, journal, trace.kept)

        async def handle(item: TaskItem, result: TaskResult, elapsed: float) -> None:
            entry = journal_entry(result, elapsed)
            # the trace line (with its prompts) first: a crash before the journal's entry leaves a line
            # that the resume drops (keep_tasks) with the task it runs again; never a journaled task
            # whose trace steps are lost
            trace.write(item, result)
            await journal.append(result.task_id, entry)
            monitor.task_done(result.verdict)

        return session.run(todo, lambda item: run_one(item, roles, images, max_cycles=max_cycles), handle,
                           concurrency=concurrency, monitor=monitor, total=count, aclose=roles.aclose,
                           resumed=journal.resumed if opts.limit is None else min(journal.resumed, opts.limit))
    finally:
        trace.close()


def _recover_trace(trace: TraceWriter, journal: Journal, have: set[str]) -> None:
    """The trace may lack tasks the journal holds (a trace from an older version, which wrote the line
    after the journal's entry, or a power loss: the trace is flushed, not fsync'd): add them from the
    journal (compact: no prompts), so the trace lists every task once."""
    for tid, entry in iter_journal(journal.path):
        if tid not in have:
            trace.write_entry({"task_id": tid, "task": None, "result": entry, "recovered": True})

