"""Coloured-shapes Real-Data: images with shapes at known places and expressions that name them.

The tiny CPU config trains on this out of the box, and the learning test measures detection quality
on held-out images of it. Every image holds 1-3 shapes, each a distinct (colour, kind) combination,
so an expression such as "red circle" names exactly one object. Per shape the record has:

- ``vlm_short``: "red circle" / "the red circle"; negatives name colour/kind combinations that are
  absent from the image ("green circle", "red triangle");
- ``llm``: relations to another shape, "the red circle left of the blue square" (or above/below);
  negatives swap the relation (a hard negative) or name absent shapes;
- ``vlm_long``: "a red circle in the left part of the picture";
- a ``multi`` pair "circles" when two shapes share a kind (category = the kind).

Deterministic in ``seed``; images are PNGs drawn with PIL.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from reallod.data.io import write_records
from reallod.errors import ConfigError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 215), "yellow": (235, 200, 30),
}
KINDS = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 pixels

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def _place(rng: np.random.Generator, n: int, width: int, height: int, min_size: int, max_size: int
           ) -> list[tuple[float, float, float, float]]:
    """Up to ``n`` non-overlapping square boxes (with a small gap), by rejection sampling."""
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(200):
        if len(boxes) == n:
            break
        s = int(rng.integers(min_size, max_size + 1))
        x, y = int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1))
        box = (float(x), float(y), float(x + s), float(y + s))
        if all(box[2] + 3 <= b[0] or b[2] + 3 <= box[0] or box[3] + 3 <= b[1] or b[3] + 3 <= box[1] for b in boxes):
            boxes.append(box)
    return boxes


def draw_shapes(shapes: list[Shape], size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """The image: a light, slightly noisy background and each shape filled in its colour."""
    width, height = size
    base = rng.integers(200, 246)
    noise = rng.normal(0, 6, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for s in shapes:
        x1, y1, x2, y2 = s.box
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
        elif s.kind == "square":
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
        else:
            draw.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=fill)
    return image


def _relation(a: Shape, b: Shape) -> tuple[str, str]:
    """The stronger of a's horizontal/vertical relation to b, and its opposite."""
    (ax, ay), (bx, by) = a.centre, b.centre
    if abs(ax - bx) >= abs(ay - by):
        return ("left of", "right of") if ax < bx else ("right of", "left of")
    return ("above", "below") if ay < by else ("below", "above")


def _third(x: float, width: int) -> str:
    return "left" if x < width / 3 else ("right" if x > 2 * width / 3 else "middle")


def shapes_record(shapes: list[Shape], filename: str, size: tuple[int, int], rng: np.random.Generator
                  ) -> dict[str, Any]:
    """The Real-Data record of one image (canonical form)."""
    width, height = size
    present = {s.name for s in shapes}
    absent = [f"{c} {k}" for c, k in itertools.product(COLOURS, KINDS) if f"{c} {k}" not in present]
    short, llm, long_ = [], [], []
    for s in shapes:
        box = [list(s.box)]
        negs = [f"{n}" for n in rng.permutation(absent)[:6]]
        short.append({"bboxes": box, "category": s.kind, "relation": "single",
                      "positive_expressions": [s.name, f"the {s.name}"],
                      "negative_expressions": negs + [f"the {n}" for n in negs[:2]]})
        others = [o for o in shapes if o is not s]
        if others:
            pos, neg = [], []
            for o in others:
                rel, opposite = _relation(s, o)
                pos.append(f"the {s.name} {rel} the {o.name}")
                neg.append(f"the {s.name} {opposite} the {o.name}")
            neg += [f"the {n} {_relation(s, others[0])[0]} the {others[0].name}" for n in negs[:2]]
            llm.append({"bboxes": box, "category": s.kind, "relation": "single",
                        "positive_expressions": pos, "negative_expressions": neg})
        where = _third(s.centre[0], width)
        long_.append({"bboxes": box, "category": s.kind, "relation": "single",
                      "positive_expressions": [f"a {s.name} in the {where} part of the picture"],
                      "negative_expressions": [f"a {n} in the {where} part of the picture" for n in negs[:3]]})
    for kind in KINDS:
        group = [s for s in shapes if s.kind == kind]
        if len(group) >= 2:
            missing = [k for k in KINDS if not any(s.kind == k for s in shapes)]
            short.append({"bboxes": [list(s.box) for s in group], "category": kind, "relation": "multi",
                          "positive_expressions": [PLURALS[kind], f"all {PLURALS[kind]}"],
                          "negative_expressions": [PLURALS[k] for k in missing]})
    pairs: dict[str, Any] = {"vlm_short": short, "vlm_long": long_}
    if llm:
        pairs["llm"] = llm
    return {"filename": filename, "height": height, "width": width, "pairs": pairs}


def random_shapes(rng: np.random.Generator, size: tuple[int, int], max_shapes: int = 3) -> list[Shape]:
    """1 to ``max_shapes`` shapes, each side 22-44% of the image's shorter side, never overlapping."""
    width, height = size
    n = int(rng.integers(1, max_shapes + 1))
    side = min(width, height)
    boxes = _place(rng, n, width, height, max(4, round(0.22 * side)), max(5, round(0.44 * side)))
    combos = list(itertools.product(COLOURS, KINDS))
    picks = rng.choice(len(combos), size=len(boxes), replace=False)
    return [Shape(combos[i][0], combos[i][1], b) for i, b in zip(picks, boxes, strict=True)]


def make_shapes_dataset(out_dir: str | Path, *, num_train: int = 200, num_val: int = 40, seed: int = 0,
                        size: tuple[int, int] = (128, 128), max_shapes: int = 3) -> dict[str, Path]:
    """Write ``images/*.png``, ``train.jsonl`` and ``val.jsonl`` under ``out_dir``; returns their paths.

    Val images are drawn from a generator independent of the train one (held out, same kind).
    """
    if num_train < 1 or num_val < 0:
        raise ConfigError(f"synthetic data needs num_train >= 1 and num_val >= 0, not {num_train}/{num_val}")
    if min(size) < 16 or max_shapes < 1:
        raise ConfigError(f"synthetic images need sides >= 16 and max_shapes >= 1, not {size} / {max_shapes}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = {"root": out, "images": out, "train": out / "train.jsonl", "val": out / "val.jsonl"}
    for split, n, stream in (("train", num_train, 0), ("val", num_val, 1)):
        rng = np.random.default_rng([seed, stream])
        records = []
        for i in range(n):
            shapes = random_shapes(rng, size, max_shapes)
            name = f"images/{split}_{i:05d}.png"
            draw_shapes(shapes, size, rng).save(out / name)
            records.append(shapes_record(shapes, name, size, rng))
        write_records(paths[split], records)
    (out / "meta.json").write_text(json.dumps(_meta(num_train, num_val, seed, size, max_shapes)) + "\n")
    return paths


def _meta(num_train: int, num_val: int, seed: int, size: tuple[int, int], max_shapes: int) -> dict[str, Any]:
    return {"generator": "reallod.train.synthetic", "version": 1, "num_train": num_train, "num_val": num_val,
            "seed": seed, "size": list(size), "max_shapes": max_shapes}


def ensure_shapes_dataset(out_dir: str | Path, *, num_train: int = 200, num_val: int = 40, seed: int = 0,
                          size: tuple[int, int] = (128, 128), max_shapes: int = 3) -> dict[str, Path]:
    """Generate the dataset unless the same one (same parameters, per ``meta.json``) is already there."""
    out = Path(out_dir)
    try:
        same = json.loads((out / "meta.json").read_text()) == _meta(num_train, num_val, seed, size, max_shapes)
    except (OSError, ValueError):
        same = False
    if same and (out / "train.jsonl").is_file() and (out / "val.jsonl").is_file():
        return {"root": out, "images": out, "train": out / "train.jsonl", "val": out / "val.jsonl"}
    return make_shapes_dataset(out, num_train=num_train, num_val=num_val, seed=seed, size=size,
                               max_shapes=max_shapes)
