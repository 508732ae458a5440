"""What each role must answer, and how a reply becomes a decision (or a clear refusal).

Every role answers with one JSON object. The schema is handed to the backend, which enforces it where
it can (server-side ``response_format``, constrained decoding in-process); the reply is then parsed
here whatever the backend did: plain JSON, JSON inside prose or a code fence, JSON that json-repair can
fix. Enumerated fields are matched case-insensitively with a few synonyms; free-text fields keep their
case (the published code lower-cased everything, which damaged proper nouns and rewrites). A reply
that still cannot be used raises :class:`DecisionError` with a message the model can be shown on a
retry; the workflow turns repeated failure into a failed task, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reallod.llm.replies import answer_text, parse_json_object

REFLECT_VERDICTS: tuple[str, ...] = ("correct", "uncertain", "wrong")
PLAN_STATES: tuple[str, ...] = ("correct", "wrong", "uncertain")
FOCI: tuple[str, ...] = ("object", "surroundings", "position")
"""What an uncertain expression is uncertain about; each maps to one image view (see ``state``)."""

_SYNONYMS: dict[str, dict[str, str]] = {
    "verdict": {
        "right": "correct", "true": "correct", "yes": "correct", "consistent": "correct",
        "accurate": "correct", "ok": "correct",
        "unsure": "uncertain", "unknown": "uncertain", "unverified": "uncertain",
        "incorrect": "wrong", "false": "wrong", "no": "wrong", "inconsistent": "wrong",
    },
    "focus": {
        "itself": "object", "the object": "object", "attribute": "object", "attributes": "object",
        "appearance": "object", "colour": "object", "color": "object", "material": "object",
        "shape": "object", "crop": "object", "object crop": "object",
        "surrounding": "surroundings", "relation": "surroundings", "relations": "surroundings",
        "relationship": "surroundings", "context": "surroundings", "neighbours": "surroundings",
        "neighbors": "surroundings", "extended crop": "surroundings",
        "location": "position", "place": "position", "scene": "position", "whole scene": "position",
        "image": "position", "whole image": "position", "highlight": "position",
    },
}
_SYNONYMS["state"] = _SYNONYMS["verdict"]


class DecisionError(ValueError):
    """A reply that cannot be used as the role's decision; the message is shown to the model on retry."""


def _string(description: str, *, nonempty: bool = False) -> dict[str, Any]:
    # minLength marks exactly the answers the parser refuses empty: a constrained decoder may then close
    # any other string at once, as a teacher did ("missing": "") and a student must be able to repeat.
    # OpenAI's strict mode refuses the keyword, so that backend drops it.
    return {"type": "string", "description": description, **({"minLength": 1} if nonempty else {})}


def _enum(values: tuple[str, ...], description: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values), "description": description}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    # Property order is generation order for constrained decoders: reasons before verdicts.
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


REFLECTOR_SCHEMA = _object({
    "missing": _string("what the evidence does not confirm (colour, material, position, action, "
                       "relation, ...); empty when nothing is missing"),
    "feedback": _string("one or two sentences explaining the judgement"),
    "verdict": _enum(REFLECT_VERDICTS, "correct, uncertain or wrong"),
})
PLANNER_SCHEMA = _object({
    "reason": _string("one sentence: why this state and action"),
    "state": _enum(PLAN_STATES, "correct, wrong or uncertain"),
    # No "none": a schema-valid reply must always parse, so focus is always given and only read
    # when the state is uncertain.
    "focus": _enum(FOCI, "what to look at when uncertain (ignored otherwise)"),
    "question": _string("for uncertain: the question for the vision model; else empty"),
})
REWRITER_SCHEMA = _object({
    "expression": _string("the new expression for the chosen object", nonempty=True),
})
VLM_SCHEMA = _object({
    "answer": _string("a short factual answer about what the image shows", nonempty=True),
})


def _text(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    """A text field, its whitespace collapsed. Every field's schema type is string: any other JSON value
    is refused like a missing field (re-asked), not written into the output as Python's repr of it
    (``{"expression": {"text": ...}}`` became the positive "{'text': ...}", ``42`` became "42")."""
    value = obj.get(key)
    if value is None:
        if required:
            raise DecisionError(f'the field "{key}" is missing')
        return ""
    if not isinstance(value, str):
        raise DecisionError(f'the field "{key}" is {_json_type(value)}; it must be a JSON string')
    return " ".join(value.split())


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"the JSON literal {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _choice(obj: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    raw = _text(obj, key)
    value = raw.strip(" .\"'`*").lower()
    value = _SYNONYMS.get(key, {}).get(value, value)
    if value not in allowed:
        raise DecisionError(f'"{key}" is "{raw}", which is not one of: {", ".join(allowed)}')
    return value


def _normalise_reflection(obj: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": _choice(obj, "verdict", REFLECT_VERDICTS),
            "missing": _text(obj, "missing", required=False),
            "feedback": _text(obj, "feedback", required=False)}


def _normalise_plan(obj: dict[str, Any]) -> dict[str, Any]:
    state = _choice(obj, "state", PLAN_STATES)
    focus = "none"
    if state == "uncertain":
        if not _text(obj, "focus", required=False):
            raise DecisionError('state "uncertain" needs "focus": object, surroundings or position')
        focus = _choice(obj, "focus", FOCI)
    return {"state": state, "focus": focus, "question": _text(obj, "question", required=False),
            "reason": _text(obj, "reason", required=False)}


def _normalise_rewrite(obj: dict[str, Any]) -> dict[str, Any]:
    expression = _text(obj, "expression").strip("\"'` ")
    if not expression:
        raise DecisionError('"expression" is empty')
    return {"expression": expression}


def _normalise_answer(obj: dict[str, Any]) -> dict[str, Any]:
    answer = _text(obj, "answer")
    if not answer:
        raise DecisionError('"answer" is empty')
    return {"answer": answer}


@dataclass(frozen=True, slots=True)
class DecisionSpec:
    """The answer one role must give: its JSON schema and how to validate a parsed object."""

    role: str
    schema: dict[str, Any]
    normalise: Callable[[dict[str, Any]], dict[str, Any]]
    free_text_field: str | None = None  # a reply that is not JSON at all is taken as this field
    kept_fields: tuple[str, ...] = ()  # written into the output: one the token limit cut is refused

    def parse(self, text: str) -> tuple[dict[str, Any], bool]:
        """Return (decision, repaired); raise DecisionError when the reply cannot be used. A reasoning
        model's ``<think>`` block (served without a reasoning parser) is no part of the answer: braces in
        it would be read as the answer's."""
        answer = answer_text(text)
        if not answer.strip() and text.strip():
            raise DecisionError("the reply is only reasoning (<think>) with no answer after it")
        text = answer
        obj, repaired = parse_json_object(text)
        if obj is None:
            stripped = " ".join(text.split())
            if self.free_text_field and stripped:
                return self.normalise({self.free_text_field: stripped}), True
            raise DecisionError("the reply is not a JSON object")
        return self.normalise(obj), repaired

    def reply(self, decision: dict[str, Any]) -> str:
        """The decision as the reply a model should give: one JSON object with the schema's fields in
        the schema's order (the order constrained decoders write them), as ``json.dumps`` writes it
        (what the in-process constrained decoder produces). An enumerated field the decision does not
        fill with an allowed value (the planner's focus is "none" unless uncertain) takes the first
        allowed value, as the planner's prompt asks ("give object")."""
        obj: dict[str, str] = {}
        for key, prop in self.schema["properties"].items():
            value = decision.get(key)
            value = "" if value is None else str(value)
            if "enum" in prop and value not in prop["enum"]:
                value = prop["enum"][0]
            obj[key] = value
        return json.dumps(obj, ensure_ascii=False)

    def format_hint(self) -> str:
        """A compact description of the expected object, for prompts and retry messages."""
        parts = []
        for key, prop in self.schema["properties"].items():
            if "enum" in prop:
                parts.append(f'"{key}": one of {", ".join(prop["enum"])}')
            else:
                parts.append(f'"{key}": {prop.get("description", "text")}')
        return "a JSON object with " + "; ".join(parts)


SPECS: dict[str, DecisionSpec] = {
    "reflector": DecisionSpec("reflector", REFLECTOR_SCHEMA, _normalise_reflection),
    "planner": DecisionSpec("planner", PLANNER_SCHEMA, _normalise_plan),
    "rewriter": DecisionSpec("rewriter", REWRITER_SCHEMA, _normalise_rewrite, kept_fields=("expression",)),
    "vlm": DecisionSpec("vlm", VLM_SCHEMA, _normalise_answer, free_text_field="answer"),
}
