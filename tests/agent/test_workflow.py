"""run_task with scripted backends: every transition, the trace, malformed answers and failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from PIL import Image

from reallod.agent.task import ObjectRef, Task, TaskResult
from reallod.agent.workflow import run_task
from reallod.errors import ConfigError, DataError
from reallod.llm.backends.base import BackendError, Completion
from tests.agent.scripted import answer, plan, reflect, rewrite, scripted_roles


def make_task(**changes: Any) -> Task:
    task = Task(task_id="img1#0", image_path="img1.jpg", height=100, width=200,
                raw_expression="the red Dog on the left", chosen=ObjectRef("dog", [[40, 30, 60, 50]], id=1),
                others=[ObjectRef("cat", [[120, 10, 180, 90]], id=2)],
                caption="A brown dog sits next to a grey cat on a sofa.")
    for k, v in changes.items():
        setattr(task, k, v)
    return task


class Images:
    """Counts loads, so tests can check the image is opened lazily and once."""

    def __init__(self, image: Image.Image | None = None, error: Exception | None = None) -> None:
        self.image = image or Image.new("RGB", (200, 100), (10, 20, 30))
        self.error = error
        self.loads = 0

    def __call__(self) -> Image.Image:
        self.loads += 1
        if self.error:
            raise self.error
        return self.image


def run(task: Task, answers: dict[str, list], *, vlm: bool = True, max_cycles: int = 3,
        images: Images | None = None, **kw: Any) -> tuple[TaskResult, Any]:
    roles = scripted_roles(answers, vlm=vlm, **kw)
    result = asyncio.run(run_task(task, roles, load_image=images or Images(), max_cycles=max_cycles))
    for role, left in answers.items():
        assert left == [], f"unused scripted answers for {role}: {left}"
    return result, roles.reflector.backend.calls


def roles_of(result: TaskResult) -> list[str]:
    return [s.role for s in result.steps]


def test_correct_as_given() -> None:
    r, _ = run(make_task(), {"reflector": [reflect("correct")], "planner": [plan("correct")]})
    assert (r.verdict, r.expression, r.cycles, r.error) == ("correct", "the red Dog on the left", 2, None)
    assert roles_of(r) == ["reflector", "planner"]
    assert [s.cycle for s in r.steps] == [1, 2]


def test_one_cycle_is_a_single_reflection() -> None:
    r, _ = run(make_task(), {"reflector": [reflect("wrong")]}, max_cycles=1)
    assert (r.verdict, r.cycles, roles_of(r)) == ("wrong", 1, ["reflector"])


def test_wrong_is_rewritten_and_the_rewrite_is_kept_verbatim() -> None:
    images = Images()
    r, calls = run(make_task(), {
        "reflector": [reflect("wrong", feedback="the caption says brown"), reflect("correct")],
        "planner": [plan("wrong", reason="colour contradicts the caption"), plan("correct")],
        "rewriter": [rewrite("the brown Dog next to the grey Cat")]}, images=images)
    assert (r.verdict, r.expression, r.raw_expression) == (
        "rewritten", "the brown Dog next to the grey Cat", "the red Dog on the left")
    assert roles_of(r) == ["reflector", "planner", "rewriter", "reflector", "planner"]
    assert images.loads == 0  # no VLM action, no image
    rewriter_prompt = calls[2].messages[-1]["content"]
    assert "the caption says brown" in rewriter_prompt and "colour contradicts the caption" in rewriter_prompt
    assert "dog at [0.200, 0.300, 0.300, 0.500]" in rewriter_prompt
    assert "- cat at [0.600, 0.100, 0.900, 0.900]" in rewriter_prompt
    assert '"the brown Dog next to the grey Cat"' in calls[3].messages[-1]["content"]  # reflected on


@pytest.mark.parametrize(("focus", "view", "crop_box", "size"), [
    ("object", "object_crop", [40, 30, 60, 50], (20, 20)),
    ("surroundings", "extended_crop", [30, 20, 70, 60], (40, 40)),
    ("position", "highlight", [0, 0, 200, 100], (200, 100)),
])
def test_each_uncertainty_asks_the_vlm_about_its_view(focus: str, view: str, crop_box: list[int],
                                                      size: tuple[int, int]) -> None:
    images = Images()
    r, calls = run(make_task(), {
        "reflector": [reflect("uncertain", missing="colour"), reflect("correct")],
        "planner": [plan("uncertain", focus, "What colour is the dog?"), plan("correct")],
        "vlm": [answer("The dog is brown.")]}, images=images)
    assert r.verdict == "correct" and r.expression == "the red Dog on the left"  # evidence, not a rewrite
    assert roles_of(r) == ["reflector", "planner", "vlm", "reflector", "planner"]
    vlm_step = r.steps[2]
    assert vlm_step.view == {"name": view, "crop_box": crop_box}
    image_parts = [p for p in calls[2].messages[-1]["content"] if p["type"] == "image"]
    assert len(image_parts) == 1 and image_parts[0]["image"].size == size
    assert "What colour is the dog?" in calls[2].messages[-1]["content"][-1]["text"]
    assert r.evidence == [f"[{view.replace('_', ' ')}] Q: What colour is the dog? A: The dog is brown."]
    assert "A: The dog is brown." in calls[3].messages[-1]["content"]  # the reflector sees the evidence
    assert images.loads == 1
    # The trace holds no image objects: images become their view and crop box.
    recorded = vlm_step.messages[-1]["content"][0]
    assert recorded == {"type": "image", "name": view, "crop_box": crop_box, "size": list(size)}
    json.dumps(r.to_dict())


def test_the_image_is_loaded_once_for_several_looks() -> None:
    images = Images()
    r, _ = run(make_task(), {
        "reflector": [reflect("uncertain"), reflect("uncertain"), reflect("uncertain")],
        "planner": [plan("uncertain", "object"), plan("uncertain", "position")],
        "vlm": [answer("brown"), answer("on the left")]}, images=images)
    assert r.verdict == "unresolved" and r.cycles == 3 and images.loads == 1
    assert len(r.evidence) == 2


def test_a_vlm_without_a_question_gets_a_default_one() -> None:
    _, calls = run(make_task(), {
        "reflector": [reflect("uncertain"), reflect("correct")],
        "planner": [plan("uncertain", "surroundings", question=""), plan("correct")],
        "vlm": [answer("a cat")]})
    assert "What is next to the dog" in calls[2].messages[-1]["content"][-1]["text"]


def test_without_a_vlm_the_action_is_reported_unavailable_and_the_rewriter_runs() -> None:
    images = Images()
    r, _ = run(make_task(), {
        "reflector": [reflect("uncertain", missing="colour"), reflect("correct")],
        "planner": [plan("uncertain", "object", "What colour?"), plan("correct")],
        "rewriter": [rewrite("the Dog on the left")]}, vlm=False, images=images)
    assert (r.verdict, r.expression) == ("rewritten", "the Dog on the left")
    assert roles_of(r) == ["reflector", "planner", "vlm", "rewriter", "reflector", "planner"]
    vlm_step = r.steps[2]
    assert vlm_step.error == "unavailable: no VLM configured" and vlm_step.view["name"] == "object_crop"
    assert r.notes == ["cycle 2: VLM unavailable (no VLM configured); rewrote instead"]
    assert images.loads == 0


def test_a_vlm_backend_that_takes_no_images_is_unavailable() -> None:
    roles = scripted_roles({"reflector": [reflect("uncertain"), reflect("wrong")],
                            "planner": [plan("uncertain", "position")], "rewriter": [rewrite("a dog")]})
    roles.vlm.backend.supports_images = False
    r = asyncio.run(run_task(make_task(), roles, load_image=Images(), max_cycles=2))
    assert r.verdict == "wrong" and "takes no images" in r.steps[2].error


@pytest.mark.parametrize(("last", "verdict"), [("wrong", "wrong"), ("uncertain", "unresolved"),
                                               ("correct", "rewritten")])
def test_when_the_cycles_run_out_the_last_reflection_decides(last: str, verdict: str) -> None:
    r, _ = run(make_task(), {
        "reflector": [reflect("wrong"), reflect("wrong"), reflect(last)],
        "planner": [plan("wrong"), plan("wrong")],
        "rewriter": [rewrite("a brown dog"), rewrite("the brown dog")]})
    assert r.verdict == verdict and r.cycles == 3 and r.expression == "the brown dog"


def test_malformed_answer_is_retried_with_the_reason_and_recorded() -> None:
    r, calls = run(make_task(), {
        "reflector": ["I think it is fine", reflect("correct")], "planner": [plan("correct")]})
    assert r.verdict == "correct"
    step = r.steps[0]
    assert step.attempts == 2 and step.rejected == [
        {"attempt": 1, "raw": "I think it is fine", "error": "the reply is not a JSON object"}]
    retry_messages = calls[1].messages
    assert retry_messages[-2] == {"role": "assistant", "content": "I think it is fine"}
    assert "cannot be used: the reply is not a JSON object" in retry_messages[-1]["content"]
    assert step.messages[-1]["content"] == retry_messages[-1]["content"]  # the trace shows the retry
    assert step.prompt_tokens == 20


def test_repaired_json_is_used_and_marked() -> None:
    r, _ = run(make_task(), {"reflector": ['{"verdict": "correct", "feedback": "ok"'],
                             "planner": [plan("correct")]})
    assert r.verdict == "correct" and r.steps[0].repaired and r.steps[0].attempts == 1


@pytest.mark.parametrize(("role", "bad"), [
    ("reflector", '{"verdict": "probably"}'),
    ("planner", '{"state": "zoom in"}'),
    ("planner", '{"state": "uncertain", "focus": "telescope"}'),
    ("rewriter", '{"expression": ""}'),
    ("vlm", '{"answer": ""}'),
])
def test_unusable_answers_end_the_task_as_failed_after_the_retries(role: str, bad: str) -> None:
    answers: dict[str, list] = {"reflector": [reflect("uncertain")], "planner": [], "rewriter": [], "vlm": []}
    if role == "reflector":
        answers["reflector"] = [bad] * 3
    else:
        answers["planner"] = [plan("wrong" if role == "rewriter" else "uncertain", "object")]
        answers[role] = [bad] * 3
    if role == "planner":
        answers["planner"] = [bad] * 3
    r, _ = run(make_task(), answers)
    assert r.verdict == "failed" and r.error.startswith(f"{role}: no usable answer after 3 attempt(s)")
    assert r.error_kind == "unusable_answer"
    failed = r.steps[-1]
    assert failed.role == role and failed.attempts == 3 and len(failed.rejected) == 3
    assert failed.error == r.error and failed.decision is None


def test_a_reply_cut_at_the_token_limit_says_so() -> None:
    """It said only 'field "verdict" is missing', which points at the model, not at max_tokens."""
    cut = Completion('{"missing": "", "feedback": "because the', 10, 8, 0.0, {"finish_reason": "length"})
    r, _ = run(make_task(), {"reflector": [cut] * 3})
    assert r.verdict == "failed" and "the reply was cut at the token limit" in r.error
    assert all("cut at the token limit" in x["error"] for x in r.steps[0].rejected)


def test_a_reply_of_reasoning_the_server_returned_apart_says_to_turn_thinking_off() -> None:
    """vLLM/SGLang with a reasoning parser return the thinking apart and an empty answer when the limit
    is spent on it: the error named no field of an answer the model never began."""
    thought = Completion("", 10, 64, 0.0, {"finish_reason": "length", "reasoning_chars": 900})
    r, _ = run(make_task(), {"reflector": [thought] * 3})
    assert r.verdict == "failed" and "only the model's reasoning (the server's reasoning parser returned it apart)" \
        in r.error
    assert "enable_thinking: false" in r.error and "cut at the token limit" in r.error


def test_a_reply_the_server_stopped_below_max_tokens_names_the_servers_limit() -> None:
    """llama-server stops a request whose slot's context is full with finish_reason "length": raising
    max_tokens, which the message advised, changes nothing."""
    cut = Completion('{"missing": "", "feedback": "because the', 10, 8, 0.0,
                     {"finish_reason": "length", "stopped_below_max_tokens": 96})
    r, _ = run(make_task(), {"reflector": [cut] * 3})
    assert r.verdict == "failed" and "the server stopped it after 8 tokens, below max_tokens 96" in r.error
    assert "llama-server's -c divided by --parallel" in r.error and "raise it in the config" not in r.error


def test_a_think_block_is_no_part_of_the_answer() -> None:
    """A reasoning model served without a reasoning parser writes <think>...</think> before its answer:
    a brace in the thinking was read as the answer's start, and a think block alone was "not a JSON
    object" with no word of the fix."""
    thinking = ('<think>The schema is {"missing": ..., "verdict": ...}; the cup looks white, so the verdict '
                "is correct.</think>\n")
    r, _ = run(make_task(), {"reflector": [thinking + reflect("correct", feedback="the cup is white")],
                             "planner": [plan("correct")]})
    assert r.verdict == "correct" and not r.steps[0].rejected
    assert r.steps[0].decision["feedback"] == "the cup is white"
    only = Completion("<think>The cup is white, so I should answer", 10, 64, 0.0, {"finish_reason": "length"})
    r, _ = run(make_task(), {"reflector": [only] * 3})
    assert r.verdict == "failed" and "only reasoning (<think>) with no answer after it" in r.error
    assert "serve the model with a reasoning parser or with thinking turned off" in r.error


def test_a_cut_reply_that_repairs_into_a_decision_is_not_taken() -> None:
    """JSON repair closes a reply cut mid-string, so it parsed, and the half-written expression went
    into the output ("the rewritten object on the le")."""
    cut = Completion('{"missing": "", "verdict": "correct", "feedback": "the cup is whi', 10, 8, 0.0,
                     {"finish_reason": "length"})
    whole = Completion(reflect("correct", feedback="the cup is white"), 10, 8, 0.0, {"finish_reason": "length"})
    r, _ = run(make_task(), {"reflector": [cut, whole], "planner": [plan("correct")]})
    assert r.verdict == "correct" and r.steps[0].attempts == 2
    assert r.steps[0].decision["feedback"] == "the cup is white"  # a whole reply at the limit is used
    assert "stops mid-answer (the reply was cut at the token limit" in r.steps[0].rejected[0]["error"]


def test_an_expression_a_constrained_decoder_closed_at_the_limit_is_not_taken() -> None:
    """The in-process decoder closes a string at its share of max_tokens, so the reply parses whole; it
    names the field (``cut_fields``). A cut expression would go into the output; cut feedback is only
    reasoning, and the verdict after it was still written."""
    def decoded(text: str, *cut: str) -> Completion:
        return Completion(text, 10, 8, 0.0, {"finish_reason": "length" if cut else "stop", "cut_fields": list(cut)})

    r, _ = run(make_task(), {
        "reflector": [decoded(reflect("wrong", feedback="the caption says"), "feedback"), reflect("correct")],
        "planner": [plan("wrong"), plan("correct")],
        "rewriter": [decoded(rewrite("the brown Dog next to the"), "expression"), rewrite("the brown Dog")]})
    assert (r.verdict, r.expression) == ("rewritten", "the brown Dog")
    assert r.steps[0].decision["verdict"] == "wrong" and not r.steps[0].rejected
    rewriter = r.steps[2]
    assert rewriter.attempts == 2 and 'the field "expression" stops mid-answer (the reply was cut at the token ' \
        "limit" in rewriter.rejected[0]["error"]


def test_retryable_backend_errors_are_retried() -> None:
    r, _ = run(make_task(), {
        "reflector": [BackendError("HTTP 503", retryable=True), BackendError("timed out", retryable=True),
                      reflect("correct")],
        "planner": [plan("correct")]})
    assert r.verdict == "correct" and r.steps[0].attempts == 3
    assert [x["error"] for x in r.steps[0].rejected] == ["backend: HTTP 503", "backend: timed out"]


def test_backend_errors_that_persist_or_cannot_be_retried_fail_the_task() -> None:
    r, _ = run(make_task(), {"reflector": [BackendError("HTTP 401 unauthorised")]})
    assert r.verdict == "failed" and r.steps[0].attempts == 1
    assert "backend scripted:reflector failed: HTTP 401 unauthorised" in r.error
    assert r.error_kind == "backend_error"  # told apart from a model's unusable answers in the summary
    r, _ = run(make_task(), {"reflector": [BackendError("down", retryable=True)] * 3})
    assert r.verdict == "failed" and r.steps[0].attempts == 3


def test_a_model_that_cannot_be_loaded_stops_the_run() -> None:
    roles = scripted_roles({"reflector": [ConfigError("cannot load causal_lm model x: no such file")]})
    with pytest.raises(ConfigError, match="cannot load"):
        asyncio.run(run_task(make_task(), roles, load_image=Images()))
    with pytest.raises(ValueError, match="max_cycles"):
        asyncio.run(run_task(make_task(), roles, load_image=Images(), max_cycles=0))


def test_an_unexpected_backend_exception_fails_only_the_task() -> None:
    r, _ = run(make_task(), {"reflector": [RuntimeError("CUDA out of memory")]})
    assert r.verdict == "failed" and "RuntimeError: CUDA out of memory" in r.error


@pytest.mark.parametrize("error", [DataError("img1.jpg: no such image"), OSError("truncated file"),
                                   ValueError("not an image")])
def test_an_unreadable_image_fails_the_task(error: Exception) -> None:
    r, _ = run(make_task(), {"reflector": [reflect("uncertain")], "planner": [plan("uncertain", "object")]},
               images=Images(error=error))
    assert r.verdict == "failed" and str(error) in r.error
    assert roles_of(r) == ["reflector", "planner"]


def test_a_box_outside_the_actual_image_fails_the_task() -> None:
    r, _ = run(make_task(), {"reflector": [reflect("uncertain")], "planner": [plan("uncertain", "object")]},
               images=Images(Image.new("RGB", (30, 20))))
    assert r.verdict == "failed" and "outside the 30x20 image" in r.error


@pytest.mark.parametrize(("change", "message"), [
    ({"raw_expression": "   "}, "empty raw expression"),
    ({"caption": None}, "no caption"),
    ({"chosen": ObjectRef("", [[1, 1, 5, 5]])}, "no category"),
    ({"chosen": ObjectRef("dog", [])}, "no box"),
    ({"chosen": ObjectRef("dog", [[300, 10, 320, 20]])}, "outside the 200x100 image"),
    ({"chosen": ObjectRef("dog", [[10, 10, 5, 20]])}, "x2 < x1"),
    ({"width": 0}, "not a positive width x height"),
    ({"height": None}, "not a positive width x height"),
])
def test_bad_tasks_fail_before_any_call(change: dict[str, Any], message: str) -> None:
    r, calls = run(make_task(**change), {})
    assert r.verdict == "failed" and message in r.error and r.cycles == 0 and r.steps == [] and calls == []


def test_trace_records_every_call_with_tokens_latency_and_decision() -> None:
    r, _ = run(make_task(), {
        "reflector": [reflect("wrong"), reflect("correct")], "planner": [plan("wrong"), plan("correct")],
        "rewriter": [rewrite("a brown dog")]})
    for s in r.steps:
        assert s.messages and s.messages[0]["role"] == "system" and s.raw_response and s.decision
        assert s.prompt_tokens == 10 and s.completion_tokens > 0 and s.latency_s > 0
    d = json.loads(json.dumps(r.to_dict()))
    assert d["steps"][2]["decision"] == {"expression": "a brown dog"}


def test_groups_of_boxes_are_viewed_as_their_union() -> None:
    task = make_task(chosen=ObjectRef("dog", [[40, 30, 60, 50], [70, 40, 90, 60]]))
    r, _ = run(task, {"reflector": [reflect("uncertain"), reflect("correct")],
                      "planner": [plan("uncertain", "object"), plan("correct")], "vlm": [answer("two dogs")]})
    assert r.steps[2].view == {"name": "object_crop", "crop_box": [40, 30, 90, 60]}
