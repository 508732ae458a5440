"""Small real inputs for the agent I/O tests: images on disk, Real-Data records, published tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def write_image(path: Path, size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def pair(boxes: list[list[float]], category: str, positives: list[str], negatives: list[str] | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"bboxes": boxes, "category": category, "relation": "multi" if len(boxes) > 1 else "single",
            "positive_expressions": positives, "negative_expressions": negatives or [], **extra}


def record(filename: str, pairs: dict[str, list[dict[str, Any]]], *, size: tuple[int, int] = (64, 48),
           caption: str | None = "a red square on its own") -> dict[str, Any]:
    r: dict[str, Any] = {"filename": filename, "height": size[1], "width": size[0], "pairs": pairs}
    if caption is not None:
        r["caption"] = caption
    return r


def published(image_path: str, raw: str, bbox_xywh: list[float], category: str = "square", *,
              size: tuple[int, int] = (64, 48), others: list[dict[str, Any]] | None = None,
              caption: str | None = "a red square on its own") -> dict[str, Any]:
    t: dict[str, Any] = {"image_path": image_path, "height": size[1], "width": size[0], "raw_expression": raw,
                         "object_locations": {"chosen_object": {"id": 0, "category": category, "bbox": bbox_xywh},
                                              "other_objects": others or []}}
    if caption is not None:
        t["global_caption"] = caption
    return t


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
