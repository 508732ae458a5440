"""Decoding one image file as the detector, training and evaluation all need it: RGB, upright (EXIF
orientation applied, as cameras and phones store many photos rotated), and refused, before decoding,
when larger than a pixel budget. Errors name the file."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from reallod.errors import DataError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 9459 × 9459)

# Pillow's guard is one process-wide setting: the threads that open images ahead (detect, eval) take
# turns to set it aside, or one could put back what another had set aside and leave it off for good.
_PILLOW_LIMIT = threading.Lock()


def open_header(path: str | Path) -> Image.Image:
    """``Image.open`` (it reads only the header) with Pillow's own size check off: the caller decides
    what size is too large (:func:`open_image`'s budget, with its message, whether Pillow's limit is above
    or below it), or only reads the header (validation). Pillow's errors are the caller's to name."""
    with _PILLOW_LIMIT:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # no check, hence no warning either: warnings filters are not thread-safe
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image as RGB, upright (EXIF orientation), refusing more than ``max_pixels`` pixels.

    Safe to call from several threads at once."""
    try:
        with open_header(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise DataError(f"image is {width}×{height} = {width * height:,} pixels, above the "
                                f"limit of {max_pixels:,} (raise --max-pixels if it is genuine)", path=str(path))
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError:
        raise DataError("image not found", path=str(path)) from None
    except Image.DecompressionBombError as e:  # a frame larger than the file's header said (GIF)
        raise DataError(f"image too large: {e}", path=str(path)) from e
    except UnidentifiedImageError as e:
        raise DataError("not an image Pillow can read", path=str(path)) from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt files
        raise DataError(f"cannot decode the image ({e})", path=str(path)) from e
