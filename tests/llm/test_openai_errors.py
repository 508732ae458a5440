"""The openai backend's errors carry a kind and the server's Retry-After, so the runner retries right."""

from __future__ import annotations

import asyncio
import email.utils

import pytest

from reallod.llm.backends.base import BackendError
from reallod.llm.backends.http import TRANSPORTS
from reallod.llm.backends.openai_backend import OpenAIBackend, parse_retry_after
from reallod.llm.retry import ResilientBackend, RetryPolicy
from tests.agent.fake_openai_server import FakeChatServer, FakeReply, chat_reply, error_reply


@pytest.fixture(params=TRANSPORTS, autouse=True)
def http_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs through both ways of posting (aiohttp, the official client)."""
    monkeypatch.setitem(OpenAIBackend.__init__.__kwdefaults__, "http_client", request.param)
    return request.param


def error_of(reply) -> BackendError:
    with FakeChatServer(lambda body: reply) as server:
        backend = OpenAIBackend("m", base_url=server.url, timeout_s=0.3)

        async def go():
            try:
                await backend.complete([{"role": "user", "content": "hi"}])
            finally:
                await backend.aclose()

        with pytest.raises(BackendError) as info:
            asyncio.run(go())
    return info.value


@pytest.mark.parametrize(("reply", "kind", "retryable", "retry_after"), [
    (error_reply(500, "boom"), "server", True, None),
    (error_reply(503, "busy", {"retry-after": "2"}), "server", True, 2.0),
    (error_reply(429, "slow down", {"retry-after": "0.5"}), "rate_limit", True, 0.5),
    (error_reply(429, "slow down", {"retry-after-ms": "250"}), "rate_limit", True, 0.25),
    (error_reply(400, "bad request"), "client", False, None),
    (error_reply(408, "too slow"), "timeout", True, None),
    (FakeReply(200, b"{this is not json"), "server", True, None),
    (FakeReply(*chat_reply("late"), delay_s=1.0), "timeout", True, None),
    (FakeReply(*chat_reply("bye"), hang_up=True), "connection", True, None),
])
def test_errors_are_classified(reply, kind, retryable, retry_after):
    e = error_of(reply)
    assert (e.kind, e.retryable, e.retry_after) == (kind, retryable, retry_after), str(e)


def test_a_reply_cut_short_is_the_servers_failure(http_client):
    """The server answered, then broke off: it is up, so the attempt is charged to the request. As a
    connection error it was retried for ever and, once the last task left, stopped the run as 'endpoint
    unreachable' on every rerun. (The official client cannot tell the two apart: the retry rule covers it.)"""
    e = error_of(FakeReply(*chat_reply("cut"), truncate=True))
    assert (e.kind, e.retryable) == ("server" if http_client == "aiohttp" else "connection", True)


def test_the_client_does_not_retry_on_its_own():
    calls = []
    with FakeChatServer(lambda body: calls.append(1) or error_reply(500, "boom")) as server:
        backend = OpenAIBackend("m", base_url=server.url)

        async def go():
            try:
                await backend.complete([{"role": "user", "content": "hi"}])
            finally:
                await backend.aclose()

        with pytest.raises(BackendError):
            asyncio.run(go())
    assert len(calls) == 1


def test_retry_after_as_a_date():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after("not a date") is None and parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0.0


def test_connection_failures_are_not_charged_to_the_task():
    """Connection errors below the 'down' threshold are retried beyond max_attempts: the endpoint came back."""
    flaky = iter([FakeReply(*chat_reply("x"), hang_up=True)] * 4 + [chat_reply("fine")])
    with FakeChatServer(lambda body: next(flaky)) as server:
        backend = ResilientBackend(OpenAIBackend("m", base_url=server.url),
                                   policy=RetryPolicy(max_attempts=2, base_delay_s=0.001, down_after=8))

        async def go():
            try:
                return await backend.complete([{"role": "user", "content": "hi"}])
            finally:
                await backend.aclose()

        completion = asyncio.run(go())
    assert completion.text == "fine" and backend.stats.retries["connection"] == 4
