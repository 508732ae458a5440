"""What a ``reallod detect`` run writes where, and what its journal keeps, resumes and refuses.

Each image written is noted in ``OUT/detect.journal.jsonl`` (process R of several:
``detect.journal.rankR.jsonl``) with its files' size and time as written and the image file's as read,
under a header holding the settings the files depend on. A rerun with the same settings keeps the images
unchanged since whose files are still as written, at the names the run gives them; one with other settings
detects every image again, and refuses to leave files of the earlier settings beside its own
(:func:`check_earlier`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from reallod.data.images import DEFAULT_MAX_PIXELS
from reallod.errors import ConfigError, ReallodError
from reallod.hub import as_found
from reallod.model.inference import Detector, InferenceOptions
from reallod.model.loading import SETTINGS_FILES, TOKENIZER_FILES, files_stamp
from reallod.runs.journal import (
    Journal,
    JournalLock,
    JournalWriteError,
    file_stamp,
    iter_journal,
    lock_journal,
    read_header,
)
from reallod.runs.launch import Place
from reallod.runs.settings_diff import diff_settings

OUTPUT_SUBFOLDERS = ("preds", "vis")
SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}


def is_journal(name: str) -> bool:
    """``detect.journal.jsonl`` or a process's ``detect.journal.rankR.jsonl``: a detect output folder."""
    return name.startswith("detect.journal") and name.endswith(".jsonl")


JOURNAL_NAME = "detect.journal.jsonl"  # one process's; process R of several: detect.journal.rankR.jsonl


def journal_name(place: Place) -> str:
    return JOURNAL_NAME if place.world_size == 1 else f"detect.journal.rank{place.rank}.jsonl"


def earlier_journal_name(place: Place) -> str:
    """Where this process keeps the entries of its journal that a run with other settings wrote
    (``detect.journal.earlier.jsonl``; :func:`_set_aside`)."""
    return journal_name(place).removesuffix(".jsonl") + ".earlier.jsonl"


@dataclass
class DetectOptions:
    """Output side of the job (inference settings live in :class:`InferenceOptions`)."""

    out_dir: Path = Path("outputs")
    score_thr: float = 0.3  # what is drawn
    save_vis: bool = True
    save_pred: bool = True
    show: bool = False
    print_result: bool = False
    palette: str = "coco"
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Images decoded ahead in worker threads, and outputs written behind, while the device computes;
    # 0: everything in turn. None: 2 on a CUDA detector, 0 on the CPU (``prefetch.depth``).
    prefetch: int | None = None
    # Delete the files a run with other settings wrote in ``out_dir`` that this run does not write again,
    # instead of refusing to mix them with this run's (:func:`check_earlier`).
    discard_earlier: bool = False


@dataclass
class DetectSummary:
    images: int = 0  # this process's (all of them, but when several processes share the folder)
    processed: int = 0  # by this run
    resumed: int = 0  # done by an earlier run with the same settings, their files kept
    skipped: list[tuple[str, str]] = field(default_factory=list)
    preds: int = 0  # JSON files there (this run's and those kept), one per image
    pictures: int = 0
    unstamped: int = 0  # entries of an older reallod, which hold no image size and time: detected again


def _base_names(name: str, whole: bool) -> tuple[str, str]:
    """An image's JSON and picture names relative to ``OUT`` (both, whatever the options): from its name
    without its suffix, or from its ``whole`` name. The picture keeps the image's format; one Pillow does
    not write (TIFF, GIF...) is drawn as PNG."""
    stem, suffix = os.path.splitext(name)
    base = name if whole else stem
    return f"preds/{base}.json", (f"vis/{name}" if suffix.lower() in SAVE_FORMATS else f"vis/{base}.png")


def shared_stems(names: list[str], options: DetectOptions | None = None) -> set[str]:
    """The images whose outputs keep their whole name (``preds/photo.jpg.json``), so that no two images
    of ``names`` write the same file: those whose name but for its suffix another image has (``photo.jpg``,
    ``photo.png``), and, in turn, those whose names that widening would take (``photo.jpg.png``'s
    ``preds/photo.jpg.json``). A function of the set of names alone, whatever their order, so every
    process of a run and every rerun over the same images gives each the same names. Two images that
    would still write one file (``x.tif``, drawn as ``vis/x.tif.png``, beside an image ``x.tif.png``) are a
    ``ConfigError`` naming them, for the outputs ``options`` writes, before any image is detected."""
    stems = Counter(os.path.splitext(n)[0] for n in names)
    every = set(names)
    # only images whose stem is another's stem or name, or whose name is another's stem, can clash
    related = sorted(n for n in names if stems[os.path.splitext(n)[0]] > 1 or os.path.splitext(n)[0] in every
                     or n in stems)
    del every
    whole: set[str] = set()
    while True:
        claims: dict[str, list[str]] = {}
        for n in related:
            for path in _base_names(n, n in whole):
                claims.setdefault(path, []).append(n)
        contests = [(path, claimants) for path, claimants in claims.items() if len(claimants) > 1]
        widen = {n for _, claimants in contests for n in claimants if n not in whole}
        if not widen:
            break
        whole |= widen
    if options is not None:
        kinds = tuple(k for k, on in (("preds/", options.save_pred), ("vis/", options.save_vis)) if on)
        clash = next(((path, c) for path, c in sorted(contests) if kinds and path.startswith(kinds)), None)
        if clash is not None:
            path, claimants = clash
            raise ConfigError(f"the images {' and '.join(claimants)} would both be written as {options.out_dir / path}; "
                              "rename one of them (or leave those outputs out: --no-save-vis, --no-save-pred)")
    return whole


def output_names(name: str, options: DetectOptions, whole_name: bool = False) -> tuple[str | None, str | None]:
    """Where an image's JSON and picture go, relative to ``OUT`` (None: not written). ``whole_name``: the
    names keep the image's suffix too (:func:`shared_stems`)."""
    pred, vis = _base_names(name, whole_name)
    return pred if options.save_pred else None, vis if options.save_vis else None


Files = tuple[Path | None, Path | None]  # an image's JSON and picture (None: not written)
Names = tuple[str | None, str | None]  # the same, relative to ``OUT`` (:func:`output_names`)


def journal_entry(files: Files, out_dir: Path, root: str, source: list[int] | None) -> dict[str, Any]:
    """What the journal says of an image's files: name, size and time as written, so a file another run
    wrote over since (other settings, another number of processes) is not taken for this run's; the
    input folder (resolved) its name is relative to; and the image's :func:`file_stamp` as read
    (``source``), so an image replaced since is detected again."""
    entry: dict[str, Any] = {"input": root, "source": source}
    for key, f in zip(("pred", "vis"), files, strict=True):
        entry[key] = None
        if f is not None:
            st = f.stat()
            entry[key] = [str(f.relative_to(out_dir)), st.st_size, st.st_mtime_ns]
    return entry


def _files_as_written(entry: dict[str, Any], out_dir: Path, names: Names) -> Files | None:
    """The entry's files if they are at ``names`` (where this run writes the image's) and each is still
    there as written, else None."""
    files: list[Path | None] = []
    for key, name in zip(("pred", "vis"), names, strict=True):
        written = entry.get(key)
        if written is None and name is None:
            files.append(None)
            continue
        if not (isinstance(written, list) and len(written) == 3 and written[0] == name):
            return None
        path = out_dir / written[0]
        try:
            st = path.stat()
        except OSError:
            return None
        if [st.st_size, st.st_mtime_ns] != written[1:]:
            return None
        files.append(path)
    return files[0], files[1]


def job_settings(expressions: list[str], inference: InferenceOptions, options: DetectOptions) -> dict[str, Any]:
    """The settings of :func:`detect_settings` that are known before the model is loaded, as a journal's
    header reads them back."""
    run = asdict(inference)
    run.pop("batch_size")
    return orjson.loads(orjson.dumps({
        "expressions": expressions, "inference": run, "save_pred": options.save_pred,
        "max_pixels": options.max_pixels,
        "drawing": [options.score_thr, options.palette] if options.save_vis else None}))


def detect_settings(detector: Detector, expressions: list[str], inference: InferenceOptions,
                    options: DetectOptions) -> dict[str, Any]:
    """What the files written depend on: an earlier run's files are kept only if these are the same.
    Not the batch size, the device or the number of processes: a resume may change them; nor the input,
    which each journal entry names (a run over one image of the folder keeps the folder's work). Local
    paths count resolved, however they were typed. A folder's config, image processor and tokenizer files
    count by content (edited since, they change the predictions), a hub id's by the commit it loads."""
    model = detector.source.split(" + ")[0]  # "MODEL + WEIGHTS": the file is in the stamp
    tokenizer = str(getattr(detector.tokenizer, "name_or_path", ""))
    return orjson.loads(orjson.dumps({
        "model": as_found(model),
        "weights": [[as_found(str(f)), *rest] for f, *rest in detector.stamp],
        "dtype": str(detector.dtype), "max_text_len": detector.max_text_len,
        "tokenizer": as_found(tokenizer),
        "files": {**files_stamp(model, SETTINGS_FILES), **files_stamp(tokenizer or None, TOKENIZER_FILES)},
        "image_size": dict(getattr(detector.image_processor, "size", None) or {}),
        **job_settings(expressions, inference, options)}))


_OPTION_OF = {"model": "MODEL", "weights": "--weights (or MODEL's weight files, rewritten since)",
              "files": "MODEL's config, image processor or tokenizer files (edited since)",
              "expressions": "--texts", "save_pred": "--no-save-pred", "input": "the journal's layout (an older reallod)"}


def changed_settings(old: Any, new: dict[str, Any]) -> list[str]:
    """The options whose values differ between an earlier run's settings and these, as the user gives them
    (another MODEL brings its own weights and tokenizer: those are not named again)."""
    if not isinstance(old, dict):
        return ["the journal's header"]
    implied = set() if "files" in old else {"files"}  # an older reallod's journal did not note them
    if old.get("model") != new.get("model"):
        implied |= {"weights", "files"}
        if all(s.get("model") == s.get("tokenizer") for s in (old, new)):
            implied.add("tokenizer")  # each MODEL's own
    if old.get("tokenizer") != new.get("tokenizer"):
        implied.add("files")
    changed = []
    for key, was, now in diff_settings(old, new, groups={"inference"}):
        if key in implied:
            continue
        if key.startswith("inference."):
            changed.append(f"--{key.removeprefix('inference.').replace('_', '-')}")
        elif key == "drawing" and isinstance(was, list) and isinstance(now, list) and len(was) == len(now) == 2:
            changed += [name for name, a, b in zip(("--pred-score-thr", "--palette"), was, now, strict=True) if a != b]
        elif key == "drawing":
            changed.append("--no-save-vis")
        else:
            changed.append(_OPTION_OF.get(key, f"--{key.replace('_', '-')}"))
    return changed


def _still_written(entry: Any, out_dir: Path) -> list[str]:
    """The entry's files (relative to ``OUT``, in ``preds/`` or ``vis/``) that are still there as written:
    same size and modification time, and not since replaced by a link."""
    found = []
    for key in ("pred", "vis"):
        written = entry.get(key) if isinstance(entry, dict) else None
        if not (isinstance(written, list) and len(written) == 3 and isinstance(written[0], str)):
            continue
        parts = Path(written[0]).parts
        if not parts or parts[0] not in OUTPUT_SUBFOLDERS or ".." in parts:
            continue  # not a file a run writes
        try:
            st = os.lstat(out_dir / written[0])
        except OSError:
            continue
        if [st.st_size, st.st_mtime_ns] == written[1:]:
            found.append(written[0])
    return found


def _differs(old: Any, settings: dict[str, Any], partial: bool = False) -> bool:
    """Whether a journal's settings are not these; ``partial``: of these keys alone (a set-aside journal's
    never are). The settings files an older reallod did not note are not compared."""
    if not isinstance(old, dict):
        return True
    if not partial:
        return old != ({k: v for k, v in settings.items() if k != "files"} if "files" not in old else settings)
    return any(old.get(k) != v for k, v in settings.items() if k in old or k != "files")


def _in_place(out_dir: Path, rel: str, seen: dict[str, bool]) -> bool:
    """No symbolic link to a folder on the way from ``OUT/preds`` (or ``OUT/vis``) to the file: deleting
    it cannot reach outside them (looked at once per folder)."""
    folder = os.path.dirname(rel)
    if folder not in seen:
        sub, *below = Path(folder).parts
        seen[folder] = (out_dir / folder).resolve() == (out_dir / sub).resolve().joinpath(*below)
    return seen[folder]


def check_earlier(out_dir: Path, names: list[str], options: DetectOptions, settings: dict[str, Any], *,
                  partial: bool = False, discard: bool = False, own_earlier: Path | None = None) -> int:
    """Refuse to mix two settings' results in one ``OUT``: the files that runs with other settings wrote
    there (as their journals list them, still as written) and this run does not write again (it is over
    other images, or writes no pictures) make a ``ConfigError`` naming them, before any image is detected.
    The files this run writes again are no mix: it replaces them. ``discard`` deletes those files instead
    (none but the ones a journal lists, unchanged since; nothing the user put there) and returns how many.
    ``partial``: ``settings`` holds only the settings known before the model is loaded
    (:func:`job_settings`). ``names``: every image of the run, all processes' (each writes its own share).
    A journal of this process that lists none of its files any more (``own_earlier``) is removed."""
    journals = []
    for path in sorted(out_dir.glob("detect.journal*.jsonl")):
        try:
            old = read_header(path).get("fingerprint")
        except (OSError, ReallodError):
            continue
        if _differs(old, settings, partial):
            journals.append((path, old.get("earlier", old) if isinstance(old, dict) else old))
    if not journals:
        return 0
    shared = shared_stems(names)
    planned = {os.path.normpath(f) for name in names for f in output_names(name, options, name in shared) if f}
    seen: set[str] = set()
    first: tuple[str, Any] | None = None  # of the files left, and how many
    left = removed = 0
    folders: dict[str, bool] = {}
    for path, old in journals:
        listed = False
        try:
            for _, entry in iter_journal(path):
                for rel in _still_written(entry, out_dir):
                    listed = True
                    key = os.path.normpath(rel)
                    if key in planned or key in seen:
                        continue
                    seen.add(key)
                    if discard and _in_place(out_dir, rel, folders):
                        (out_dir / rel).unlink(missing_ok=True)
                        removed += 1
                        continue
                    left += 1
                    first = first or (rel, old)
        except (OSError, ReallodError):  # gone, or being rewritten by its process
            continue
        if not listed and path == own_earlier:
            path.unlink(missing_ok=True)
    if first is not None:
        rel, old = first
        files = f"{left} files there ({rel}{', ...' if left > 1 else ''})"
        if discard:
            raise ConfigError(f"--out-dir {out_dir}: {files}, written by a run with other settings, lie behind a "
                              "symbolic link to a folder, so --discard-earlier does not delete them; delete them "
                              "yourself (or give another --out-dir)")
        before = {k: old.get(k) for k in settings} if partial and isinstance(old, dict) else old
        raise ConfigError(
            f"--out-dir {out_dir}: {files} were written by a run with other settings (changed: "
            f"{', '.join(changed_settings(before, settings))}) and this run does not write them again, so the "
            "folder would mix the two runs' results; give another --out-dir, or pass --discard-earlier to delete "
            "those files (only files a run wrote, unchanged since)")
    return removed


def _set_aside(journal: Path, aside: Path, settings: Any, out_dir: Path) -> None:
    """The entries of this process's journal, written with other ``settings``, whose files are still there
    as written, kept in ``aside`` with those set aside before: until this run has written them again (a
    run killed part-way), :func:`check_earlier` still knows them for another settings' files. Removed
    when none is left."""
    def entries() -> Iterator[tuple[str, Any]]:
        for path in (journal, aside):
            try:
                for _, entry in iter_journal(path):
                    if files := _still_written(entry, out_dir):
                        yield files[0], entry
            except (OSError, ReallodError):
                continue

    kept = Journal.rewrite(aside, {"earlier": settings}, entries(), keep=lambda entry: None)
    kept.close()
    if not kept.done:
        aside.unlink(missing_ok=True)


def _remove_renamed(entry: dict[str, Any], out_dir: Path, names: Names, folders: dict[str, bool]) -> None:
    """Delete the entry's files, still as written, that are not at ``names`` (a same-stem image came or went
    since: ``preds/photo.json`` is now ``preds/photo.png.json``), so an image's outputs are never under
    both names; its image is detected again and written under the new ones. Nothing else is deleted."""
    for rel in _still_written(entry, out_dir):
        if rel not in names and _in_place(out_dir, rel, folders):
            (out_dir / rel).unlink(missing_ok=True)


def _kept(out_dir: Path, settings: dict[str, Any], root: str, pending: dict[str, str], summary: DetectSummary,
          names: Callable[[str], Names]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The journal entries of this process's images (of the input folder ``root``) that a run with these
    settings finished, the image file unchanged since and its files still as it wrote them at ``names``
    (the image's output names in this run), from every process's journal (the number of processes may
    differ from run to run); each image found leaves ``pending`` and is counted in ``summary``. Streamed,
    so a resumed run of millions of images holds no more than their names."""
    folders: dict[str, bool] = {}
    for path in sorted(out_dir.glob("detect.journal*.jsonl")):
        try:
            if _differs(read_header(path).get("fingerprint"), settings):
                continue
            for name, entry in iter_journal(path):
                if name not in pending or entry.get("input") != root:
                    continue
                expected = names(name)
                files = _files_as_written(entry, out_dir, expected)
                if files is None:
                    _remove_renamed(entry, out_dir, expected, folders)
                elif "source" not in entry:
                    summary.unstamped += 1  # written by an older reallod: the image may have changed since
                elif entry["source"] is not None and entry["source"] == file_stamp(os.path.join(root, name)):
                    name = pending.pop(name)  # this process's own string: the journal keeps no copy
                    summary.resumed += 1
                    summary.preds += files[0] is not None
                    summary.pictures += files[1] is not None
                    yield name, entry
        except (OSError, ReallodError):  # gone, or being started by its process
            continue


def lock_own_journal(out_dir: Path, place: Place) -> JournalLock:
    """This process's journal locked for this run, before anything in ``out_dir`` is read or deleted: a
    run writing it is refused here (:class:`JournalBusy`), its files untouched."""
    path = out_dir / journal_name(place)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return lock_journal(path)
    except OSError as e:
        raise JournalWriteError(f"{path}: cannot write the journal ({e.strerror or e})") from e


def open_journal(out_dir: Path, place: Place, settings: dict[str, Any], root: str, pending: dict[str, str],
                 summary: DetectSummary, say: Callable[[str], None], *, names: Callable[[str], Names],
                 lock: JournalLock | None = None) -> Journal:
    """This process's journal, rewritten to hold what it keeps (so it never vouches for files this run
    writes over) and, as they are, its entries of the images this run does not detect: now another
    process's (a run resumed on another number of processes loses none), of another input, or of
    images of the folder left out of this run (``reallod detect photos/one.jpg`` keeps the folder's
    work); whichever run uses them checks their files first. Says which settings changed when the one
    there was written with others, and sets its entries aside (:func:`_set_aside`). What it keeps leaves
    ``pending``. ``names``: an image's output names in this run (:func:`output_names`). ``lock``:
    :func:`lock_own_journal`'s, when the caller took it first (released here on failure)."""
    path = out_dir / journal_name(place)
    lock = lock or lock_own_journal(out_dir, place)
    carried: Iterable[tuple[str, Any]] = ()
    try:
        try:
            old = read_header(path).get("fingerprint")
            if _differs(old, settings):
                say(f"{out_dir}: written by a run with other settings (changed: "
                    f"{', '.join(changed_settings(old, settings))}); every image is detected again")
                _set_aside(path, out_dir / earlier_journal_name(place), old, out_dir)
            else:  # read while the new journal is written aside: the old one stays whole until the rename
                carried = ((name, entry) for name, entry in iter_journal(path) if name not in pending)
        except (OSError, ReallodError):
            pass
    except BaseException:
        lock.release()
        raise
    return Journal.rewrite(path, settings, chain(_kept(out_dir, settings, root, pending, summary, names), carried),
                           keep=lambda entry: None, lock=lock)
