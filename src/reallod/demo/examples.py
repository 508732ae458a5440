"""The example images bundled with the demos, and what each page preloads for them.

``examples/examples.json`` lists, per page, an image file of this folder and its inputs: expressions
for the detector page; box, category, other objects, caption and raw expression for the agent page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


@dataclass(frozen=True)
class DetectExample:
    image: Path
    expressions: list[str]


@dataclass(frozen=True)
class AgentExample:
    image: Path
    category: str
    box: list[float]
    caption: str
    expression: str
    others: list[tuple[str, list[float]]] = field(default_factory=list)


@lru_cache(maxsize=1)
def _index() -> dict:
    return json.loads((EXAMPLES_DIR / "examples.json").read_text(encoding="utf-8"))


def detect_examples() -> list[DetectExample]:
    return [DetectExample(EXAMPLES_DIR / e["image"], list(e["expressions"])) for e in _index()["detect"]]


def agent_examples() -> list[AgentExample]:
    return [AgentExample(EXAMPLES_DIR / e["image"], e["category"], [float(v) for v in e["box"]], e["caption"],
                         e["expression"], [(o["category"], [float(v) for v in o["box"]]) for o in e.get("others", [])])
            for e in _index()["agent"]]
