"""The openai backend against a local fake server: payloads, images, structured-output fallback, errors."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
from typing import Any

import pytest
from PIL import Image

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.agent.decisions import SPECS
from reallod.agent.task import ObjectRef, Task
from reallod.agent.workflow import run_task
from reallod.errors import ConfigError
from reallod.llm.backends.base import BackendError
from reallod.llm.backends.http import TRANSPORTS
from reallod.llm.backends.openai_backend import OpenAIBackend, image_data_url, strict_schema
from tests.agent.fake_openai_server import FakeChatServer, chat_reply, error_reply
from tests.agent.scripted import answer, plan, reflect, rewrite

SCHEMA = SPECS["rewriter"].schema
# OpenAI's strict mode refuses minLength (HTTP 400: "minLength is not permitted"); the rest is sent as is
STRICT = {**SCHEMA, "properties": {k: {kk: vv for kk, vv in v.items() if kk != "minLength"}
                                   for k, v in SCHEMA["properties"].items()}}
assert STRICT != SCHEMA and "minLength" not in str(STRICT)


@pytest.fixture(params=TRANSPORTS, autouse=True)
def http_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs through both ways of posting (aiohttp, the official client)."""
    monkeypatch.setitem(OpenAIBackend.__init__.__kwdefaults__, "http_client", request.param)
    return request.param


def complete(backend: OpenAIBackend, messages: list[dict[str, Any]], **kw: Any):
    async def go():
        try:
            return await backend.complete(messages, **kw)
        finally:
            await backend.aclose()
    return asyncio.run(go())


def test_data_urls_round_trip() -> None:
    img = Image.new("RGB", (7, 5), (255, 0, 0))
    url = image_data_url(img)
    assert url.startswith("data:image/jpeg;base64,")
    back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert back.size == (7, 5) and max(abs(a - b) for a, b in zip(back.getpixel((3, 2)), (255, 0, 0), strict=True)) <= 4
    lossless = image_data_url(img.convert("L"), "png")
    assert lossless.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(lossless.split(",", 1)[1]))).getpixel((3, 2)) == img.convert("L").getpixel((3, 2))


def test_a_thin_red_outline_keeps_its_colour_in_jpeg() -> None:
    """Chroma subsampling would smear a one-pixel red line into its neighbours; 4:4:4 keeps it."""
    img = Image.new("RGB", (64, 64), (120, 140, 160))
    for x in range(64):
        img.putpixel((x, 30), (255, 0, 0))
    back = Image.open(io.BytesIO(base64.b64decode(image_data_url(img).split(",", 1)[1]))).convert("RGB")
    r, g, b = back.getpixel((20, 30))
    assert r > 200 and g < 60 and b < 60
    assert back.getpixel((20, 28))[0] < 160  # two rows away: the background, not pink


def test_request_carries_model_params_key_images_and_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-test-123")
    with FakeChatServer() as server:
        server.replies = [chat_reply('{"verdict": "correct"}', 42, 7)]
        b = OpenAIBackend("qwen-vl", base_url=server.url, api_key_env="MY_KEY", params={"top_p": 0.5, "seed": 1})
        img = Image.new("RGB", (10, 6), (0, 255, 0))
        c = complete(b, [{"role": "system", "content": "judge"},
                         {"role": "user", "content": [{"type": "image", "image": img},
                                                      {"type": "text", "text": "what?"}]}],
                     schema=SCHEMA, max_tokens=33, temperature=0.1)
    assert (c.text, c.prompt_tokens, c.completion_tokens) == ('{"verdict": "correct"}', 42, 7)
    assert c.latency_s > 0 and c.meta["structured"] == "json_schema"
    req = server.requests[0]
    assert (req["model"], req["max_tokens"], req["temperature"], req["top_p"], req["seed"]) == (
        "qwen-vl", 33, 0.1, 0.5, 1)
    assert req["response_format"] == {"type": "json_schema",
                                      "json_schema": {"name": "decision", "schema": STRICT, "strict": True}}
    assert req["messages"][0] == {"role": "system", "content": "judge"}
    parts = req["messages"][1]["content"]
    assert parts[1] == {"type": "text", "text": "what?"}
    data = base64.b64decode(parts[0]["image_url"]["url"].removeprefix("data:image/jpeg;base64,"))
    assert Image.open(io.BytesIO(data)).size == (10, 6)
    assert server.headers[0]["authorization"] == "Bearer sk-test-123"
    assert b.name == f"openai:qwen-vl@{server.url}"


def test_strict_mode_loses_the_length_keywords_and_nothing_else() -> None:
    schema = {"type": "object", "required": ["maxLength", "note"], "additionalProperties": False,
              "properties": {"maxLength": {"type": "string", "minLength": 1},  # a field, not the keyword
                             "note": {"type": "array", "items": {"type": "string", "maxLength": 9}}}}
    assert strict_schema(schema) == {
        "type": "object", "required": ["maxLength", "note"], "additionalProperties": False,
        "properties": {"maxLength": {"type": "string"}, "note": {"type": "array", "items": {"type": "string"}}}}
    assert schema["properties"]["maxLength"] == {"type": "string", "minLength": 1}  # the input is not changed


def test_a_rejected_response_format_falls_back_one_level_at_a_time_and_remembers() -> None:
    with FakeChatServer() as server:
        server.replies = [
            error_reply(400, "response_format json_schema is not supported by this server"),
            error_reply(500, "validation error: body.response_format.type: Input should be 'text' or "
                             "'json_object'"),
            chat_reply('{"verdict": "wrong"}'),
            chat_reply('{"verdict": "correct"}'),
        ]
        b = OpenAIBackend("m", base_url=server.url)

        async def go():
            first = await b.complete([{"role": "user", "content": "a"}], schema=SCHEMA)
            second = await b.complete([{"role": "user", "content": "b"}], schema=SCHEMA)
            await b.aclose()
            return first, second

        first, second = asyncio.run(go())
    formats = [r.get("response_format") for r in server.requests]
    assert formats == [
        {"type": "json_schema", "json_schema": {"name": "decision", "schema": STRICT, "strict": True}},
        {"type": "json_object", "schema": SCHEMA},  # a grammar server is given minLength
        {"type": "json_object"},
        {"type": "json_object"},
    ]
    assert (first.text, second.text, b.structured) == ('{"verdict": "wrong"}', '{"verdict": "correct"}',
                                                        "json_object")


def test_a_server_without_any_response_format_gets_plain_requests() -> None:
    with FakeChatServer() as server:
        server.replies = [error_reply(400, "unsupported parameter: response_format")] * 3 + [chat_reply("x")]
        b = OpenAIBackend("m", base_url=server.url)
        assert complete(b, [{"role": "user", "content": "a"}], schema=SCHEMA).text == "x"
    assert "response_format" not in server.requests[-1] and b.structured == "none"


def test_other_bad_requests_are_not_retryable_and_keep_the_format() -> None:
    with FakeChatServer() as server:
        server.replies = [error_reply(400, "This model's maximum context length is 4096 tokens")]
        b = OpenAIBackend("m", base_url=server.url)
        with pytest.raises(BackendError) as e:
            complete(b, [{"role": "user", "content": "a"}], schema=SCHEMA)
    assert not e.value.retryable and "maximum context length" in str(e.value)
    assert b.structured == "json_schema" and len(server.requests) == 1


@pytest.mark.parametrize(("status", "headers", "retryable", "retry_after"), [
    (429, {"retry-after": "2"}, True, 2.0),
    (503, {}, True, None),
    (500, {}, True, None),
    (401, {}, False, None),
    (404, {}, False, None),
])
def test_http_errors_map_to_backend_errors(status: int, headers: dict[str, str], retryable: bool,
                                           retry_after: float | None) -> None:
    with FakeChatServer() as server:
        server.replies = [error_reply(status, "nope", headers)]
        b = OpenAIBackend("m", base_url=server.url)
        with pytest.raises(BackendError) as e:
            complete(b, [{"role": "user", "content": "a"}])
    assert (e.value.retryable, e.value.retry_after) == (retryable, retry_after)
    assert f"HTTP {status}" in str(e.value)


def test_an_unreachable_server_is_a_retryable_error() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    b = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=5)
    with pytest.raises(BackendError) as e:
        complete(b, [{"role": "user", "content": "a"}])
    assert e.value.retryable and "cannot connect" in str(e.value)


def test_choices_are_sent_as_an_enum_and_unwrapped() -> None:
    with FakeChatServer() as server:
        server.replies = [chat_reply('{"choice": "uncertain"}')]
        b = OpenAIBackend("m", base_url=server.url)
        c = complete(b, [{"role": "user", "content": "a"}], choices=["correct", "uncertain", "wrong"])
    assert c.text == "uncertain"
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["choice"]["enum"] == ["correct", "uncertain", "wrong"]


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_a_server_returns_apart_is_noted_not_taken_as_the_answer(field: str) -> None:
    """vLLM names it ``reasoning`` (earlier ``reasoning_content``, as SGLang and llama.cpp do)."""
    status, body, headers = chat_reply("")
    body["choices"][0].update(finish_reason="length", message={"role": "assistant", "content": None,
                                                                field: "The person is on the left, so"})
    with FakeChatServer() as server:
        server.replies = [(status, body, headers), chat_reply("the cat")]
        b = OpenAIBackend("m", base_url=server.url)
        c = complete(b, [{"role": "user", "content": "a"}])
        plain = complete(OpenAIBackend("m", base_url=server.url), [{"role": "user", "content": "a"}])
    assert c.text == "" and c.meta["finish_reason"] == "length" and c.meta["reasoning_chars"] == 29
    assert plain.text == "the cat" and "reasoning_chars" not in plain.meta


def test_a_whole_task_through_a_config_pointed_at_the_server(tmp_path, monkeypatch) -> None:
    cfg_file = tmp_path / "agent.yaml"
    cfg_file.write_text("""
roles:
  reflector: &m {backend: openai, model: text-model, base_url: http://unused.invalid/v1, max_tokens: 64}
  planner: *m
  rewriter: *m
  vlm: {backend: openai, model: vision-model, base_url: http://unused.invalid/v1}
""")
    monkeypatch.delenv("REALLOD_BASE_URL", raising=False)
    with FakeChatServer() as server:
        server.replies = [chat_reply(x) for x in (
            reflect("uncertain", "colour"), plan("uncertain", "surroundings", "Is it red?"),
            answer("No, it is brown."), reflect("wrong"), plan("wrong"), rewrite("the brown Dog"),
            reflect("correct"))]
        cfg = load_agent_config(cfg_file, base_url=server.url)
        roles = build_roles(cfg)
        assert roles.reflector.backend is roles.planner.backend is roles.rewriter.backend
        task = Task("t", "x.jpg", 40, 60, "the red Dog", ObjectRef("dog", [[10, 10, 30, 30]]),
                    caption="A brown dog.")

        async def go():
            try:
                return await run_task(task, roles, load_image=lambda: Image.new("RGB", (60, 40)), max_cycles=3)
            finally:
                await roles.aclose()

        r = asyncio.run(go())
    assert (r.verdict, r.expression, r.cycles, r.error) == ("rewritten", "the brown Dog", 3, None)
    assert r.evidence == ["[extended crop] Q: Is it red? A: No, it is brown."]
    models = [req["model"] for req in server.requests]
    assert models == ["text-model", "text-model", "vision-model"] + ["text-model"] * 4
    assert server.requests[2]["messages"][1]["content"][0]["type"] == "image_url"
    assert server.requests[0]["max_tokens"] == 64


def test_one_backend_serves_one_event_loop_after_another() -> None:
    """A backend built once and used from two ``asyncio.run`` calls (a warm-up, then the run) works."""
    with FakeChatServer() as server:
        server.replies = [chat_reply("one"), chat_reply("two")]
        b = OpenAIBackend("m", base_url=server.url)
        first = asyncio.run(b.complete([{"role": "user", "content": "a"}])).text
        assert complete(b, [{"role": "user", "content": "b"}]).text == "two" and first == "one"


def test_closing_from_another_thread_closes_the_serving_loops_connections() -> None:
    """As the demo does: requests served on one thread's loop, the backend closed from another."""
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with FakeChatServer() as server:
            server.replies = [chat_reply("served")]
            b = OpenAIBackend("m", base_url=server.url)
            reply = asyncio.run_coroutine_threadsafe(b.complete([{"role": "user", "content": "a"}]), loop).result(10)
            assert reply.text == "served"
            transport = b._transport
            session = getattr(transport, "_session", None) or transport._client
            asyncio.run(b.aclose())
            closed = session.closed if hasattr(session, "closed") else session.is_closed()
            assert closed
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_the_http_client_is_checked_and_named_in_the_config(tmp_path) -> None:
    cfg = tmp_path / "a.yaml"
    body = "roles:\n  reflector: &m {{backend: openai, model: m, http_client: {}}}\n  planner: *m\n  rewriter: *m\n"
    cfg.write_text(body.format("openai"))
    roles = build_roles(load_agent_config(cfg))
    assert roles.reflector.backend.http_client == "openai"
    cfg.write_text(body.format("curl"))
    with pytest.raises(ConfigError, match=r"a\.yaml:2: roles\.reflector\.http_client: expected one of aiohttp, openai, "
                                          r"got 'curl'"):
        build_roles(load_agent_config(cfg))


def test_the_environment_proxy_is_looked_up_once_and_honours_no_proxy(monkeypatch) -> None:
    from reallod.llm.backends.http import env_proxy

    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert env_proxy("http://127.0.0.1:8000/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.example:3128"
    assert env_proxy("http://gpu-box:8000/v1") is None  # no proxy named for plain http
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert env_proxy("https://api.openai.com/v1") is None


def test_each_run_opens_one_pool_and_every_pool_is_closed(http_client, monkeypatch) -> None:
    """A backend shared by two runs (two event loops, as the data engine's pipeline does): tasks that
    start together on the new loop share one new pool, and the pool a run left open is closed too."""
    if http_client == "aiohttp":
        import aiohttp as module

        name, is_closed = "ClientSession", lambda pool: pool.closed
    else:
        import openai as module

        name, is_closed = "AsyncOpenAI", lambda pool: pool.is_closed()
    real, made = getattr(module, name), []

    def making(*args: Any, **kwargs: Any) -> Any:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(module, name, making)
    with FakeChatServer(lambda body: chat_reply("ok")) as server:
        b = OpenAIBackend("m", base_url=server.url)

        async def run(n: int, close: bool) -> None:
            await asyncio.gather(*(b.complete([{"role": "user", "content": str(i)}]) for i in range(n)))
            if close:
                await b.aclose()

        asyncio.run(run(1, close=False))  # a run that leaves its pool open
        asyncio.run(run(8, close=True))  # eight tasks start together on a new loop
        asyncio.run(run(2, close=True))
    assert len(made) == 3 and all(is_closed(pool) for pool in made)


def _reply(content: Any, finish: str = "stop", completion_tokens: int = 5, **message: Any):
    status, body, headers = chat_reply("", completion_tokens=completion_tokens)
    body["choices"][0].update(finish_reason=finish, message={"role": "assistant", "content": content, **message})
    return status, body, headers


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_a_schema_answer_the_reasoning_parser_took_for_reasoning_is_the_answer(field: str) -> None:
    """vLLM's deepseek_r1 parser on Qwen3 with thinking off (vllm-project/vllm#19222) returns the whole
    constrained reply as reasoning and no content. Only a whole JSON object, only for a schema request,
    and not for a reply cut at the limit; real reasoning stays unread."""
    answer_json = '{"expression": "the cat on the left"}'
    with FakeChatServer() as server:
        server.replies = [_reply(None, **{field: answer_json}), _reply("", **{field: answer_json}),
                          _reply(None, **{field: "I think the answer is {x}"}),
                          _reply(None, "length", **{field: answer_json})]
        took = complete(OpenAIBackend("m", base_url=server.url), [{"role": "user", "content": "a"}], schema=SCHEMA)
        free = complete(OpenAIBackend("m", base_url=server.url), [{"role": "user", "content": "a"}])
        prose = complete(OpenAIBackend("m", base_url=server.url), [{"role": "user", "content": "a"}], schema=SCHEMA)
        cut = complete(OpenAIBackend("m", base_url=server.url), [{"role": "user", "content": "a"}], schema=SCHEMA)
    assert took.text == answer_json and took.meta["answer_from_reasoning"] is True
    assert SPECS["rewriter"].parse(took.text)[0]["expression"] == "the cat on the left"
    for c in (free, prose, cut):
        assert c.text == "" and "answer_from_reasoning" not in c.meta and c.meta["reasoning_chars"] > 0


def test_an_sglang_abort_is_asked_again_not_taken_as_a_reply() -> None:
    with FakeChatServer() as server:
        server.replies = [_reply('{"expression": "the c', "abort")]
        b = OpenAIBackend("m", base_url=server.url)
        with pytest.raises(BackendError) as e:
            complete(b, [{"role": "user", "content": "a"}], schema=SCHEMA)
    assert e.value.retryable and e.value.kind == "server" and "aborted" in str(e.value)


def test_a_reply_stopped_below_max_tokens_is_told_from_one_that_reached_it() -> None:
    with FakeChatServer() as server:
        server.replies = [_reply('{"expression": "the c', "length", completion_tokens=40),
                          _reply('{"expression": "the c', "length", completion_tokens=96),
                          _reply('{"expression": "the c', "length", completion_tokens=0)]
        short, full, unknown = (complete(OpenAIBackend("m", base_url=server.url), [{"role": "user", "content": "a"}],
                                         schema=SCHEMA, max_tokens=96) for _ in range(3))
    assert short.meta["stopped_below_max_tokens"] == 96
    assert "stopped_below_max_tokens" not in full.meta and "stopped_below_max_tokens" not in unknown.meta


@pytest.mark.parametrize(("body", "shown"), [
    ({"object": "error", "message": "This model's maximum context length is 8192 tokens", "type": "BadRequestError",
      "code": 400}, "HTTP 400: This model's maximum context length is 8192 tokens"),  # SGLang
    ({"detail": "Not Found"}, "HTTP 400: Not Found"),  # FastAPI
])
def test_flat_error_bodies_show_their_message(body: dict[str, Any], shown: str) -> None:
    with FakeChatServer() as server:
        server.replies = [(400, body, {})]
        with pytest.raises(BackendError) as e:
            complete(OpenAIBackend("m", base_url=server.url), [{"role": "user", "content": "a"}])
    assert shown in str(e.value) and "{" not in str(e.value)
