"""The openai backend falls back from a structured-output level only for errors about structured output
that a lower level then gets past, and reads a reply's ``usage`` without ever failing the reply."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from PIL import Image

from reallod.agent.decisions import SPECS
from reallod.llm.backends.base import BackendError
from reallod.llm.backends.http import TRANSPORTS
from reallod.llm.backends.openai_backend import OpenAIBackend
from tests.agent.fake_openai_server import FakeChatServer, chat_reply, error_reply

SCHEMA = SPECS["vlm"].schema
IMAGE = Image.new("RGB", (8, 8), (200, 10, 10))


@pytest.fixture(params=TRANSPORTS, autouse=True)
def http_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs through both ways of posting (aiohttp, the official client)."""
    monkeypatch.setitem(OpenAIBackend.__init__.__kwdefaults__, "http_client", request.param)
    return request.param


def has_image(body: dict[str, Any]) -> bool:
    content = body["messages"][-1]["content"]
    return isinstance(content, list) and any(p.get("type") == "image_url" for p in content)


def calls(backend: OpenAIBackend, messages: list[list[dict[str, Any]]]) -> list[Any]:
    """Each call's completion, or the BackendError it raised."""
    async def go():
        out = []
        try:
            for m in messages:
                try:
                    out.append(await backend.complete(m, schema=SCHEMA))
                except BackendError as e:
                    out.append(e)
        finally:
            await backend.aclose()
        return out
    return asyncio.run(go())


IMAGE_MESSAGE = [{"role": "user", "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": "?"}]}]
TEXT_MESSAGE = [{"role": "user", "content": "?"}]


@pytest.mark.parametrize("message", [
    "Image input is not supported for this request",
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
])
def test_an_unrelated_bad_request_is_the_requests_own_and_keeps_the_format(message: str) -> None:
    """The audit's run: three image requests answered 400 'not supported' turned structured output off
    for the rest of the run (json_schema, then json_object+schema, json_object, none)."""
    rejected = []

    def respond(body):
        if has_image(body) and len(rejected) < 3:
            rejected.append(body)
            return error_reply(400, message)
        return chat_reply('{"answer": "red"}')

    with FakeChatServer(respond) as server:
        b = OpenAIBackend("m", base_url=server.url)
        results = calls(b, [IMAGE_MESSAGE] * 3 + [TEXT_MESSAGE, IMAGE_MESSAGE])
    for e in results[:3]:
        assert isinstance(e, BackendError) and not e.retryable and message in str(e)
    assert [c.text for c in results[3:]] == ['{"answer": "red"}'] * 2
    assert len(server.requests) == 5  # one request a call: nothing was retried without the format
    assert all(r["response_format"]["type"] == "json_schema" for r in server.requests)
    assert b.structured == "json_schema" and results[-1].meta["structured"] == "json_schema"


@pytest.mark.parametrize(("status", "message"), [
    (400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."),  # OpenAI
    (500, 'response_format type must be one of "text" or "json_object", but got: json_schema'),  # llama.cpp
    (400, "The provided JSON schema contains features not supported by xgrammar."),  # vLLM
    (400, "schema_ is required for json_schema response format request."),  # SGLang
    (400, 'invalid format: expected "json" or a JSON schema'),  # Ollama
    (400, "guided_json is not supported by this backend"),
])
def test_a_structured_output_error_falls_back_once_the_lower_level_works(
        status: int, message: str, caplog: pytest.LogCaptureFixture) -> None:
    replies = iter([error_reply(status, message), chat_reply('{"answer": "a"}'), chat_reply('{"answer": "b"}')])
    with FakeChatServer(lambda body: next(replies)) as server, caplog.at_level(logging.WARNING):
        b = OpenAIBackend("m", base_url=server.url)
        first, second = calls(b, [TEXT_MESSAGE, TEXT_MESSAGE])
    assert (first.text, second.text) == ('{"answer": "a"}', '{"answer": "b"}')
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object", "json_object"]
    assert b.structured == first.meta["structured"] == "json_object+schema"
    # one warning, naming the level kept (reallod's own: another test's leftovers, an asyncio task collected
    # now, may log too, and once did in the full suite)
    (record,) = [r for r in caplog.records if r.name.startswith("reallod")]
    assert record.getMessage().endswith("; using json_object+schema from now on")


def test_a_format_error_that_the_lower_levels_share_keeps_the_format() -> None:
    """An error that names response_format only because it echoes the request (as validation errors
    do) fails without it as well: the error is the request's, the level stays."""
    def respond(body):
        return error_reply(400, f"messages[0].content: invalid, in {json.dumps(body)[:400]}")

    with FakeChatServer(respond) as server:
        b = OpenAIBackend("m", base_url=server.url)
        (e,) = calls(b, [TEXT_MESSAGE])
    assert isinstance(e, BackendError) and not e.retryable and "messages[0].content: invalid" in str(e)
    assert "response_format" not in server.requests[-1]  # it was tried without the format...
    assert b.structured == "json_schema"  # ...which did not help, so nothing changes


def test_a_fallback_that_fails_otherwise_raises_that_error_and_keeps_the_format() -> None:
    """A format error, then a transient 503 one level down: the 503 is raised (the runner retries it),
    and the level is lowered only once a lower one has worked."""
    replies = iter([error_reply(400, "response_format json_schema is not supported"), error_reply(503, "busy"),
                    error_reply(400, "response_format json_schema is not supported"), chat_reply('{"answer": "a"}')])
    with FakeChatServer(lambda body: next(replies)) as server:
        b = OpenAIBackend("m", base_url=server.url)
        first, second = calls(b, [TEXT_MESSAGE, TEXT_MESSAGE])
        assert isinstance(first, BackendError) and first.retryable and "HTTP 503" in str(first)
    assert second.text == '{"answer": "a"}' and b.structured == "json_object+schema"


@pytest.mark.parametrize(("usage", "counted"), [
    ({"prompt_tokens": "n/a", "completion_tokens": 5}, (0, 5)),  # the audit's reply: every task failed
    ({"prompt_tokens": "12", "completion_tokens": 5.0}, (12, 5)),
    ({"prompt_tokens": None, "completion_tokens": [3]}, (0, 0)),
    ({"prompt_tokens": "nan", "completion_tokens": "1e400"}, (0, 0)),
    ({"prompt_tokens": -4, "completion_tokens": True}, (0, 0)),
    ({"total_tokens": 9}, (0, 0)),
    ("unknown", (0, 0)),
    (None, (0, 0)),
    ([], (0, 0)),
])
def test_a_malformed_usage_is_not_counted_and_never_fails_the_reply(usage: Any, counted: tuple[int, int]) -> None:
    status, body, headers = chat_reply('{"answer": "a"}')
    body["usage"] = usage
    with FakeChatServer(lambda _: (status, body, headers)) as server:
        (c,) = calls(OpenAIBackend("m", base_url=server.url), [TEXT_MESSAGE])
    assert not isinstance(c, BackendError), str(c)
    assert (c.text, (c.prompt_tokens, c.completion_tokens)) == ('{"answer": "a"}', counted)
