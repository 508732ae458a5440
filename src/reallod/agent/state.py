"""The re-alignment workflow as a small, pure state machine: no I/O, no models.

Cycle 1 reflects on the raw expression. Every later cycle plans, acts and reflects. The planner's state
picks the action: ``correct`` stops; ``wrong`` rewrites; ``uncertain`` asks the VLM about one view,
chosen by what the planner is uncertain about (object → object crop, surroundings → extended crop,
position → highlight). A VLM that is not available (no VLM configured, or it cannot take images) is
recorded as such and the cycle falls back to the one LLM tool, the rewriter. When the cycles run out,
the last reflection decides the verdict.

The workflow asks :func:`next_action` what to do, performs it, and feeds the outcome back through
:func:`advance`, which returns a new state. Every path ends in ``done`` with a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from reallod.agent.views import EXTENDED_CROP, HIGHLIGHT, OBJECT_CROP

FOCUS_VIEW: dict[str, str] = {"object": OBJECT_CROP, "surroundings": EXTENDED_CROP, "position": HIGHLIGHT}


class Phase(StrEnum):
    REFLECT = "reflect"
    PLAN = "plan"
    REWRITE = "rewrite"
    LOOK = "look"  # ask the VLM about a view
    DONE = "done"


# --- what the roles tell the machine ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reflection:
    verdict: str  # correct | uncertain | wrong
    missing: str = ""
    feedback: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    state: str  # correct | wrong | uncertain
    focus: str = "none"  # object | surroundings | position (for uncertain)
    question: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Rewrite:
    expression: str


@dataclass(frozen=True, slots=True)
class Look:
    answer: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The VLM could not be asked; ``reason`` is kept in the notes."""

    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The current step could not produce a usable decision; the task ends as failed."""

    error: str


Event = Reflection | Plan | Rewrite | Look | Unavailable | Failure


# --- what the machine asks for ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # reflect | plan | rewrite | look | stop
    view: str | None = None
    question: str = ""


class TransitionError(RuntimeError):
    """An event that does not fit the phase: a bug in the driver, never a model's fault."""


@dataclass(frozen=True, slots=True)
class State:
    raw_expression: str
    expression: str
    max_cycles: int = 3
    cycle: int = 1
    phase: Phase = Phase.REFLECT
    reflection: Reflection | None = None
    plan: Plan | None = None
    evidence: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    verdict: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE


def start(raw_expression: str, max_cycles: int = 3) -> State:
    """The state before cycle 1's reflection."""
    if max_cycles < 1:
        raise ValueError(f"max_cycles must be at least 1, got {max_cycles}")
    return State(raw_expression, raw_expression, max_cycles)


def next_action(state: State) -> Action:
    """What the driver must do next in this state."""
    if state.phase is Phase.LOOK:
        assert state.plan is not None
        return Action("look", FOCUS_VIEW[state.plan.focus], state.plan.question)
    return Action("stop" if state.phase is Phase.DONE else state.phase.value)


def _settled(state: State) -> str:
    return "rewritten" if state.expression != state.raw_expression else "correct"


def _final_verdict(state: State, reflection: Reflection) -> str:
    if reflection.verdict == "correct":
        return _settled(state)
    return "wrong" if reflection.verdict == "wrong" else "unresolved"


def advance(state: State, event: Event) -> State:
    """The state after ``event``; raises TransitionError for an event the phase does not expect."""
    if state.done:
        raise TransitionError(f"task already done ({state.verdict}); got {type(event).__name__}")
    if isinstance(event, Failure):
        return replace(state, phase=Phase.DONE, verdict="failed", error=event.error)
    phase = state.phase
    if phase is Phase.REFLECT and isinstance(event, Reflection):
        if state.cycle >= state.max_cycles:
            return replace(state, reflection=event, phase=Phase.DONE,
                           verdict=_final_verdict(state, event))
        return replace(state, reflection=event, phase=Phase.PLAN, cycle=state.cycle + 1)
    if phase is Phase.PLAN and isinstance(event, Plan):
        if event.state == "correct":
            return replace(state, plan=event, phase=Phase.DONE, verdict=_settled(state))
        if event.state == "wrong":
            return replace(state, plan=event, phase=Phase.REWRITE)
        if event.state == "uncertain" and event.focus in FOCUS_VIEW:
            return replace(state, plan=event, phase=Phase.LOOK)
        raise TransitionError(f"plan {event} is not a valid decision")
    if phase is Phase.REWRITE and isinstance(event, Rewrite):
        return replace(state, expression=event.expression, phase=Phase.REFLECT)
    if phase is Phase.LOOK and isinstance(event, Look):
        assert state.plan is not None
        view = FOCUS_VIEW[state.plan.focus]
        question = state.plan.question or "(no question)"
        fact = f"[{view.replace('_', ' ')}] Q: {question} A: {event.answer}"
        return replace(state, evidence=(*state.evidence, fact), phase=Phase.REFLECT)
    if phase is Phase.LOOK and isinstance(event, Unavailable):
        note = f"cycle {state.cycle}: VLM unavailable ({event.reason}); rewrote instead"
        return replace(state, notes=(*state.notes, note), phase=Phase.REWRITE)
    raise TransitionError(f"{type(event).__name__} does not fit phase {phase.value}")
