"""Finding the JSON object in a model's reply, whatever the model wrapped around it.

Small models fence their JSON, embed it in prose, or break it; every caller that asks a model for a
JSON object (the agent's roles, the data engine's generators) reads the reply through here, and
tells the backend about a reply that failed its task (:func:`forget_reply`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import json_repair

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def _first_dict(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value or None
    if isinstance(value, list):
        return next((v for v in value if isinstance(v, dict) and v), None)
    return None


def parse_json_object(text: str) -> tuple[dict[str, Any] | None, bool]:
    """Find the JSON object in a model reply: exact, fenced, embedded in prose, or repaired."""
    text = text.strip()
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1).strip()] if fenced else []
    candidates.append(text)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            obj = _first_dict(json.loads(candidate))
        except ValueError:
            continue
        if obj is not None:
            return obj, False
    if start < 0:
        return None, False
    try:
        obj = _first_dict(json_repair.loads(text[start:]))
    except Exception:  # json-repair gives up in many ways; any of them means "no object"
        obj = None
    return obj, obj is not None



def forget_reply(backend: Any, completion: Any) -> None:
    """A reply of a call that failed its task: a response cache behind ``backend`` drops it, so that a
    rerun (once the server is fixed) asks again instead of replaying the same rejected replies. Only for
    the replies of a failed call: a done task replays every reply it used, the rejected ones too.
    Nothing for a backend without a cache."""
    forget = getattr(backend, "forget", None)
    if callable(forget):
        forget(completion)
