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
_THINK = re.compile(r"<(think(?:ing)?)>.*?</\1>", re.S | re.I)
_THINK_END = re.compile(r"</think(?:ing)?>", re.I)


def answer_text(text: str) -> str:
    """``text`` without a reasoning model's ``<think>`` blocks (served without a reasoning parser). A reply
    that holds a closing tag alone (the chat template opened the block in the prompt) is its text after
    it; one that opens a block and never closes it (cut in its reasoning) holds no answer: ""."""
    text = _THINK.sub("", text)
    if (end := list(_THINK_END.finditer(text))):
        text = text[end[-1].end():]
    return "" if re.match(r"\s*<think(?:ing)?>", text, re.I) else text


def server_limit(completion: Any) -> str | None:
    """Why a reply the server cut (``finish_reason`` "length") stopped before ``max_tokens``, with the fix,
    or None when it reached it: raising max_tokens does nothing for a reply cut by the server's context
    (llama-server stops a request whose slot is full) or by a cap of its own."""
    if completion.meta.get("stopped_below_max_tokens") is None:
        return None
    return (f"the server stopped it after {completion.completion_tokens} tokens, below max_tokens "
            f"{completion.meta['stopped_below_max_tokens']}: its context ran out (the prompt and the reply "
            "must fit the context it gives one request: llama-server's -c divided by --parallel, Ollama's "
            "OLLAMA_CONTEXT_LENGTH) or it caps replies itself (llama-server's -n)")


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
