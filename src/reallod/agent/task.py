"""What one re-alignment task is, and what comes out of it.

These types are the contract between the task readers, the workflow and the writers: the workflow
only sees a :class:`Task` and returns a :class:`TaskResult`; nothing else crosses that line.
Boxes are pixel xyxy everywhere inside the project (the published task list's xywh is converted on
the way in).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Box = list[float]

Verdict = Literal["correct", "rewritten", "wrong", "unresolved", "failed"]
"""correct: the raw expression was judged correct as given; rewritten: a rewrite was judged correct;
wrong: still wrong when the cycles ran out; unresolved: still uncertain when the cycles ran out;
failed: the task could not be run (bad input, unusable model output after retries)."""

VERDICTS: tuple[str, ...] = ("correct", "rewritten", "wrong", "unresolved", "failed")


@dataclass(slots=True)
class ObjectRef:
    """An object of the image: one box, or several for a group (relation ``multi``)."""

    category: str
    bboxes: list[Box]
    id: str | int | None = None

    def union_box(self) -> Box:
        xs1, ys1, xs2, ys2 = zip(*self.bboxes, strict=True)
        return [min(xs1), min(ys1), max(xs2), max(ys2)]


@dataclass(slots=True)
class PairRef:
    """Where a task came from in a Real-Data file, so its result can be written back in place."""

    record_index: int
    source: str
    pair_index: int
    expression_index: int


@dataclass(slots=True)
class Task:
    task_id: str
    image_path: str  # relative to the image root
    height: int
    width: int
    raw_expression: str
    chosen: ObjectRef
    others: list[ObjectRef] = field(default_factory=list)
    caption: str | None = None
    origin: PairRef | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Step:
    """One role call: everything needed to replay or audit it."""

    cycle: int
    role: str  # reflector | planner | rewriter | vlm
    messages: list[dict[str, Any]]
    raw_response: str = ""
    decision: dict[str, Any] | None = None
    view: dict[str, Any] | None = None  # {"name": ..., "crop_box": [x1, y1, x2, y2]} for VLM calls
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1  # the workflow's tries (again after an unusable reply)
    requests: int = 0  # requests sent for them: the backend's retries (a 429, a timeout) included
    error: str | None = None
    repaired: bool = False  # the reply needed json-repair to parse
    rejected: list[dict[str, Any]] = field(default_factory=list)  # earlier attempts: {"attempt", "raw"?, "error"}
    # of the attempts (and tokens above), those the response cache answered: [requests, prompt, completion
    # tokens]; the model was asked the others (a rerun's cost is what it asked)
    cached: list[int] = field(default_factory=lambda: [0, 0, 0])
    # the values the role's template was rendered with (roles.PLACEHOLDERS, less "format"): re-rendering
    # them with the template gives ``messages`` again; the fine-tuning data is built from them
    values: dict[str, Any] | None = None


def model_cost(step: Mapping[str, Any]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A recorded step's (requests, prompt tokens, completion tokens): first those the model was asked
    (retries included), then those the response cache answered (``cached``), so a rerun's cost is what
    it asked."""
    hits, hit_in, hit_out = (int(v or 0) for v in (step.get("cached") or (0, 0, 0))[:3])
    sent = step["requests"] if "requests" in step else step.get("attempts")  # older traces: tries only
    asked = (int(sent or 0) - hits, int(step.get("prompt_tokens") or 0) - hit_in,
             int(step.get("completion_tokens") or 0) - hit_out)
    return asked, (hits, hit_in, hit_out)


@dataclass(slots=True)
class TaskResult:
    task_id: str
    verdict: Verdict
    raw_expression: str
    expression: str  # the final expression (the raw one unless rewritten)
    cycles: int
    steps: list[Step] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. a VLM action reported unavailable
    error_kind: str | None = None  # for summaries: a kind of inputs.TASK_PROBLEM_KINDS ("agent_error" if unknown)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
