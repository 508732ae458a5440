"""Test double: scripted answers for the generation steps and the agent, keyed on the prompt text.

``generation_answers(overrides)`` returns a callable for :func:`tests.agent.scripted.scripted_roles`:
the VLM answers the caption / short / long prompts, the rewriter (the engine's LLM) the llm / group /
hard-negative prompts, and the agent's reflector and planner accept everything. ``overrides`` maps a
step name to a function (category, prompt text) → reply, for malformed generations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from tests.agent.scripted import plan, reflect


def prompt_text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        c = m["content"]
        parts.append(c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if p.get("type") == "text"))
    return "\n".join(parts)


def step_of(role: str, text: str) -> str:
    if role == "vlm":
        if "Describe this image" in text:
            return "caption"
        return "vlm_short" if "short phrase" in text else "vlm_long"
    if role == "rewriter":
        if "hard negative" in text:
            return "hard_negative"
        if "The group:" in text:
            return "group"
        if "Chosen object:" in text:
            return "llm"
        return "rewrite"
    return role


def category_in(text: str) -> str:
    m = re.search(r"(?:Chosen object|Object): (.+?) at \[", text) or re.search(r"all \d+ (.+?) objects", text) \
        or re.search(r"The (.+?) inside the red box", text) or re.search(r"Describe the (.+?) outlined", text)
    return m.group(1) if m else "thing"


DEFAULTS: dict[str, Callable[[str, str], str]] = {
    "caption": lambda cat, t: "A photograph with several objects on a plain background.",
    "vlm_short": lambda cat, t: f"the {cat} in the box",
    "vlm_long": lambda cat, t: f"A {cat} that stands out clearly in the picture.",
    "llm": lambda cat, t: json.dumps({"expression_1": f"the {cat} on the left", "expression_2": f"a large {cat}",
                                      "expression_3": f"the {cat} near the middle"}),
    "group": lambda cat, t: json.dumps({"expression_1": f"both {cat}s", "expression_2": f"the two {cat}s"}),
    "hard_negative": lambda cat, t: json.dumps({"expression_1": f"the green {cat}", "expression_2": f"the {cat} upside down"}),
    "reflector": lambda cat, t: reflect("correct"),
    "planner": lambda cat, t: plan("correct"),
}


def generation_answers(overrides: dict[str, Callable[[str, str], str]] | None = None,
                       log: list[str] | None = None) -> Callable[[str, list[dict[str, Any]]], str]:
    table = {**DEFAULTS, **(overrides or {})}

    def answer(role: str, messages: list[dict[str, Any]]) -> str:
        text = prompt_text(messages)
        step = step_of(role, text)
        if log is not None:
            log.append(step)
        return table[step](category_in(text), text)

    return answer
