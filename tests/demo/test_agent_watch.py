"""Watching the workflow: the live record of calls agrees with the workflow's own steps."""

from __future__ import annotations

import asyncio
import concurrent.futures

import numpy as np
from PIL import Image

from reallod.agent import workflow
from reallod.agent.task import ObjectRef, Task
from reallod.agent.views import OBJECT_CROP, make_view
from reallod.demo.agent_watch import CallLog, live_markdown, observe, result_markdown
from reallod.demo.examples import EXAMPLES_DIR
from reallod.llm.backends.base import BackendError
from tests.agent.scripted import plan, reflect, scripted_roles
from tests.demo.doubles import EVIDENCE, REWRITTEN, astronaut_roles

BOX = [20.0, 15.0, 365.0, 512.0]


def _task(expression: str = "the man in a blue spacesuit") -> Task:
    return Task("t1", "astronaut.jpg", 512, 512, expression, ObjectRef("person", [BOX]),
                caption="An astronaut in an orange spacesuit.")


def run(coro):
    """``asyncio.run`` in a thread of its own, whatever loop the test runner's thread holds."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _image() -> Image.Image:
    return Image.open(EXAMPLES_DIR / "astronaut.jpg").convert("RGB")


def test_live_calls_follow_the_workflow_cycle_by_cycle():
    image = _image()
    log = CallLog()
    result = run(workflow.run_task(_task(), observe(astronaut_roles(), log), load_image=lambda: image,
                                           max_cycles=3))
    assert (result.verdict, result.expression) == ("rewritten", REWRITTEN)
    seen = [(c.cycle, c.role) for c in log.calls]
    assert seen == [(s.cycle, s.role) for s in result.steps]
    assert seen == [(1, "reflector"), (2, "planner"), (2, "vlm"), (2, "reflector"),
                    (3, "planner"), (3, "rewriter"), (3, "reflector")]
    assert [c.decision for c in log.calls] == [s.decision for s in result.steps]
    assert log.evidence() == [EVIDENCE]
    # the image the VLM was sent is the workflow's object crop of the box, pixel for pixel
    (shown, caption), = log.views()
    expected, _ = make_view(image, BOX, OBJECT_CROP)
    assert caption == "cycle 2 · object crop"
    assert shown.size == expected.size and np.array_equal(np.asarray(shown), np.asarray(expected))
    page = result_markdown(result)
    assert page.index("**Cycle 1**") < page.index("**Cycle 2**") < page.index("**Cycle 3**")
    assert "**Verdict: rewritten** after 3 cycle(s)" in page and REWRITTEN in page
    assert "judged **uncertain**; not confirmed: colour" in live_markdown(log)


def test_retries_stay_in_their_cycle_and_failures_are_shown():
    answers = {"reflector": [reflect("uncertain", "colour")],
               "planner": [BackendError("overloaded", retryable=True), "not json at all", plan("correct")]}
    log = CallLog()
    result = run(workflow.run_task(_task(), observe(scripted_roles(answers, vlm=False), log),
                                           load_image=_image, max_cycles=3))
    assert result.verdict == "correct"
    assert [(c.cycle, c.role) for c in log.calls] == [(1, "reflector"), (2, "planner"), (2, "planner"),
                                                      (2, "planner")]
    assert "overloaded" in log.calls[1].error and "unusable reply" in log.calls[2].error
    assert result.steps[1].attempts == 3
    assert "(after 3 attempts)" in result_markdown(result)
    assert live_markdown(log).count("⚠") == 2


def test_a_vlm_less_config_reports_the_look_as_unavailable():
    log = CallLog()
    result = run(workflow.run_task(_task(), observe(astronaut_roles(vlm=False), log),
                                           load_image=_image, max_cycles=3))
    assert log.views() == [] and all(c.role != "vlm" for c in log.calls)
    page = result_markdown(result)
    assert "VLM unavailable" in page and "unavailable: no VLM configured" in page
