"""Reading phrases from a model's replies (pure): what the generation steps ask for and how a reply
becomes phrases, or :class:`Unusable` with why.

A list step asks for a flat JSON object of ``expression_N`` fields (:func:`list_schema`: what servers
that constrain decoding support); a free-text step for one phrase. Real models answer in many forms
(fenced JSON, a list, one phrase a line, a bullet or a label in front, a preamble such as "Here is a
short phrase:" or "Sure!", markdown, a reasoning model's ``<think>`` block): :func:`parse_list` and
:func:`clean` take the phrases out of them; what is no answer at all is :class:`Unusable`.

The rules are few and predictable, because a wrong guess either loses a real phrase or writes junk as a
positive: a line that ends in ":" (a real expression never does) or is only an acknowledgement is no
phrase; a leading part up to the first ":" is dropped only when it starts with "Here is/are" or names
what it introduces (phrase, expression, description, answer, ...), so "the sign reading: stop" is kept.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from reallod.llm.backends.base import REASONING_PARSER, THINKING_OFF, Completion
from reallod.llm.replies import answer_text, parse_json_object, server_limit

_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
# a list item's mark: a bullet, "1." "1)" "1:" "(1)" "#1" (not the "3." of "3.5-inch")
_MARK = re.compile(r"^(?:[-–—•·*+]\s+|[-•](?=\S)|(?:\d{1,3}[.):]|\(\d{1,3}\)|#\d{1,3}[.):]?)(?=\s|[^\W\d]|[\"“'‘*]|$))\s*")
_HEADING = re.compile(r"^#{1,6}\s+")
_ACK = re.compile(r"^(?:sure(?: thing)?|certainly|of course|okay|ok|absolutely|alright|all right|got it|no problem)"
                  r"\b\s*(?:[!.,]+\s*|$)", re.I)
_LABEL_WORD = (r"(?:expressions?|phrases?|descriptions?|answers?|captions?|outputs?|responses?|repl(?:y|ies)"
               r"|results?)(?:[\s_]*#?\d{1,3})?(?![^\W_])")
# "Here is a short phrase:", "Short phrase:", "Expression 1:", "**Description:**": up to the first colon
_PREFIX = re.compile(rf"^(?:here\s+(?:is|are)\b|here['’]s\b|[^:]*?\b{_LABEL_WORD})[^:]{{0,100}}?:(?:\s+|$)", re.I)
# 'The phrase is "the black cat".', 'A good referring expression would be "...": a sentence about the answer
# that starts the reply, before a quoted span, which is the phrase ("the sign whose caption is "Open"" and
# "the answer is wrong sign" keep their words)
_SAYS = re.compile(r"^(?:(?:the|a|an|my|one|this|your)\s+)?(?:(?:good|short|best|better|suitable|possible|final|new"
                   r"|referring|rewritten|revised|unique|unambiguous)\s+){0,2}(?:expression|phrase|description|answer"
                   r"|output|response|reply)\s+(?:is|would\s+be|could\s+be|will\s+be)\s+(?=[\"“'‘«「『])", re.I)
# a model's remark about its list ("These phrases describe the cat.", "I hope this helps!", "Let me know if
# you need more."): a line of an unnumbered list that starts so is no phrase
_REMARK = re.compile(r"^(?:i\s+hope\b|hope\s+(?:this|these|that)\b|let\s+me\s+know\b|feel\s+free\b|if\s+you\s+"
                     r"(?:need|want|would|like)\b|(?:note|nb)\b\s*[:,]|(?:these|those|each|all|the\s+above)\b"
                     r"(?:\s+\w+){0,3}?\s+(?:phrases?|expressions?|descriptions?)\b)", re.I)
_INTRO = re.compile(r"^(?:here\s+(?:is|are)|here['’]s)\b[^:]*$", re.I)  # "Here's a phrase for it." alone
_PAIRS = {'"': '"', "“": "”", "„": "“", "'": "'", "‘": "’", "`": "`", "«": "»", "「": "」", "『": "』"}
_WRAP = {**_PAIRS, "*": "*", "_": "_"}
_LONE = "\"“”«»`"


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


def _unfence(text: str) -> str:
    """The content of the reply's first fenced code block (```json ... ```), or the reply: the model's
    answer is in the block, the prose around it is not. An unclosed fence (cut) runs to the end."""
    m = _FENCE.search(text)
    return m.group(1) if m else text


def _wrapped(s: str) -> bool:
    """Whether ``s`` is wrapped whole in emphasis (``*...*``) or a pair of quotes: not ``"Stop" and "Go"``,
    whose inner quotes stand next to a space (an apostrophe, as in ``'the cat's tail'``, does not)."""
    if len(s) < 2 or _WRAP.get(s[0]) != s[-1]:
        return False
    return not re.search(rf"\s{re.escape(s[0])}|{re.escape(s[-1])}\s", s[1:-1])


def _unwrap(s: str) -> str:
    """A phrase without what wraps it: markdown emphasis, a pair of quotes, a full stop or comma after
    them (``"the cat",``), repeated until nothing changes."""
    while True:
        before = s
        s = s.strip().rstrip(".,;").rstrip()
        if _wrapped(s):
            s = s[1:-1]
        elif s and s[0] in _LONE and not any(c in s[1:] for c in _LONE):
            s = s[1:]  # a quote that a cut reply did not close
        elif s and s[-1] in _LONE and not any(c in s[:-1] for c in _LONE):
            s = s[:-1]
        if s == before:
            return s


def _quoted(s: str) -> str | None:
    """The quoted span that ``s`` starts with (``"the black cat" which is ...``), or None."""
    close = _PAIRS.get(s[:1])
    end = re.search(re.escape(close) + r"(?!\w)", s[1:]) if close else None  # not the apostrophe of "cat's"
    return s[1:end.start() + 1] if end and end.start() else None


def _phrase(line: str) -> str:
    """One line of a reply → its phrase, "" where the line is none (blank, a preamble, an acknowledgement).

    Each rule strips only what an expression never holds: bold/underline markers, a list mark, "Sure!", a
    labelled or "Here is" preamble up to the first colon (then a quoted span right after it is the
    phrase: ``Here is a short phrase: "the black cat".``), wrapping quotes and emphasis."""
    s = " ".join(line.replace("**", "").replace("__", "").split())
    while True:
        before = s
        s = _HEADING.sub("", s)
        s = _MARK.sub("", s)
        s = _ACK.sub("", s)
        if s.endswith((":", "：")) or _INTRO.match(s):
            return ""  # "Here are 3 phrases for the person:", "Here's a phrase for it."
        if (m := _PREFIX.match(s) or _SAYS.match(s)) and s[m.end():]:
            s = s[m.end():]
            s = _quoted(s) or s
        s = _unwrap(s)
        if s == before:
            return s


def _lines(text: str) -> list[str]:
    """The reply's lines after its reasoning, inside its fence, without the blank and preamble lines
    that come before its answer."""
    lines = _unfence(answer_text(text)).splitlines()
    while lines and not _phrase(lines[0]):
        lines.pop(0)
    return lines


def read_text(reply: Completion, max_tokens: int) -> str:
    """A free-text step's reply (caption, vlm_short, vlm_long), without a ``<think>`` block. No text at all
    is unusable: the model was asked about something that is there (a phrase it wrote that cleans to
    nothing is dropped as empty); so is a reply of reasoning alone."""
    text = answer_text(reply.text)
    if not text.strip():
        _no_answer(reply, max_tokens)
    return text


def _no_answer(reply: Completion, max_tokens: int) -> None:
    """Raise :class:`Unusable` for a reply without an answer: empty, or the model's reasoning alone, in a
    ``<think>`` block or returned apart by the server's reasoning parser (then with the user's fix:
    asking again rarely helps)."""
    separate = bool(reply.meta.get("reasoning_chars"))
    cut = reply.meta.get("finish_reason") == "length"
    limit = server_limit(reply) if cut else None
    if not reply.text.strip() and not separate:
        if limit:
            raise Unusable(f"the reply is empty: {limit}", tell="it was empty")
        if cut:  # an API that keeps the reasoning to itself (OpenAI's reasoning models) spent the limit on it
            raise Unusable(f"the reply is empty and was cut at the token limit (max_tokens {max_tokens}): a "
                           "reasoning model may have spent it all on reasoning; raise max_tokens",
                           tell="it was empty")
        raise Unusable(EMPTY_REPLY, tell="it was empty")
    raise Unusable("the reply is only the model's reasoning "
                   + ("(the server's reasoning parser returned it apart) with an empty answer: " if separate
                      else "(<think>) with no answer after it: ")
                   + (f"{limit}; or " if limit else
                      f"it was cut at the token limit (max_tokens {max_tokens}); raise max_tokens, or " if cut
                      else "")
                   + (THINKING_OFF if separate else REASONING_PARSER),
                   tell="it held only your reasoning and no answer")


def read_phrase(reply: Completion, max_tokens: int) -> tuple[str, bool]:
    """A VLM expression step's reply (vlm_short, vlm_long), and whether the server cut it at ``max_tokens``:
    "the man in the red jacket standing next to the" is no expression of the object (dropped, counted)."""
    return read_text(reply, max_tokens), reply.meta.get("finish_reason") == "length"


def read_list(reply: Completion, max_tokens: int) -> list[str]:
    """The phrases of a list step's reply (llm, group, hard_negative): see :func:`parse_list`. Unusable:
    no text, JSON that cannot be read, or a reply the server cut at ``max_tokens`` that is not whole JSON
    (its last phrase is cut: "the cup on the wood" from "...wooden table")."""
    text = answer_text(reply.text)
    if not text.strip():
        _no_answer(reply, max_tokens)
    obj, repaired = parse_json_object(text)
    if reply.meta.get("finish_reason") == "length" and (obj is None or repaired):
        if limit := server_limit(reply):
            how = "needed repair" if obj is not None else "does not parse"
            raise Unusable(f"the reply was cut and {how}: {limit}", tell="it was cut off; answer again")
        raise Unusable(f"the reply was cut at the token limit (max_tokens {max_tokens}) and "
                       f"{'needed repair' if obj is not None else 'does not parse'}: raise max_tokens of the "
                       f"config's rewriter role above {max_tokens} (generation uses it where it is higher)",
                       tell="it was too long and was cut off; write shorter phrases")
    if obj is not None and (cut := set(reply.meta.get("cut_fields") or ())):  # closed at the limit by an
        return object_phrases({k: v for k, v in obj.items() if k not in cut})  # in-process decoder (counted)
    return parse_list(text)


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
    """The phrases of a list reply: our JSON object, an ``expressions`` list, a JSON list (fenced or not,
    after a preamble or not), or, from a model that ignores the format, one phrase a line. A JSON object
    or list without phrases is the model's answer (nothing); no text, no phrase (only "Sure!" or a
    preamble), or JSON that cannot be read, raises :class:`Unusable`.

    Line by line, preamble lines are dropped, and where two or more lines are numbered or bulleted only
    those are phrases: the model's header ("Here are 3 phrases:") or closing remark would otherwise take
    a phrase's place; in a list without marks, a remark is told by its words or its paragraph
    (:func:`_unmarked`). The lines are returned as written: :func:`clean` makes each a phrase."""
    if not text.strip():
        raise Unusable(EMPTY_REPLY, tell="it was empty")
    lines = _lines(text)
    body = "\n".join(lines).strip()
    if not body:
        raise Unusable(f"no phrase in the reply: {text.strip()[:80]!r}", tell="it held no phrase")
    obj, _ = parse_json_object(body)
    if obj is not None:
        return object_phrases(obj)
    try:  # a JSON value first, perhaps with the model's remark after it
        value, end = json.JSONDecoder().raw_decode(body)
    except ValueError:
        value, end = None, 0
    if isinstance(value, dict) and not body[end:].strip():
        return object_phrases(value)  # {}
    if isinstance(value, list) and (not body[end:].strip() or any(isinstance(v, str) for v in value)):
        return [v for v in value if isinstance(v, str)]
    if body.startswith(("{", "[")):
        raise Unusable(f"not the JSON object asked for, and none could be read from it: {body[:80]!r}")
    marked = [ln for ln in lines if _MARK.match(ln.strip()) and _phrase(ln)]
    return marked if len(marked) >= 2 else _unmarked(lines)


def _unmarked(lines: list[str]) -> list[str]:
    """The phrases of a list written one a line without marks: its first paragraph where that holds two or
    more of them (a paragraph after it is the model's remark), else every line; a line that is a remark
    about the list (``_REMARK``) is none."""
    def phrases(block: list[str]) -> list[str]:
        return [ln for ln in block if (p := _phrase(ln)) and not _REMARK.match(p)]

    first = phrases(list(itertools.takewhile(lambda ln: ln.strip(), lines)))
    return first if len(first) >= 2 else phrases(lines)


def clean(text: str) -> str:
    """One phrase as a model may write it → the phrase: of a free-text reply, its first line that is a
    phrase after its reasoning and preamble ("Sure!", "Here is a short phrase that refers to it:");
    without a list mark, a label ("Short phrase:", "Expression 1:"), markdown emphasis, wrapping quotes
    or a trailing full stop. Cleaning a cleaned phrase changes nothing."""
    return next((p for ln in _unfence(answer_text(text)).splitlines() if (p := _phrase(ln))), "")
