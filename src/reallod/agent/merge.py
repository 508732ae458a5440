"""``reallod realign merge``: join the outputs of ``--shard K/N`` runs into the output one run would give.

Each shard run leaves a journal next to its output whose header says which shard of how many,
fingerprints the config and the input, and records the ``--unresolved`` policy its output was
assembled with. The merge checks that the shards belong together (same N, config, input, captions,
cycles), that every shard 1..N is there exactly once and none is still running (it holds each shard's
journal lock while it reads), that the input has not changed since, and — task by task over the
input — that each task was done exactly once, by the shard it belongs to. Only then does it assemble
the output from the journals' results, in input order (identical to an unsharded run's), under the
shards' ``--unresolved`` and ``--source`` (one given to the merge wins, and the merge says so), and
concatenate the shards' traces (none when one is missing, and the merge says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from reallod.agent.assemble import DEFAULT_SOURCE, POLICIES, Policy, Results, assemble, output_source
from reallod.agent.inputs import iter_tasks, load_captions, shard_key
from reallod.agent.summary import RunSummary
from reallod.agent.trace import TRACE_VERSION, trace_path_for, whole_lines
from reallod.data.io import AtomicWriter, writes_through
from reallod.errors import ConfigError, ReallodError
from reallod.runs.journal import (
    JournalBusy,
    JournalLock,
    fingerprint_file,
    iter_journal,
    journal_path_for,
    lock_holder,
    lock_journal,
    read_header,
)
from reallod.runs.shard import parse_shard, shard_of

MAX_EXAMPLES = 5


class MergeError(ReallodError):
    """The shards cannot be merged: one is missing, doubled, incomplete, or from another job."""


@dataclass(slots=True)
class MergeResult:
    out: Path
    trace: Path | None
    summary: RunSummary
    shards: int
    unresolved: Policy = "keep"  # the policy the output was assembled with
    policy_note: str = ""  # where it came from: the shards, the default, or the merge's own option
    source: str = ""  # the output pairs' source (published task lists)
    source_note: str = ""  # where it came from ("": a Real-Data input, whose pairs keep their sources)
    trace_note: str = ""  # why no trace was written
    report: Path | None = None  # --report-dir's index.html (realign --ray)
    run_report: tuple[Path, Path] | None = None  # --report's JSON and Markdown (realign --ray)


def _shard_of_file(path: Path) -> tuple[Path, dict[str, Any], tuple[int, int]]:
    journal = journal_path_for(path)
    if not journal.is_file():
        what = "no such file" if not path.exists() else "a folder" if path.is_dir() else "no journal next to it"
        raise MergeError(f"{path}: {what} ({journal.name} not found); merge takes the --out files of "
                         "`reallod realign --shard K/N` runs")
    header = read_header(journal)
    spec = (header.get("fingerprint") or {}).get("shard")
    if not spec:
        raise MergeError(f"{path}: not a shard's output (its run had no --shard)")
    shard = parse_shard(spec)
    assert shard is not None
    return journal, header, shard


def _lock_shard(path: Path) -> JournalLock | None:
    """The shard's journal lock, held while merging: a shard still running (or started meanwhile) is
    writing its journal, and would only be called incomplete."""
    journal = journal_path_for(path)
    if not journal.is_file():
        return None  # said by _shard_of_file
    try:
        return lock_journal(journal)
    except JournalBusy:
        _, _, (k, n) = _shard_of_file(path)
        raise MergeError(f"shard {k}/{n} ({path}) is still running{lock_holder(journal)}: merge once it has "
                         "finished") from None
    except OSError:  # a folder the merge may not write in (shards copied read-only): no run writes there
        return None


def shards_choice(shards: list[tuple[dict[str, Any], int]], n: int, option: str, given: str | None,
                  default: str) -> tuple[str, str]:
    """The value of an assembly ``option`` (``--unresolved``, ``--source``) to assemble with, and where it
    came from: the one given (said when it is not the shards'), else the shards' own (recorded in their
    journals' headers; shards that disagree are refused), else ``default`` (journals written before it
    was recorded)."""
    key = option.removeprefix("--")
    ran = {k: (header.get("meta") or {}).get(key) for header, k in shards}
    recorded = sorted({p for p in ran.values() if p})
    if given is not None:
        if not recorded:
            return given, "given"
        if recorded == [given]:
            return given, "the shards' own"
        return given, f"given in place of the shards' {' and '.join(recorded)}"
    if len(recorded) > 1:
        said = ", ".join(f"shard {k}/{n} {p}" for k, p in sorted(ran.items()) if p)
        raise MergeError(f"the shards ran with different {option} ({said}): give merge the {option} "
                         "to assemble them all with")
    if recorded:
        return recorded[0], "the shards' own"
    return default, "the default: the shards' journals do not say which they ran with"


def merge_shards(shard_outs: list[Path], out: Path, *, unresolved: str | None = None,
                 source: str | None = None) -> MergeResult:
    """Check the shards and write the merged output (atomically) and trace. ``unresolved``: None
    assembles as the shards did (see :func:`shards_choice`); so does ``source``."""
    if unresolved is not None and unresolved not in POLICIES:
        raise ConfigError(f"--unresolved {unresolved!r}: expected drop, keep or negative")
    if not shard_outs:
        raise MergeError("no shard outputs given")
    if writes_through(out):  # the trace goes beside it
        raise ConfigError(f"--out {out} is a pipe or a device: the merge writes its trace beside its output; "
                          "give a file")
    locks: list[JournalLock] = []
    try:
        distinct: dict[Path, Path] = {}  # journal → shard output; a shard given twice is said below
        for p in shard_outs:
            distinct.setdefault(journal_path_for(Path(p)).resolve(), Path(p))
        for path in distinct.values():
            if (lock := _lock_shard(path)) is not None:
                locks.append(lock)
        return _merge([(p, *_shard_of_file(Path(p))) for p in shard_outs], out, unresolved, source)
    finally:
        for lock in locks:
            lock.release()


def _merge(shards: list[tuple[Path, Path, dict[str, Any], tuple[int, int]]], out: Path, unresolved: str | None,
           source: str | None) -> MergeResult:
    first_path, _, first_header, (_, n) = shards[0]
    first_fp = {k: v for k, v in first_header["fingerprint"].items() if k != "shard"}
    by_k: dict[int, list[Path]] = {}
    for path, _, header, (k, nk) in shards:
        if nk != n:
            raise MergeError(f"{path} is shard {k}/{nk} but {first_path} is one of {n}: shards of one job share N")
        fp = {key: v for key, v in header["fingerprint"].items() if key != "shard"}
        changed = sorted(key for key in set(fp) | set(first_fp) if fp.get(key) != first_fp.get(key))
        if changed:
            raise MergeError(f"{path} and {first_path} were run with a different {', '.join(changed)}: "
                             "not shards of the same job")
        by_k.setdefault(k, []).append(Path(path))
    doubled = {k: ps for k, ps in by_k.items() if len(ps) > 1}
    if doubled:
        k, ps = min(doubled.items())
        raise MergeError(f"shard {k}/{n} given {len(ps)} times: {', '.join(map(str, ps))}")
    missing = [k for k in range(1, n + 1) if k not in by_k]
    if missing:
        raise MergeError(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing: give all {n} shard outputs")
    ran = [(header, k) for _, _, header, (k, _) in shards]
    policy, policy_note = shards_choice(ran, n, "--unresolved", unresolved, "keep")

    meta = first_header.get("meta") or {}
    input_path = Path(meta.get("input") or "")
    fmt = meta.get("format")
    output_source(fmt, source)  # refuses a --source a Real-Data input would ignore
    source, source_note = shards_choice(ran, n, "--source", source, DEFAULT_SOURCE)
    _refuse_overwrite(Path(out), input_path, meta.get("captions"), [Path(p) for p, *_ in shards])
    if not input_path.is_file():
        raise MergeError(f"the shards' input {input_path} is not there any more (merge reads it for the record order)")
    if fingerprint_file(input_path) != first_fp.get("input"):
        raise MergeError(f"{input_path} changed since the shards ran: rerun them")
    captions = load_captions(meta["captions"]) if meta.get("captions") else None

    results = Results()  # small per task, with the shard that ran it: millions of tasks are held here
    summary = RunSummary()
    problems: dict[str, set[str]] = {}  # kind → the tasks (each counted once, under the first kind met)
    examples: list[str] = []

    def problem(kind: str, text: str, tid: str) -> None:
        if any(tid in tasks for tasks in problems.values()):
            return
        problems.setdefault(kind, set()).add(tid)
        if len(examples) < MAX_EXAMPLES:
            examples.append(text)

    tasks_of: dict[int, int] = {}  # shard → its tasks: its trace holds an entry for each
    for path, journal, _, (k, _) in sorted(shards, key=lambda s: s[3][0]):
        for tid, entry in iter_journal(journal):
            if tid in results:
                problem("doubled", f"task {tid} is in shard {results[tid]['shard']}/{n} and in shard {k}/{n} ({path})",
                        tid)
                continue
            results.add(tid, entry, shard=k)
            summary.add(entry)
            tasks_of[k] = tasks_of.get(k, 0) + 1
    seen = 0
    for item in iter_tasks(input_path, captions=captions, fmt=fmt):
        seen += 1
        k = shard_of(shard_key(item.task_id, item.image_path, fmt), n)
        got = results.get(item.task_id, {}).get("shard")
        if got is None:
            problem("missing", f"task {item.task_id} (shard {k}/{n}, {by_k[k][0]}) was not run", item.task_id)
        elif got != k:
            problem("misplaced", f"task {item.task_id} belongs to shard {k}/{n} but shard {got}/{n} ran it "
                    f"({by_k[got][0]})", item.task_id)
    if len(results) > seen:
        problems["unknown"] = {f"#{i}" for i in range(len(results) - seen)}
        examples.append(f"{len(results) - seen} result(s) are for tasks the input does not have")
    if problems:
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(problems.items(), key=lambda kv: -len(kv[1])))
        hints = [MERGE_HINTS[k] for k in MERGE_HINTS if k in problems]
        raise MergeError(f"cannot merge {n} shard(s): {counts} task(s); e.g. " + "; ".join(examples)
                         + f" ({'; '.join(hints)})")

    summary.assembly = assemble(fmt, input_path, results, out, policy=policy, source=source,
                                agent=meta.get("agent"), captions=captions)
    trace, trace_note = _merge_traces([(p, tasks_of.get(k, 0)) for p, _, _, (k, _) in sorted(shards, key=lambda s: s[3][0])],
                                      out)
    return MergeResult(Path(out), trace, summary, n, cast(Policy, policy), policy_note, source=source,
                       source_note=source_note if fmt != "records" else "", trace_note=trace_note)


# What to do about each kind of merge problem
MERGE_HINTS = {
    "missing": "an unfinished shard resumes when its command is run again (without --limit, if it had one)",
    "doubled": "a task in two shards' outputs: one of them was run with another --shard (or another input "
               "order); rerun that shard into a fresh --out",
    "misplaced": "a shard holds tasks of another: it was run with another --shard; rerun it into a fresh --out",
    "unknown": "a shard ran on another input: rerun it on this one",
}


def _refuse_overwrite(out: Path, input_path: Path, captions: str | None, shard_outs: list[Path]) -> None:
    """Refuse an ``out`` (or its trace) over what the merge reads: the input must stay as the shards
    saw it, and a shard's output, trace and journal are paid-for work that only a rerun would restore."""
    read = {input_path.resolve(): "the shards' input"}
    if captions:
        read[Path(captions).resolve()] = "the shards' captions"
    for p in shard_outs:
        for what, path in (("output", p), ("trace", trace_path_for(p)), ("journal", journal_path_for(p))):
            read.setdefault(path.resolve(), f"the {what} of shard {p}")
    for mine in (out, trace_path_for(out)):
        if mine.resolve() in read:
            raise ConfigError(f"--out {out} would overwrite {read[mine.resolve()]} ({mine}): give another --out")


class _TraceDamaged(Exception):
    """A shard's trace that is not whole: no merged trace is written (why: the message)."""


def _merge_traces(shards: list[tuple[Path, int]], out: Path) -> tuple[Path | None, str]:
    """The shards' traces one after the other under one header, and what to say of it; ``shards``: each
    shard's output and the tasks its journal holds. With a shard's trace missing, damaged (no trace
    header) or short of entries, there is none (a trace of the output trains the agent's successor: a
    partial one would train on part of it), and a trace an earlier merge left at the target is removed:
    it belongs to another output."""
    shard_outs = [p for p, _ in shards]
    traces = [trace_path_for(p) for p in shard_outs]
    target = trace_path_for(out)
    missing = [t for t in traces if not t.is_file()]
    why = f"{len(missing)} shard trace(s) missing, e.g. {missing[0]}" if missing else ""
    if not missing:
        try:
            with AtomicWriter(target) as w:
                for i, (t, (_, tasks)) in enumerate(zip(traces, shards, strict=True)):
                    lines = whole_lines(t)
                    first = next(lines, b"")
                    header = _trace_header(first) if first or tasks else {"trace": TRACE_VERSION}  # an empty shard
                    if header is None:
                        raise _TraceDamaged(f"the shard trace {t} is damaged (its first line is no trace header)")
                    if i == 0:
                        header.update(shard=None, merged_from=[os.fspath(p) for p in shard_outs])
                        w.write(orjson.dumps(header) + b"\n")
                    entries = 0
                    for line in lines:
                        w.write(line)
                        entries += 1
                    if entries < tasks:
                        raise _TraceDamaged(f"the shard trace {t} holds {entries} of its {tasks} task(s) (cut or "
                                            "damaged)")
            return target, ""
        except _TraceDamaged as e:
            why = str(e)
    stale = target.is_file()
    target.unlink(missing_ok=True)
    return None, (f"no trace written: {why}"
                  + (f"; the earlier {target} was removed (it was not this output's)" if stale else ""))


def _trace_header(line: bytes) -> dict[str, Any] | None:
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return header if isinstance(header, dict) and "trace" in header else None
