"""Per-record checks of the Real-Data schema, on the parsed JSON before it becomes a :class:`Record`.

Pure and I/O-free, so the reader, ``data validate`` and the tests share one definition of "valid".
Each problem names the field by its path (``pairs.llm[2].bboxes[0]``) and a kind used for the
summary counts. Checks run on the canonical form, so every spelling variant that `records` reads passes.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Any

from reallod.data.records import PAIR_KEY_ALIASES, RELATIONS, canonical_pairs

# kind → short description (the validate summary lists them in this order)
PROBLEM_KINDS = {
    "bad_json": "line is not valid JSON",
    "bad_utf8": "line is not valid UTF-8",
    "bom": "line starts with a UTF-8 byte-order mark (strict JSON readers reject it)",
    "not_object": "line is not a JSON object",
    "missing_field": "a required field is missing",
    "wrong_type": "a field has the wrong type",
    "bad_size": "height/width not a positive integer",
    "bad_box": "box is not four numbers",
    "nan_box": "box has NaN or infinite coordinates",
    "degenerate_box": "box has no area (x2 <= x1 or y2 <= y1)",
    "negative_box": "box has negative coordinates",
    "box_outside_image": "box extends past the image width/height",
    "empty_category": "category is empty",
    "unknown_relation": "relation is not single/multi",
    "two_spellings": "a key given in both spellings (postive_/positive_) with different values",
    "relation_mismatch": "relation does not match the number of boxes",
    "empty_expression": "expression is empty or whitespace only",
    "invisible_expression": "expression has only zero-width, format or control characters (no token)",
    "no_positive": "pair has no positive expression",
    "positive_and_negative": "expression is both positive and negative for the same pair",
    "image_outside_root": "filename is absolute or leads out of the image root",
    "missing_image": "image file not found under the image root",
    "unreadable_image": "image file cannot be decoded",
    "image_size_mismatch": "image size differs from height/width",
    "duplicate_image": "image has more than one record (data merge combines them)",
    "empty_file": "file holds no records",
    "read_error": "file cannot be read (not gzip, truncated or corrupt)",
}

_INT = int
_NUM = (int, float)
MAX_SIDE = 2**31 - 1  # larger sizes overflow the int32 that image libraries and tensors use


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    field: str
    message: str


def _is_size(v: Any) -> bool:
    """A usable height or width (``true`` is an int to Python, and was compared as 1)."""
    return isinstance(v, _INT) and not isinstance(v, bool) and v > 0


def check_box(box: Any, where: str, height: Any, width: Any, out: list[Problem]) -> None:
    """Append the problems of one xyxy box to ``out``."""
    if not isinstance(box, list) or len(box) != 4 or not all(
        isinstance(v, _NUM) and not isinstance(v, bool) for v in box
    ):
        out.append(Problem("bad_box", where, f"expected [x1, y1, x2, y2] numbers, got {_short(box)}"))
        return
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        out.append(Problem("nan_box", where, f"non-finite coordinate in {box}"))
        return
    if x2 <= x1 or y2 <= y1:
        out.append(Problem("degenerate_box", where, f"no area: {box} (need x2 > x1 and y2 > y1)"))
    if x1 < 0 or y1 < 0:
        out.append(Problem("negative_box", where, f"negative coordinate in {box}"))
    if _is_size(width) and _is_size(height) and (x2 > width or y2 > height):  # else bad_size says it
        out.append(Problem("box_outside_image", where, f"{box} extends past the image ({width}x{height})"))


def text_key(text: str) -> str:
    """How two expressions are compared: case, surrounding and repeated space, and the Unicode form
    (``café`` typed as one letter or as ``e`` + accent) do not make them different."""
    key = text.casefold()
    if key.isascii() and key.isprintable() and "  " not in key:  # most text, at two thirds of the cost
        return key.strip()
    return unicodedata.normalize("NFC", " ".join(key.split()))


def plain_json(line: bytes) -> bool:
    """Whether every string of this JSON text (read by a strict parser: no raw control character in a
    string) is printable ASCII: ASCII, no escape, no DEL (fast scans of C over the line). Then no
    expression of the record is invisible if it is not blank, and :func:`plain_key` is its :func:`text_key`."""
    return line.isascii() and b"\\" not in line and b"\x7f" not in line


def plain_key(text: str) -> str:
    """:func:`text_key` of printable ASCII text (:func:`plain_json`), with less work."""
    return (" ".join(text.split()) if "  " in text else text.strip()).casefold()


def visible(text: str) -> bool:
    """Whether ``text`` has a character a tokenizer keeps: not only whitespace, zero-width and other
    format characters (U+200B, U+FEFF) or control characters (NUL), which BERT's drops."""
    return (text.isprintable() and not text.isspace() and bool(text)) or \
        any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text)


def _check_expressions(value: Any, where: str, out: list[Problem], plain: bool) -> list[str]:
    """The usable expressions (``plain``: :func:`plain_json` said so of the record)."""
    if not isinstance(value, list):
        out.append(Problem("wrong_type", where, f"expected a list of strings, got {_typename(value)}"))
        return []
    good = []
    for i, e in enumerate(value):
        if not isinstance(e, str):
            out.append(Problem("wrong_type", f"{where}[{i}]", f"expected a string, got {_typename(e)}"))
        elif not e.strip():
            out.append(Problem("empty_expression", f"{where}[{i}]", f"empty or whitespace-only expression {e!r}"))
        elif not plain and not visible(e):
            out.append(Problem("invisible_expression", f"{where}[{i}]",
                               f"expression {e!r} has only zero-width, format or control characters: "
                               "a tokenizer gives it no token; remove it"))
        else:
            good.append(e)
    return good


def check_pair(pair: Any, where: str, height: Any, width: Any, out: list[Problem], plain: bool = False) -> None:
    """Append the problems of one canonicalised pair to ``out`` (``plain``: see :func:`plain_json`)."""
    if not isinstance(pair, dict):
        out.append(Problem("wrong_type", where, f"expected a pair object, got {_typename(pair)}"))
        return
    bboxes = pair.get("bboxes")
    nboxes = 0
    if bboxes is None:
        out.append(Problem("missing_field", f"{where}.bboxes", "missing"))
    elif not isinstance(bboxes, list) or not bboxes:
        out.append(Problem("wrong_type", f"{where}.bboxes", f"expected a non-empty list of boxes, got {_short(bboxes)}"))
    else:
        if not isinstance(bboxes[0], list):
            bboxes = [bboxes]  # one flat box
        nboxes = len(bboxes)
        for j, box in enumerate(bboxes):
            check_box(box, f"{where}.bboxes[{j}]", height, width, out)
    category = pair.get("category")
    if category is None:
        out.append(Problem("missing_field", f"{where}.category", "missing"))
    elif not isinstance(category, str):
        out.append(Problem("wrong_type", f"{where}.category", f"expected a string, got {_typename(category)}"))
    elif not category.strip():
        out.append(Problem("empty_category", f"{where}.category", "empty category"))
    relation = pair.get("relation")
    if relation is not None:
        if relation not in RELATIONS:
            out.append(Problem("unknown_relation", f"{where}.relation", f"unknown relation {_short(relation)} (expected 'single' or 'multi')"))
        elif relation == "single" and nboxes > 1:
            out.append(Problem("relation_mismatch", f"{where}.relation", f"'single' with {nboxes} boxes"))
    if "positive_expressions" not in pair:
        out.append(Problem("missing_field", f"{where}.positive_expressions", "missing"))
        positives: list[str] = []
    else:
        positives = _check_expressions(pair["positive_expressions"], f"{where}.positive_expressions", out, plain)
        if not positives and isinstance(pair["positive_expressions"], list) and not pair["positive_expressions"]:
            out.append(Problem("no_positive", f"{where}.positive_expressions", "no positive expression"))
    negatives = _check_expressions(pair.get("negative_expressions", []), f"{where}.negative_expressions", out, plain)
    if positives and negatives:
        key = plain_key if plain else text_key
        pos = set(map(key, positives))
        both = [(i, n) for i, n in enumerate(negatives) if key(n) in pos]
        for i, n in both:
            out.append(Problem("positive_and_negative", f"{where}.negative_expressions[{i}]",
                               f"{n!r} is also a positive expression of this pair"))
    for key in ("origin_positive_expressions",):
        if key in pair and pair[key] is not None:
            _check_expressions(pair[key], f"{where}.{key}", out, plain)
    for alias, canon in PAIR_KEY_ALIASES.items():
        if alias in pair:  # kept by canonicalisation only when the two values differ
            out.append(Problem("two_spellings", f"{where}.{alias}",
                               f"both {alias!r} and {canon!r}, with different values: a reader of one spelling "
                               "(the published training code reads the misspelt one) sees another list; keep one"))


def check_record(obj: Any, line: bytes | None = None) -> list[Problem]:
    """All schema problems of one parsed line; an empty list means it is a valid record. ``line``, the
    JSON text ``obj`` was read from, makes the check of its expressions faster (:func:`plain_json`)."""
    if not isinstance(obj, dict):
        return [Problem("not_object", "", f"expected a JSON object, got {_typename(obj)}")]
    out: list[Problem] = []
    filename = obj.get("filename")
    if filename is None:
        out.append(Problem("missing_field", "filename", "missing"))
    elif not isinstance(filename, str) or not filename.strip():
        out.append(Problem("wrong_type", "filename", f"expected a non-empty string, got {_short(filename)}"))
    elif "\0" in filename:
        out.append(Problem("wrong_type", "filename", f"{_short(filename)} holds a NUL character, which no file "
                           "name can"))
    for key in ("height", "width"):
        v = obj.get(key)
        if v is None:
            out.append(Problem("missing_field", key, "missing"))
        elif isinstance(v, float) and v.is_integer() and v > MAX_SIDE:  # 1e20: JSON's big integers read as floats
            out.append(Problem("bad_size", key, f"{_short(v)} is too large (at most {MAX_SIDE})"))
        elif not isinstance(v, _INT) or isinstance(v, bool) or v <= 0:
            out.append(Problem("bad_size", key, f"expected a positive integer, got {_short(v)}"))
        elif v > MAX_SIDE:
            out.append(Problem("bad_size", key, f"{_short(v)} is too large (at most {MAX_SIDE})"))
    height = obj.get("height") if isinstance(obj.get("height"), int) and obj.get("height", 0) > 0 else None
    width = obj.get("width") if isinstance(obj.get("width"), int) and obj.get("width", 0) > 0 else None
    caption = obj.get("caption")
    if caption is not None and not isinstance(caption, str):
        out.append(Problem("wrong_type", "caption", f"expected a string, got {_typename(caption)}"))
    pairs = obj.get("pairs")
    if pairs is None:
        out.append(Problem("missing_field", "pairs", "missing"))
        return out
    if not isinstance(pairs, dict):
        out.append(Problem("wrong_type", "pairs", f"expected an object of source → pairs, got {_typename(pairs)}"))
        return out
    plain = line is not None and plain_json(line)
    for source, items in canonical_pairs(pairs).items():
        if not isinstance(items, list):
            out.append(Problem("wrong_type", f"pairs.{source}", f"expected a list of pairs, got {_typename(items)}"))
            continue
        for i, pair in enumerate(items):
            check_pair(pair, f"pairs.{source}[{i}]", height, width, out, plain)
    return out


def _typename(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def _short(v: Any, limit: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."
