"""Agent config values are checked when the file is read, and an error names the file, the line, the
role and the key: a bad value must stop the run once, before any model loads or task runs, never fail
every task one by one or be sent silently as something else."""

from __future__ import annotations

from pathlib import Path

import pytest

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.errors import ConfigError

LLM = "{backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1'}"


def write(tmp_path: Path, vlm: str, *, llm: str = LLM, extra: str = "") -> Path:
    """A config with the three LLM roles (one anchor) and the ``vlm`` role given; the vlm is on line 6."""
    p = tmp_path / "agent.yaml"
    p.write_text(f"name: t\nroles:\n  reflector: &l {llm}\n  planner: *l\n  rewriter: *l\n  vlm: {vlm}\n{extra}")
    return p


@pytest.mark.parametrize(("vlm", "message"), [
    ("{backend: openai, model: v, image_format: gif}",
     "roles.vlm.image_format: expected one of jpeg, jpg, png, got 'gif'"),
    ("{backend: openai, model: v, api_key_env: 5}",
     "roles.vlm.api_key_env: expected the name of an environment variable"),
    ("{backend: openai, model: v, structured: json}",
     "roles.vlm.structured: expected one of json_schema, json_object+schema, json_object, none, got 'json'"),
    ("{backend: openai, model: v, http_client: httpx}", "roles.vlm.http_client: expected one of aiohttp, openai"),
    ("{backend: transformers, model: v, dtype: float17}",
     "roles.vlm.dtype: expected one of auto, float32, bfloat16, float16, float64, got 'float17'"),
    ("{backend: transformers, model: v, device: gpu7}", "roles.vlm.device: expected one of cpu, cuda, cuda:N, mps"),
    ("{backend: transformers, model: v, kind: seq2seq}", "roles.vlm.kind: expected one of causal_lm"),
    # request params are sent as they are: JSON only, and never a field the backend writes itself
    ("{backend: openai, model: v, params: [top_p]}", "roles.vlm.params: expected a mapping of request fields"),
    ("{backend: openai, model: v, params: {model: other}}",
     "roles.vlm.params.model: model is set by the role's model, not by params"),
    ("{backend: openai, model: v, params: {messages: []}}", "roles.vlm.params.messages: messages is set by the wor"),
    ("{backend: openai, model: v, params: {max_tokens: 9}}", "roles.vlm.params.max_tokens: max_tokens is set by th"),
    ("{backend: openai, model: v, params: {stream: true}}", "roles.vlm.params.stream: stream is set by the workflow"),
    ("{backend: openai, model: v, params: {max_completion_tokens: 9}}",
     "roles.vlm.params.max_completion_tokens: max_completion_tokens is set by the role's max_tokens"),
    ("{backend: openai, model: v, params: {response_format: {type: json_object}}}",
     "roles.vlm.params.response_format: response_format is set by the role's structured"),
    ("{backend: openai, model: v, params: {1: 2}}", "roles.vlm.params: a request field is named by a string, got 1"),
    ("{backend: openai, model: v, params: {seed: 2024-01-01}}",
     "roles.vlm.params.seed: expected a JSON value (string, number, true/false, null, list or mapping), "
     "got datetime.date(2024, 1, 1)"),
    ("{backend: openai, model: v, params: {top_p: .nan}}", "roles.vlm.params.top_p: expected a finite number"),
    ("{backend: openai, model: v, params: {chat_template_kwargs: {1: true}}}",
     "roles.vlm.params.chat_template_kwargs: keys must be strings, got 1"),
])
def test_a_bad_role_value_is_refused_when_the_config_is_read(tmp_path: Path, vlm: str, message: str) -> None:
    p = write(tmp_path, vlm)
    with pytest.raises(ConfigError) as e:
        load_agent_config(p)
    assert f"{p}:6: {message}" in str(e.value)


def test_request_params_reach_the_request_body_as_given(tmp_path: Path) -> None:
    vlm = "{backend: openai, model: v, params: {top_p: 0.9, seed: 0, chat_template_kwargs: {enable_thinking: false}}}"
    roles = build_roles(load_agent_config(write(tmp_path, vlm)))
    assert roles.vlm is not None
    assert roles.vlm.backend.params == {"top_p": 0.9, "seed": 0, "chat_template_kwargs": {"enable_thinking": False}}


def test_a_params_key_in_its_own_block_is_named_at_its_line(tmp_path: Path) -> None:
    p = tmp_path / "agent.yaml"
    p.write_text("roles:\n  reflector: &l\n    backend: openai\n    model: m\n    params:\n      top_p: 0.9\n"
                 "      model: other\n  planner: *l\n  rewriter: *l\n")
    with pytest.raises(ConfigError, match=rf"{p}:7: roles.reflector.params.model: model is set by the role's model"):
        load_agent_config(p)


def test_an_accepted_image_format_is_kept(tmp_path: Path) -> None:
    roles = build_roles(load_agent_config(write(tmp_path, "{backend: openai, model: v, image_format: PNG}")))
    assert roles.vlm is not None and roles.vlm.backend.image_format == "PNG"


@pytest.mark.parametrize(("text", "message"), [
    ("roles:\n  reflector: &l {backend: openai, model: m}\n  planner: *l\n  rewriter: *l\n"
     "  reflector: {backend: openai, model: other}\n", ":5: roles.reflector: duplicate key (first at line 2)"),
    ("retry: {max_attempts: 3}\nroles:\n  reflector: &l {backend: openai, model: m}\n  planner: *l\n"
     "  rewriter: *l\nretry: {max_attempts: 1}\n", ":6: retry: duplicate key (first at line 1)"),
    ("roles:\n  reflector: &l\n    backend: openai\n    model: m\n    max_tokens: 64\n    max_tokens: 8\n"
     "  planner: *l\n  rewriter: *l\n", ":6: roles.reflector.max_tokens: duplicate key (first at line 5)"),
])
def test_a_key_twice_in_one_mapping_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """YAML keeps the last one: the first one's settings were dropped without a word."""
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_agent_config(p)
    assert f"{p}{message}" in str(e.value)


def test_a_key_merged_from_an_anchor_is_named_at_the_line_of_its_role(tmp_path: Path) -> None:
    p = write(tmp_path, "{<<: *l, model: v}")
    roles = load_agent_config(p).roles
    assert roles["reflector"].at("model") == f"{p}:3: roles.reflector.model"  # where the anchor sets it
    assert roles["planner"].at("model") == f"{p}:4: roles.planner.model"  # planner: *l
    assert roles["vlm"].at("base_url") == f"{p}:6: roles.vlm.base_url"  # merged: the role's line
    assert roles["vlm"].at("device") == f"{p}:6: roles.vlm.device"  # not set at all


def test_a_missing_prompt_names_the_file_line_and_role(tmp_path: Path) -> None:
    p = write(tmp_path, "{backend: openai, model: v, prompt: nothere.txt}")
    with pytest.raises(ConfigError, match=r"agent\.yaml:6: roles\.vlm\.prompt: .*nothere\.txt: cannot read"):
        build_roles(load_agent_config(p))


def test_a_cuda_device_on_a_machine_without_cuda_stops_before_any_model_loads(tmp_path: Path, monkeypatch) -> None:
    """Read anywhere (a Ray driver without a GPU reads its workers' config), refused where the roles are
    built, before a model loads: it used to fail every task, each one loading the model again."""
    import torch

    import reallod.llm.backends.transformers_backend as tb

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(tb, "_load", lambda *a, **k: pytest.fail("a model was loaded"))
    p = write(tmp_path, "{backend: transformers, model: v, device: 'cuda:1'}")
    cfg = load_agent_config(p)
    with pytest.raises(ConfigError, match=r"agent\.yaml:6: roles\.vlm\.device: cuda:1: this machine has no CUDA GPU"):
        build_roles(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"roles\.vlm\.device: cuda:1: this machine has 1 CUDA GPU\(s\), cuda:0"):
        build_roles(cfg)


@pytest.mark.parametrize("option", ["base_url", "llm_base_url"])
def test_credentials_in_a_base_url_option_are_refused_without_showing_them(option: str) -> None:
    """aiohttp refused every request ("Cannot combine AUTHORIZATION header with credentials encoded in
    URL") and the password went into the journal, the trace, the reports and stderr."""
    with pytest.raises(ConfigError) as e:
        load_agent_config("vllm", **{option: "http://user:pw-SECRET@127.0.0.1:8000/v1"})
    message = str(e.value)
    assert f"--{option.replace('_', '-')} option" in message and "api_key_env" in message
    assert "SECRET" not in message and "user:" not in message and "http://127.0.0.1:8000/v1" in message


@pytest.mark.parametrize("url", ["http://user:pw-SECRET@h:8000/v1", "http://h:8000/v1?key=SECRET"])
def test_credentials_or_a_query_in_a_configured_base_url_are_refused(tmp_path: Path, url: str) -> None:
    p = write(tmp_path, f"{{backend: openai, model: v, base_url: '{url}'}}")
    with pytest.raises(ConfigError) as e:
        load_agent_config(p)
    assert f"{p}:6: roles.vlm.base_url: " in str(e.value) and "SECRET" not in str(e.value)


def test_the_reasons_name_the_option_that_gave_the_url(monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"^the --vlm-base-url option \(command line\): expected a URL"):
        load_agent_config("vllm", vlm_base_url="gpu-box:8000")
    monkeypatch.setenv("REALLOD_BASE_URL", "http://u:SECRET@h/v1")
    with pytest.raises(ConfigError, match=r"^\$REALLOD_BASE_URL \(environment variable\): a user or password"):
        load_agent_config("vllm")
