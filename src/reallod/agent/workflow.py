"""Drives the state machine (``state``) with the roles for one task and records every call.

``run_task`` never raises for a problem of the task: bad input, an unreadable image, a backend that
keeps failing, replies that stay unusable after repair and retries — each ends the task with verdict
``failed`` and ``error`` set, so a long run goes on. Every role call becomes a :class:`Step` with the
messages sent (images replaced by their view name and crop box), the raw reply, the parsed decision,
the rejected attempts, latency and token counts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from reallod.agent import state as sm
from reallod.agent.decisions import DecisionError
from reallod.agent.roles import Role, Roles
from reallod.agent.task import Step, Task, TaskResult
from reallod.agent.views import EXTENDED_CROP, OBJECT_CROP, make_view, pixel_box
from reallod.errors import ConfigError, DataError
from reallod.llm.backends.base import REASONING_PARSER, THINKING_OFF, BackendError, Message, map_parts
from reallod.llm.memo import IdentityMemo
from reallod.llm.policy import backoff_delay
from reallod.llm.replies import answer_text, forget_reply, server_limit

_JITTER = random.Random()  # backoff jitter when a backend is used without the runner's retry wrapper

MAX_OTHERS_IN_PROMPT = 30
VIEWS = IdentityMemo(64)
"""Views already cut, by (decoded image, box, view): the tasks of one object share them."""

_VIEW_TEXT = {
    OBJECT_CROP: "a crop showing only the {c}",
    EXTENDED_CROP: "a crop around the {c}, which is outlined in red, with what surrounds it",
    "highlight": "the whole photograph, with the {c} outlined in red",
}
_DEFAULT_QUESTION = {
    OBJECT_CROP: "Describe the {c}: its colour, material, shape and what it is doing.",
    EXTENDED_CROP: "What is next to the {c}, and how is it related to those things?",
    "highlight": "Where in the scene is the {c}, and what is around it?",
}


class StepFailed(Exception):
    """A role call that produced no usable decision; the task ends as failed, for the reason ``kind``
    (:data:`reallod.agent.inputs.TASK_PROBLEM_KINDS`), so a summary tells a server's refusals from a
    model's unusable answers."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def validate_task(task: Task) -> str | None:
    """Why the task cannot be run, or None. Pure: checks the task, not the image file."""
    if not task.raw_expression or not task.raw_expression.strip():
        return "empty raw expression"
    if not task.chosen.category or not str(task.chosen.category).strip():
        return "chosen object has no category"
    if task.caption is None or not str(task.caption).strip():
        return "no caption for this task"
    sizes = (task.width, task.height)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in sizes):
        return f"image size {task.width}x{task.height} is not a positive width x height"
    if not task.chosen.bboxes:
        return "chosen object has no box"
    for box in task.chosen.bboxes:
        try:
            pixel_box(box, task.width, task.height)
        except DataError as e:
            return f"chosen object: {e}"
    return None


def _serialisable(messages: list[Message], view: dict[str, Any] | None) -> list[Message]:
    def image(part: dict[str, Any]) -> dict[str, Any]:
        img = part.get("image")
        size = [img.width, img.height] if isinstance(img, Image.Image) else None
        return {"type": "image", **(view or {}), "size": size}

    return map_parts(messages, image)


def _fmt_box(box: list[float], w: int, h: int) -> str:
    x1, y1, x2, y2 = box
    return "[" + ", ".join(f"{v:.3f}" for v in (x1 / w, y1 / h, x2 / w, y2 / h)) + "]"


@dataclass
class _TaskRun:
    """One task's driver: performs the actions the state machine asks for."""

    task: Task
    roles: Roles
    load_image: Callable[[], Image.Image]
    steps: list[Step] = field(default_factory=list)
    _image: Image.Image | None = None
    failure_kind: str | None = None  # why the task failed, when it did

    async def call(self, role: Role, cycle: int, values: dict[str, Any],
                   images: list[Image.Image] | None = None, view: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask ``role`` until it gives a usable decision; record the call as one Step."""
        policy = self.roles.retry
        messages = role.messages(values, images)
        convo = list(messages)
        step = Step(cycle=cycle, role=role.name, messages=[], view=view, attempts=0,
                    values={k: v for k, v in values.items() if isinstance(v, (str, int, float))})
        self.steps.append(step)
        replies = []  # every reply of this call: all are forgotten if the call fails its task
        try:
            for attempt in range(1, policy.max_attempts + 1):
                step.attempts = attempt
                try:
                    completion = await role.backend.complete(
                        convo, schema=role.decision.schema, max_tokens=role.max_tokens,
                        temperature=role.temperature)
                except BackendError as e:
                    step.requests += e.requests
                    step.rejected.append({"attempt": attempt, "error": f"backend: {e}"})
                    if e.retryable and attempt < policy.max_attempts:
                        await asyncio.sleep(backoff_delay(attempt, policy, _JITTER, e.retry_after))
                        continue
                    raise StepFailed(f"{role.name}: backend {role.backend.name} failed: {e}",
                                     "backend_error") from e
                except ConfigError:
                    raise  # the model cannot be loaded or used at all: a run-level problem, not this task's
                except Exception as e:  # a backend bug must not end the run
                    step.requests += 1
                    step.rejected.append({"attempt": attempt, "error": f"{type(e).__name__}: {e}"})
                    raise StepFailed(f"{role.name}: backend {role.backend.name} raised "
                                     f"{type(e).__name__}: {e}", "backend_error") from e
                replies.append(completion)
                step.requests += int(completion.meta.get("attempts") or 1)
                step.raw_response = completion.text
                step.latency_s += completion.latency_s
                step.prompt_tokens += completion.prompt_tokens
                step.completion_tokens += completion.completion_tokens
                if completion.meta.get("cached"):
                    step.cached = [step.cached[0] + 1, step.cached[1] + completion.prompt_tokens,
                                   step.cached[2] + completion.completion_tokens]
                try:
                    decision, repaired = role.decision.parse(completion.text)
                    if repaired and completion.meta.get("finish_reason") == "length":  # closed by the repair
                        raise DecisionError("the reply stops mid-answer")
                    cut = [f for f in completion.meta.get("cut_fields") or () if f in role.decision.kept_fields]
                    if cut:  # a constrained decoder closed it at the limit: "the dog on the le"
                        raise DecisionError(f'the field "{cut[0]}" stops mid-answer')
                except DecisionError as e:
                    why = str(e)
                    if not completion.text.strip() and completion.meta.get("reasoning_chars"):
                        why = ("the reply is only the model's reasoning (the server's reasoning parser returned it "
                               f"apart) with an empty answer; {THINKING_OFF}")
                    elif not answer_text(completion.text).strip() and completion.text.strip():
                        why += f"; {REASONING_PARSER}"
                    if completion.meta.get("finish_reason") == "length":  # the server stopped it mid-answer
                        limit = server_limit(completion)
                        raise_it = f", max_tokens {role.max_tokens}: raise it in the config" if role.max_tokens else ""
                        why += f" ({limit})" if limit else f" (the reply was cut at the token limit{raise_it})"
                    step.rejected.append({"attempt": attempt, "raw": completion.text, "error": why})
                    if attempt < policy.max_attempts:
                        convo = [*messages, {"role": "assistant", "content": completion.text},
                                 {"role": "user", "content": f"That answer cannot be used: {e}. Answer "
                                  f"again with only {role.decision.format_hint()}."}]
                        continue
                    raise StepFailed(f"{role.name}: no usable answer after {attempt} attempt(s): {why}",
                                     "unusable_answer") from e
                step.decision, step.repaired = decision, repaired
                return decision
            raise StepFailed(f"{role.name}: no attempts allowed (max_attempts={policy.max_attempts})",
                             "backend_error")
        except StepFailed as e:
            step.error = str(e)
            for reply in replies:  # a rerun asks the (fixed) server again, from the first attempt
                forget_reply(role.backend, reply)
            raise
        finally:
            step.messages = _serialisable(convo, view)

    def _evidence(self, state: sm.State) -> str:
        return "\n".join(f"- {e}" for e in state.evidence) or "(none yet)"

    def _feedback(self, state: sm.State) -> str:
        parts = []
        if state.reflection:
            r = state.reflection
            parts.append(f"judged {r.verdict}" + (f"; not confirmed: {r.missing}" if r.missing else "")
                         + (f"; {r.feedback}" if r.feedback else ""))
        if state.plan and state.plan.reason:
            parts.append(f"planner: {state.plan.reason}")
        if state.plan and state.plan.question:
            parts.append(f"open question: {state.plan.question}")
        if state.notes and state.notes[-1].startswith(f"cycle {state.cycle}:"):
            parts.append("the image could not be checked, so keep only what the caption supports")
        return ". ".join(parts) or "(none)"

    async def reflect(self, state: sm.State) -> sm.Event:
        d = await self.call(self.roles.reflector, state.cycle, {
            "category": self.task.chosen.category, "caption": self.task.caption,
            "evidence": self._evidence(state), "expression": state.expression})
        return sm.Reflection(d["verdict"], d["missing"], d["feedback"])

    async def plan(self, state: sm.State) -> sm.Event:
        r = state.reflection or sm.Reflection("uncertain")
        d = await self.call(self.roles.planner, state.cycle, {
            "category": self.task.chosen.category, "expression": state.expression,
            "verdict": r.verdict, "missing": r.missing or "(nothing)", "feedback": r.feedback or "(none)"})
        return sm.Plan(d["state"], d["focus"], d["question"], d["reason"])

    async def rewrite(self, state: sm.State) -> sm.Event:
        t = self.task
        others = [f"- {o.category} at " + ", ".join(_fmt_box(b, t.width, t.height) for b in o.bboxes)
                  for o in t.others[:MAX_OTHERS_IN_PROMPT]]
        if len(t.others) > MAX_OTHERS_IN_PROMPT:
            others.append(f"- ... and {len(t.others) - MAX_OTHERS_IN_PROMPT} more")
        d = await self.call(self.roles.rewriter, state.cycle, {
            "category": t.chosen.category, "caption": t.caption, "evidence": self._evidence(state),
            "expression": state.expression, "feedback": self._feedback(state),
            "chosen_box": ", ".join(_fmt_box(b, t.width, t.height) for b in t.chosen.bboxes),
            "others": "\n".join(others) or "(none)", "image_size": f"{t.width}x{t.height} pixels"})
        return sm.Rewrite(d["expression"])

    def _unavailable(self, state: sm.State, view: str, reason: str) -> sm.Event:
        self.steps.append(Step(cycle=state.cycle, role="vlm", messages=[], view={"name": view, "crop_box": None},
                               attempts=0, error=f"unavailable: {reason}"))
        return sm.Unavailable(reason)

    async def look(self, state: sm.State, action: sm.Action) -> sm.Event:
        view_name = action.view or OBJECT_CROP
        vlm = self.roles.vlm
        if vlm is None:
            return self._unavailable(state, view_name, "no VLM configured")
        if not getattr(vlm.backend, "supports_images", False):
            return self._unavailable(state, view_name, f"backend {vlm.backend.name} takes no images")
        if self._image is None:  # decoding and drawing take milliseconds: off the event loop
            try:
                self._image = await asyncio.to_thread(self._decode)
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"cannot read image {self.task.image_path}: {type(e).__name__}: {e}") from e
        c = self.task.chosen.category
        box = self.task.chosen.union_box()
        image = self._image
        view_img, crop_box = await VIEWS.get_off_loop(image, (tuple(box), view_name),
                                                      lambda: make_view(image, box, view_name))
        question = action.question or _DEFAULT_QUESTION[view_name].format(c=c)
        d = await self.call(vlm, state.cycle, {
            "category": c, "expression": state.expression, "question": question,
            "view": _VIEW_TEXT[view_name].format(c=c)}, images=[view_img],
            view={"name": view_name, "crop_box": crop_box})
        return sm.Look(d["answer"])

    def _decode(self) -> Image.Image:
        image = self.load_image()
        image.load()
        return image

    async def perform(self, state: sm.State) -> sm.Event:
        action = sm.next_action(state)
        try:
            if action.kind == "reflect":
                return await self.reflect(state)
            if action.kind == "plan":
                return await self.plan(state)
            if action.kind == "rewrite":
                return await self.rewrite(state)
            if action.kind == "look":
                return await self.look(state, action)
        except StepFailed as e:
            self.failure_kind = e.kind
            return sm.Failure(str(e))
        except DataError as e:
            self.failure_kind = "image_error"
            return sm.Failure(str(e))
        raise sm.TransitionError(f"no action for {action}")


async def run_task(task: Task, roles: Roles, *, load_image: Callable[[], Image.Image],
                   max_cycles: int = 3) -> TaskResult:
    """Re-align one task's expression. Task-level problems end as verdict "failed" with ``error``.

    Raises only for run-level problems: ``max_cycles`` < 1 (ValueError) and a backend that reports a
    :class:`ConfigError` (a model that cannot be loaded), which would fail every task the same way.
    """
    state = sm.start(task.raw_expression, max_cycles)  # a bad max_cycles is the caller's bug: raises
    problem = validate_task(task)
    if problem is not None:
        return TaskResult(task.task_id, "failed", task.raw_expression, task.raw_expression, 0, error=problem,
                          error_kind="bad_task")
    run = _TaskRun(task, roles, load_image)
    try:
        while not state.done:
            state = sm.advance(state, await run.perform(state))
    except ConfigError:
        raise
    except Exception as e:  # a bug in one task must not end a long run; it is recorded, not hidden
        state = replace(state, phase=sm.Phase.DONE, verdict="failed",
                        error=f"internal error: {type(e).__name__}: {e}")
    assert state.verdict is not None
    return TaskResult(task.task_id, state.verdict, task.raw_expression, state.expression,  # type: ignore[arg-type]
                      state.cycle, steps=run.steps, evidence=list(state.evidence), error=state.error,
                      notes=list(state.notes), error_kind=run.failure_kind if state.verdict == "failed" else None)
