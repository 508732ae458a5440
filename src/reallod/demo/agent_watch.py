"""Watching the agent work: every role call as it happens, for the agent page.

The workflow (``reallod.agent.workflow.run_task``, the code ``reallod realign`` runs) is used as it is.
To see its calls while it runs, each role's backend is wrapped in an :class:`ObservedBackend` that
records the messages going out (with the image view a VLM is shown) and the reply coming back, parsed
with the role's own decision parser. When the task ends, the page shows the workflow's own record of
the steps (``TaskResult.steps``); the live record only fills the page while the task runs.

Cycle numbers follow the state machine: cycle 1 is the first reflection, and every later cycle starts
with a planner call (consecutive calls to the same role are retries of one step).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from reallod.agent.decisions import DecisionError
from reallod.agent.roles import ROLE_NAMES, Role, Roles
from reallod.agent.state import FOCUS_VIEW
from reallod.agent.task import Step, TaskResult
from reallod.llm.backends.base import Backend, Completion, Message

VIEW_LABEL = {"object_crop": "object crop", "extended_crop": "extended crop", "highlight": "highlight"}


@dataclass
class LiveCall:
    """One call to a role's backend, as seen from outside the workflow."""

    cycle: int
    role: str
    view_name: str | None = None  # for VLM calls: the view the planner's focus asked for
    view: Image.Image | None = None  # the image the VLM was sent
    reply: str | None = None
    decision: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.reply is not None or self.error is not None


@dataclass
class CallLog:
    """The calls of one task, in order; ``version`` changes whenever something new is known."""

    calls: list[LiveCall] = field(default_factory=list)
    version: int = 0
    _cycle: int = 1
    _focus: str | None = None

    def start(self, role: str, messages: list[Message]) -> LiveCall:
        last = self.calls[-1].role if self.calls else None
        if role == "planner" and last != "planner":
            self._cycle += 1
        images = [p["image"] for m in messages if isinstance(m.get("content"), list)
                  for p in m["content"] if p.get("type") == "image" and isinstance(p.get("image"), Image.Image)]
        view_name = FOCUS_VIEW.get(self._focus or "") if role == "vlm" else None
        call = LiveCall(self._cycle, role, view_name, images[0].copy() if images else None)
        self.calls.append(call)
        self.version += 1
        return call

    def finish(self, call: LiveCall, *, reply: str | None = None, decision: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        call.reply, call.decision, call.error = reply, decision, error
        if call.role == "planner" and decision is not None:
            self._focus = decision.get("focus") if decision.get("state") == "uncertain" else None
        self.version += 1

    def views(self) -> list[tuple[Image.Image, str]]:
        """The images the VLM was shown, with a caption each (for a gallery)."""
        return [(c.view, f"cycle {c.cycle} · {VIEW_LABEL.get(c.view_name or '', 'view')}")
                for c in self.calls if c.view is not None]

    def evidence(self) -> list[str]:
        return [str(c.decision.get("answer")) for c in self.calls
                if c.role == "vlm" and c.decision and c.decision.get("answer")]


class ObservedBackend:
    """A backend that reports each call of one role to a :class:`CallLog`, then behaves like ``inner``."""

    def __init__(self, inner: Backend, role: Role, log: CallLog) -> None:
        self.inner, self.role, self.log = inner, role, log

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def supports_images(self) -> bool:
        return bool(getattr(self.inner, "supports_images", False))

    async def complete(self, messages: list[Message], **kwargs: Any) -> Completion:
        call = self.log.start(self.role.name, messages)
        try:
            completion = await self.inner.complete(messages, **kwargs)
        except BaseException as e:
            self.log.finish(call, error=f"{type(e).__name__}: {e}")
            raise
        try:
            decision, _ = self.role.decision.parse(completion.text)
        except DecisionError as e:
            self.log.finish(call, reply=completion.text, error=f"unusable reply: {e}")
        else:
            self.log.finish(call, reply=completion.text, decision=decision)
        return completion

    async def aclose(self) -> None:
        """Nothing: the wrapped backend is shared by every request and closed with the page."""


def observe(roles: Roles, log: CallLog) -> Roles:
    """The same roles (prompts, decisions, backends) with every backend call reported to ``log``."""
    wrapped: dict[str, Role] = {}
    for name in ROLE_NAMES:
        role = roles.get(name)
        if role is not None:
            wrapped[name] = replace(role, backend=ObservedBackend(role.backend, role, log))
    return Roles(**wrapped, retry=roles.retry)


# --- what the page shows --------------------------------------------------------------------------


def _quote(text: Any) -> str:
    return "“" + html.escape(str(text)).replace("\n", " ") + "”"


def describe_decision(role: str, decision: dict[str, Any] | None) -> str:
    """One line of Markdown for a role's decision."""
    if not decision:
        return ""
    d = decision
    if role == "reflector":
        out = f"judged **{html.escape(str(d.get('verdict')))}**"
        if d.get("missing"):
            out += f"; not confirmed: {html.escape(str(d['missing']))}"
        return out + (f" — {_quote(d['feedback'])}" if d.get("feedback") else "")
    if role == "planner":
        out = f"state **{html.escape(str(d.get('state')))}**"
        if d.get("state") == "uncertain":
            out += f", look at the {html.escape(str(d.get('focus')))}"
            if d.get("question"):
                out += f", asking {_quote(d['question'])}"
        return out + (f" — {_quote(d['reason'])}" if d.get("reason") else "")
    if role == "rewriter":
        return f"new expression {_quote(d.get('expression'))}"
    if role == "vlm":
        return f"answered {_quote(d.get('answer'))}"
    return html.escape(str(d))


def _line(role: str, decision: dict[str, Any] | None, *, view: str | None = None, error: str | None = None,
          attempts: int = 1, pending: bool = False) -> str:
    head = f"- **{role}**" + (f" ({VIEW_LABEL.get(view, view)})" if view else "")
    if pending:
        return head + " … waiting for the reply"
    text = describe_decision(role, decision)
    if attempts > 1:
        text += f" (after {attempts} attempts)"
    if error:
        text += ("; " if text else " ") + f"⚠ {html.escape(error)}"
    return f"{head}: {text}" if text else head


def live_markdown(log: CallLog) -> str:
    """The calls so far, grouped by cycle (retries shown as separate calls)."""
    lines: list[str] = []
    cycle = 0
    for c in log.calls:
        if c.cycle != cycle:
            cycle = c.cycle
            lines.append(f"\n**Cycle {cycle}**" + (" — reflect on the raw expression" if cycle == 1 else ""))
        lines.append(_line(c.role, c.decision, view=c.view_name, error=c.error, pending=not c.finished))
    return "\n".join(lines).strip() or "*starting…*"


def result_markdown(result: TaskResult) -> str:
    """The workflow's own record of the task, grouped by cycle, with notes and the outcome."""
    lines: list[str] = []
    cycle = 0
    step: Step
    for step in result.steps:
        if step.cycle != cycle:
            cycle = step.cycle
            lines.append(f"\n**Cycle {cycle}**" + (" — reflect on the raw expression" if cycle == 1 else ""))
        view = (step.view or {}).get("name")
        lines.append(_line(step.role, step.decision, view=view, error=step.error, attempts=step.attempts))
    for note in result.notes:
        lines.append(f"\n*note: {html.escape(note)}*")
    lines.append(f"\n**Verdict: {result.verdict}** after {result.cycles} cycle(s)")
    if result.expression != result.raw_expression:
        lines.append(f"{_quote(result.raw_expression)} → {_quote(result.expression)}")
    if result.error:
        lines.append(f"⚠ {html.escape(result.error)}")
    return "\n".join(lines).strip()


def evidence_markdown(evidence: list[str]) -> str:
    return "\n".join(f"- {html.escape(e)}" for e in evidence) or "*no evidence gathered yet*"
