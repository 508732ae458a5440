"""What a model run over a benchmark keeps as it goes, so a killed run resumes where it stopped.

Each process appends its images' prediction rows to a journal beside ``--out`` (``OUT.journal.jsonl``;
``OUT.journal.rankR.jsonl`` for process R of a sharded run), a few images per write and fsync. A rerun
with the same settings reads every journal there, whatever the number of processes that wrote them,
runs only the images none holds, and writes the predictions one uninterrupted run writes. The journals
are removed once the predictions file is written.

The settings are what changes the predictions (ground truth content, model and the settings files it
reads, precision, inference options, image root), not the batch size or the device: resuming at a smaller
batch after running out of GPU memory, or on other GPUs, keeps the finished images. Each image's entry
holds the image file's size and time as read, so an image replaced since is predicted again; a line that
is no entry (torn by a crash, or edited) is passed over, and its image predicted again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from reallod.errors import DataError, Interrupted
from reallod.eval.common import EvalImage, Predictions
from reallod.runs.journal import (
    Journal,
    JournalBusy,
    JournalLock,
    JournalMismatch,
    beside,
    lock_journal,
    read_header,
)
from reallod.runs.settings_diff import diff_settings

FLUSH_EVERY_S = 2.0  # at most this much finished work is lost to a crash (Ctrl-C loses none)
LAYOUT = 2  # of the fingerprint and entries: 2 has the model's settings files and each image's stamp
Stamp = Callable[[int], "list[int] | None"]  # image index → its file's size and time now (None: not there)


def journal_files(out: Path, suffix: str = ".jsonl") -> list[Path]:
    """Every journal beside ``out``, whichever process wrote it (with ``suffix`` ``.jsonl.lock``: their lock
    files, :func:`reallod.runs.journal.lock_path_for`)."""
    base = beside(out, ".journal").name
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if p.is_file() and (
        p.name == f"{base}{suffix}" or (p.name.startswith(f"{base}.rank") and p.name.endswith(suffix))))


def own_journal(out: Path, rank: int, world_size: int) -> Path:
    return beside(out, ".journal.jsonl" if world_size == 1 else f".journal.rank{rank}.jsonl")


def remove_journals(out: Path) -> None:
    """The journals beside ``out``, and the lock files that killed runs left with them (a lock a process
    still holds stays: that process removes it as it ends)."""
    for p in journal_files(out):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    for lock in journal_files(out, ".jsonl.lock"):
        with contextlib.suppress(JournalBusy, FileNotFoundError):
            lock_journal(lock.with_name(lock.name.removesuffix(".lock"))).release()  # taken, so no one holds it


def to_result(rows: Predictions, source: list[int] | None = None) -> dict[str, Any]:
    """One image's rows as a journal result (its image id and part come back from the benchmark), with the
    image file's size and time as read (``source``)."""
    return {"label": rows.label.tolist(), "score": rows.score.tolist(), "bbox": rows.bbox.tolist(),
            "source": source}


def compact(result: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A journal result as arrays (a resumed benchmark's millions of rows kept as numbers, not Python lists),
    or None when its fields are not rows as written (edited, or damaged): integer labels, one number per
    label for the scores (null: how an earlier version wrote a NaN, refused by :func:`_finite`), four per
    label for the boxes."""
    try:
        label, score, bbox = (np.asarray(result[key]) for key in ("label", "score", "bbox"))
        n = len(label) if label.ndim == 1 else -1
        if not (label.dtype.kind in "iu" or (n == 0 and label.dtype.kind == "f")) or score.shape != (n,) \
                or score.dtype.kind not in "iufO" or bbox.dtype.kind not in "iufO" \
                or bbox.shape != ((n, 4) if n else bbox.shape) or bbox.size != 4 * n:
            return None
        return {"label": label.astype(np.int64, copy=False), "score": score.astype(np.float64, copy=False),
                "bbox": bbox.astype(np.float64, copy=False).reshape(-1, 4)}
    except (KeyError, ValueError, TypeError):  # a field missing; a list of lists of other lengths; "x" or {}
        return None


def _read(path: Path) -> Iterator[tuple[int, dict[str, Any]] | None]:
    """Each complete line after the header as (image index, result), or None for a line that is no entry
    (not JSON, a task id that is no image index, a result that is no object). A torn last line (a crash in
    the middle of a write) ends it."""
    with open(path, "rb") as f:
        f.readline()  # the header (checked by read_header)
        for line in f:
            if not line.endswith(b"\n"):
                return
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield None
                continue
            tid, result = (obj.get("task_id"), obj.get("result")) if isinstance(obj, dict) else (None, None)
            ok = isinstance(tid, str) and tid.isascii() and tid.isdigit() and isinstance(result, dict)
            yield (int(tid), result) if ok else None


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
        if not any(entry is not None for entry in _read(path)):
            return False
    except FileNotFoundError:  # its own process started it afresh
        return False
    if isinstance(before, dict) and before.get("layout") != fp.get("layout"):
        raise JournalMismatch(f"{path}: left by an interrupted run of an older version of reallod, whose journal "
                              "this one cannot resume: delete the journal to start over")
    raise JournalMismatch(
        f"{path}: left by an interrupted run with other settings: {'; '.join(changes(before, fp))}; rerun with "
        "that run's settings to resume it, or delete the journal to start over")


# What each setting of the fingerprint is called on the command line (and which ones are hashes, not shown).
SETTING_NAMES = {
    "benchmark": "the benchmark", "annotations": "--annotations (its content)", "images": "--images",
    "skip_categories": "--skip-categories", "setting": "--inter", "subsets": "the subsets (--subset)",
    "model.model": "--model", "model.weights": "--weights", "model.dtype": "--dtype",
    "model.tokenizer": "--tokenizer",
    "model.stamp": "the model's weight files (rewritten since)", "inference.mode": "--mode",
    "inference.topk": "--topk", "inference.score_over": "--score-over", "max_per_image": "--max-per-image",
    "model.max_text_len": "the text limit (--max-text-len, or the model's config.json)",
    "model.image_size": "the image size (--image-size, or the model's preprocessor_config.json)",
}
_UNSHOWN = frozenset({"annotations", "model.stamp"})
_FILES = "model.files."  # the model's settings files: path → hash of its content


def changes(before: Any, now: dict[str, Any]) -> list[str]:
    """Each setting that differs, by its option name, with both values: ``--topk (was 100, now 50)``."""
    before = before if isinstance(before, dict) else {}
    if before.get("layout") != now.get("layout"):
        return [f"the journal's layout (written by {'an older' if not before.get('layout') else 'another'} "
                "version of reallod)"]
    differ = sorted(diff_settings(before, now), key=lambda c: (c.key not in SETTING_NAMES, c.key))
    keys = {c.key for c in differ}
    if keys & {"model.model", "model.weights"}:  # other weights, of course
        differ = [c for c in differ if c.key != "model.stamp"]
    if keys & {"model.model", "model.tokenizer"}:  # and other settings files
        differ = [c for c in differ if not c.key.startswith(_FILES)]
    out = []
    for key, was, new in differ:
        if key.startswith(_FILES) and key.endswith("@revision"):  # a hub id's commit (loading.files_stamp)
            repo = key.removeprefix(_FILES).removesuffix("@revision")
            out.append(f"{repo} on the hub (commit was {str(was)[:12]}, now {str(new)[:12]})" if was and new else
                       f"{repo} on the hub (its commit, which the run that wrote the journal did not record)"
                       if new else f"{repo} on the hub (its commit, unknown now)")
            continue
        if key.startswith(_FILES):
            out.append(f"{key.removeprefix(_FILES)} ({'its content' if was and new else 'added' if new else 'removed'})")
            continue
        name = SETTING_NAMES.get(key, key)
        out.append(name if key in _UNSHOWN else f"{name} (was {was!r}, now {new!r})")
    return out


class PredictionJournal:
    """This process's journal, and the images earlier runs finished among those it is to run.

    ``source``: each image's file stamp now (:func:`reallod.eval.predict.image_stamp`); an entry made from
    another file (replaced since) is not kept, and the image is predicted again. None: every entry is kept.
    """

    def __init__(self, out: Path, fp: dict[str, Any], rank: int = 0, world_size: int = 1,
                 mine: set[int] | None = None, source: Stamp | None = None) -> None:
        out = Path(out)
        fp = orjson.loads(orjson.dumps({**fp, "layout": LAYOUT}))  # as a journal's header reads back
        self.path = own_journal(out, rank, world_size)
        self._source, self._stamps = source, {}
        lock = _lock_own(self.path, fp)
        try:
            self.done: dict[int, dict[str, np.ndarray]] = {}  # image index → rows, this process's images only
            dropped = False  # this process's journal holds lines of images to redo: written again without
            for p in [p for p in journal_files(out) if p == self.path or _usable(p, fp)]:
                dropped |= self._take(p, mine) and p == self.path
        except BaseException:  # refused: the journal's lock is not left held
            lock.release()
            raise
        if dropped:  # only its usable lines: a journal takes an image's first line, and the redone one is to count
            self._journal = Journal.rewrite(self.path, fp, self._entries(self.path), keep=lambda r: None, lock=lock)
        else:
            self._journal = Journal.open(self.path, fp, keep=lambda result: None, lock=lock)  # cuts a torn line
        self.kept = len(self.done)  # this process's images in the journals, this run's included

    def _take(self, path: Path, mine: set[int] | None) -> bool:
        """The images of ``mine`` not yet done that the journal holds, made from the image there now; whether
        it holds lines passed over: no entries (as a torn line is) or entries of an image replaced since.
        Their images are predicted again."""
        dropped = False
        for entry in _read(path):
            if entry is None:
                dropped = True
                continue
            i, result = entry
            if (mine is not None and i not in mine) or i in self.done:
                continue
            rows = compact(result) if self._fresh(i, result) else None
            if rows is None:
                dropped = True
            else:
                self.done[i] = _finite(rows, path, i)
        return dropped

    def _fresh(self, index: int, result: dict[str, Any]) -> bool:
        """Whether the entry was made from the image file there now (its size and time as read)."""
        if self._source is None:
            return True
        if index not in self._stamps:
            self._stamps[index] = self._source(index)
        now = self._stamps[index]
        return now is not None and result.get("source") == now

    def _entries(self, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
        """The journal's entries that a resume can use: readable rows of an image unchanged since."""
        for entry in _read(path):
            if entry is not None and self._fresh(*entry) and compact(entry[1]) is not None:
                yield str(entry[0]), entry[1]

    def add(self, index: int, rows: Predictions, source: list[int] | None = None) -> None:
        """Keep one finished image, made from the image file of stamp ``source`` (written with the next
        flush, at most ``FLUSH_EVERY_S`` later, or by the flush an interrupt ends with). Counted first: an
        interrupt that lands while this very call writes (its fsync) must not leave the image on disk and
        out of the count."""
        self.kept += 1
        self._journal.append_soon(str(index), to_result(rows, source), within_s=FLUSH_EVERY_S)

    def flush(self) -> None:
        self._journal.flush_sync()

    def close(self) -> None:
        self._journal.close()


def _lock_own(path: Path, fp: dict[str, Any]) -> JournalLock:
    """This process's journal locked, and removed when it holds no images of these settings (started afresh);
    locked before it is looked at, so a second run on the same ``--out`` is refused (:class:`JournalBusy`)
    before it deletes the journal of the run writing it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_journal(path)
    try:
        if path.exists() and not _usable(path, fp):
            path.unlink()  # only its own process starts a journal afresh
    except BaseException:
        lock.release()
        raise
    return lock


class EvalInterrupted(Interrupted):
    """Ctrl-C stopped a model run; the message says how many images are kept and how to go on."""

    @classmethod
    def of(cls, journal: PredictionJournal | None, total: int) -> EvalInterrupted:
        if journal is None:
            return cls("interrupted: the predictions were not kept (give --out to make a model run resumable)")
        return cls(f"interrupted: {journal.kept} of {total} images done, kept in {journal.path}; rerun the same "
                   "command to go on from there")

    @classmethod
    def after_predicting(cls, journal: PredictionJournal | None) -> EvalInterrupted:
        """Ctrl-C once every image was predicted, while the predictions were written or scored."""
        if journal is None:
            return cls("interrupted while scoring: the predictions were not kept (give --out to make a model run "
                       "resumable)")
        return cls(f"interrupted while writing or scoring: every image is predicted and kept in {journal.path}; "
                   "rerun the same command to write and score them (no image is run again)")
