"""What the demo pages' form fields mean: expressions, boxes, tables. Pure functions, no I/O.

Texts typed on a page are only ever texts: unlike ``reallod detect --texts``, a line ending in ``.txt``
is an expression, never a file to read.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

from reallod.demo.limits import DemoInputError, DemoLimits
from reallod.model import token_prompt as P
from reallod.model.detections import Detections
from reallod.model.texts import split_caption

TABLE_HEADERS = ["expression", "score", "x1", "y1", "x2", "y2"]
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_expressions(text: str | None, limits: DemoLimits) -> list[str]:
    """One expression per line (``a dog . a red car .`` on one line also works); blanks and repeats dropped."""
    found: list[str] = []
    for line in (text or "").splitlines():
        found.extend(split_caption(line))
    seen: set[str] = set()
    unique = [e for e in found if not (e in seen or seen.add(e))]
    if not unique:
        raise DemoInputError("enter at least one expression to look for, one per line")
    if len(unique) > limits.max_expressions:
        raise DemoInputError(f"{len(unique)} expressions: this demo takes at most {limits.max_expressions} "
                             "per request")
    for e in unique:
        if len(e) > limits.max_expression_chars:
            raise DemoInputError(f"expression {e[:40]!r}... is {len(e)} characters long; the limit is "
                                 f"{limits.max_expression_chars}")
        if not P.sanitize(e):
            raise DemoInputError(f"expression {e!r} has no words once '.' and '?' are removed")
    return unique


def parse_box(text: str | None, width: int, height: int) -> list[float]:
    """``x1, y1, x2, y2`` in pixels (brackets and spaces allowed), clipped to the image."""
    numbers = _NUMBER.findall(text or "")
    if len(numbers) != 4:
        raise DemoInputError("give the box as four numbers x1, y1, x2, y2 in pixels "
                             "(or click two opposite corners on the image)")
    x1, y1, x2, y2 = (float(v) for v in numbers)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DemoInputError("the box coordinates must be finite numbers")
    if x2 <= x1 or y2 <= y1:
        raise DemoInputError(f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]: x2 must be above x1 and y2 above y1")
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if cx2 - cx1 < 1 or cy2 - cy1 < 1:
        where = "is under a pixel wide or high inside" if (cx1, cy1, cx2, cy2) == (x1, y1, x2, y2) else "lies outside"
        raise DemoInputError(f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] {where} the {width}×{height} image")
    return [cx1, cy1, cx2, cy2]


def format_box(box: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in (round(float(v), 1) for v in box))


def box_from_clicks(first: Sequence[float], second: Sequence[float]) -> list[float]:
    """The box with two clicked points as opposite corners."""
    (ax, ay), (bx, by) = first[:2], second[:2]
    return [float(min(ax, bx)), float(min(ay, by)), float(max(ax, bx)), float(max(ay, by))]


def detection_rows(detections: Detections, threshold: float) -> list[list[str | float]]:
    """Table rows of the boxes at or above ``threshold``: by expression, best score first."""
    shown = detections.above(threshold).sorted()
    return [[shown.expressions[int(label)], round(float(score), 3), *(round(float(v), 1) for v in box)]
            for box, score, label in zip(shown.xyxy, shown.scores, shown.labels, strict=True)]


def legend_html(expressions: Sequence[str], colours: Sequence[tuple[int, int, int]],
                counts: Sequence[int]) -> str:
    """One coloured swatch per expression with its box count, matching the drawn boxes' colours."""
    items = []
    for expr, (r, g, b), n in zip(expressions, colours, counts, strict=True):
        items.append(f'<li class="reallod-legend-item"><span style="display:inline-block;width:0.9em;'
                     f'height:0.9em;margin-right:0.4em;background:rgb({r},{g},{b})"></span>'
                     f'{html.escape(expr)} <b>{n}</b></li>')
    return '<ul class="reallod-legend" style="list-style:none;padding-left:0">' + "".join(items) + "</ul>"


MAX_CATEGORY_CHARS = 100  # an object's category: "person", "red cup on the left"...
BOX_CHARS = 80  # room for a box's four numbers on a line of other objects ("1234.5, 12.25, ...")


def parse_others(text: str | None, width: int, height: int, *, limit: int = 50,
                 max_chars: int = MAX_CATEGORY_CHARS) -> list[tuple[str, list[float]]]:
    """Other objects of the image, one per line: ``category: x1, y1, x2, y2`` (blank lines ignored). The field
    is bounded before anything is parsed (``limit`` lines of a ``max_chars`` category and a box at most), and
    so is each category: what reaches the agent's prompts stays small."""
    text = text or ""
    if len(text) > (most := limit * (max_chars + BOX_CHARS)):
        raise DemoInputError(f"the other objects are {len(text)} characters long; the limit is {most} ({limit} "
                             f"lines of at most {max_chars} characters of category and a box)")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > limit:
        raise DemoInputError(f"{len(lines)} other objects: this demo takes at most {limit}")
    out: list[tuple[str, list[float]]] = []
    for n, line in lines:
        category, sep, box = line.rpartition(":")
        if not sep or not category.strip():
            raise DemoInputError(f"other objects, line {n}: write it as 'category: x1, y1, x2, y2'")
        if len(category.strip()) > max_chars:
            raise DemoInputError(f"other objects, line {n}: the category is {len(category.strip())} characters long; "
                                 f"the limit is {max_chars}")
        try:
            out.append((category.strip(), parse_box(box, width, height)))
        except DemoInputError as e:
            raise DemoInputError(f"other objects, line {n}: {e}") from None
    return out


def format_others(others: Sequence[tuple[str, Sequence[float]]]) -> str:
    return "\n".join(f"{category}: {format_box(box)}" for category, box in others)


def check_text(value: str | None, what: str, max_chars: int) -> str:
    """A required free-text field, stripped and within its length limit."""
    text = (value or "").strip()
    if not text:
        raise DemoInputError(f"enter the {what}")
    if len(text) > max_chars:
        raise DemoInputError(f"the {what} is {len(text)} characters long; the limit is {max_chars}")
    return text
