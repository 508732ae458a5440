"""The ``reallod detect`` job: images (a file or a folder) × expressions → JSON predictions and pictures.

Outputs follow MMDetection's demo layout: ``OUT/preds/<name>.json`` and ``OUT/vis/<name>.<ext>``,
where ``<name>`` keeps the image's path relative to the input folder. The JSON holds every kept box
(top-k per expression); the score threshold only decides what is drawn, as in the published demo.
Unreadable images are skipped with a message; the others go on.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from reallod.data.images import DEFAULT_MAX_PIXELS, open_image
from reallod.data.io import AtomicWriter, atomic_text, dumps
from reallod.errors import DataError
from reallod.model.detections import Detections
from reallod.model.draw import draw_detections
from reallod.model.inference import Detector, InferenceOptions

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}


def find_images(inputs: str | Path) -> list[tuple[Path, Path]]:
    """(path, name relative to the input) for one image file or every image under a folder, sorted."""
    root = Path(inputs).expanduser()
    if root.is_file():
        return [(root, Path(root.name))]
    if not root.exists():
        raise DataError("input not found (expected an image file or a folder of images)", path=str(root))
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not found:
        raise DataError(f"no images in the folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})", path=str(root))
    return [(p, p.relative_to(root)) for p in found]


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


@dataclass
class DetectSummary:
    processed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    pred_files: list[Path] = field(default_factory=list)
    vis_files: list[Path] = field(default_factory=list)


def _save_picture(image: Image.Image, path: Path) -> Path:
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        path, fmt = path.with_suffix(".png"), "PNG"
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    with AtomicWriter(path) as w:
        w.write(buf.getvalue())
    return path


def _load(path: Path, detector: Detector, max_pixels: int):
    """Decode one image and prepare its pixels (runs in a worker thread, ahead of the device)."""
    from reallod.model.inference import prepare_pixels

    try:
        image = open_image(path, max_pixels)
    except DataError as e:
        return None, None, e
    return image, prepare_pixels(detector, image), None


def _write(dets: Detections, image: Image.Image, name: Path, options: DetectOptions
           ) -> tuple[Path | None, Path | None]:
    """One image's JSON and picture (runs in a worker thread, behind the device)."""
    pred = vis = None
    if options.save_pred:
        pred = options.out_dir / "preds" / name.with_suffix(".json")
        with atomic_text(pred) as f:
            f.write(dumps(dets.to_dict()).decode())
    if options.save_vis:
        picture = draw_detections(image, dets, score_thr=options.score_thr, palette_name=options.palette)
        vis = _save_picture(picture, options.out_dir / "vis" / name)
    return pred, vis


def run_detect(inputs: str | Path, detector: Detector, expressions: list[str], *,
               options: DetectOptions | None = None, inference: InferenceOptions | None = None,
               progress: bool = True, echo: Callable[[str], None] | None = None) -> DetectSummary:
    """Detect ``expressions`` in every image of ``inputs``; write one JSON and one picture per image.

    With ``options.prefetch`` (the default on CUDA) the device does not wait for the host: worker
    threads decode and resize the next images while the current one runs, and write JSON and pictures
    behind it (``prefetch=0``: everything in turn, in this thread). Results are the same either way.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm import tqdm

    from reallod.model.prefetch import ahead, depth

    options = options or DetectOptions()
    inference = inference or InferenceOptions()
    images = find_images(inputs)
    summary = DetectSummary()
    bar = tqdm(total=len(images), desc="detect", unit="img", disable=not progress or len(images) < 2,
               file=sys.stderr)
    say = echo or (lambda msg: tqdm.write(msg, file=sys.stderr))
    n_ahead = depth(options.prefetch, detector.device)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect-write") if n_ahead else None
    written: list[Future] = []  # writes not yet collected, oldest first

    def collect(files: tuple[Path | None, Path | None]) -> None:
        pred, vis = files
        if pred is not None:
            summary.pred_files.append(pred)
        if vis is not None:
            summary.vis_files.append(vis)

    loaded = ahead(lambda item: _load(item[0], detector, options.max_pixels), images, n_ahead, name="detect-load")
    try:
        for (path, name), (image, prepared, error) in zip(images, loaded, strict=True):
            bar.update(1)
            if error is not None:
                summary.skipped.append((str(path), str(error)))
                say(f"skipped: {error}")
                continue
            dets = detector.detect(image, expressions, inference, prepared=prepared)
            dets.image = str(path)
            if options.print_result:
                tqdm.write(dumps(dets.to_dict()).decode(), file=sys.stdout)
            if writer is not None and not options.show:
                written.append(writer.submit(_write, dets, image, name, options))
                while len(written) > n_ahead + 1:  # bounded: finished images do not pile up in memory
                    collect(written.pop(0).result())
            else:
                collect(_write(dets, image, name, options))
                if options.show:
                    draw_detections(image, dets, score_thr=options.score_thr, palette_name=options.palette
                                    ).show(title=str(name))
            summary.processed += 1
        for f in written:  # in input order; a failed write raises here
            collect(f.result())
    finally:
        bar.close()
        loaded.close()
        if writer is not None:
            writer.shutdown(wait=True, cancel_futures=True)
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
