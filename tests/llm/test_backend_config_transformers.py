"""In-process models: a model that cannot load stops the run once (a ConfigError, not one failure per
task, each loading the model again), and every generation setting that changes a reply keys the response
cache and the journal's fingerprint. Tiny random models only (tests/finetune/tiny_models.py)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.agent.realign import RealignOptions, realign
from reallod.agent.run_roles import roles_fingerprint
from reallod.errors import ConfigError
from reallod.llm.backends.transformers_backend import TransformersBackend
from reallod.llm.cache import ResponseCache, new_scope
from reallod.llm.endpoints import model_id
from reallod.llm.retry import ResilientBackend
from tests.agent.io_helpers import EXAMPLES


@pytest.fixture
def broken_lm(tiny_lm: Path, tmp_path: Path) -> Path:
    """The tiny LM with its weights cut short: its tokenizer loads, the model does not."""
    out = shutil.copytree(tiny_lm, tmp_path / "broken")
    with open(out / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    return out


@pytest.fixture
def model_loads(monkeypatch) -> list[str]:
    """The models transformers is asked to load, in order."""
    import transformers as tf

    calls: list[str] = []
    real = tf.AutoModelForCausalLM.from_pretrained

    def counted(name, *args, **kwargs):
        calls.append(str(name))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", counted)
    return calls


def config(tmp_path: Path, model: Path, **settings: object) -> Path:
    role = ", ".join(f"{k}: {v}" for k, v in {"backend": "transformers", "model": str(model), **settings}.items())
    p = tmp_path / f"agent-{len(list(tmp_path.glob('agent-*.yaml')))}.yaml"
    p.write_text(f"name: t\nconcurrency: 2\nretry: {{max_attempts: 1, backoff_s: 0}}\nroles:\n"
                 f"  reflector: &m {{{role}}}\n  planner: *m\n  rewriter: *m\n  vlm: null\n")
    return p


def test_bad_settings_are_refused_when_the_backend_is_made() -> None:
    with pytest.raises(ConfigError, match=r"dtype: expected one of auto, float32.*got 'float17'"):
        TransformersBackend("m", dtype="float17")
    with pytest.raises(ConfigError, match="device: expected one of cpu, cuda, cuda:N, mps, got 'gpu7'"):
        TransformersBackend("m", device="gpu7")


def test_a_model_that_fails_to_load_is_a_config_error_and_is_not_loaded_again(broken_lm: Path, model_loads) -> None:
    """A SafetensorError used to escape as is: the workflow made it that task's failure, and the next
    task loaded the model again."""
    backend = TransformersBackend(str(broken_lm), max_new_tokens=2)

    async def three_calls() -> list[BaseException]:
        calls = [backend.complete([{"role": "user", "content": "hi"}]) for _ in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    errors = asyncio.run(three_calls())
    assert all(isinstance(e, ConfigError) and "cannot load causal_lm model" in str(e) for e in errors), errors
    assert model_loads == [str(broken_lm)]


def test_a_run_whose_model_cannot_load_stops_once_before_any_task_fails(broken_lm: Path, tmp_path: Path,
                                                                         model_loads) -> None:
    opts = RealignOptions(input=EXAMPLES / "tasks.json", config=str(config(tmp_path, broken_lm, max_tokens=4)),
                          out=tmp_path / "out" / "out.jsonl", images=EXAMPLES / "images", no_cache=True, limit=3)
    with pytest.raises(ConfigError, match=r"cannot load causal_lm model .*SafetensorError"):
        realign(opts)
    assert model_loads == [str(broken_lm)]
    assert not (tmp_path / "out" / "out.jsonl").exists() or not (tmp_path / "out" / "out.jsonl").read_text()


def test_max_new_tokens_keys_the_cache_and_the_fingerprint(tiny_lm: Path, tmp_path: Path) -> None:
    """A role without max_tokens is limited by max_new_tokens: a rerun with another limit replayed the
    old, shorter, cached replies, and a resumed journal mixed both settings."""
    short, long = (load_agent_config(config(tmp_path, tiny_lm, max_new_tokens=n, temperature=0.0)) for n in (2, 40))
    assert roles_fingerprint(build_roles(short)) != roles_fingerprint(build_roles(long))
    cache = ResponseCache(tmp_path / "cache.sqlite")
    ask = [{"role": "user", "content": "Say something."}]

    async def reply(backend: TransformersBackend) -> tuple[str, int]:
        new_scope()  # each call is a task of its own, as in a rerun
        wrapped = ResilientBackend(backend, cache=cache, model_id=model_id(backend))
        # a choice, which the limit cannot cut: a reply the limit stopped is never kept (the random model's
        # free text always is)
        completion = await wrapped.complete(ask, choices=["yes", "no"], temperature=0.0)
        return completion.text, wrapped.stats.cache_hits

    first, hits = asyncio.run(reply(TransformersBackend(str(tiny_lm), max_new_tokens=2)))
    assert hits == 0
    again, hits = asyncio.run(reply(TransformersBackend(str(tiny_lm), max_new_tokens=2)))
    assert (again, hits) == (first, 1)  # the same setting: the cached reply
    _, hits = asyncio.run(reply(TransformersBackend(str(tiny_lm), max_new_tokens=40)))
    assert hits == 0  # another limit: asked again
    free = asyncio.run(TransformersBackend(str(tiny_lm), max_new_tokens=2).complete(ask, temperature=0.0))
    assert free.meta["finish_reason"] == "length" and free.completion_tokens == 2


def test_the_default_max_new_tokens_keeps_existing_keys(tiny_lm: Path) -> None:
    """Cache entries and journals made before the setting counted stay valid where it was left alone."""
    assert model_id(TransformersBackend("org/model")) == "transformers:hub:org/model:causal_lm:auto"
    assert model_id(TransformersBackend("org/model", max_new_tokens=64)).endswith(":max_new_tokens=64")
