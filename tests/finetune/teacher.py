"""Test doubles and inputs for the fine-tuning tests: a scripted teacher with a rule no base model knows,
tasks on the bundled photos, and tiny random-initialised models built from configs.

``keyword_teacher`` (a test double standing in for an expensive teacher model) judges an expression by
its words alone: one that names a colour is **wrong**, one that names a position is **uncertain**
(missing: position), any other is **correct** (missing: empty, which a student must be able to repeat).
The planner follows the reviewer's verdict (uncertain → look at the position), the rewriter writes
``the CATEGORY``, the VLM tool answers in one line. The rule is arbitrary on purpose: a base model cannot
guess it, so a student that follows it learned it from the teacher's traces.

``teacher_tasks`` writes a published-style task list over the four bundled photos (objects and
captions of ``examples/tasks.json``), five expressions per object: the plain name, two with a colour,
two with a position.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from tests.agent.scripted import Script, answer, plan, reflect, rewrite

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

COLOURS = ("red", "blue", "green", "black", "white", "orange", "yellow", "pink", "purple", "brown", "grey",
           "silver", "golden")
POSITIONS = ("left", "right", "top", "bottom", "middle", "front", "back", "centre")


def keyword_verdict(expression: str) -> tuple[str, str, str]:
    """(verdict, missing, feedback) of the teacher's rule."""
    words = set(re.findall(r"[a-z]+", expression.lower()))
    if words & set(COLOURS):
        return "wrong", "colour", "names a colour"
    if words & set(POSITIONS):
        return "uncertain", "position", "names a position"
    return "correct", "", "plain name"  # nothing missing: empty, as the schema asks


def _quoted_after(text: str, label: str) -> str:
    tail = text.rsplit(label, 1)[-1]
    m = re.search(r'"([^"]*)"', tail)
    return m.group(1) if m else tail


def _text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if p.get("type") == "text")


def keyword_teacher() -> Script:
    """The scripted teacher (a test double): ``(role, messages) -> reply`` for ``scripted_roles``."""

    def judge(role: str, messages: list[dict[str, Any]]) -> str:
        text = _text(messages)
        if role == "reflector":
            verdict, missing, feedback = keyword_verdict(_quoted_after(text, "Expression to judge:"))
            return reflect(verdict, missing, feedback)
        if role == "planner":
            verdict = re.search(r"Reviewer's verdict: (\w+)", text)
            state = verdict.group(1) if verdict else "correct"
            if state == "uncertain":
                return plan("uncertain", "position", "Where is it?", "a position to check")
            return plan(state, "object", "", "follows the review")
        if role == "rewriter":
            category = re.search(r"Chosen object: (.+?) at \[", text)
            return rewrite(f"the {category.group(1) if category else 'object'}")
        return answer("It is in the picture.")

    return judge


def teacher_tasks(path: Path) -> Path:
    """Write the teacher's task list (published format, JSON list) to ``path``; images are the bundled
    ones, so ``--images examples/images``."""
    source = json.loads((EXAMPLES / "tasks.json").read_text())
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for task in source:
        chosen = task["object_locations"]["chosen_object"]
        objects.setdefault((task["image_path"], chosen["category"]), task)
    tasks = []
    for k, ((_, category), task) in enumerate(objects.items()):
        for expr in (f"the {category}",
                     f"the {COLOURS[k % len(COLOURS)]} {category}",
                     f"the {COLOURS[(k + 5) % len(COLOURS)]} {category}",
                     f"the {category} on the {POSITIONS[k % len(POSITIONS)]}",
                     f"the {category} at the {POSITIONS[(k + 3) % len(POSITIONS)]}"):
            t = copy.deepcopy(task)
            t["raw_expression"] = expr
            t["gold"] = {"correct": keyword_verdict(expr)[0] == "correct"}
            tasks.append(t)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tasks, indent=0))
    return path
