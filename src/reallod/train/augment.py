"""Training augmentations on a PIL image and its pixel boxes: flip, multi-scale resize, random crop.

Pure functions: every random choice comes from the ``numpy.random.Generator`` passed in, which the
dataset seeds from (seed, epoch, position), so an epoch's samples are the same whatever the worker
count, and a resumed run sees the same images as an uninterrupted one.

The published pipeline flips images without touching the text, so "the cup on the left" then names
the wrong cup. Here a flip also swaps left/right words in every expression (:func:`swap_left_right`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

# left <-> right, with the suffixes that keep the swap a word (leftmost, left-hand, rightwards...).
_LEFT_RIGHT = re.compile(r"\b(left|right)(most|hand|ward|wards|side)?\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """Swap "left" and "right" (and leftmost, left-hand, rightwards...) keeping the letter case.

    Whole words only ("bright", "copyright" and "righteous" are untouched). "right" meaning "correct"
    and "left" meaning "went away" are swapped too: expressions about objects rarely use them.
    """

    def repl(m: re.Match[str]) -> str:
        word, suffix = m.group(1), m.group(2) or ""
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            new = new.upper()
        elif word[0].isupper():
            new = new.capitalize()
        return new + suffix

    return _LEFT_RIGHT.sub(repl, text)


@dataclass(frozen=True)
class AugmentOptions:
    """The published recipe by default; the tiny config uses smaller sizes."""

    flip_prob: float = 0.5
    swap_left_right: bool = True
    scales: tuple[int, ...] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)  # short side
    max_size: int = 1333  # long side limit
    crop_prob: float = 0.5  # else plain multi-scale resize
    crop_pre_scales: tuple[int, ...] = (400, 500, 600)
    crop_pre_max_size: int = 4200
    crop_size: tuple[int, int] = (384, 600)  # crop height/width drawn in this range (pixels)
    crop_tries: int = 10  # crops that would drop every box are redrawn, then the crop is skipped
    min_box_size: float = 1.0  # boxes narrower or lower than this after a crop are dropped
    test_scale: tuple[int, int] = (800, 1333)  # evaluation: short side, long side limit


@dataclass
class Augmented:
    image: Image.Image
    boxes: np.ndarray  # (K, 4) xyxy pixels in the new image
    keep: np.ndarray  # (K,) indices of the input boxes that survived
    flipped: bool


def hflip(image: Image.Image, boxes: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Mirror the image left-right; x1' = W - x2, x2' = W - x1."""
    width = image.width
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), out


def resize_scale(width: int, height: int, short: int, max_long: int) -> float:
    """Scale factor that brings the short side to ``short`` unless the long side would pass ``max_long``."""
    return min(short / min(width, height), max_long / max(width, height))


def resize(image: Image.Image, boxes: np.ndarray, short: int, max_long: int) -> tuple[Image.Image, np.ndarray]:
    """Keep-ratio resize (bilinear); boxes scaled by the same factors as the pixels."""
    width, height = image.size
    scale = resize_scale(width, height, short, max_long)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) == (width, height):
        return image, boxes.copy()
    factors = np.array([new_w / width, new_h / height, new_w / width, new_h / height])
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR), boxes * factors


def crop_boxes(boxes: np.ndarray, window: tuple[int, int, int, int], min_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes shifted into the crop ``window`` (x1, y1, x2, y2) and clipped; those that vanish are dropped."""
    x1, y1, x2, y2 = window
    out = boxes - np.array([x1, y1, x1, y1], dtype=boxes.dtype)
    out[:, 0::2] = out[:, 0::2].clip(0, x2 - x1)
    out[:, 1::2] = out[:, 1::2].clip(0, y2 - y1)
    keep = np.flatnonzero((out[:, 2] - out[:, 0] >= min_size) & (out[:, 3] - out[:, 1] >= min_size))
    return out[keep], keep


def random_crop(image: Image.Image, boxes: np.ndarray, rng: np.random.Generator, size_range: tuple[int, int],
                min_box_size: float = 1.0, tries: int = 10) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A crop of random size (each side in ``size_range``, at most the image) at a random place.

    A crop that would leave no box is redrawn up to ``tries`` times; after that the image is kept whole.
    Returns (image, boxes, indices of kept boxes).
    """
    width, height = image.size
    lo, hi = size_range
    for _ in range(max(1, tries)):
        ch = int(rng.integers(min(lo, height), min(hi, height) + 1))
        cw = int(rng.integers(min(lo, width), min(hi, width) + 1))
        top = int(rng.integers(0, height - ch + 1))
        left = int(rng.integers(0, width - cw + 1))
        window = (left, top, left + cw, top + ch)
        cropped, keep = crop_boxes(boxes, window, min_box_size)
        if len(keep) or not len(boxes):
            return image.crop(window), cropped, keep
    return image, boxes.copy(), np.arange(len(boxes))


def augment(image: Image.Image, boxes: np.ndarray, rng: np.random.Generator, opts: AugmentOptions) -> Augmented:
    """Flip (p = ``flip_prob``), then either a multi-scale resize or resize → random crop → multi-scale resize."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.arange(len(boxes))
    flipped = bool(rng.random() < opts.flip_prob)
    if flipped:
        image, boxes = hflip(image, boxes)
    if opts.crop_prob > 0 and rng.random() < opts.crop_prob:
        pre = int(rng.choice(opts.crop_pre_scales))
        image, boxes = resize(image, boxes, pre, opts.crop_pre_max_size)
        image, boxes, kept = random_crop(image, boxes, rng, opts.crop_size, opts.min_box_size, opts.crop_tries)
        keep = keep[kept]
    short = int(rng.choice(opts.scales))
    image, boxes = resize(image, boxes, short, opts.max_size)
    return Augmented(image, boxes, keep, flipped)


def eval_resize(image: Image.Image, boxes: np.ndarray, opts: AugmentOptions) -> tuple[Image.Image, np.ndarray]:
    """The deterministic evaluation transform: resize to ``test_scale``."""
    short, long = opts.test_scale
    return resize(image, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), short, long)
