"""What a model run over a benchmark keeps as it goes, so a killed run resumes where it stopped.

Each process appends its images' prediction rows to a journal beside ``--out`` (``OUT.journal.jsonl``;
``OUT.journal.rankR.jsonl`` for process R of a sharded run), a few images per write and fsync. A rerun
with the same settings reads every journal there, whatever the number of processes that wrote them,
runs only the images none holds, and writes the predictions one uninterrupted run writes. The journals
are removed once the predictions file is written.

The settings are what changes the predictions (ground truth content, model, precision, inference
options, image root), not the batch size or the device: resuming at a smaller batch after running out
of GPU memory, or on other GPUs, keeps the finished images.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from reallod.errors import DataError, Interrupted
from reallod.eval.common import EvalImage, Predictions
from reallod.runs.journal import Journal, JournalMismatch, beside, iter_journal, lock_journal, read_header
from reallod.runs.settings_diff import diff_settings

FLUSH_EVERY_S = 2.0  # at most this much finished work is lost to a crash (Ctrl-C loses none)


def journal_files(out: Path) -> list[Path]:
    """Every journal beside ``out``, whichever process wrote it."""
    base = beside(out, ".journal").name
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if p.is_file() and (
        p.name == f"{base}.jsonl" or (p.name.startswith(f"{base}.rank") and p.name.endswith(".jsonl"))))


def own_journal(out: Path, rank: int, world_size: int) -> Path:
    return beside(out, ".journal.jsonl" if world_size == 1 else f".journal.rank{rank}.jsonl")


def remove_journals(out: Path) -> None:
    for p in journal_files(out):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def to_result(rows: Predictions) -> dict[str, Any]:
    """One image's rows as a journal result (its image id and part come back from the benchmark)."""
    return {"label": rows.label.tolist(), "score": rows.score.tolist(), "bbox": rows.bbox.tolist()}


def compact(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """A journal result as arrays: a resumed benchmark's millions of rows kept as numbers, not Python lists."""
    return {"label": np.asarray(result["label"], dtype=np.int64),
            "score": np.asarray(result["score"], dtype=np.float64),
            "bbox": np.asarray(result["bbox"], dtype=np.float64).reshape(-1, 4)}


def _finite(rows: dict[str, np.ndarray], path: Path, index: int) -> dict[str, np.ndarray]:
    """Journal rows whose scores and boxes are numbers (null is how a NaN of an earlier version was written)."""
    if not (np.isfinite(rows["score"]).all() and np.isfinite(rows["bbox"]).all()):
        raise DataError(f"image {index} (in the benchmark's order) holds a score or box that is not a finite "
                        "number, which no metric can rank: delete the journal to run the model again",
                        path=str(path))
    return rows


def from_result(image: EvalImage, result: dict[str, Any]) -> Predictions:
    n = len(result["score"])
    return Predictions(np.full(n, image.image_id), result["label"], result["score"], result["bbox"],
                       np.full(n, image.part))


def _usable(path: Path, fp: dict[str, Any]) -> bool:
    """Whether the journal holds images of these settings; one of other settings that holds none (left by
    a run stopped before its first image) is passed over, one that holds some is refused."""
    try:
        if path.stat().st_size == 0:  # a run stopped as it created it
            return False
        before = read_header(path).get("fingerprint")
        if before == fp:
            return True
        if next(iter_journal(path), None) is None:
            return False
    except FileNotFoundError:  # its own process started it afresh
        return False
    raise JournalMismatch(
        f"{path}: left by an interrupted run with other settings: {'; '.join(changes(before, fp))}; rerun with "
        "that run's settings to resume it, or delete the journal to start over")


# What each setting of the fingerprint is called on the command line (and which ones are hashes, not shown).
SETTING_NAMES = {
    "benchmark": "the benchmark", "annotations": "--annotations (its content)", "images": "--images",
    "skip_categories": "--skip-categories", "setting": "--inter", "subsets": "the subsets (--subset)",
    "model.model": "--model", "model.weights": "--weights", "model.dtype": "--dtype",
    "model.max_text_len": "--max-text-len", "model.tokenizer": "--tokenizer", "model.image_size": "--image-size",
    "model.stamp": "the model's weight files (rewritten since)", "inference.mode": "--mode",
    "inference.topk": "--topk", "inference.score_over": "--score-over", "max_per_image": "--max-per-image",
}
_UNSHOWN = frozenset({"annotations", "model.stamp"})


def changes(before: Any, now: dict[str, Any]) -> list[str]:
    """Each setting that differs, by its option name, with both values: ``--topk (was 100, now 50)``."""
    differ = sorted(diff_settings(before if isinstance(before, dict) else {}, now),
                    key=lambda c: (c.key not in SETTING_NAMES, c.key))
    if any(c.key in ("model.model", "model.weights") for c in differ):
        differ = [c for c in differ if c.key != "model.stamp"]  # other weights, of course
    out = []
    for key, was, new in differ:
        name = SETTING_NAMES.get(key, key)
        out.append(name if key in _UNSHOWN else f"{name} (was {was!r}, now {new!r})")
    return out


class PredictionJournal:
    """This process's journal, and the images earlier runs finished among those it is to run."""

    def __init__(self, out: Path, fp: dict[str, Any], rank: int = 0, world_size: int = 1,
                 mine: set[int] | None = None) -> None:
        out = Path(out)
        fp = orjson.loads(orjson.dumps(fp))  # as a journal's header reads back (tuples become lists)
        self.path = own_journal(out, rank, world_size)
        self._journal = _open_own(self.path, fp)
        try:
            self.done: dict[int, dict[str, np.ndarray]] = {}  # image index → rows, this process's images only
            for p in [p for p in journal_files(out) if p == self.path or _usable(p, fp)]:
                for tid, result in iter_journal(p):
                    i = int(tid)
                    if (mine is None or i in mine) and i not in self.done:
                        self.done[i] = _finite(compact(result), p, i)
        except BaseException:  # refused: the journal (and its lock) is not left open
            self._journal.close()
            raise
        self.kept = len(self.done)  # this process's images in the journals, this run's included

    def add(self, index: int, rows: Predictions) -> None:
        """Keep one finished image (written with the next flush, at most ``FLUSH_EVERY_S`` later, or by the
        flush an interrupt ends with). Counted first: an interrupt that lands while this very call writes
        (its fsync) must not leave the image on disk and out of the count."""
        self.kept += 1
        self._journal.append_soon(str(index), to_result(rows), within_s=FLUSH_EVERY_S)

    def flush(self) -> None:
        self._journal.flush_sync()

    def close(self) -> None:
        self._journal.close()


def _open_own(path: Path, fp: dict[str, Any]) -> Journal:
    """This process's journal, started afresh when it holds no images of these settings; locked before it
    is looked at, so a second run on the same ``--out`` is refused (:class:`JournalBusy`) before it
    deletes the journal of the run writing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_journal(path)
    try:
        if path.exists() and not _usable(path, fp):
            path.unlink()  # only its own process starts a journal afresh
    except BaseException:
        lock.release()
        raise
    return Journal.open(path, fp, keep=lambda result: None, lock=lock)  # cuts a torn last line


class EvalInterrupted(Interrupted):
    """Ctrl-C stopped a model run; the message says how many images are kept and how to go on."""

    @classmethod
    def of(cls, journal: PredictionJournal | None, total: int) -> EvalInterrupted:
        if journal is None:
            return cls("interrupted: the predictions were not kept (give --out to make a model run resumable)")
        return cls(f"interrupted: {journal.kept} of {total} images done, kept in {journal.path}; rerun the same "
                   "command to go on from there")
