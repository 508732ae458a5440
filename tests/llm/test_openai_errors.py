"""The openai backend's errors carry a kind and the server's Retry-After, so the runner retries right."""

from __future__ import annotations

import asyncio
import email.utils
import socket

import pytest

from reallod.llm.backends.base import BackendError
from reallod.llm.backends.http import TRANSPORTS
from reallod.llm.backends.openai_backend import OpenAIBackend, parse_retry_after
from reallod.llm.retry import ResilientBackend, RetryPolicy, no_answer
from tests.agent.fake_openai_server import FakeChatServer, FakeReply, chat_reply, error_reply
from tests.llm.aio_server import AioServer, ok


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
    """The server answered, then broke off: it is up, so the attempt is charged to the request. The
    official client's reply cut short was 'cannot connect' (an outage: the run stopped, telling to check
    the base URL) where aiohttp's was charged. A connection closed before any reply is no outage either:
    the server took it (a prompt that crashes a worker), so it is charged too, never waited for."""
    e = error_of(FakeReply(*chat_reply("cut"), truncate=True))
    assert (e.kind, e.retryable, no_answer(e)) == ("server", True, None), str(e)
    e = error_of(FakeReply(*chat_reply("bye"), hang_up=True))
    assert (e.kind, e.retryable, no_answer(e)) == ("connection", True, "no_reply"), str(e)
    assert "cannot connect" not in str(e)


def test_failing_to_connect_is_the_only_unreachable(http_client):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    backend = OpenAIBackend("m", base_url=url, timeout_s=0.3)
    with pytest.raises(BackendError) as info:
        asyncio.run(backend.complete([{"role": "user", "content": "hi"}]))
    assert (info.value.kind, no_answer(info.value)) == ("connection", "connection") and "cannot connect" in str(info.value)


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


def test_a_server_not_started_stops_a_run_of_one_request_at_a_time_without_growing_waits(monkeypatch):
    """With nothing listening, `realign --limit 1` took 40-80 s to stop: its one request at a time waited
    a growing back-off (up to 30 s) between the tries that tell the endpoint is down."""
    import reallod.llm.retry as retry
    from reallod.llm.retry import EndpointDown

    steps = []

    def backoff(step, policy, rng, retry_after=None):
        steps.append(step)
        return 0.0

    monkeypatch.setattr(retry, "backoff_delay", backoff)
    with AioServer(lambda body, request: ok("fine")) as server:
        server.close()  # not listening
        backend = ResilientBackend(OpenAIBackend("m", base_url=server.url), policy=RetryPolicy(down_after=8))

        async def go():
            try:
                await backend.complete([{"role": "user", "content": "hi"}])
            finally:
                await backend.aclose()

        with pytest.raises(EndpointDown, match="endpoint unreachable"):
            asyncio.run(go())
    assert steps == [1] * 7  # eight tries, each after the first step's wait


def test_connection_failures_are_not_charged_to_the_task():
    """Refused connections (a server restarting) are retried beyond max_attempts: the endpoint came back."""
    async def respond(body, request):
        return ok("fine")

    with AioServer(respond) as server:
        server.close()  # not listening: connections are refused until it listens again
        backend = ResilientBackend(OpenAIBackend("m", base_url=server.url),
                                   policy=RetryPolicy(max_attempts=2, base_delay_s=0.02, max_delay_s=0.05,
                                                      down_after=100))

        async def back_in_a_moment():
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.listen)

        async def go():
            restarting = asyncio.create_task(back_in_a_moment())
            try:
                return await backend.complete([{"role": "user", "content": "hi"}])
            finally:
                await restarting
                await backend.aclose()

        completion = asyncio.run(go())
    assert completion.text == "fine" and backend.stats.retries["connection"] >= 3
