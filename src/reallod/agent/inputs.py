"""Task readers: the published task list and Real-Data records both become :class:`Task` objects.

Two input formats, recognised by their content (JSON or JSONL, gzip or not):

- the published workflow's task list (a JSON list, or one task per line): pixel xywh boxes,
  ``raw_expression``, ``object_locations`` with a ``chosen_object`` and ``other_objects``,
  ``global_caption``;
- Real-Data records: every positive expression of every pair is one task; the pair's box(es) are the
  chosen object, the record's other pairs (de-duplicated across sources by their boxes) are the
  other objects.

A task that cannot be run (empty expression, box outside the image, no category, no caption...) is
not guessed at and not dropped: the readers yield a :class:`TaskProblem` in its place, which the run
reports as a failed task with the reason. Task ids are derived from the input position, so the same
input always gives the same ids (resume and sharding depend on it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from reallod.agent.task import ObjectRef, PairRef, Task, TaskResult
from reallod.data.io import iter_json, iter_lines, json_problem, one_document, read_whole
from reallod.data.records import canonical_pairs
from reallod.data.schema import PROBLEM_KINDS, Problem, check_box, check_record
from reallod.errors import DataError

InputFormat = Literal["records", "tasks"]

# Kinds of per-task problems, beyond the Real-Data schema's own (PROBLEM_KINDS).
TASK_PROBLEM_KINDS = {
    **PROBLEM_KINDS,
    "missing_caption": "no caption for the image (record, task or --captions file)",
    "unknown_category": "category missing, empty or not a name",
    "bad_task": "task is not a usable task object",
    "bad_record": "record cannot be read, so none of its expressions can be re-aligned",
    "unsafe_path": "image path is absolute or leaves the image root",
    "backend_error": "the model's server refused or kept failing the request (after the retries)",
    "unusable_answer": "the model gave no usable answer (after the re-asks)",
    "image_error": "the image could not be read or does not match the task",
    "agent_error": "the agent could not finish the task (an internal error)",
}

OUTSIDE_TOLERANCE_PX = 1.0
"""xywh → xyxy rounding may put a border box a hair past the image: clamp up to this, refuse beyond."""


@dataclass(slots=True)
class TaskProblem:
    """A task that cannot be run, with where and why; it is reported, never silently dropped."""

    task_id: str
    kind: str
    message: str
    path: str | None = None
    line: int | None = None
    field: str | None = None
    image_path: str | None = None
    raw_expression: str = ""
    origin: PairRef | None = None

    def describe(self) -> str:
        return str(DataError(self.message, path=self.path, line=self.line, field=self.field))

    def as_result(self) -> TaskResult:
        """The failed result this problem stands for in traces, summaries and outputs."""
        return TaskResult(task_id=self.task_id, verdict="failed", raw_expression=self.raw_expression,
                          expression=self.raw_expression, cycles=0, error=self.describe(),
                          error_kind=self.kind)


TaskItem = Task | TaskProblem


# ---------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------


def load_captions(path: str | os.PathLike) -> dict[str, str]:
    """Captions keyed by image filename: a JSON object, or JSONL lines of ``{"filename", "caption"}``
    (``image_path`` is accepted for ``filename``) or one-key objects ``{"a.jpg": "caption"}``."""
    path = str(path)
    obj = _single_json(path) if _first_byte(path) == b"{" else None
    # a map of image names; one with a "filename" key is a JSONL line (maybe with a misspelt "caption")
    if isinstance(obj, dict) and not {"filename", "image_path"} & set(obj):
        bad = [k for k, v in obj.items() if not isinstance(v, str)]
        if bad:
            raise DataError("caption must be a string", path=path, field=bad[0])
        return dict(obj)
    out: dict[str, str] = {}
    for lineno, obj in iter_json(path):
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object", path=path, line=lineno)
        if "caption" in obj:
            name = obj.get("filename", obj.get("image_path"))
            if not isinstance(name, str) or not isinstance(obj["caption"], str):
                raise DataError("expected string 'filename' (or 'image_path') and 'caption'", path=path,
                                line=lineno)
            out[name] = obj["caption"]
        elif len(obj) == 1 and isinstance(next(iter(obj.values())), str):
            out.update(obj)
        else:
            raise DataError("expected {\"filename\": ..., \"caption\": ...} or {\"<filename>\": \"<caption>\"}",
                            path=path, line=lineno)
    return out


# ---------------------------------------------------------------------------------------------
# format detection and the two readers
# ---------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> InputFormat:
    """``records`` for Real-Data, ``tasks`` for the published task list (JSON list or JSONL)."""
    path = str(path)
    first = _first_byte(path)
    if first == b"[":
        return "tasks"
    if not first:
        raise DataError("file holds no tasks or records", path=path)
    bad: tuple[int, str] | None = None  # the first line that does not parse, and why
    for n, (lineno, line) in enumerate(iter_lines(path)):  # the first line that parses decides; bad lines
        try:  # are per-task errors, unless the first one says the file is one JSON document (a COCO json)
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            if n == 0 and (whole := one_document(line)):
                raise DataError(whole, path=path, line=lineno) from None
            if n == 0 and first != b"{":  # not UTF-8, or not JSON at all: say how
                raise DataError("expected a JSON list of tasks or JSONL (tasks or Real-Data records): "
                                + json_problem(line, e), path=path, line=lineno) from None
            bad = bad or (lineno, json_problem(line, e))
            continue
        if isinstance(obj, dict) and "pairs" in obj:
            return "records"
        if isinstance(obj, dict) and ("raw_expression" in obj or "object_locations" in obj):
            return "tasks"
        if n == 0 and (whole := one_document(line)):
            raise DataError(whole, path=path, line=lineno)
        which = "first line" if n == 0 else "first line that is JSON"
        raise DataError(f"{which} is neither a Real-Data record (no 'pairs') nor a task "
                        "(no 'raw_expression'/'object_locations')", path=path, line=lineno)
    raise DataError("no line is valid JSON" + (f" (line {bad[0]}: {bad[1]})" if bad else ""), path=path)


def iter_tasks(path: str | os.PathLike, *, captions: dict[str, str] | None = None,
               fmt: InputFormat | None = None) -> Iterator[TaskItem]:
    """Every task of an input file, in input order, as a :class:`Task` or a :class:`TaskProblem`."""
    fmt = fmt or detect_format(path)
    if fmt == "records":
        for ridx, (lineno, obj, error) in enumerate(_iter_parsed_lines(path)):
            yield from record_tasks(obj, ridx, captions=captions, path=str(path), line=lineno, json_error=error)
    else:
        for index, line, item, error in _iter_task_entries(path):
            yield published_task(item, index, captions=captions, path=str(path), line=line, json_error=error)


def iter_raw_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or None when the line is not JSON) — one entry per non-blank line,
    so a record's index, and with it its task ids, never shifts because of a bad line before it."""
    for lineno, obj, _ in _iter_parsed_lines(path):
        yield lineno, obj


def _iter_parsed_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """:func:`iter_raw_records` with, for a line that is not JSON, the parser's reason (as the data
    readers give it: ``invalid JSON: unexpected character, expected a JSON value: line 1 column 40 (char
    39)``), else None."""
    for lineno, line in iter_lines(path):
        try:
            yield lineno, orjson.loads(line), None
        except orjson.JSONDecodeError as e:
            yield lineno, None, json_problem(line, e)


def _iter_task_items(path: str | os.PathLike) -> Iterator[tuple[int, int | None, Any]]:
    """(index, line or None, item) of a JSON list or JSONL task file."""
    for index, line, item, _ in _iter_task_entries(path):
        yield index, line, item


def _iter_task_entries(path: str | os.PathLike) -> Iterator[tuple[int, int | None, Any, str | None]]:
    """(index, line or None, item, why the line is not JSON or None) of a JSON list or JSONL task file."""
    path = str(path)
    if _first_byte(path) == b"[":
        for i, item in enumerate(_task_list(path)):
            yield i, None, item, None
    else:
        for i, (lineno, item, error) in enumerate(_iter_parsed_lines(path)):
            yield i, lineno, item, error


# ---------------------------------------------------------------------------------------------
# Real-Data records → tasks
# ---------------------------------------------------------------------------------------------


def record_task_id(record_index: int, source: str, pair_index: int, expression_index: int) -> str:
    return f"{record_index}/{source}/{pair_index}/{expression_index}"


def record_tasks(obj: Any, record_index: int, *, captions: dict[str, str] | None = None,
                 path: str | None = None, line: int | None = None, json_error: str | None = None) -> list[TaskItem]:
    """The tasks of one parsed record line (``obj`` None: the line was not JSON, ``json_error`` says why)."""
    if obj is None:
        return [TaskProblem(f"{record_index}", "bad_record", json_error or "invalid JSON", path=path, line=line)]
    problems = check_record(obj)
    fatal = [p for p in problems if not p.field.startswith("pairs.") or p.kind == "not_object"]
    if fatal:
        p = fatal[0]
        return [TaskProblem(f"{record_index}", "bad_record", f"{p.message} ({p.kind})", path=path, line=line,
                            field=p.field or None)]
    filename, height, width = obj["filename"], obj["height"], obj["width"]
    caption = (captions or {}).get(filename) or obj.get("caption") or None
    pairs = canonical_pairs(obj["pairs"])

    objects: list[tuple[str, int, ObjectRef | None]] = []
    for source, items in pairs.items():
        if not isinstance(items, list):
            continue  # reported below
        for i, pair in enumerate(items):
            if not isinstance(pair, dict):
                continue  # reported below
            box_ok = not any(p.field.startswith(f"{_pair_field(source, i)}.bboxes") for p in problems)
            ref = None
            if box_ok:
                boxes = pair["bboxes"] if isinstance(pair["bboxes"][0], list) else [pair["bboxes"]]
                ref = ObjectRef(category=str(pair.get("category") or ""), bboxes=[[float(v) for v in b] for b in boxes],
                                id=f"{source}[{i}]")
            objects.append((source, i, ref))

    out: list[TaskItem] = []
    for p in problems:  # sources and pairs too broken to hold tasks: one problem each
        if p.kind == "wrong_type" and (re.fullmatch(r"pairs\.[^\[]*(\[\d+\])?", p.field)
                                       or p.field.endswith(".positive_expressions")):
            out.append(TaskProblem(f"{record_index}/{p.field.removeprefix('pairs.')}", "wrong_type", p.message,
                                   path=path, line=line, field=p.field, image_path=filename))
    for source, i, ref in objects:
        pair = pairs[source][i]
        positives = pair.get("positive_expressions")
        if not isinstance(positives, list):
            continue  # reported above
        where = _pair_field(source, i)
        pair_problems = [p for p in problems if _belongs_to(p.field, where)
                         and not _is_expression_list_field(p.field, where)]
        for k, expr in enumerate(positives):
            tid = record_task_id(record_index, source, i, k)
            origin = PairRef(record_index, source, i, k)
            raw = expr if isinstance(expr, str) else ""
            expr_problems = [p for p in problems if _belongs_to(p.field, f"{where}.positive_expressions[{k}]")]
            problem = next(iter(pair_problems + expr_problems), None)
            if problem is not None:
                out.append(TaskProblem(tid, _task_kind(problem), problem.message, path=path, line=line,
                                       field=problem.field, image_path=filename, raw_expression=raw,
                                       origin=origin))
            elif not caption or not str(caption).strip():
                out.append(TaskProblem(tid, "missing_caption",
                                       f"no caption for {filename!r}: give the record a 'caption' or pass --captions",
                                       path=path, line=line, field="caption", image_path=filename,
                                       raw_expression=raw, origin=origin))
            else:
                assert ref is not None  # a pair with box problems has a problem above
                out.append(Task(task_id=tid, image_path=filename, height=height, width=width,
                                raw_expression=raw, chosen=ref, others=_others(ref, objects),
                                caption=caption, origin=origin))
    return out


def _pair_field(source: str, index: int) -> str:
    return f"pairs.{source}[{index}]"


def _belongs_to(field: str, prefix: str) -> bool:
    return field == prefix or field.startswith(prefix + ".") or field.startswith(prefix + "[")


def _is_expression_list_field(field: str, where: str) -> bool:
    """Problems of single positives, of negatives and of origins do not stop the pair's other tasks."""
    return any(_belongs_to(field, f"{where}.{key}") for key in
               ("positive_expressions", "negative_expressions", "origin_positive_expressions"))


def _task_kind(problem: Problem) -> str:
    return "unknown_category" if problem.kind == "empty_category" or problem.field.endswith(".category") \
        else problem.kind


def box_key(boxes: list[list[float]]) -> tuple:
    """Identity of an object by its boxes (order-free, rounded), to merge one object seen twice."""
    return tuple(sorted(tuple(round(v, 2) for v in b) for b in boxes))


def _others(chosen: ObjectRef, objects: list[tuple[str, int, ObjectRef | None]]) -> list[ObjectRef]:
    """The record's other objects: each box set once, whatever source it came from."""
    seen = {box_key(chosen.bboxes)}
    out = []
    for _, _, ref in objects:
        if ref is None:
            continue
        key = box_key(ref.bboxes)
        if key not in seen:
            seen.add(key)
            out.append(ref)
    return out


# ---------------------------------------------------------------------------------------------
# published task list → tasks
# ---------------------------------------------------------------------------------------------

def published_task(item: Any, index: int, *, captions: dict[str, str] | None = None,
                   path: str | None = None, line: int | None = None, json_error: str | None = None) -> TaskItem:
    """One item of the published task list (pixel xywh boxes) as a :class:`Task` (xyxy boxes); a line that
    was not JSON comes as None with the parser's reason, ``json_error``."""
    tid = str(index)
    at = "" if line is not None else f"[{index}]."  # a JSON list has no lines: name the item

    def problem(kind: str, message: str, field: str | None = None, **kw: Any) -> TaskProblem:
        return TaskProblem(tid, kind, message, path=path, line=line,
                           field=f"{at}{field}" if field else (at.rstrip(".") or None), **kw)

    if not isinstance(item, dict):
        return problem("bad_task", (json_error or "invalid JSON") if item is None else "expected a task object")
    image_path, height, width = item.get("image_path"), item.get("height"), item.get("width")
    raw = item.get("raw_expression")
    raw_str = raw if isinstance(raw, str) else ""
    if not isinstance(image_path, str) or not image_path.strip():
        return problem("missing_field", "expected a non-empty string", "image_path", raw_expression=raw_str)
    ctx = {"image_path": image_path, "raw_expression": raw_str}
    for key, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            return problem("bad_size", f"expected a positive integer, got {v!r}", key, **ctx)
    locations = item.get("object_locations")
    chosen = locations.get("chosen_object") if isinstance(locations, dict) else None
    if not isinstance(chosen, dict):
        return problem("missing_field", "missing", "object_locations.chosen_object", **ctx)
    category = chosen.get("category")
    if not isinstance(category, str) or not category.strip():
        return problem("unknown_category", f"category missing or not a name: {category!r}",
                       "object_locations.chosen_object.category", **ctx)
    if not isinstance(raw, str) or not raw.strip():
        return problem("empty_expression", f"empty or missing expression {raw!r}", "raw_expression", **ctx)
    boxes, box_problem = _published_boxes(chosen.get("bbox"), width, height)
    if box_problem is not None:
        return problem(box_problem.kind, box_problem.message, "object_locations.chosen_object.bbox", **ctx)
    caption = (captions or {}).get(image_path) or item.get("global_caption") or None
    if not isinstance(caption, str) or not caption.strip():
        return problem("missing_caption", f"no caption for {image_path!r}: give 'global_caption' or pass --captions",
                       "global_caption", **ctx)
    chosen_ref = ObjectRef(category=category, bboxes=boxes, id=chosen.get("id"))
    others: list[ObjectRef] = []
    seen = {box_key(boxes)}
    for other in locations.get("other_objects") or []:
        if not isinstance(other, dict):
            continue
        oboxes, oproblem = _published_boxes(other.get("bbox"), width, height)
        ocat = other.get("category")
        okey = box_key(oboxes)
        if oproblem is not None or not isinstance(ocat, str) or okey in seen:
            continue  # context only: a bad or repeated other object is left out, the task still runs
        seen.add(okey)
        others.append(ObjectRef(category=ocat, bboxes=oboxes, id=other.get("id")))
    return Task(task_id=tid, image_path=image_path, height=height, width=width, raw_expression=raw,
                chosen=chosen_ref, others=others, caption=caption)


def xywh_to_xyxy(box: list[float]) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def _published_boxes(bbox: Any, width: int, height: int) -> tuple[list[list[float]], Problem | None]:
    """xywh box (or list of boxes for a group) → xyxy, clamping sub-pixel overshoot; schema-checked."""
    if isinstance(bbox, list) and bbox and all(isinstance(b, list) for b in bbox):
        raw_boxes = bbox
    else:
        raw_boxes = [bbox]
    boxes: list[list[float]] = []
    for b in raw_boxes:
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                           for v in b)):
            return [], Problem("bad_box", "bbox", f"expected [x, y, w, h] numbers, got {b!r}")
        boxes.append(_clamp_overshoot(xywh_to_xyxy(b), width, height))
    out: list[Problem] = []
    for j, box in enumerate(boxes):
        check_box(box, f"bbox[{j}]", height, width, out)
    return boxes, (out[0] if out else None)


def _clamp_overshoot(box: list[float], width: int, height: int) -> list[float]:
    x1, y1, x2, y2 = box
    t = OUTSIDE_TOLERANCE_PX

    def clamp(v: float, hi: int) -> float:
        return 0.0 if -t <= v < 0 else float(hi) if hi < v <= hi + t else v

    return [clamp(x1, width), clamp(y1, height), clamp(x2, width), clamp(y2, height)]


# ---------------------------------------------------------------------------------------------
# small file helpers (gzip by magic bytes, like data.io)
# ---------------------------------------------------------------------------------------------


def _first_byte(path: str) -> bytes:
    """The first non-whitespace byte of the (decompressed) content, or b"" for an empty file."""
    for _, line in iter_lines(path):
        return line.lstrip()[:1]
    return b""


def _task_list(path: str) -> list[Any]:
    """The items of a JSON-list task file: parsed whole, on each pass a run makes over its tasks (JSONL is
    streamed; docs/agent-at-scale.md tells to convert a large list)."""
    try:
        return orjson.loads(read_whole(path))
    except orjson.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e}", path=path) from None


def _single_json(path: str) -> Any:
    """The file's content when it is one JSON value (a captions object), None when it is JSONL."""
    try:
        return orjson.loads(read_whole(path))
    except orjson.JSONDecodeError:
        return None


def shard_key(task_id: str, image_path: str | None, fmt: str) -> str:
    """What decides a task's shard: its record for Real-Data input (so a record is never split
    between shards and each shard writes whole records), its image for a published task list (so
    the tasks of an image, which share prompt prefixes and become one output record, stay together)."""
    if fmt == "records":
        return task_id.split("/", 1)[0]
    return f"image:{image_path}" if image_path else f"task:{task_id}"
