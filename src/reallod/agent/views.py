"""The edited views of an image the VLM tool is shown, at exact pixel geometry.

Boxes are float pixel xyxy. A box covers every pixel it touches: ``floor(x1) .. ceil(x2)``, so a box
smaller than a pixel still covers one pixel and every view is non-empty. Views:

- ``object_crop``: the box's pixels, cropped;
- ``extended_crop``: a window of 2w × 2h centred on the box (never smaller than the box's pixels),
  clipped to the image, with the box outlined in red;
- ``highlight``: the whole image with the box outlined in red.

The outline is drawn on the box's own border pixels, inward, ``max(1, round(1% of the shorter side of
the view))`` pixels wide, so it never hides what surrounds the object.
"""

from __future__ import annotations

import math
from typing import Final

from PIL import Image, ImageDraw

from reallod.errors import DataError

OBJECT_CROP: Final = "object_crop"
EXTENDED_CROP: Final = "extended_crop"
HIGHLIGHT: Final = "highlight"
VIEWS: tuple[str, ...] = (OBJECT_CROP, EXTENDED_CROP, HIGHLIGHT)
RED: Final = (255, 0, 0)

PixelBox = tuple[int, int, int, int]


def outline_width(width: int, height: int) -> int:
    """About 1% of the shorter side, at least one pixel."""
    return max(1, round(0.01 * min(width, height)))


def pixel_box(box_xyxy: list[float] | tuple[float, ...], width: int, height: int) -> PixelBox:
    """The image pixels a float box touches, clipped to the image; at least one pixel.

    Raises DataError for a malformed box or one that lies wholly outside the image.
    """
    try:
        x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    except (TypeError, ValueError) as e:
        raise DataError(f"box {box_xyxy!r} is not four numbers") from e
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataError(f"box {box_xyxy!r} has a non-finite coordinate")
    if x2 < x1 or y2 < y1:
        raise DataError(f"box {box_xyxy!r} has x2 < x1 or y2 < y1")
    if x1 > width or y1 > height or x2 < 0 or y2 < 0 or (x1 == width and x2 == width) \
            or (y1 == height and y2 == height):
        raise DataError(f"box {box_xyxy!r} lies outside the {width}x{height} image")
    px1, py1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    px2, py2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    # A zero-area box on a pixel edge still means the pixel it sits on.
    if px2 <= px1:
        px1 = min(px1, width - 1)
        px2 = px1 + 1
    if py2 <= py1:
        py1 = min(py1, height - 1)
        py2 = py1 + 1
    return px1, py1, px2, py2


def extended_box(box_xyxy: list[float] | tuple[float, ...], width: int, height: int) -> PixelBox:
    """A 2w × 2h window centred on the box, covering at least the box's pixels, clipped to the image."""
    bx1, by1, bx2, by2 = pixel_box(box_xyxy, width, height)
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ex1, ey1 = math.floor(cx - w), math.floor(cy - h)
    ex2, ey2 = math.ceil(cx + w), math.ceil(cy + h)
    return (max(0, min(ex1, bx1)), max(0, min(ey1, by1)),
            min(width, max(ex2, bx2)), min(height, max(ey2, by2)))


def _outline(image: Image.Image, box: PixelBox) -> None:
    x1, y1, x2, y2 = box
    ImageDraw.Draw(image).rectangle((x1, y1, x2 - 1, y2 - 1), outline=RED,
                                    width=outline_width(image.width, image.height))


def make_view(image: Image.Image, box_xyxy: list[float] | tuple[float, ...],
              name: str) -> tuple[Image.Image, list[int]]:
    """Render view ``name`` of ``image`` around the box; return (view image, crop box xyxy in pixels).

    The input image is never modified. Unknown view names and unusable boxes raise DataError.
    """
    if name not in VIEWS:
        raise DataError(f"unknown view {name!r}; views are {', '.join(VIEWS)}")
    rgb = image.convert("RGB") if image.mode != "RGB" else image.copy()
    box = pixel_box(box_xyxy, rgb.width, rgb.height)
    if name == OBJECT_CROP:
        return rgb.crop(box), list(box)
    if name == HIGHLIGHT:
        _outline(rgb, box)
        return rgb, [0, 0, rgb.width, rgb.height]
    crop = extended_box(box_xyxy, rgb.width, rgb.height)
    view = rgb.crop(crop)
    cx1, cy1 = crop[0], crop[1]
    _outline(view, (box[0] - cx1, box[1] - cy1, box[2] - cx1, box[3] - cy1))
    return view, list(crop)
