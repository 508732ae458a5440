"""Run a detector over a benchmark's images, in one process or sharded over several.

Sharding: under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment) each
process takes every ``WORLD_SIZE``-th image starting at its ``RANK``, on ``cuda:LOCAL_RANK`` when
CUDA is used; the predictions are gathered on rank 0 (a gloo group, so CPU objects travel whatever
the GPUs' backend) and put back in the benchmark's image order, so the file written and the numbers
are the same as a single-process run. An error on any rank is passed to the others at the gather, so
no process is left waiting.

Inference is the Real-Model API (``reallod.model``): ``Detector.detect`` per image with the image's
texts, in ``parallel`` mode by default (one prompt per expression).
"""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reallod.data.images import DEFAULT_MAX_PIXELS
from reallod.errors import DataError, OutOfMemory, ReallodError, out_of_memory
from reallod.eval.common import EvalImage, Predictions, round_predictions, xyxy_to_xywh
from reallod.eval.resume import EvalInterrupted, PredictionJournal, from_result
from reallod.runs.journal import file_stamp
from reallod.runs.launch import launch_place, process_device

if TYPE_CHECKING:
    from reallod.model.detections import Detections
    from reallod.model.inference import Detector, InferenceOptions



@dataclass
class RunOptions:
    """How images become predictions (inference settings live in ``InferenceOptions``)."""

    inference: InferenceOptions | None = None
    max_per_image: int | None = None  # keep only the best N boxes of an image, over all its texts
    max_pixels: int = DEFAULT_MAX_PIXELS
    show_dir: Path | None = None  # draw each image's detections here
    show_score_thr: float = 0.3
    progress: bool = True
    # Images decoded ahead in worker threads while the device computes (None: 2 on CUDA, 0 on the CPU)
    prefetch: int | None = None


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """This process's place among the processes of one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None
    owned: bool = False  # this code started the process group and closes it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj`` on rank 0 (rank order), None elsewhere."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as td

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        td.gather_object(obj, out, dst=0, group=self.group)
        return out

    def close(self) -> None:
        if self.owned:
            import torch.distributed as td

            td.destroy_process_group()
            self.owned = False


def init_distributed(timeout_hours: float = 12.0) -> Dist:
    """A Dist from the launcher's environment (RANK / WORLD_SIZE / LOCAL_RANK), one process without it."""
    place = launch_place()
    if place.world_size == 1:
        return Dist()
    import torch.distributed as td

    owned = False
    if not td.is_initialized():
        td.init_process_group(backend="gloo", timeout=timedelta(hours=timeout_hours))
        owned = True
    group = None if td.get_backend() == "gloo" else td.new_group(backend="gloo")
    return Dist(td.get_rank(), td.get_world_size(), place.local_rank, group, owned)


def shard(n: int, dist: Dist) -> range:
    """This process's images: every world_size-th one from its rank (balanced, in order)."""
    return range(dist.rank, n, dist.world_size)


# ---------------------------------------------------------------------------------------------
# predicting
# ---------------------------------------------------------------------------------------------


def to_predictions(image: EvalImage, dets: Detections, max_per_image: int | None = None) -> Predictions:
    """One image's detections → prediction rows under the benchmark's ids, rounded as written."""
    _check_finite(image, dets)
    bbox, score = round_predictions(xyxy_to_xywh(dets.xyxy), dets.scores)
    label = np.asarray(image.keys, dtype=np.int64)[dets.labels] if len(dets) else np.zeros(0, dtype=np.int64)
    if max_per_image is not None and len(score) > max_per_image:
        top = np.sort(np.argsort(-score, kind="stable")[:max_per_image])
        bbox, score, label = bbox[top], score[top], label[top]
    n = len(score)
    return Predictions(np.full(n, image.image_id), label, score, bbox, np.full(n, image.part))


def _check_finite(image: EvalImage, dets: Detections) -> None:
    """The model's scores and boxes are finite numbers: a NaN score sorts anywhere and breaks the ranking
    every metric reads (it was scored silently and written as null, a file no evaluator reads back)."""
    bad = ~(np.isfinite(dets.scores) & np.isfinite(dets.xyxy).all(axis=1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"the model gave {int(bad.sum())} of its {len(dets)} boxes a score or box that is not a "
                        f"finite number (first: score {float(dets.scores[i]):.6g}, box "
                        f"{[round(float(v), 2) for v in dets.xyxy[i]]} for {image.texts[int(dets.labels[i])]!r}, "
                        f"image_id {image.image_id}); nothing is scored: run with --dtype fp32 if a lower "
                        "precision overflowed, or check the model's weights", path=image.file_name)


def image_stamp(root: str | Path, image: EvalImage) -> list[int] | None:
    """:func:`file_stamp` of a benchmark image under ``root``: what its journal entry keeps, so a resume
    predicts an image replaced since again."""
    from reallod.data.images import resolve_image

    return file_stamp(resolve_image(str(root), image.file_name))


def picture_name(image: EvalImage) -> str:
    """The file ``--show-dir`` draws ``image`` into (the subset's name first for OVDEval)."""
    return f"{image.tag}_{image.image_id}.png" if image.tag else f"{image.image_id}.png"


def _save_picture(picture, path: Path) -> None:
    from reallod.data.io import AtomicWriter

    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    with AtomicWriter(path) as w:
        w.write(buf.getvalue())


def _predict_shard(images: list[EvalImage], indices: range, detector: Detector, image_root: Path,
                   options: RunOptions, dist: Dist, desc: str, journal: PredictionJournal | None
                   ) -> list[tuple[int, Predictions]]:
    from tqdm import tqdm

    from reallod.data.images import MAX_PIXELS_HINT, open_image, resolve_image
    from reallod.model.inference import InferenceOptions, prepare_pixels
    from reallod.model.prefetch import ahead, depth

    inference = options.inference or InferenceOptions()
    kept = journal.done if journal is not None else {}
    out = [(i, from_result(images[i], kept[i])) for i in indices if i in kept]
    todo = [i for i in indices if images[i].texts and i not in kept]
    label = desc if dist.world_size == 1 else f"{desc} [{dist.world_size} processes]"
    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), desc=label, unit="img", file=sys.stderr,
               disable=not options.progress or not dist.is_main)

    resized: list[tuple[str, tuple[int, int], tuple[int, int]]] = []  # (name, on disk, in the ground truth)

    def load(i: int):  # in a worker thread on CUDA: the next images are decoded while the GPU works
        path = resolve_image(str(image_root), images[i].file_name)
        if path is None:
            raise DataError(f"absolute or leads out of the image root {image_root}; refusing to open it",
                            path=images[i].file_name)
        source = file_stamp(path)  # before it is read: an image replaced meanwhile is predicted again
        picture = open_image(path, options.max_pixels, hint=MAX_PIXELS_HINT)
        if (said := _ground_truth_size(images[i])) is not None and picture.size != said:
            resized.append((images[i].file_name, picture.size, said))
        try:
            return picture, prepare_pixels(detector, picture), source
        except DataError as e:  # too thin to resize: name the image
            raise DataError(e.message, path=path) from e

    loaded = ahead(load, todo, depth(options.prefetch, detector.device) if todo else 0, name="eval-load")
    i = todo[0] if todo else 0  # the image being predicted, for an out-of-memory message
    try:
        for i, (picture, prepared, source) in zip(todo, loaded, strict=True):
            img = images[i]
            dets = detector.detect(picture, img.texts, inference, prepared=prepared)
            rows = to_predictions(img, dets, options.max_per_image)
            out.append((i, rows))
            if journal is not None:
                journal.add(i, rows, source)
            bar.update(1)
            if options.show_dir is not None:
                from reallod.model.draw import draw_detections

                _save_picture(draw_detections(picture, dets, score_thr=options.show_score_thr),
                              options.show_dir / picture_name(img))
    except Exception as e:  # out of GPU memory: the images predicted are kept, as on Ctrl-C
        if (what := out_of_memory(e)) is None:
            raise
        kept = (f"{journal.kept} of {len(indices)} images are kept in {journal.path}: rerun the same command with a "
                "smaller --batch-size to go on from there" if journal is not None else
                f"the predictions made ({len(out)} of {len(indices)} images) are not kept (give --out to make a model run "
                "resumable): rerun with a smaller --batch-size")
        raise OutOfMemory(f"{what} (predicting {images[i].file_name} with --batch-size {inference.batch_size}); "
                          f"{kept}") from e
    finally:
        loaded.close()
        bar.close()
        if journal is not None:
            journal.flush()
        if resized:
            warnings.warn(_resized_note(resized), stacklevel=1)
    return sorted(out, key=lambda item: item[0])


def _ground_truth_size(image: EvalImage) -> tuple[int, int] | None:
    """(width, height) as the ground truth gives them, None where it gives none usable."""
    w, h = image.width, image.height
    sizes = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h))
    return (w, h) if sizes else None  # type: ignore[return-value]


def _resized_note(resized: list[tuple[str, tuple[int, int], tuple[int, int]]]) -> str:
    """Images not the size their ground truth gives (copies resized to save space, another version of the
    set): their boxes are in the image's pixels and are scored against the ground truth's, so they score
    wrong, and nothing else would tell."""
    name, (w, h), (gw, gh) = resized[0]
    swapped = (" (width and height swapped: the image has an EXIF orientation, applied here as MMDetection "
               "applies it, and the ground truth gives its stored size?)") if (w, h) == (gh, gw) else ""
    more = f" and {len(resized) - 1:,} more" if len(resized) > 1 else ""
    return (f"{len(resized):,} image(s) are not the size the ground truth gives: {name} is {w}x{h} (width x height), "
            f"the ground truth says {gw}x{gh}{swapped}{more}; their boxes are predicted in the image's pixels and "
            "scored against the ground truth's, so those images score wrong: evaluate on the images the ground "
            "truth was made on")


def predict(images: list[EvalImage], detector: Detector, image_root: str | Path, options: RunOptions | None = None,
            dist: Dist | None = None, desc: str = "eval", journal: PredictionJournal | None = None
            ) -> Predictions | None:
    """Predictions for every image (on rank 0; None on the other ranks), in the images' order.

    With a ``journal``, the images it holds are not run again and each new one is added to it; Ctrl-C
    then raises :class:`EvalInterrupted`, which says what is kept.
    """
    options = options or RunOptions()
    dist = dist or Dist()
    root = Path(image_root)
    error: str | None = None
    mine: list[tuple[int, Predictions]] = []
    indices = shard(len(images), dist)
    try:
        mine = _predict_shard(images, indices, detector, root, options, dist, desc, journal)
    except KeyboardInterrupt:
        raise EvalInterrupted.of(journal, sum(1 for i in indices if images[i].texts)) from None
    except Exception as e:  # with several processes, every one must reach the gather, or the others wait
        if dist.world_size == 1:
            raise
        error = f"rank {dist.rank}: {e}" if isinstance(e, ReallodError) else f"rank {dist.rank}: {type(e).__name__}: {e}"
    gathered = dist.gather((error, mine))
    if gathered is None:  # not rank 0
        if error:
            raise ReallodError(error)
        return None
    errors = [e for e, _ in gathered if e]
    if errors:
        raise ReallodError("; ".join(errors))
    chunks = sorted((item for _, part in gathered for item in part), key=lambda item: item[0])
    return Predictions.concat([p for _, p in chunks])


@dataclass
class ModelSpec:
    """Which detector to load and how (see ``reallod.model.loading.load_detector``)."""

    model: str
    weights: str | None = None
    device: str | None = None
    dtype: str = "fp32"
    max_text_len: int | None = None
    tokenizer: str | None = None
    image_size: tuple[int, int] | None = None


def load_model(spec: ModelSpec, dist: Dist) -> Detector:
    from reallod.model.loading import load_detector

    return load_detector(spec.model, weights=spec.weights, dtype=spec.dtype,
                         device=process_device(spec.device, dist.local_rank, dist.world_size),
                         max_text_len=spec.max_text_len, tokenizer=spec.tokenizer, image_size=spec.image_size)
