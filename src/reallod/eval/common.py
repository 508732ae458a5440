"""Shared pieces of the benchmark evaluators: predictions as columns, images to prompt, results, checks.

Predictions are held as numpy columns (one row per box and label) rather than a list of dicts:
a benchmark run can hold tens of millions of boxes. Each benchmark converts them to and from its
own JSON result format.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from reallod.errors import DataError, json_kind
from reallod.model.token_prompt import sanitize, tokenizer_kept

BOX_DECIMALS = 2  # pixels: what is written to a predictions file
SCORE_DECIMALS = 6


@dataclass
class EvalImage:
    """One image to run the model on, with the texts to prompt and the id each text scores under."""

    image_id: int
    file_name: str
    texts: list[str]
    keys: list[int]  # description id (OmniLabel) or category id (D³, OVDEval), one per text
    width: int | None = None
    height: int | None = None
    part: int = 0  # which ground-truth file the image belongs to (OVDEval subsets)
    tag: str = ""  # that file's name, for pictures


@dataclass
class Predictions:
    """Boxes as columns: one row per (box, label) with its score; boxes xywh in image pixels."""

    image_id: np.ndarray  # (N,) int64
    label: np.ndarray  # (N,) int64: description id or category id
    score: np.ndarray  # (N,) float64
    bbox: np.ndarray  # (N, 4) float64, xywh
    part: np.ndarray | None = None  # (N,) int64, OVDEval subset index
    entry: np.ndarray | None = None  # (N,) int64: index of the JSON entry the row came from

    def __post_init__(self) -> None:
        self.image_id = np.asarray(self.image_id, dtype=np.int64).reshape(-1)
        self.label = np.asarray(self.label, dtype=np.int64).reshape(-1)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(-1, 4)
        n = len(self.image_id)
        if self.part is None:
            self.part = np.zeros(n, dtype=np.int64)
        self.part = np.asarray(self.part, dtype=np.int64).reshape(-1)
        if self.entry is None:
            self.entry = np.arange(n, dtype=np.int64)
        self.entry = np.asarray(self.entry, dtype=np.int64).reshape(-1)
        if not (len(self.label) == len(self.score) == len(self.bbox) == len(self.part) == len(self.entry) == n):
            raise ValueError("Predictions: columns of different lengths")

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def empty(cls) -> Predictions:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 4)))

    @classmethod
    def concat(cls, parts: list[Predictions]) -> Predictions:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("image_id", "label", "score", "bbox", "part")))

    def take(self, index: np.ndarray) -> Predictions:
        return Predictions(self.image_id[index], self.label[index], self.score[index], self.bbox[index],
                           self.part[index], self.entry[index])


@dataclass
class EvalResult:
    """What a benchmark scored: named metrics (None where undefined), per-part details, notes."""

    benchmark: str
    metrics: dict[str, float | None]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "metrics": self.metrics, "details": self.details, "notes": self.notes}


@contextmanager
def no_gc() -> Iterator[None]:
    """Cyclic garbage collection paused while bulk-building acyclic objects: with millions of prediction dicts
    alive, each full collection walks them all, and collections come every few hundred allocations."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def metric(value: float) -> float | None:
    """pycocotools' -1 ("no ground truth") becomes None; everything else a plain float."""
    return None if value is None or value == -1 else float(value)


JSON_SUFFIXES = (".json", ".json.gz")


def is_json_name(path: str | Path) -> bool:
    """Whether an output path names a JSON file (``.json``, or ``.json.gz`` written compressed) rather
    than a folder: the rule every ``--out`` follows."""
    return Path(path).name.lower().endswith(JSON_SUFFIXES)


def json_stem(path: str | Path) -> Path:
    """``NAME.json`` / ``NAME.json.gz`` → ``NAME`` (any other name as it is)."""
    p = Path(path)
    for suffix in (".json.gz", ".json"):
        if p.name.lower().endswith(suffix) and len(p.name) > len(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p


def read_json(path: str | Path, what: str) -> Any:
    """A whole JSON document; a missing or malformed file is a DataError naming it."""
    import orjson

    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found", path=str(p))
    if p.is_dir():
        raise DataError(f"{what}: expected a JSON file, got a folder", path=str(p))
    data = p.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, what, p)
    with no_gc():
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        import json  # also reads NaN / Infinity, so the entry holding one can be named

        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{what}: not valid JSON ({e})", path=str(p)) from e


def _gunzip(data: bytes, what: str, path: Path) -> bytes:
    """A gzip file's content; a truncated or corrupt one is a DataError naming it (click would read the
    EOFError of a truncated file as Ctrl-D and print only "Aborted.")."""
    import gzip
    import zlib

    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{what}: not a complete gzip file ({type(e).__name__}: {e}); copy or compress it again",
                        path=str(path)) from e


def xyxy_to_xywh(xyxy: np.ndarray) -> np.ndarray:
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def round_predictions(bbox_xywh: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rounded as written to the predictions file, so a run scores exactly what it saves."""
    return (np.round(np.asarray(bbox_xywh, dtype=np.float64), BOX_DECIMALS),
            np.round(np.asarray(scores, dtype=np.float64), SCORE_DECIMALS))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def is_finite(v: int | float) -> bool:
    """Not NaN or ±inf, nor an integer beyond a float's range (the JSON reader gives 1e400 written without a
    point as a Python int, which ``math.isfinite`` cannot convert)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def id_problem(v: Any) -> str | None:
    """What is wrong with ``v`` as an integer id, None when nothing is."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) > INT64_MAX:
        return f"id {v:.0f} does not fit in 64 bits"  # the JSON reader gives such integers as floats
    if not _is_int(v):
        return f"expected an integer id, got {v!r}"
    if not INT64_MIN <= v <= INT64_MAX:
        return f"id {v} does not fit in 64 bits"
    return None


def prompt_problem(text: str) -> str | None:
    """Why the model cannot be prompted with ``text`` (a description or label of a ground truth), None when it
    can: checked as the ground truth is read, not when the model reaches it mid-run."""
    if not sanitize(text):
        return f"{text!r} has no words once '.' and '?' are removed (the model splits phrases there)"
    if not tokenizer_kept(text):
        return (f"{text!r} has nothing the tokenizer keeps (it drops control, zero-width and format characters, "
                "U+FFFD and accents), so the model would get no tokens for it")
    return None


class EntryChecker:
    """Checks one JSON result entry's fields and raises a DataError naming the file, entry and field."""

    def __init__(self, path: str | None, list_name: str = "predictions") -> None:
        self.path = path
        self.list_name = list_name

    def fail(self, index: int, field_name: str, message: str, entry: Any = None) -> DataError:
        where = f"{self.list_name}[{index}]"
        if isinstance(entry, dict) and "image_id" in entry and field_name != "image_id":
            where += f" (image_id {entry['image_id']!r})"
        return DataError(message, path=self.path, field=f"{where}.{field_name}")

    def entry(self, index: int, entry: Any, keys: tuple[str, ...]) -> dict:
        if not isinstance(entry, dict):
            raise DataError(f"expected an object, got {json_kind(entry)}", path=self.path,
                            field=f"{self.list_name}[{index}]")
        for key in keys:
            if key not in entry:
                raise self.fail(index, key, "missing", entry)
        return entry

    def int_id(self, index: int, entry: dict, key: str) -> int:
        v = entry[key]
        problem = id_problem(v)
        if problem:
            raise self.fail(index, key, problem, entry)
        return v

    def score(self, index: int, entry: dict, key: str, value: Any) -> float:
        if not _is_number(value):
            raise self.fail(index, key, f"expected a number, got {value!r}", entry)
        if not is_finite(value):
            raise self.fail(index, key, f"score is {value!r}; scores must be finite numbers (any finite number "
                            "ranks: they need not lie in [0, 1])", entry)
        return float(value)

    def bbox(self, index: int, entry: dict, key: str = "bbox") -> list[float]:
        b = entry[key]
        if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_is_number(v) for v in b):
            raise self.fail(index, key, f"expected [x, y, width, height] (4 numbers), got {b!r}", entry)
        if not all(is_finite(v) for v in b):
            raise self.fail(index, key, f"box {b!r} has a value that is not finite", entry)
        if b[2] < 0 or b[3] < 0:
            raise self.fail(index, key, f"box {b!r} has a negative width or height (boxes are xywh)", entry)
        return b


class IdIndex:
    """Position of integer ids in a sorted set of known ids, -1 for unknown ones.

    A direct table when the ids are dense enough (one gather, no binary search), else a binary search.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.unique(np.asarray(ids, dtype=np.int64))
        self.table: np.ndarray | None = None
        if len(self.ids) and self.ids[0] >= 0 and self.ids[-1] < 4 * len(self.ids) + (1 << 20):
            self.table = np.full(int(self.ids[-1]) + 1, -1, dtype=np.int64)
            self.table[self.ids] = np.arange(len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def rank(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(values), -1, dtype=np.int64)
        if self.table is not None:
            inside = (values >= 0) & (values < len(self.table))
            return np.where(inside, self.table[np.where(inside, values, 0)], -1)
        pos = np.minimum(np.searchsorted(self.ids, values), len(self.ids) - 1)
        return np.where(self.ids[pos] == values, pos, -1)


def report_unknown(pred: Predictions, column: str, rank: np.ndarray, what: str, path: str | None,
                   list_name: str = "predictions", field_name: str | None = None) -> None:
    """A DataError naming the first prediction whose ``column`` value has no rank (-1), if any."""
    bad = rank < 0
    if bad.any():
        values = getattr(pred, column)
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what} {int(values[i])} is not in the ground truth "
                        f"({int(bad.sum())} prediction(s) like this)", path=path,
                        field=f"{list_name}[{int(pred.entry[i])}].{field_name or column}")


def check_known(pred: Predictions, column: str, known: np.ndarray, what: str, path: str | None,
                list_name: str = "predictions", field_name: str | None = None) -> None:
    """Every value of ``column`` must be in ``known``; otherwise name the first entry that is not."""
    report_unknown(pred, column, IdIndex(known).rank(getattr(pred, column)), what, path, list_name, field_name)


def coco_results(pred: Predictions) -> list[dict[str, Any]]:
    """Predictions → COCO result entries {image_id, category_id, bbox, score} (D³, OVDEval)."""
    with no_gc():
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(pred.image_id.tolist(), pred.label.tolist(), pred.bbox.tolist(),
                                      pred.score.tolist(), strict=True)]


def fast_columns(entries: list[Any], keys: tuple[str, ...]) -> dict[str, list[Any]] | None:
    """Each key's values as a list, or None when an entry is not a dict holding every key (slow path then)."""
    try:
        return {k: [e[k] for e in entries] for k in keys}
    except (KeyError, TypeError, IndexError):
        return None


def all_instances(values, types: set[type]) -> bool:
    """Every value is an instance of one of ``types`` (subclasses too, bool never): one pass, no per-item calls."""
    wanted = tuple(types)
    return all(issubclass(t, wanted) and not issubclass(t, bool) for t in set(map(type, values)))


def numeric_array(values: list[Any], kinds: str = "if") -> np.ndarray | None:
    """``values`` as an array when every one is a number of these kinds (i: integers, f: floats).

    None for anything else (a bool, which numpy would read as 1 or 0, a string, None, a nested or ragged
    value): the slow path then names the entry.
    """
    if not all_instances(values, {int} if kinds == "i" else {int, float}):
        return None
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.size == 0:
        return arr.astype(np.float64 if "f" in kinds else np.int64)
    return arr if arr.dtype.kind in kinds else None


def id_array(values: list[Any]) -> np.ndarray | None:
    """``values`` as int64 when every one is an integer id; None when any is a bool (numpy would read True
    as 1), a float, a string, or beyond 64 bits (the slow path then names it)."""
    return numeric_array(values, "i")


def bbox_array(boxes: list[Any]) -> np.ndarray | None:
    """(N, 4) float64 from lists of 4 numbers, or None when any box is not that (the slow path says which)."""
    if not (all_instances(boxes, {list, tuple}) and set(map(len, boxes)) <= {4}):
        return None
    arr = numeric_array(list(chain.from_iterable(boxes)))
    return None if arr is None else arr.astype(np.float64).reshape(-1, 4)


def boxes_and_scores_ok(bbox: np.ndarray, score: np.ndarray) -> bool:
    return bool(np.isfinite(bbox).all() and np.isfinite(score).all() and (bbox[:, 2:] >= 0).all())


def parse_coco_results(entries: Any, path: str | None, part: int = 0) -> Predictions:
    """COCO result entries (D³, OVDEval) → Predictions, each field checked (by column; per entry on failure)."""
    if not isinstance(entries, list):
        raise DataError(f"expected a JSON list of predictions, got {json_kind(entries)}", path=path)
    n = len(entries)
    cols = fast_columns(entries, ("image_id", "category_id", "bbox", "score"))
    if cols is not None:
        image_id, label = id_array(cols["image_id"]), id_array(cols["category_id"])
        score, bbox = numeric_array(cols["score"]), bbox_array(cols["bbox"])
        if image_id is not None and label is not None and score is not None and bbox is not None \
                and score.ndim == 1 and boxes_and_scores_ok(bbox, score.astype(np.float64)):
            return Predictions(image_id, label, score, bbox, np.full(n, part, dtype=np.int64))
    return _parse_coco_results_slowly(entries, path, part)


def _parse_coco_results_slowly(entries: list[Any], path: str | None, part: int) -> Predictions:
    check = EntryChecker(path)
    n = len(entries)
    image_id = np.empty(n, dtype=np.int64)
    label = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.float64)
    bbox = np.empty((n, 4), dtype=np.float64)
    keys = ("image_id", "category_id", "bbox", "score")
    for i, e in enumerate(entries):
        check.entry(i, e, keys)
        image_id[i] = check.int_id(i, e, "image_id")
        label[i] = check.int_id(i, e, "category_id")
        bbox[i] = check.bbox(i, e)
        score[i] = check.score(i, e, "score", e["score"])
    return Predictions(image_id, label, score, bbox, np.full(n, part, dtype=np.int64))


def write_json_list(path: str | Path, items) -> None:
    """A JSON list written atomically, one entry per line (streams; a big list never sits in one string)."""
    import orjson

    from reallod.data.io import AtomicWriter

    with AtomicWriter(path) as w:
        w.write(b"[")
        first = True
        for item in items:
            w.write((b"\n" if first else b",\n") + orjson.dumps(item))
            first = False
        w.write(b"\n]\n")


def read_coco_results(path: str | Path, part: int = 0) -> Predictions:
    """A file of COCO results ({image_id, category_id, bbox xywh, score}), as predictions of subset ``part``."""
    return parse_coco_results(read_json(path, "predictions"), str(path), part)


def write_coco_results(path: str | Path, pred: Predictions) -> None:
    """Predictions written as a COCO result list."""
    write_json_list(path, coco_results(pred))
