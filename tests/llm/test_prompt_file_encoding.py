"""A prompt file that is not UTF-8 (a Latin-1 "café") is a config error naming the file, the config field
and role that give it, and where the bad byte is; it was ``error: unexpected UnicodeDecodeError``."""

from __future__ import annotations

from pathlib import Path

import pytest

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.engine.generate import load_prompt
from reallod.errors import ConfigError
from reallod.llm.prompts import PromptTemplate

LATIN1 = b"[system]\nYou judge caf\xe9 things.\n[user]\n$expression\n"
WHERE = r"not UTF-8 text \(byte 0xe9 on line 2, at byte offset 22\): save the file as UTF-8"


def test_a_prompt_that_is_not_utf8_is_named_with_the_byte(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(LATIN1)
    with pytest.raises(ConfigError, match=rf"prompt {tmp_path / 'bad.txt'} of role reflector: {WHERE}"):
        PromptTemplate.read(tmp_path / "bad.txt", role="reflector")


def test_an_agent_config_names_the_role_and_field_of_a_prompt_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(LATIN1)
    (tmp_path / "a.yaml").write_text(
        "roles:\n  reflector: {backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1'}\n"
        "  planner: {backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1', prompt: bad.txt}\n"
        "  rewriter: {backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1'}\n")
    with pytest.raises(ConfigError, match=rf"a\.yaml:3: roles\.planner\.prompt: prompt .*bad\.txt of role "
                                          rf"planner: {WHERE}"):
        build_roles(load_agent_config(tmp_path / "a.yaml"))


def test_a_generation_prompt_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "llm.txt").write_bytes(LATIN1.replace(b"$expression", b"$caption"))
    with pytest.raises(ConfigError, match=rf"prompt {tmp_path / 'llm.txt'}: {WHERE}"):
        load_prompt("llm", tmp_path / "llm.txt")
