"""The pure state machine, one test per transition, without any model."""

from __future__ import annotations

import pytest

from reallod.agent import state as sm
from reallod.agent.state import (
    Action,
    Failure,
    Look,
    Phase,
    Plan,
    Reflection,
    Rewrite,
    TransitionError,
    Unavailable,
    advance,
    next_action,
    start,
)


def _planning(max_cycles: int = 3, verdict: str = "uncertain") -> sm.State:
    return advance(start("the red Dog", max_cycles), Reflection(verdict, "colour", "not in caption"))


def test_start_reflects_on_the_raw_expression() -> None:
    s = start("the red Dog")
    assert (s.phase, s.cycle, s.expression, s.max_cycles) == (Phase.REFLECT, 1, "the red Dog", 3)
    assert next_action(s) == Action("reflect")


@pytest.mark.parametrize("bad", [0, -1])
def test_max_cycles_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_cycles"):
        start("x", bad)


def test_reflection_before_the_last_cycle_leads_to_planning_in_the_next_cycle() -> None:
    s = _planning()
    assert (s.phase, s.cycle) == (Phase.PLAN, 2)
    assert s.reflection == Reflection("uncertain", "colour", "not in caption")
    assert next_action(s) == Action("plan")


def test_correct_stops_with_the_raw_expression() -> None:
    s = advance(_planning(verdict="correct"), Plan("correct"))
    assert s.done and s.verdict == "correct" and s.expression == "the red Dog" and s.cycle == 2
    assert next_action(s) == Action("stop")


def test_wrong_leads_to_a_rewrite_then_a_reflection_on_it() -> None:
    s = advance(_planning(verdict="wrong"), Plan("wrong"))
    assert s.phase is Phase.REWRITE and next_action(s) == Action("rewrite")
    s = advance(s, Rewrite("the brown Dog near the Sofa"))
    assert s.phase is Phase.REFLECT and s.expression == "the brown Dog near the Sofa"  # case kept
    assert s.cycle == 2


@pytest.mark.parametrize(("focus", "view"), [
    ("object", "object_crop"), ("surroundings", "extended_crop"), ("position", "highlight")])
def test_each_kind_of_uncertainty_looks_at_its_view(focus: str, view: str) -> None:
    s = advance(_planning(), Plan("uncertain", focus, "what colour is it?"))
    assert s.phase is Phase.LOOK
    assert next_action(s) == Action("look", view, "what colour is it?")


def test_vlm_answer_is_added_to_the_evidence_and_does_not_replace_the_expression() -> None:
    s = advance(_planning(), Plan("uncertain", "object", "what colour is it?"))
    s = advance(s, Look("It is brown."))
    assert s.phase is Phase.REFLECT and s.expression == "the red Dog"
    assert s.evidence == ("[object crop] Q: what colour is it? A: It is brown.",)


def test_unavailable_vlm_falls_back_to_the_rewriter_and_is_noted() -> None:
    s = advance(_planning(), Plan("uncertain", "position"))
    s = advance(s, Unavailable("no VLM configured"))
    assert s.phase is Phase.REWRITE
    assert s.notes == ("cycle 2: VLM unavailable (no VLM configured); rewrote instead",)


def test_reflection_at_the_last_cycle_decides_the_verdict() -> None:
    def finish(verdict: str, rewritten: bool) -> sm.State:
        s = advance(_planning(max_cycles=2), Plan("wrong"))
        s = advance(s, Rewrite("a brown dog" if rewritten else "the red Dog"))
        return advance(s, Reflection(verdict))

    assert finish("correct", True).verdict == "rewritten"
    assert finish("correct", False).verdict == "correct"  # a rewrite that changed nothing
    assert finish("wrong", True).verdict == "wrong"
    assert finish("uncertain", True).verdict == "unresolved"
    s = finish("uncertain", True)
    assert s.done and s.cycle == 2 and s.expression == "a brown dog"


def test_planner_correct_after_a_rewrite_is_rewritten() -> None:
    s = advance(_planning(), Plan("wrong"))
    s = advance(s, Rewrite("a brown dog"))
    s = advance(s, Reflection("correct"))
    assert (s.phase, s.cycle) == (Phase.PLAN, 3)
    s = advance(s, Plan("correct"))
    assert s.verdict == "rewritten" and s.expression == "a brown dog"


def test_one_cycle_is_only_a_reflection() -> None:
    s = advance(start("a dog", 1), Reflection("uncertain"))
    assert s.done and s.verdict == "unresolved" and s.cycle == 1


def test_max_cycles_bounds_a_loop_of_uncertainty() -> None:
    s = start("a dog", 3)
    actions = []
    while not s.done:
        a = next_action(s)
        actions.append(a.kind)
        s = advance(s, {"reflect": Reflection("uncertain"), "plan": Plan("uncertain", "object"),
                        "look": Look("unclear")}[a.kind])
    assert actions == ["reflect", "plan", "look", "reflect", "plan", "look", "reflect"]
    assert s.verdict == "unresolved" and s.cycle == 3 and len(s.evidence) == 2


@pytest.mark.parametrize("phase_events", [
    [],  # reflect
    [Reflection("wrong")],  # plan
    [Reflection("wrong"), Plan("wrong")],  # rewrite
    [Reflection("wrong"), Plan("uncertain", "object")],  # look
])
def test_failure_ends_the_task_as_failed_in_any_phase(phase_events: list[sm.Event]) -> None:
    s = start("a dog")
    for e in phase_events:
        s = advance(s, e)
    s = advance(s, Failure("planner: no usable answer"))
    assert s.done and s.verdict == "failed" and s.error == "planner: no usable answer"


def test_events_that_do_not_fit_the_phase_are_driver_bugs() -> None:
    with pytest.raises(TransitionError):
        advance(start("a dog"), Plan("correct"))
    with pytest.raises(TransitionError):
        advance(_planning(), Rewrite("x"))
    with pytest.raises(TransitionError):
        advance(_planning(), Plan("uncertain", "none"))
    done = advance(_planning(), Plan("correct"))
    with pytest.raises(TransitionError, match="already done"):
        advance(done, Reflection("correct"))


def test_states_are_immutable() -> None:
    s = start("a dog")
    advance(s, Reflection("wrong"))
    assert s.phase is Phase.REFLECT and s.reflection is None
