"""Small real inputs for the agent I/O tests: images on disk, Real-Data records, published tasks."""

from __future__ import annotations

import gzip
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
    text = gzip.decompress(path.read_bytes()).decode() if path.name.endswith(".gz") else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def fake_server_config(path: Path, url: str, *, vlm: bool = True, timeout_s: float = 5.0, attempts: int = 3,
                       backoff_s: float = 0.01, concurrency: int = 8) -> Path:
    """An agent config whose roles all talk to a local fake OpenAI-compatible server."""
    llm = (f"{{backend: openai, model: fake-llm, base_url: '{url}', timeout_s: {timeout_s}, max_tokens: 64, "
           "temperature: 0.0}")
    vlm_role = (f"{{backend: openai, model: fake-vlm, base_url: '{url}', timeout_s: {timeout_s}, max_tokens: 64, "
                "image_format: png}") if vlm else "null"
    path.write_text(f"name: fake\nmax_cycles: 3\nconcurrency: {concurrency}\n"
                    f"retry: {{max_attempts: {attempts}, backoff_s: {backoff_s}, max_backoff_s: {backoff_s * 4}}}\n"
                    f"roles:\n  reflector: {llm}\n  planner: {llm}\n  rewriter: {llm}\n  vlm: {vlm_role}\n")
    return path


def many_tasks(folder: Path, n: int, *, images: int = 5) -> Path:
    """``n`` published-format tasks over ``images`` small generated images, interleaved (so grouping by
    image has something to do), as JSONL in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(images):
        write_image(folder / f"img{k}.png", colour=(40 * k % 256, 200, 30))
    rows = [published(f"img{i % images}.png", f"the square number {i}", [4 + i % 7, 3, 30, 30],
                      caption=f"a picture with a square, variant {i % images}") for i in range(n)]
    return write_jsonl(folder / "tasks.jsonl", rows)
