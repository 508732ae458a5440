"""The real Gemma 3 270M GGUF, in-process through the transformers backend (the offline config).

The model is a base model: useless for judgement, so these tests check the plumbing — constrained
decoding gives a decision that parses for every LLM role, a whole task runs end to end and its trace
is recorded — not the quality of the answers. The model is loaded once (about a minute on 2 cores).
"""

from __future__ import annotations

import asyncio
import json
import weakref

import pytest
import torch

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.agent.roles import Role, Roles
from reallod.agent.task import VERDICTS, ObjectRef, Task
from reallod.agent.workflow import run_task
from reallod.llm.backends.transformers_backend import TransformersBackend, plain_prompt
from tests.agent.scripted import ScriptedBackend, plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def offline_roles() -> Roles:
    roles = build_roles(load_agent_config("offline"))
    backend = roles.reflector.backend
    assert isinstance(backend, TransformersBackend)
    backend.load()
    return roles


def make_task() -> Task:
    return Task("coffee#0", "coffee.png", 400, 600, "the red cup of tea on a wooden table",
                ObjectRef("cup", [[180, 60, 450, 330]]), [ObjectRef("spoon", [[390, 150, 560, 330]])],
                caption="A white porcelain cup of black coffee on a white saucer, with a silver spoon, "
                        "on a dark green table.")


VALUES = {
    "reflector": {"category": "cup", "caption": make_task().caption, "evidence": "(none yet)",
                  "expression": "the red cup"},
    "planner": {"category": "cup", "expression": "the red cup", "verdict": "uncertain",
                "missing": "colour", "feedback": "the caption does not say red"},
    "rewriter": {"category": "cup", "caption": make_task().caption, "evidence": "(none yet)",
                 "expression": "the red cup", "feedback": "judged wrong; the cup is white",
                 "chosen_box": "[0.300, 0.150, 0.750, 0.825]", "others": "- spoon at [0.650, 0.375, 0.933, 0.825]",
                 "image_size": "600x400 pixels"},
}


@pytest.mark.parametrize("role", ["reflector", "planner", "rewriter"])
def test_constrained_decoding_always_gives_a_decision_that_parses(offline_roles: Roles, role: str) -> None:
    r = offline_roles.get(role)
    c = asyncio.run(r.backend.complete(r.messages(VALUES[role]), schema=r.decision.schema,
                                       max_tokens=r.max_tokens))
    obj = json.loads(c.text)  # exact JSON, no repair needed
    assert list(obj) == list(r.decision.schema["properties"])
    for key, prop in r.decision.schema["properties"].items():
        if "enum" in prop:
            assert obj[key] in prop["enum"]
    decision, repaired = r.decision.parse(c.text)
    assert not repaired and decision
    assert c.prompt_tokens > 100 and 0 < c.completion_tokens <= r.max_tokens + 1 and c.latency_s > 0


def test_choices_are_scored_and_one_is_returned(offline_roles: Roles) -> None:
    b = offline_roles.reflector.backend
    msgs = [{"role": "user", "content": "Is a cat an animal? Answer yes or no."}]
    c = asyncio.run(b.complete(msgs, choices=["yes", "no", "a mineral"]))
    assert c.text in ("yes", "no", "a mineral")


def test_free_generation_without_a_schema(offline_roles: Roles) -> None:
    b = offline_roles.reflector.backend
    c = asyncio.run(b.complete([{"role": "user", "content": "Name a colour."}], max_tokens=5))
    assert isinstance(c.text, str) and 0 < c.completion_tokens <= 5


def test_a_missing_model_is_a_config_error(tmp_path) -> None:
    from reallod.errors import ConfigError

    b = TransformersBackend(str(tmp_path), gguf_file="nothere.gguf")
    with pytest.raises(ConfigError, match="cannot load causal_lm model"):
        asyncio.run(b.complete([{"role": "user", "content": "hi"}], max_tokens=2))


def test_base_model_gets_a_plain_completion_prompt(offline_roles: Roles) -> None:
    b = offline_roles.reflector.backend
    msgs = offline_roles.reflector.messages(VALUES["reflector"])
    assert not b.load().tokenizer.chat_template
    assert b.prompt_text(msgs) == plain_prompt(msgs)
    assert b.prompt_text(msgs).endswith("Assistant:\n") and "Instructions:\nYou check" in b.prompt_text(msgs)


def test_one_task_end_to_end_in_process(offline_roles: Roles) -> None:
    def no_image():
        raise AssertionError("the offline config has no VLM, so no image is ever loaded")

    r = asyncio.run(run_task(make_task(), offline_roles, load_image=no_image, max_cycles=2))
    assert r.verdict in VERDICTS and r.verdict != "failed", r.error
    assert r.steps[0].role == "reflector" and r.steps[0].cycle == 1
    for s in r.steps:
        if s.role == "vlm":
            assert s.error == "unavailable: no VLM configured"
            continue
        assert s.decision and s.error is None and s.raw_response.startswith("{")
        assert s.prompt_tokens > 0 and s.completion_tokens > 0 and s.latency_s > 0
        assert s.messages[-1]["role"] == "user"
    json.dumps(r.to_dict())


def test_the_unavailable_vlm_path_with_the_real_rewriter(offline_roles: Roles) -> None:
    """A scripted planner forces "uncertain"; the real model then has to rewrite and reflect."""
    roles = Roles(offline_roles.reflector, offline_roles.planner, offline_roles.rewriter, None,
                  offline_roles.retry)
    roles.planner = Role(
        "planner", ScriptedBackend({"planner": [plan("uncertain", "position", "Where is it?")]}, "planner"),
        roles.planner.prompt, roles.planner.decision)
    r = asyncio.run(run_task(make_task(), roles, load_image=lambda: None, max_cycles=2))
    assert [s.role for s in r.steps][:4] == ["reflector", "planner", "vlm", "rewriter"]
    assert r.steps[2].error == "unavailable: no VLM configured"
    rewrite = r.steps[3].decision["expression"]
    assert rewrite.strip() and r.expression == rewrite
    assert r.verdict in ("correct", "rewritten", "wrong", "unresolved")
    assert r.notes == ["cycle 2: VLM unavailable (no VLM configured); rewrote instead"]


def test_out_of_memory_fails_the_task_in_one_line_and_the_next_reply_comes(offline_roles: Roles, monkeypatch) -> None:
    """A long prompt can run a small GPU out of memory: the task fails with what ran out and what to
    change, not torch's page of allocator advice, and the model still answers the next one."""
    from reallod.llm.backends.base import BackendError
    from tests.cli_helpers import CUDA_OOM_SAID, cuda_out_of_memory

    b = offline_roles.reflector.backend
    real = b._llm

    held = []

    def full(*args, **kwargs):
        cache = torch.zeros(1000)  # what the failed generation held (its key-value cache on a GPU)
        held.append(weakref.ref(cache))
        raise cuda_out_of_memory()

    monkeypatch.setattr(b, "_llm", full)
    with pytest.raises(BackendError) as raised:
        asyncio.run(b.complete([{"role": "user", "content": "Name a colour."}], max_tokens=5))
    assert held[0]() is None  # freed, although the error that says so is still held
    said = str(raised.value)
    assert CUDA_OOM_SAID in said and "PYTORCH_" not in said and "\n" not in said
    assert "smaller max_tokens" in said and "the others go on" in said and not raised.value.retryable
    monkeypatch.setattr(b, "_llm", real)
    assert asyncio.run(b.complete([{"role": "user", "content": "Name a colour."}], max_tokens=3)).completion_tokens
