"""The ``reallod detect`` job: images (a file or a folder) × expressions → JSON predictions and pictures.

Outputs follow MMDetection's demo layout: ``OUT/preds/<name>.json`` and ``OUT/vis/<name>.<ext>``,
where ``<name>`` keeps the image's path relative to the input folder. The JSON holds every kept box
(top-k per expression); the score threshold only decides what is drawn, as in the published demo.
Unreadable images, and images whose output name the file system cannot hold, are skipped with a
message; the others go on. What the run's journal keeps, resumes
and refuses, and the options and output names it depends on: :mod:`reallod.model.detect_journal`.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

from reallod.data.images import MAX_PIXELS_HINT, open_image
from reallod.data.io import AtomicWriter, atomic_text, dumps, file_name_max
from reallod.errors import ConfigError, DataError, Interrupted, OutOfMemory, ReallodError, out_of_memory
from reallod.model.detect_journal import (
    OUTPUT_SUBFOLDERS,
    SAVE_FORMATS,
    DetectOptions,
    DetectSummary,
    Files,
    check_earlier,
    detect_settings,
    earlier_journal_name,
    is_journal,
    journal_entry,
    lock_own_journal,
    open_journal,
    output_names,
    shared_stems,
)
from reallod.model.detections import Detections
from reallod.model.draw import draw_detections
from reallod.model.inference import Detector, InferenceOptions, plan_prompts
from reallod.model.token_prompt import check_expressions
from reallod.runs.journal import file_stamp, iter_journal
from reallod.runs.launch import Place

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def find_images(inputs: str | Path, out_dir: str | Path | None = None) -> tuple[Path, list[str]]:
    """The folder and, relative to it, one image file or every image under a folder, sorted by path.
    Hidden files and folders are passed over, and so are the ``vis`` and ``preds`` of every output folder
    inside the input: this run's ``out_dir`` (``cd photos && reallod detect . ...``) and any folder an
    earlier run wrote into (it holds a detect journal; the input folder itself may be one). Their pictures
    are no input, or each run would detect the last one's pictures again; but only pictures a detect run
    wrote are passed over: images of the user's there (which a run would draw over, and never detect) are
    a ``ConfigError`` (:func:`_check_passed_over`).
    Names are plain strings, a few dozen bytes each: a folder of ten million images lists in ~1 GB."""
    root = Path(inputs).expanduser()
    if root.is_file():
        return root.parent, [root.name]
    if not root.exists():
        raise DataError("input not found (expected an image file or a folder of images)", path=str(root))
    if not root.is_dir():
        raise DataError("neither an image file nor a folder (a named pipe, a device or a socket)", path=str(root))
    own = Path(out_dir).expanduser().resolve() if out_dir is not None else None
    found = []
    passed_over: list[tuple[Path, str, set[str], list[Path]]] = []  # output folder, vis/preds, its images,
    # its journals
    for folder, subfolders, files in os.walk(root):  # symbolic links to folders are not followed (as rglob)
        here = Path(folder)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        journals = [here / f for f in files if is_journal(f)]
        if journals or here.resolve() == own:  # an output folder of reallod detect
            for sub in OUTPUT_SUBFOLDERS:
                if sub in subfolders:
                    subfolders.remove(sub)
                    if pictures := _images_under(here, sub):
                        passed_over.append((here, sub, pictures, journals))
        prefix = here.relative_to(root).as_posix() + "/" if here != root else ""
        found.extend(prefix + f for f in files if _is_image(f))
    if passed_over:
        _check_passed_over(found, passed_over, own)
    if not found:
        raise DataError(f"no images in the folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})", path=str(root))
    found.sort(key=lambda name: name.replace("/", "\0"))  # folder by folder, as paths compare
    return root, found


def _images_under(out: Path, sub: str) -> set[str]:
    """The images under ``out/sub``, relative to ``out``."""
    top = out / sub
    if top.is_symlink():
        return set()  # a link to a folder: passed over as any other
    images = set()
    for folder, subfolders, files in os.walk(top):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        rel = Path(folder).relative_to(out).as_posix()
        images.update(f"{rel}/{f}" for f in files if _is_image(f))
    return images


def _not_written(images: set[str], journals: list[Path]) -> set[str]:
    """Those of ``images`` (relative to the output folder) that none of ``journals`` lists as written."""
    for journal in journals:
        if not images:
            break
        try:
            for _, entry in iter_journal(journal):
                for key in ("pred", "vis"):
                    written = entry.get(key) if isinstance(entry, dict) else None
                    if isinstance(written, list) and written and isinstance(written[0], str):
                        images.discard(os.path.normpath(written[0]))
        except (OSError, ReallodError):  # gone, or being rewritten by its run
            continue
    return images


def _check_passed_over(names: list[str], passed_over: list[tuple[Path, str, set[str], list[Path]]],
                       own: Path | None) -> None:
    """Refuse output folders' ``vis`` or ``preds`` that hold images no detect run wrote. A picture at the
    output name of an image of the input, in a folder with a journal, is a run's that was killed before its
    journal noted it (the journal is written a few images at a time): it is drawn again, not refused.
    The journals are read only for pictures at other names: a run's own output folder, inside its input,
    costs no second reading of a journal of millions of images."""
    shared = shared_stems(names)
    for out, sub, strays, journals in passed_over:
        if journals:
            for name in names:
                strays.difference_update(output_names(name, DetectOptions(), name in shared))
            strays = _not_written(strays, journals)
        if not strays:
            continue
        shown = sorted(strays)
        where = out / sub
        listed = f"{len(shown)} images no detect run wrote ({out / shown[0]}{', ...' if len(shown) > 1 else ''})"
        if out.resolve() == own:
            raise ConfigError(f"--out-dir {out}: {where} holds {listed}; the run writes its outputs there, so "
                              f"they would be written over or never detected: move them out of {where} (or give "
                              "another --out-dir)")
        raise ConfigError(f"{where}: holds {listed}, but {out} is an output folder of reallod detect (it holds a "
                          f"detect journal), whose {sub}/ is passed over: move them out of {where} to have them "
                          "detected")


def output_folders(options: DetectOptions) -> list[Path]:
    """The folders the run writes files into: ``OUT/preds`` and ``OUT/vis`` (as the options ask)."""
    return [options.out_dir / sub for sub, on in zip(OUTPUT_SUBFOLDERS, (options.save_pred, options.save_vis),
                                                     strict=True) if on]


def check_outputs(inputs: str | Path, options: DetectOptions) -> None:
    """Refuse, before any model is loaded, an ``--out-dir`` the run cannot write into (a file, or a file
    where ``OUT/vis`` or ``OUT/preds`` goes) or whose pictures or JSON would replace the input: an
    output folder that is, or holds, the input file or folder (``reallod detect outputs/vis MODEL``)."""
    out = options.out_dir
    folders = output_folders(options)
    if not folders:
        return  # nothing is written
    for path in (*folders, out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"--out-dir {out}: {path} is a file, not a folder; give another --out-dir "
                                  "(or move the file away)")
            if path != out and path not in folders:
                break  # the first folder that exists above OUT: the rest is created
    given = Path(inputs).expanduser()
    sources = {given.resolve()}  # where its links lead, and a link itself (replacing it loses the input too)
    if given.is_symlink():
        sources.add(given.parent.resolve() / given.name)
    for folder in folders:
        where = folder.resolve()
        if any(src == where or where in src.parents for src in sources):
            raise ConfigError(f"--out-dir {out}: {folder} {'is' if where in sources else 'holds'} the input "
                              f"{inputs}, and its files would be written over by the outputs; give another "
                              "--out-dir (or move the images out of it)")


def check_links(root: Path, names: Iterable[str], options: DetectOptions) -> None:
    """Refuse a folder below ``OUT/vis`` or ``OUT/preds`` that is a symbolic link into the input (``OUT/vis/sub``
    leading to ``photos/sub``): the pictures written through it would replace the images. A link at a
    file's own name is no danger: each file is written aside and renamed over the link, never through it.
    One look per subfolder of the input, not per image."""
    inside = root.resolve()
    folders = sorted({os.path.dirname(name) for name in names} - {""})
    for base in output_folders(options):
        real = base.resolve()
        for folder in folders:
            where = (base / folder).resolve()
            if where != real / folder and (where == inside or inside in where.parents):
                raise ConfigError(f"--out-dir {options.out_dir}: {base / folder} is a symbolic link into the input "
                                  f"{root} (to {where}), and the outputs written through it would replace the "
                                  "images; remove the link (or give another --out-dir)")


def _save_picture(image: Image.Image, path: Path) -> None:
    fmt = SAVE_FORMATS[path.suffix.lower()]
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    with AtomicWriter(path) as w:  # written aside and renamed: a link at that name is replaced, not followed
        w.write(buf.getvalue())


def _load(path: Path, detector: Detector, max_pixels: int):
    """Decode one image and prepare its pixels (runs in a worker thread, ahead of the device); with the
    file's :func:`file_stamp`, taken before it is read (a file replaced meanwhile is detected again)."""
    from reallod.model.inference import prepare_pixels

    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes the file system kept that no JSON (predictions, journal) can hold
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        return None, None, DataError("the file name is not valid UTF-8, so the predictions could not name it; "
                                     "rename the file", path=shown), None
    stamp = file_stamp(path)
    try:
        image = open_image(path, max_pixels, hint=MAX_PIXELS_HINT)
        return image, prepare_pixels(detector, image), None, stamp
    except DataError as e:
        return None, None, e if e.path else DataError(e.message, path=str(path)), None


def _too_long(root: Path, name: str, options: DetectOptions, whole_name: bool, limit: int | None):
    """:func:`_load`'s answer for an image whose output file name is longer than the file system of ``OUT``
    allows (``limit`` bytes; None: nothing is written): skipped with a message naming it, as an unreadable
    image is, and the others go on. None for any other image."""
    for rel in output_names(name, options, whole_name) if limit is not None else ():
        longest = max((len(os.fsencode(part)) for part in rel.split("/")), default=0) if rel else 0
        if longest > limit:
            return None, None, DataError(f"its output in {options.out_dir / rel.split('/')[0]} would have a name of "
                                         f"{longest} bytes, longer than the {limit} its file system allows; give the "
                                         "image a shorter name", path=str(root / name)), None
    return None


def _write(dets: Detections, image: Image.Image, name: str, options: DetectOptions, whole_name: bool = False
           ) -> tuple[Path | None, Path | None]:
    """One image's JSON and picture (runs in a worker thread, behind the device), at :func:`output_names`."""
    pred_name, vis_name = output_names(name, options, whole_name)
    pred = vis = None
    if pred_name is not None:
        pred = options.out_dir / pred_name
        with atomic_text(pred) as f:
            f.write(dumps(dets.to_dict()).decode())
    if vis_name is not None:
        picture = draw_detections(image, dets, score_thr=options.score_thr, palette_name=options.palette)
        vis = options.out_dir / vis_name
        _save_picture(picture, vis)
    return pred, vis


def run_detect(inputs: str | Path, detector: Detector, expressions: list[str], *,
               options: DetectOptions | None = None, inference: InferenceOptions | None = None,
               progress: bool = True, echo: Callable[[str], None] | None = None,
               place: Place | None = None, images: tuple[Path, list[str]] | None = None) -> DetectSummary:
    """Detect ``expressions`` in every image of ``inputs``; write one JSON and one picture per image.

    With ``options.prefetch`` (the default on CUDA) the device does not wait for the host: worker
    threads decode and resize the next images while the current one runs, and write JSON and pictures
    behind it (``prefetch=0``: everything in turn, in this thread). Results are the same either way.
    Each image written is noted in ``OUT/detect.journal.jsonl``: a rerun with the same settings skips the
    images whose files are there as it wrote them, so a killed run goes on where it stopped.

    ``place``: this process among several (``torchrun``, ``accelerate launch``; :func:`launch_place`)
    writing into one folder. Each takes the images whose name hashes to its rank, so the split holds
    whatever order the processes list the folder in, and keeps its own journal
    (``detect.journal.rankR.jsonl``); a rerun reads them all, whatever the number of processes.
    ``images``: what :func:`find_images` found in ``inputs`` (the CLI lists them before the model loads).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm import tqdm

    from reallod.model.prefetch import ahead, depth

    options = options or DetectOptions()
    inference = inference or InferenceOptions()
    place = place or Place()
    plan_prompts(detector, check_expressions(expressions), inference)  # a bad expression fails before any write
    check_outputs(inputs, options)
    root, names = images or find_images(inputs, options.out_dir)
    check_links(root, names, options)
    shared = shared_stems(names, options)  # of all images, whichever process writes them; a clash is refused
    every = names
    if place.world_size > 1:
        names = [name for name in names if place.takes(name)]
    summary = DetectSummary(images=len(names))
    say = echo or (lambda msg: tqdm.write(msg, file=sys.stderr))
    journal = None
    todo = names
    root_key = str(root.resolve())  # what journal entries name the input by
    if options.save_pred or options.save_vis:
        settings = detect_settings(detector, expressions, inference, options)
        lock = lock_own_journal(options.out_dir, place)  # a run writing there is refused before anything is deleted
        try:
            removed = check_earlier(options.out_dir, every, options, settings, discard=options.discard_earlier,
                                    own_earlier=options.out_dir / earlier_journal_name(place))
        except BaseException:
            lock.release()
            raise
        if removed:
            say(f"{options.out_dir}: deleted {removed} files a run with other settings wrote there (--discard-earlier)")
        del every
        pending = {name: name for name in names}
        journal = open_journal(options.out_dir, place, settings, root_key, pending, summary, say, lock=lock,
                               names=lambda name: output_names(name, options, name in shared))
        todo = [name for name in names if name in pending]  # in input order
        del pending
        if summary.unstamped:
            say(f"{options.out_dir}: {summary.unstamped} journal entries of an older reallod do not note the image "
                "file's size and time, so their images are detected again")
    label = "detect" if place.world_size == 1 else f"detect [{place.world_size} processes]"
    bar = tqdm(total=len(names), initial=summary.resumed, desc=label, unit="img", file=sys.stderr,
               disable=not progress or len(names) < 2 or not place.is_main)
    n_ahead = depth(options.prefetch, detector.device)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect-write") if n_ahead else None
    written: list[tuple[str, Future, list[int] | None]] = []  # writes not yet collected, oldest first

    def finished(name: str, files: Files, stamp: list[int] | None) -> None:
        summary.processed += 1
        summary.preds += files[0] is not None
        summary.pictures += files[1] is not None
        if journal is not None:  # its files are on disk: a rerun may skip it
            journal.append_soon(name, journal_entry(files, options.out_dir, root_key, stamp))

    limit = file_name_max(options.out_dir) if journal is not None else None  # OUT exists: the journal is there
    loaded = ahead(lambda name: _too_long(root, name, options, name in shared, limit)
                   or _load(root / name, detector, options.max_pixels), todo, n_ahead, name="detect-load")
    current = todo[0] if todo else ""  # the image being detected, for an out-of-memory message
    try:
        for name, (image, prepared, error, stamp) in zip(todo, loaded, strict=True):
            current = name
            bar.update(1)
            if error is not None:
                summary.skipped.append((str(root / name), str(error)))
                say(f"skipped: {error}")
                continue
            dets = detector.detect(image, expressions, inference, prepared=prepared)
            dets.image = str(root / name)
            if options.print_result:
                tqdm.write(dumps(dets.to_dict()).decode(), file=sys.stdout)
            if writer is not None and not options.show:
                written.append((name, writer.submit(_write, dets, image, name, options, name in shared), stamp))
                while len(written) > n_ahead + 1:  # bounded: finished images do not pile up in memory
                    done, future, done_stamp = written.pop(0)
                    finished(done, future.result(), done_stamp)
            else:
                finished(name, _write(dets, image, name, options, name in shared), stamp)
                if options.show:
                    draw_detections(image, dets, score_thr=options.score_thr, palette_name=options.palette
                                    ).show(title=name)
        for name, future, stamp in written:  # in input order; a failed write raises here
            finished(name, future.result(), stamp)
    except KeyboardInterrupt:
        if journal is None:
            raise
        who = "" if place.world_size == 1 else f" (process {place.rank} of {place.world_size})"
        raise Interrupted(f"interrupted: {summary.processed + summary.resumed} of {len(names)} images written to "
                          f"{options.out_dir}{who}; rerun the same command to go on from there") from None
    except Exception as e:  # out of GPU memory: the images written are kept, as on Ctrl-C
        if (what := out_of_memory(e)) is None:
            raise
        who = "" if place.world_size == 1 else f" (process {place.rank} of {place.world_size})"
        kept = (f"{summary.processed + summary.resumed} of {len(names)} images are written to {options.out_dir}{who}: "
                "rerun the same command with a smaller --batch-size to go on from there" if journal is not None else
                "rerun with a smaller --batch-size")
        raise OutOfMemory(f"{what} (detecting {root / current} with --batch-size {inference.batch_size}); "
                          f"{kept}") from e
    finally:
        bar.close()
        loaded.close()
        if writer is not None:
            writer.shutdown(wait=True, cancel_futures=True)
        if journal is not None:
            journal.close()
    return summary


def load_predictions(path: str | Path) -> Detections:
    """Read back one JSON written by :func:`run_detect`."""
    from reallod.data.io import loads

    p = Path(path)
    try:
        obj = loads(p.read_bytes())
    except ValueError as e:
        raise DataError(f"not valid JSON ({e})", path=str(p)) from e
    return Detections.from_dict(obj, path=str(p))
