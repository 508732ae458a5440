"""Reading phrases from a model's replies (pure): what the generation steps ask for and how a reply
becomes phrases, or :class:`Unusable` with why.

A list step asks for a flat JSON object of ``expression_N`` fields (:func:`list_schema`: what servers
that constrain decoding support); a free-text step for one phrase. Real models answer in many forms
(fenced JSON, a list, one phrase a line, a bullet or a label in front): :func:`parse_list` and
:func:`clean` take the phrases out of them; what is no answer at all is :class:`Unusable`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from reallod.llm.backends.base import Completion
from reallod.llm.replies import parse_json_object

_LEAD = re.compile(r"^\s*(?:[-*•]+\s*|\d+[.)]\s*)?(?:(?:expression|phrase|answer)[\s_]*\d*\s*:)?\s*", re.I)
_QUOTES = "\"'`“”‘’"


PHRASE_KEY = re.compile(r"expression_(\d+)")
"""The fields of a list reply that hold its phrases (:func:`list_schema`)."""


def list_schema(n: int) -> dict[str, Any]:
    """A flat object of ``n`` string fields: backends that constrain decoding support flat schemas."""
    props = {f"expression_{i}": {"type": "string", "minLength": 1} for i in range(1, n + 1)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def format_hint(n: int) -> str:
    keys = ", ".join(f'"expression_{i}": "..."' for i in range(1, n + 1))
    return f"Reply with one JSON object: {{{keys}}}"


class Unusable(Exception):
    """Why a reply cannot be used by its step (:data:`UNUSABLE`); ``tell``: what the model is told when it is
    asked again (the message is for the user: "raise max_tokens" means nothing to the model)."""

    def __init__(self, why: str, tell: str | None = None) -> None:
        super().__init__(why)
        self.tell = tell or why


EMPTY_REPLY = ("empty reply: the model wrote no text (check the server's log; a server that cannot apply the "
               "model's chat template may answer nothing)")


def read_text(reply: Completion, max_tokens: int) -> str:
    """A free-text step's reply (caption, vlm_short, vlm_long). No text at all is unusable: the model was
    asked about something that is there (a phrase it wrote that cleans to nothing is dropped as empty)."""
    if not reply.text.strip():
        raise Unusable(EMPTY_REPLY, tell="it was empty")
    return reply.text


def read_phrase(reply: Completion, max_tokens: int) -> tuple[str, bool]:
    """A VLM expression step's reply (vlm_short, vlm_long), and whether the server cut it at ``max_tokens``:
    "the man in the red jacket standing next to the" is no expression of the object (dropped, counted)."""
    return read_text(reply, max_tokens), reply.meta.get("finish_reason") == "length"


def read_list(reply: Completion, max_tokens: int) -> list[str]:
    """The phrases of a list step's reply (llm, group, hard_negative): see :func:`parse_list`. Unusable:
    no text, JSON that cannot be read, or a reply the server cut at ``max_tokens`` that is not whole JSON
    (its last phrase is cut: "the cup on the wood" from "...wooden table")."""
    obj, repaired = parse_json_object(reply.text) if reply.text.strip() else (None, False)
    if reply.meta.get("finish_reason") == "length" and (obj is None or repaired):
        raise Unusable(f"the reply was cut at the token limit (max_tokens {max_tokens}) and "
                       f"{'needed repair' if obj is not None else 'does not parse'}: raise max_tokens of the "
                       f"config's rewriter role above {max_tokens} (generation uses it where it is higher)",
                       tell="it was too long and was cut off; write shorter phrases")
    if obj is not None and (cut := set(reply.meta.get("cut_fields") or ())):  # closed at the limit by an
        return object_phrases({k: v for k, v in obj.items() if k not in cut})  # in-process decoder (counted)
    return parse_list(reply.text)


def object_phrases(obj: dict[str, Any]) -> list[str]:
    """The phrases of a reply object: the fields :func:`list_schema` asks for (``expression_N``, in order) or
    an ``expressions`` list. Its other fields are no phrase: a model's ``note`` or ``reasoning`` would
    otherwise become positives of the object. An object of other fields alone (a server's ``{"error":
    "model overloaded"}``) is no answer: :class:`Unusable`, asked again by the rerun; ``{}`` is one."""
    if isinstance(obj.get("expressions"), list):
        return [v for v in obj["expressions"] if isinstance(v, str)]
    numbered = sorted((int(m[1]), v) for k, v in obj.items() if (m := PHRASE_KEY.fullmatch(k)) and isinstance(v, str))
    if not numbered and obj:
        raise Unusable(f"a JSON object without the expression_N fields asked for: {json.dumps(obj)[:80]!r}")
    return [v for _, v in numbered]


def parse_list(text: str) -> list[str]:
    """The phrases of a list reply: our JSON object, an ``expressions`` list, a JSON list, or, from a model
    that ignores the format, one phrase a line. A JSON object or list without phrases is the model's answer
    (nothing); no text, or JSON that cannot be read, raises :class:`Unusable`."""
    if not text.strip():
        raise Unusable(EMPTY_REPLY, tell="it was empty")
    obj, _ = parse_json_object(text)
    if obj is not None:
        return object_phrases(obj)
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict | list):  # {}, [] or a list of phrases
        return object_phrases(value) if isinstance(value, dict) else [v for v in value if isinstance(v, str)]
    if text.lstrip().startswith(("{", "[")):
        raise Unusable(f"not the JSON object asked for, and none could be read from it: {text.strip()[:80]!r}")
    return [ln for ln in text.splitlines() if ln.strip()]


def clean(text: str) -> str:
    """One phrase as a model may write it (bullets, quotes, trailing full stop) → the phrase."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LEAD.sub("", line).strip().strip(_QUOTES).strip()
    return " ".join(line.split()).rstrip(".").strip()
