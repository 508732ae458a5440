"""Decoding one image file as the detector, training, evaluation and the agent all need it: RGB,
upright (EXIF orientation applied, as cameras and phones store many photos rotated), and refused,
before decoding, when larger than a pixel budget. Errors name the file.

Upright is the one space of the project: a record's ``width``/``height`` and boxes are those of the
image as it loads, as OpenCV (hence MMDetection) loads it too. The header checks (``data validate``,
the agent's) compare sizes in that space (:func:`upright_size`)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reallod.errors import DataError

ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 9459 × 9459)

# Pillow's guard is one process-wide setting: the threads that open images ahead (detect, eval) take
# turns to set it aside, or one could put back what another had set aside and leave it off for good.
_PILLOW_LIMIT = threading.Lock()


def check_image_root(root: str | os.PathLike) -> None:
    """Refuse an image root that is not a folder, saying whether it is missing or something else."""
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "not found (no such folder)"
        raise DataError(f"image root {what}", path=os.fspath(root))


def resolve_image(root: str, filename: str) -> str | None:
    """Path of an image under ``root``; None when the filename is absolute or climbs out with ``..``."""
    if os.path.isabs(filename) or "\0" in filename:
        return None
    norm = os.path.normpath(filename)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        return None
    return os.path.join(root, norm)


class NotAFileError(OSError):
    """A named pipe, a device or a socket where an image file was expected: opening a pipe waits for a
    writer, so a FIFO in an image folder would stop a run for good."""


def open_header(path: str | Path) -> Image.Image:
    """``Image.open`` (it reads only the header) with Pillow's own size check off: the caller decides
    what size is too large (:func:`open_image`'s budget, with its message, whether Pillow's limit is above
    or below it), or only reads the header (validation). Pillow's errors are the caller's to name, and so
    is :class:`NotAFileError`."""
    mode = os.stat(path).st_mode  # a missing file: FileNotFoundError, as Image.open raises
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a folder: Image.open's IsADirectoryError
        raise NotAFileError("not a regular file (a named pipe, a device or a socket), so not read as an image")
    with _PILLOW_LIMIT:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # no check, hence no warning either: warnings filters are not thread-safe
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def header_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 to 8) the header holds. A PNG may keep its EXIF after the pixels, and
    Pillow decodes the whole image to reach it there: such a PNG counts as upright (as stored), here and
    in :func:`open_image`, so sizes always agree and nothing is decoded to know them."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block counts as none
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened (not decoded) image once its EXIF orientation is applied."""
    width, height = im.size
    return (height, width) if header_orientation(im) in ROTATING_ORIENTATIONS else (width, height)


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB with 8 bits a channel. Pillow converts a 16-bit grey image by clipping at 255 (nearly all of it
    white); keep the high byte instead, as Pillow does for 16-bit colour and OpenCV (hence MMDetection)
    for both."""
    if im.mode == "I" or im.mode.startswith("I;16"):
        high = np.asarray(im).clip(0, 65535).astype(np.uint32) >> 8
        im = Image.fromarray(high.astype(np.uint8))  # mode L
    return im.convert("RGB")


MAX_PIXELS_HINT = "raise --max-pixels if it is genuine"  # for the commands that have the option


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, hint: str = "") -> Image.Image:
    """Decode one image as RGB, upright (EXIF orientation), refusing more than ``max_pixels`` pixels
    (``hint``: what the user can do then, for the message).

    Safe to call from several threads at once."""
    try:
        with open_header(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise DataError(f"image is {width}×{height} = {width * height:,} pixels, above the limit of "
                                f"{max_pixels:,}" + (f" ({hint})" if hint else ""), path=str(path))
            orientation = header_orientation(im)  # the rule of the header checks, so sizes agree
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im) if orientation != 1 else im)
    except FileNotFoundError:
        raise DataError("image not found", path=str(path)) from None
    except NotAFileError as e:
        raise DataError(str(e), path=str(path)) from None
    except Image.DecompressionBombError as e:  # a frame larger than the file's header said (GIF)
        raise DataError(f"image too large: {e}", path=str(path)) from e
    except UnidentifiedImageError as e:
        raise DataError("not an image Pillow can read", path=str(path)) from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt files
        raise DataError(f"cannot decode the image ({e})", path=str(path)) from e
