"""Test double: a backend that returns prepared answers, per role, instead of calling a model.

``ScriptedBackend(answers)`` takes either a dict ``role -> list of replies`` (popped in order; a reply
that is an Exception instance is raised instead, e.g. ``BackendError("down", retryable=True)``) or a
callable ``(role, messages) -> str``. ``scripted_roles(answers)`` builds a ``Roles`` with one scripted
backend per role, all sharing the same answers, with the packaged prompts; pass ``vlm=False`` for a
run without a vision model. Every call is recorded in ``backend.calls`` (shared by all roles of one
``scripted_roles``), so tests can check what each role was shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reallod.agent.roles import ROLE_NAMES, Roles, make_role
from reallod.llm.backends.base import Completion
from reallod.llm.policy import RetryPolicy

Answer = str | BaseException | Completion
Script = dict[str, list[Answer]] | Callable[[str, list[dict[str, Any]]], str]


@dataclass
class Call:
    role: str
    messages: list[dict[str, Any]]
    schema: dict[str, Any] | None
    choices: list[str] | None
    max_tokens: int | None
    temperature: float | None


class ScriptExhausted(AssertionError):
    """A role was called more often than the test prepared answers for."""


@dataclass
class ScriptedBackend:
    answers: Script
    role: str | None = None  # which role's answers this backend serves when ``answers`` is a dict
    calls: list[Call] = field(default_factory=list)
    name: str = "scripted"
    supports_images: bool = True
    closed: bool = False

    def for_role(self, role: str) -> ScriptedBackend:
        """A backend for ``role`` sharing this one's answers and call log."""
        return ScriptedBackend(self.answers, role, self.calls, f"scripted:{role}", self.supports_images)

    async def complete(self, messages: list[dict[str, Any]], *, schema: dict[str, Any] | None = None,
                       choices: list[str] | None = None, max_tokens: int | None = None,
                       temperature: float | None = None) -> Completion:
        role = self.role or "?"
        self.calls.append(Call(role, messages, schema, choices, max_tokens, temperature))
        if callable(self.answers):
            answer: Answer = self.answers(role, messages)
        else:
            queue = self.answers.get(role)
            if not queue:
                raise ScriptExhausted(f"no scripted answer left for role {role!r}")
            answer = queue.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, Completion):  # with what a server adds (finish_reason...)
            return answer
        return Completion(answer, prompt_tokens=10, completion_tokens=len(answer.split()), latency_s=0.001)

    async def aclose(self) -> None:
        self.closed = True


def scripted_roles(answers: Script, *, vlm: bool = True, retry: RetryPolicy | None = None) -> Roles:
    """Roles backed by one shared ScriptedBackend (no backoff waits by default)."""
    base = ScriptedBackend(answers)
    roles = {n: make_role(n, base.for_role(n)) for n in ROLE_NAMES if vlm or n != "vlm"}
    return Roles(**roles, retry=retry or RetryPolicy(max_attempts=3, base_delay_s=0.0))


def j(**fields: Any) -> str:
    """A reply as a model would send it: one JSON object."""
    return json.dumps(fields)


def reflect(verdict: str, missing: str = "", feedback: str = "because") -> str:
    return j(missing=missing, feedback=feedback, verdict=verdict)


def plan(state: str, focus: str = "none", question: str = "", reason: str = "") -> str:
    return j(reason=reason, state=state, focus=focus, question=question)


def rewrite(expression: str) -> str:
    return j(expression=expression)


def answer(text: str) -> str:
    return j(answer=text)


def colour_judge_with(fixes: dict[str, str] | None = None, fallback: str = "the fixed one") -> Script:
    """A deterministic script: an expression naming blue or black is wrong, everything else correct;
    the rewriter answers ``fixes[k]`` when the prompt mentions ``k``, otherwise ``fallback``."""

    def judge(role: str, messages: list[dict[str, Any]]) -> str:
        text = str(messages[-1]["content"])
        if role == "reflector":
            judged = text.rsplit("Expression to judge:", 1)[-1]
            return reflect("wrong" if ("blue" in judged or "black" in judged) else "correct")
        if role == "planner":
            return plan("wrong" if "Reviewer's verdict: wrong" in text else "correct")
        return rewrite(next((v for k, v in (fixes or {}).items() if k in text), fallback))

    return judge


colour_judge = colour_judge_with()
