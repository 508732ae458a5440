"""Test doubles for the demo tests: a scripted agent that re-aligns the astronaut example, backends
that answer slowly (so a page can be watched while the agent works), and a slow detector."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from typing import Any

from reallod.agent.roles import ROLE_NAMES, Roles
from tests.agent.scripted import answer, plan, reflect, rewrite, scripted_roles

REWRITTEN = "the woman in an orange spacesuit"
EVIDENCE = "the suit is orange"


def _user_text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1]["content"]
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return str(content)


def astronaut_script(role: str, messages: list[dict[str, Any]]) -> str:
    """Stateless answers: uncertain about colour → VLM on the object crop → wrong → rewrite → correct.

    With 3 cycles the verdict is ``rewritten``; every request gets the same story.
    """
    text = _user_text(messages)
    if role == "reflector":
        if f'Expression to judge: "{REWRITTEN}"' in text:
            return reflect("correct", feedback="the caption and the crop agree")
        if EVIDENCE in text:
            return reflect("wrong", feedback="the vision model says the suit is orange")
        return reflect("uncertain", missing="colour", feedback="the caption does not say the colour")
    if role == "planner":
        verdict = re.search(r"Reviewer's verdict: (\w+)", text)
        state = verdict.group(1) if verdict else "correct"
        if state == "uncertain":
            return plan("uncertain", "object", "What colour is the suit?", reason="colour unconfirmed")
        return plan(state, reason=f"the reviewer said {state}")
    if role == "vlm":
        return answer(EVIDENCE)
    return rewrite(REWRITTEN)


class SlowBackend:
    """Answers like ``inner`` after ``delay_s`` seconds (the event loop stays free meanwhile)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.name, self.supports_images = inner.name, inner.supports_images

    async def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay_s)
        return await self.inner.complete(messages, **kwargs)

    async def aclose(self) -> None:
        await self.inner.aclose()


def astronaut_roles(delay_s: float = 0.0, *, vlm: bool = True) -> Roles:
    roles = scripted_roles(astronaut_script, vlm=vlm)
    if not delay_s:
        return roles
    slowed = {n: replace(r, backend=SlowBackend(r.backend, delay_s)) for n in ROLE_NAMES if (r := roles.get(n))}
    return Roles(**slowed, retry=roles.retry)


class SlowDetector:
    """A real detector whose ``detect`` first sleeps: for the timeout and busy tests."""

    def __init__(self, detector: Any, delay_s: float) -> None:
        self.detector, self.delay_s = detector, delay_s
        self.device, self.source = detector.device, detector.source

    def detect(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay_s)
        return self.detector.detect(*args, **kwargs)


class FullGPUDetector:
    """A real detector on a GPU too small for ``limit`` expressions or more: those requests raise torch's
    out-of-memory error, smaller ones are detected."""

    def __init__(self, detector: Any, limit: int) -> None:
        self.detector, self.limit = detector, limit
        self.device, self.source = detector.device, detector.source
        self.held: list[Any] = []  # weak references to what each failed call held when it ran out

    def detect(self, image: Any, expressions: list[str], *args: Any, **kwargs: Any) -> Any:
        if len(expressions) >= self.limit:
            import weakref

            import torch

            from tests.cli_helpers import cuda_out_of_memory

            activations = torch.zeros(1000)  # on a GPU: the memory the request filled
            self.held.append(weakref.ref(activations))
            raise cuda_out_of_memory()
        return self.detector.detect(image, expressions, *args, **kwargs)
