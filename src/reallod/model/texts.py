"""Turn the ``--texts`` values a user types into a list of expressions.

Accepted forms (mixable, repeatable): ``"a dog . a red car ."`` (expressions separated by a period
with a space before it), one expression per value, a ``.txt`` file with one expression (or one
``a . b .`` line) per line, and ``$: coco`` for the 80 COCO class names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from reallod.errors import ConfigError, DataError, not_utf8
from reallod.model.token_prompt import sanitize

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
NAMED_SETS = {"coco": COCO_CLASSES}

# A separator is a period that follows whitespace ("a . b ."); "Mr. Smith" stays one expression.
_SEPARATOR = re.compile(r"\s\.(?=\s|$)")


def split_caption(text: str) -> list[str]:
    """``"a dog . the red car ."`` → ``["a dog", "the red car"]``; blanks are dropped."""
    return [p.strip() for p in _SEPARATOR.split(" " + text) if p.strip() and p.strip() != "."]


def parse_texts(values: Iterable[str]) -> list[str]:
    """Expressions from every ``--texts`` value, in order, duplicates removed (first kept). One that is
    empty once the model's phrase splitters (``.``, ``?``) are taken out is refused here, before a model
    is loaded or anything written."""
    out: list[str] = []
    for value in values:
        stripped = value.strip()
        if stripped.startswith("$:"):
            name = stripped[2:].strip().lower()
            if name not in NAMED_SETS:
                raise ConfigError(f"unknown text set {stripped!r}; known: "
                                  + ", ".join(f"'$: {k}'" for k in NAMED_SETS))
            out.extend(NAMED_SETS[name])
        elif stripped.lower().endswith(".txt") and "\n" not in stripped:
            out.extend(_read_text_file(Path(stripped)))
        else:
            for e in split_caption(value):
                if not sanitize(e):
                    raise ConfigError(f"--texts: {_no_words(e)}")
                out.append(e)
    seen: set[str] = set()
    unique = [e for e in out if not (e in seen or seen.add(e))]
    if not unique:
        raise ConfigError("no expressions given: --texts holds only whitespace and ' .' separators")
    return unique


def _no_words(expression: str) -> str:
    return (f"the expression {expression!r} is empty once '.' and '?' are removed (they split phrases inside the "
            "model); give it words, or leave it out")


def _read_text_file(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError("text file not found", path=str(path)) from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(not_utf8(e), path=str(path)) from e
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):  # each refused where it is, in a file of thousands
        for e in split_caption(line):
            if not sanitize(e):
                raise DataError(_no_words(e), path=str(path), line=lineno)
            out.append(e)
    if not out:
        raise DataError("no expressions in the file (it is empty or only whitespace)", path=str(path))
    return out
