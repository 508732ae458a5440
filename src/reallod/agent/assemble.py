"""Results → Real-Data: re-aligned positives, the raw ones kept, provenance per expression.

Per positive expression, by its task's verdict:

- ``correct``: kept as it is; ``rewritten``: replaced by the rewrite;
- ``wrong`` / ``unresolved`` / ``failed``: the ``--unresolved`` policy decides: ``drop`` it, ``keep``
  it as it is, or move it to the pair's ``negative`` expressions;
- no result (beyond ``--limit``): kept as it is, provenance verdict ``not_run``.

The raw positives are kept as ``origin_positive_expressions`` (an existing one is never replaced: it
holds the oldest raw expressions), and ``provenance`` lists, parallel to ``positive_expressions``,
where each came from (task id, verdict, cycles). Every expression is counted under
``<verdict>:<action>``, and every expression, pair or record that does not reach the output is
counted too, so the summary accounts for all of them. :func:`realign_pair` is pure; the writers
stream records to an atomic output.

Memory stays small for inputs of millions of tasks: :class:`Results` keeps per task only what
assembly reads (a rewrite's expression; the rest shared), and a published task list is gathered by
image in a temporary SQLite file, not in memory.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import orjson

from reallod.agent.inputs import (
    InputFormat,
    TaskProblem,
    box_key,
    iter_raw_records,
    iter_tasks,
    record_task_id,
    record_tasks,
)
from reallod.agent.task import Task
from reallod.data.io import JsonlWriter
from reallod.data.records import canonical_pairs
from reallod.errors import ConfigError

Select = Callable[[str, str | None], bool]
"""(task id — or record index for Real-Data records —, image path) → whether this run owns it (a shard)."""

Policy = Literal["drop", "keep", "negative"]
POLICIES: tuple[str, ...] = ("drop", "keep", "negative")


def check_policy(unresolved: str) -> None:
    """Refuse an ``--unresolved`` that is none of :data:`POLICIES`."""
    if unresolved not in POLICIES:
        raise ConfigError(f"--unresolved {unresolved!r}: expected {', '.join(POLICIES[:-1])} or {POLICIES[-1]}")
Action = Literal["kept", "replaced", "dropped", "negative"]


def decide(verdict: str, policy: Policy) -> Action:
    """What happens to one positive expression with this verdict under this policy."""
    if verdict == "rewritten":
        return "replaced"
    if verdict in ("correct", "not_run"):
        return "kept"
    return {"drop": "dropped", "keep": "kept", "negative": "negative"}[policy]


class Results(dict[str, Mapping[str, Any]]):
    """Task id → what assembly reads of its result: verdict, cycles, error kind, and the expression
    of a rewrite (only a rewrite's is written). A run's end holds every task's entry at once, so it
    is kept small: the results without a rewrite share one dict per distinct (verdict, cycles,
    error kind, tags), and a rewrite keeps one of its own; the journal keeps everything else.
    The dicts are shared: read them, never change them."""

    __slots__ = ("_shared",)

    def __init__(self) -> None:
        super().__init__()
        self._shared: dict[tuple[Any, ...], Mapping[str, Any]] = {}

    def add(self, task_id: str, result: Mapping[str, Any], **tags: Any) -> None:
        """Keep one task's result (a journal entry); ``tags`` are kept with it (a merge: the shard)."""
        verdict = result.get("verdict")
        fields = {"verdict": verdict, "expression": result.get("expression") if verdict == "rewritten" else None,
                  "cycles": result.get("cycles"), "error_kind": result.get("error_kind"), **tags}
        if verdict == "rewritten":
            self[task_id] = fields
        else:
            self[task_id] = self._shared.setdefault(tuple(fields.values()), fields)


def realign_pair(pair: dict[str, Any], task_ids: list[str], results: Mapping[str, Mapping[str, Any]],
                 policy: Policy, counts: Counter[str], *, agent: str | None = None) -> dict[str, Any] | None:
    """The pair with its positives re-aligned, or None when no positive is left (counted)."""
    positives = list(pair.get("positive_expressions") or [])
    negatives = list(pair.get("negative_expressions") or [])
    kept: list[str] = []
    provenance: list[dict[str, Any]] = []
    to_negative: list[str] = []
    seen: set[str] = set()
    for raw, tid in zip(positives, task_ids, strict=True):
        result = results.get(tid)
        verdict = result["verdict"] if result else "not_run"
        action = decide(verdict, policy)
        counts[f"{verdict}:{action}"] += 1
        if action == "dropped":
            continue
        text = result["expression"] if action == "replaced" and result else raw
        if not isinstance(text, str) or not text.strip():
            counts["invalid expression:dropped"] += 1
            continue
        if action == "negative":
            to_negative.append(text)
            continue
        key = _fold(text)
        if key in seen:
            counts["duplicate positive:merged"] += 1
            continue
        seen.add(key)
        kept.append(text)
        provenance.append(_provenance(tid, verdict, result, raw if text != raw else None, agent))
    before = len(negatives)
    negatives = [n for n in negatives if not (isinstance(n, str) and _fold(n) in seen)]
    counts["negative equal to a positive:removed"] += before - len(negatives)
    present = seen | {_fold(n) for n in negatives if isinstance(n, str)}
    for text in to_negative:
        if _fold(text) not in present:
            present.add(_fold(text))
            negatives.append(text)
    if not kept:  # Real-Data has no pair without a positive: its negatives go with it, counted
        counts["pair without positives:dropped"] += 1
        counts["negative of a dropped pair:dropped"] += len(negatives)
        return None
    out = dict(pair)
    out["positive_expressions"] = kept
    out["negative_expressions"] = negatives
    out["origin_positive_expressions"] = pair.get("origin_positive_expressions") or [
        p for p in positives if isinstance(p, str) and p.strip()]  # an empty one says nothing and is invalid
    out["provenance"] = provenance
    return out


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _provenance(task_id: str, verdict: str, result: Mapping[str, Any] | None, raw: str | None,
                agent: str | None) -> dict[str, Any]:
    p: dict[str, Any] = {"task_id": task_id, "verdict": verdict}
    if result is not None:
        p["cycles"] = result.get("cycles", 0)
        if result.get("error_kind"):
            p["error_kind"] = result["error_kind"]
    if raw is not None:
        p["raw"] = raw
    if agent:
        p["agent"] = agent
    return p


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------


DEFAULT_SOURCE = "realigned"


def output_source(fmt: InputFormat, source: str | None) -> str:
    """The source the output pairs of a published task list go under. A Real-Data input keeps each pair
    in its own source, so a ``--source`` given with one would be ignored without a word: refused."""
    if source is not None and fmt == "records":
        raise ConfigError(f"--source {source}: names the source of a published task list's output pairs; a "
                          "Real-Data input keeps each pair in its own source and every source is re-aligned "
                          "(to re-align only some, select them first: reallod data filter IN OUT --source NAME)")
    return source or DEFAULT_SOURCE


def assemble(fmt: InputFormat, input_path: str | os.PathLike, results: Mapping[str, Mapping[str, Any]],
             out_path: str | os.PathLike, *, policy: Policy = "keep", source: str = DEFAULT_SOURCE,
             agent: str | None = None, captions: dict[str, str] | None = None,
             limit: int | None = None, select: Select | None = None) -> Counter[str]:
    """Write the Real-Data output (atomically) for the results of a run over ``input_path``.

    ``select`` keeps only a shard's part of the input (``--limit`` then counts within it)."""
    counts: Counter[str] = Counter()
    if fmt == "records":
        _assemble_records(input_path, results, out_path, policy, counts, agent, captions, limit, select)
    else:
        _assemble_tasks(input_path, results, out_path, policy, source, counts, agent, captions, limit, select)
    return counts


def _assemble_records(input_path: str | os.PathLike, results: Mapping[str, Mapping[str, Any]],
                      out_path: str | os.PathLike, policy: Policy, counts: Counter[str], agent: str | None,
                      captions: dict[str, str] | None, limit: int | None, select: Select | None = None) -> None:
    """Real-Data in, Real-Data out, record for record (records past ``--limit`` are not written)."""
    tasks_before = 0
    with JsonlWriter(out_path) as writer:
        for ridx, (_, obj) in enumerate(iter_raw_records(input_path)):
            if select is not None and not select(str(ridx), obj.get("filename") if isinstance(obj, dict) else None):
                continue
            items = record_tasks(obj, ridx, captions=captions)
            if limit is not None and tasks_before >= limit:
                counts["record past --limit:not written"] += 1
                continue
            tasks_before += len(items)
            if items and isinstance(items[0], TaskProblem) and items[0].kind == "bad_record":
                counts["bad record:not written"] += 1
                continue
            pairs_out: dict[str, Any] = {}
            for src, pairs in canonical_pairs(obj["pairs"]).items():
                if not isinstance(pairs, list):
                    pairs_out[src] = pairs  # a broken source is kept as it was (its problem is in the summary)
                    continue
                kept = []
                for i, pair in enumerate(pairs):
                    positives = pair.get("positive_expressions") if isinstance(pair, dict) else None
                    if not isinstance(positives, list):
                        kept.append(pair)
                        continue
                    ids = [record_task_id(ridx, src, i, k) for k in range(len(positives))]
                    new = realign_pair(pair, ids, results, policy, counts, agent=agent)
                    if new is not None:
                        kept.append(new)
                if kept:
                    pairs_out[src] = kept
            writer.write_record({**obj, "pairs": pairs_out})
            counts["record:written"] += 1


def _assemble_tasks(input_path: str | os.PathLike, results: Mapping[str, Mapping[str, Any]],
                    out_path: str | os.PathLike, policy: Policy, source: str, counts: Counter[str],
                    agent: str | None, captions: dict[str, str] | None, limit: int | None,
                    select: Select | None = None) -> None:
    """Published task list in, Real-Data out: one record per image, one pair per object (its tasks'
    expressions together) under ``source``."""
    items = iter_tasks(input_path, captions=captions, fmt="tasks")
    if select is not None:
        items = (item for item in items if select(item.task_id, item.image_path))
    with TasksByImage() as by_image:
        for n, item in enumerate(items):
            if limit is not None and n >= limit:
                counts["task past --limit:not written"] += 1
                continue
            if not isinstance(item, Task):
                counts["input problem:not written"] += 1  # no valid image/box/category to write it under
                continue
            by_image.add(item)
        with JsonlWriter(out_path) as writer:
            for record, tasks in by_image.images():
                groups: dict[tuple, tuple[dict[str, Any], list[str]]] = {}
                for task_id, raw, category, bboxes in tasks:
                    pair, ids = groups.setdefault((category, box_key(bboxes)), (
                        {"bboxes": bboxes, "category": category, "relation": "multi" if len(bboxes) > 1 else "single",
                         "positive_expressions": [], "negative_expressions": []}, []))
                    pair["positive_expressions"].append(raw)
                    ids.append(task_id)
                pairs = [p for pair, ids in groups.values()
                         if (p := realign_pair(pair, ids, results, policy, counts, agent=agent)) is not None]
                writer.write_record({**record, "pairs": {source: pairs} if pairs else {}})
                counts["record:written"] += 1


class TasksByImage:
    """The tasks of a published list gathered by image: images in the order they first appear (the
    first task of an image sets the record's size and caption), each image's tasks in input order.

    An image's tasks may lie anywhere in the input, so all of them are held until the last one is
    read: in a temporary SQLite database (in ``$SQLITE_TMPDIR`` or ``$TMPDIR``, else ``/var/tmp``;
    deleted when closed, or by the OS when the process dies), not in memory, where a list of millions
    of tasks took about 1 KB each. Memory holds its page cache and the last images' places."""

    RECENT = 4096  # images whose place is remembered: a list's tasks of one image usually lie together
    BATCH = 4096  # tasks inserted at once

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)  # "": private, on disk, deleted on close
        for pragma in ("temp_store = FILE", "cache_size = -16384", "journal_mode = OFF", "synchronous = OFF"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE image (place INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, record BLOB)")
        self._db.execute("CREATE TABLE task (place INTEGER, seq INTEGER, task TEXT, PRIMARY KEY (place, seq))"
                         " WITHOUT ROWID")  # read back in key order: image by image, in input order
        self._db.execute("BEGIN")
        self._recent: dict[str, int] = {}
        self._rows: list[tuple[int, int, str]] = []
        self._seq = 0

    def add(self, task: Task) -> None:
        place = self._recent.get(task.image_path)
        if place is None:
            place = self._place(task)
        task_json = orjson.dumps((task.task_id, task.raw_expression, task.chosen.category, task.chosen.bboxes))
        self._rows.append((place, self._seq, task_json.decode()))  # orjson's bytes hold 4 KB each: a str, its size
        self._seq += 1
        if len(self._rows) >= self.BATCH:
            self._flush()

    def _place(self, task: Task) -> int:
        """The image's place in the output, given it at its first task."""
        row = self._db.execute("SELECT place FROM image WHERE path = ?", (task.image_path,)).fetchone()
        if row is not None:
            place = row[0]
        else:
            record = {"filename": task.image_path, "height": task.height, "width": task.width, "caption": task.caption}
            place = self._db.execute("INSERT INTO image (path, record) VALUES (?, ?)",
                                     (task.image_path, orjson.dumps(record))).lastrowid
        if len(self._recent) >= self.RECENT:
            self._recent.clear()
        self._recent[task.image_path] = place
        return place

    def _flush(self) -> None:
        self._db.executemany("INSERT INTO task VALUES (?, ?, ?)", self._rows)
        self._rows = []

    def images(self) -> Iterator[tuple[dict[str, Any], list[list[Any]]]]:
        """(record without pairs, its tasks as [task id, raw expression, category, boxes]) per image."""
        self._flush()
        self._db.execute("COMMIT")
        rows = self._db.execute("SELECT image.record, task.place, task.task FROM task JOIN image USING (place) "
                                "ORDER BY task.place, task.seq")
        record, place, tasks = None, None, []
        for blob, at, task in rows:
            if at != place:
                if record is not None:
                    yield record, tasks
                record, place, tasks = orjson.loads(blob), at, []
            tasks.append(orjson.loads(task))
        if record is not None:
            yield record, tasks

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TasksByImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
