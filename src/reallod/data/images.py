"""Decoding one image file as the detector, training and evaluation all need it: RGB, upright (EXIF
orientation applied, as cameras and phones store many photos rotated), and refused, before decoding,
when larger than a pixel budget. Errors name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from reallod.errors import DataError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 9459 × 9459)


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image as RGB, upright (EXIF orientation), refusing more than ``max_pixels`` pixels."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # opening reads only the header; the size is checked below, before decoding
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise DataError(f"image is {width}×{height} = {width * height:,} pixels, above the "
                                    f"limit of {max_pixels:,} (raise --max-pixels if it is genuine)", path=str(path))
                im.load()
                return ImageOps.exif_transpose(im).convert("RGB")
    except Image.DecompressionBombError as e:
        raise DataError(f"image too large: {e}", path=str(path)) from e
    except UnidentifiedImageError as e:
        raise DataError("not an image Pillow can read", path=str(path)) from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt files
        raise DataError(f"cannot decode the image ({e})", path=str(path)) from e
    finally:
        Image.MAX_IMAGE_PIXELS = previous
