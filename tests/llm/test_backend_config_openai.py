"""The OpenAI-compatible backend: its settings are checked when it is made, a base URL never carries
credentials nor shows them in the backend's name (traces, journals, reports), and every setting that
changes a reply keys the response cache and the journal's fingerprint."""

from __future__ import annotations

import pytest

from reallod.llm.backends.openai_backend import OpenAIBackend, public_url
from reallod.llm.endpoints import model_id


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pw-SECRET@127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("https://gpu-box/v1?key=SECRET#frag", "https://gpu-box/v1"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ("user:SECRET@gpu-box/v1", "gpu-box/v1"),  # no scheme: what follows the credentials
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_a_url_is_shown_without_credentials_or_query(url: str, shown: str) -> None:
    assert public_url(url) == shown


@pytest.mark.parametrize("url", ["http://user:pw-SECRET@127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1?key=SECRET"])
def test_credentials_or_a_query_in_the_base_url_are_refused_without_showing_them(url: str) -> None:
    with pytest.raises(ValueError, match="base_url: ") as e:
        OpenAIBackend("m", base_url=url)
    assert "SECRET" not in str(e.value) and "http://127.0.0.1:8000/v1" in str(e.value)


def test_the_name_shows_the_server() -> None:
    assert OpenAIBackend("m", base_url="http://127.0.0.1:8000/v1").name == "openai:m@http://127.0.0.1:8000/v1"


def test_without_a_base_url_the_name_shows_the_server_the_requests_go_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """A role without base_url sends its requests to OPENAI_BASE_URL: its errors named api.openai.com."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://10.0.0.5:9000/v1")
    backend = OpenAIBackend("m")
    assert backend.name == "openai:m@http://10.0.0.5:9000/v1"
    assert backend._transport.base_url == "http://10.0.0.5:9000/v1"  # where the requests go
    assert OpenAIBackend("m", base_url="http://127.0.0.1:8000/v1").name == "openai:m@http://127.0.0.1:8000/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIBackend("m").name == "openai:m@https://api.openai.com/v1"


@pytest.mark.parametrize("url", ["http://user:pw-SECRET@10.0.0.5:9000/v1", "http://10.0.0.5:9000/v1?key=SECRET"])
def test_credentials_or_a_query_in_openai_base_url_are_refused_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                          url: str) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(ValueError, match=r"the environment variable OPENAI_BASE_URL .*: ") as e:
        OpenAIBackend("m")
    assert "SECRET" not in str(e.value) and "http://10.0.0.5:9000/v1" in str(e.value)


@pytest.mark.parametrize(("option", "value"), [("image_format", "gif"), ("api_key_env", 5)])
def test_a_bad_setting_is_refused_when_the_backend_is_made(option: str, value: object) -> None:
    """``gif`` was sent as PNG without a word; a number as api_key_env failed with "str expected"."""
    with pytest.raises(ValueError, match=f"{option} must be"):
        OpenAIBackend("m", **{option: value})


def test_the_structured_output_level_it_starts_from_keys_the_cache() -> None:
    """``structured: none`` asks without a schema: its replies are not the json_schema ones."""
    default = OpenAIBackend("m", params={"top_p": 0.9}, image_format="png")
    assert model_id(default) == 'openai:m:{"top_p":0.9}:png'  # as before: existing cache entries stay valid
    assert model_id(OpenAIBackend("m", params={"top_p": 0.9}, image_format="png", structured="none")) != model_id(default)
    default.structured = "json_object"  # fallen back during a run: still the same configuration
    assert model_id(default) == 'openai:m:{"top_p":0.9}:png'
