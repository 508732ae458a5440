"""When a run stops and when a task fails: a server that answers nobody (a wrong model name or key, a
hung server, one still loading, one gone) stops the run, whether it ever answered or not; a request
the server fails alone (a prompt that crashes a worker, one too long for the timeout, one it rejects)
fails its task alone, even with no other request in flight to tell, and a rerun of it can finish."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from reallod.llm.backends.base import BackendError, Completion
from reallod.llm.backends.http import TRANSPORTS
from reallod.llm.backends.openai_backend import OpenAIBackend
from reallod.llm.policy import RetryPolicy
from reallod.llm.retry import EndpointDown, ResilientBackend
from reallod.runs.journal import read_journal
from tests.agent.fake_openai_server import FakeChatServer, FakeReply, chat_reply, error_reply, valid_decision
from tests.agent.io_helpers import fake_server_config, many_tasks
from tests.cli_helpers import run_cli
from tests.llm.aio_server import AioServer, cut_short, hang_up, ok, status, user_text

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, timeout_s=5, down_after=8, down_after_s=5)


def wrapped(server: AioServer, policy: RetryPolicy = FAST, transport: str = "aiohttp") -> ResilientBackend:
    return ResilientBackend(OpenAIBackend("fake-llm", base_url=server.url, http_client=transport), policy=policy,
                            seed=0)


def ask(backend: ResilientBackend, prompts: list[str], concurrency: int = 8) -> list:
    """The prompts, ``concurrency`` at a time (1: one after the other, as at a run's tail), as a run's
    tasks send them: the replies or errors, in order, and "stopped" for those a stop of the run (the
    first :class:`EndpointDown`) left unsent; the backend is closed at the end."""
    limit = asyncio.Semaphore(concurrency)
    stopped = asyncio.Event()

    async def one(prompt: str):
        async with limit:
            if stopped.is_set():
                return "stopped"
            try:
                return await backend.complete([{"role": "user", "content": prompt}])
            except EndpointDown:
                stopped.set()
                raise

    async def main():
        try:
            return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)
        finally:
            await backend.aclose()

    return asyncio.run(main())


def kinds(results: list) -> list[str]:
    return ["ok" if isinstance(r, Completion) else "down" if isinstance(r, EndpointDown)
            else "failed" if isinstance(r, BackendError) else str(r) for r in results]


def stopped_charging_no_task(results: list) -> EndpointDown:
    """The run stopped and no task failed on the way; the first stop."""
    assert set(kinds(results)) <= {"ok", "down", "stopped"} and "down" in kinds(results), kinds(results)
    return next(r for r in results if isinstance(r, EndpointDown))


# --- a wrong model name or key (F1b) --------------------------------------------------------------

@pytest.mark.parametrize(("code", "message", "hint"), [
    (404, "The model fake-llm does not exist.", "model name"),
    (401, "Invalid API key", "api_key_env"),
    (403, "not allowed", "API key"),
])
def test_a_refusal_for_every_request_stops_the_run_at_once_charging_no_task(code, message, hint):
    """Every task failed one by one (2,200 requests, an 8 MB trace, exit 1 at the end)."""
    async def respond(body, request):
        return status(code, message)

    with AioServer(respond) as server:
        results = ask(wrapped(server), [f"task {i}" for i in range(200)])
    said = str(stopped_charging_no_task(results))
    assert "ok" not in kinds(results) and len(server.bodies) < 40
    assert f"HTTP {code}: {message}" in said and hint in said and server.url in said


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_web_page_for_every_request_stops_the_run_at_once_and_says_what_it_is(transport):
    """A web UI at the base URL answered 200 with HTML: every task failed after 3 requests each, as
    "unreadable reply: unexpected character ... line 1 column 1", and the run went on to the end."""
    from aiohttp import web

    async def respond(body, request):
        return web.Response(text="<html><body>Welcome to nginx</body></html>", content_type="text/html")

    with AioServer(respond) as server:
        results = ask(wrapped(server, transport=transport), [f"task {i}" for i in range(200)])
    said = str(stopped_charging_no_task(results))
    assert len(server.bodies) < 40
    assert re.search(r"answered \d+ requests in a row with a web page, not the API's JSON", said), said
    assert "'<html><body>Welcome to nginx</body></html>'" in said and "/v1" in said


def test_a_reply_that_is_no_json_nor_a_page_fails_its_task_saying_how_it_starts():
    async def respond(body, request):
        from aiohttp import web

        return ok() if "fine" in user_text(body) else web.Response(text="not json at all")

    with AioServer(respond) as server:
        results = ask(wrapped(server), ["broken", "fine"], concurrency=1)
    assert kinds(results) == ["failed", "ok"]
    assert "unreadable reply" in str(results[0]) and "it starts 'not json at all'" in str(results[0])


def test_refusals_after_it_answered_stop_the_run_once_nothing_is_answered_between():
    """The model unloaded, the key revoked mid-run: the run stops; the tasks already done are done."""
    async def respond(body, request):
        return ok() if len(server.bodies) <= 5 else status(404, "The model fake-llm does not exist.")

    with AioServer(respond) as server:
        results = ask(wrapped(server), [f"task {i}" for i in range(60)], concurrency=1)
    assert kinds(results)[:5] == ["ok"] * 5 and kinds(results)[5] == "down"
    assert set(kinds(results)[6:]) == {"stopped"}


def test_a_request_the_server_rejects_alone_fails_alone():
    """A 400 for one oversized prompt is that task's failure, at the start of a run or at its tail."""
    async def respond(body, request):
        return status(400, "prompt too long") if "huge" in user_text(body) else ok()

    with AioServer(respond) as server:
        for prompts in (["huge"], ["a", "huge", "b"], ["huge"] * 10 + ["a"]):
            assert kinds(ask(wrapped(server), prompts, concurrency=1)) == \
                ["failed" if p == "huge" else "ok" for p in prompts]


# --- a hung server (F1b) --------------------------------------------------------------------------

HUNG = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02, timeout_s=0.2, down_after=8,
                   down_after_s=0.6)


def test_a_server_that_takes_requests_and_never_answers_stops_the_run_after_the_first_timeouts():
    """2,200 of 2,200 tasks timed out one by one: with the default timeout a big run took months."""
    async def respond(body, request):
        await asyncio.sleep(60)
        return ok()

    started = time.monotonic()
    with AioServer(respond) as server:
        results = ask(wrapped(server, HUNG), [f"task {i}" for i in range(100)])
    said = str(stopped_charging_no_task(results))
    assert "ok" not in kinds(results) and time.monotonic() - started < 3
    assert re.search(r"no answer to \d+ requests in a row since the run started", said) and "timeout_s" in said


def test_a_server_that_hangs_after_answering_stops_the_run_after_down_after_s():
    async def respond(body, request):
        if len(server.bodies) > 20:
            await asyncio.sleep(60)
        return ok()

    started = time.monotonic()
    with AioServer(respond) as server:
        results = ask(wrapped(server, HUNG), [f"task {i}" for i in range(400)])
    assert kinds(results).count("ok") >= 20 and "down" in kinds(results)
    assert time.monotonic() - started < 3
    assert "after it had answered" in str(next(r for r in results if isinstance(r, EndpointDown)))


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_prompt_too_long_for_the_timeout_fails_alone(concurrency):
    """At a run's tail, or first in a rerun, a long prompt alone in flight times out: its task fails,
    the run goes on (it is no reason to stop a run that can never get past it)."""
    async def respond(body, request):
        if "long" in user_text(body):
            await asyncio.sleep(60)
        return ok()

    prompts = ["long", "a", "long", "b", "long", "c", *(f"d{i}" for i in range(20)), "long"]
    with AioServer(respond) as server:
        assert kinds(ask(wrapped(server, HUNG), prompts, concurrency)) == \
            ["failed" if p == "long" else "ok" for p in prompts]


# --- a prompt that crashes a server worker (F3) ---------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("prompts", [["a", "poison", "b"], ["poison"]], ids=["tail", "rerun-of-it-alone"])
def test_a_request_whose_connection_is_closed_alone_in_flight_fails_alone(transport, prompts):
    """It stopped the run as 'endpoint unreachable … check the base URL' once it was the only request
    in flight (--concurrency 1, a run's tail, a rerun of the failed tasks): the job could never finish."""
    async def respond(body, request):
        return hang_up(request) if "poison" in user_text(body) else ok()

    with AioServer(respond) as server:
        backend = wrapped(server, transport=transport)
        results = ask(backend, prompts, concurrency=1)
    assert kinds(results) == ["failed" if p == "poison" else "ok" for p in prompts]
    poisoned = next(r for r in results if isinstance(r, BackendError))
    assert "connection closed without a reply" in str(poisoned) and "after 3 attempts" in str(poisoned)
    assert sum("poison" in user_text(b) for b in server.bodies) == 3


def test_a_server_that_closes_every_connection_unanswered_stops_the_run():
    """A server still starting behind a port forward (docker -p) takes connections and closes them."""
    async def respond(body, request):
        return hang_up(request)

    with AioServer(respond) as server:
        results = ask(wrapped(server), [f"task {i}" for i in range(50)])
    said = str(stopped_charging_no_task(results))
    assert "ok" not in kinds(results) and re.search(r"closed \d+ requests in a row without a reply", said)


# --- a server loading its model (F4) --------------------------------------------------------------

def test_a_server_answering_503_while_it_loads_is_waited_for():
    """llama.cpp's server answers 503 'Loading model' (with Retry-After) until it is ready: the run
    stopped after 8 requests in 2 s, telling to check the base URL."""
    async def respond(body, request):
        if time.monotonic() - started < 0.5:
            return status(503, "Loading model", {"Retry-After": "0.2"})
        return ok()

    started = time.monotonic()
    with AioServer(respond) as server:
        results = ask(wrapped(server), [f"task {i}" for i in range(40)])
    assert set(kinds(results)) == {"ok"}


def test_a_server_that_stays_unavailable_stops_the_run_after_down_after_s_without_blaming_the_url():
    async def respond(body, request):
        return status(503, "Loading model", {"Retry-After": "0.1"})

    started = time.monotonic()
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, timeout_s=5, down_after_s=0.5)
    with AioServer(respond) as server:
        results = ask(wrapped(server, policy), [f"task {i}" for i in range(20)])
    said = str(stopped_charging_no_task(results))
    assert "ok" not in kinds(results) and time.monotonic() - started >= 0.5
    assert "endpoint unavailable for" in said and "HTTP 503: Loading model" in said and "base URL" not in said


# --- a restart, a reply cut short (F7) ------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_restarting_fails_no_request(transport):
    """It stops listening for 0.4 s (its requests in flight dropped, new connections refused), then is back."""
    async def respond(body, request):
        await asyncio.sleep(0.01)
        return ok()

    async def restart():
        while len(server.bodies) < 50:  # once it has answered
            await asyncio.sleep(0.005)
        await asyncio.to_thread(server.close)
        await asyncio.sleep(0.4)
        await asyncio.to_thread(server.listen)

    with AioServer(respond) as server:
        backend = wrapped(server, transport=transport)

        async def main():
            restarting = asyncio.create_task(restart())
            limit = asyncio.Semaphore(16)

            async def one(i):
                async with limit:
                    return await backend.complete([{"role": "user", "content": f"task {i}"}])
            try:
                return await asyncio.gather(*(one(i) for i in range(400)), return_exceptions=True)
            finally:
                await restarting
                await backend.aclose()

        results = asyncio.run(main())
    assert set(kinds(results)) == {"ok"}, [r for r in results if not isinstance(r, Completion)][:3]
    assert backend.stats.retries["connection"] >= 8


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_replies_cut_short_are_charged_and_retried_with_either_client(transport):
    """With the official client a reply cut short was 'cannot connect … base URL' and stopped the run;
    with aiohttp it was charged and retried. Now both charge it: the server had answered."""
    async def respond(body, request):
        return await cut_short(request) if len(server.bodies) <= 12 else ok()

    with AioServer(respond) as server:
        backend = wrapped(server, transport=transport)
        results = ask(backend, [f"task {i}" for i in range(40)], concurrency=4)
    assert "down" not in kinds(results) and kinds(results).count("ok") >= 36
    assert backend.stats.retries["server"] >= 8 and not backend.stats.retries["connection"]


# --- through the command --------------------------------------------------------------------------

def test_realign_against_a_wrong_model_name_stops_with_status_2_and_says_what_to_check(tmp_path, capsys):
    with FakeChatServer(lambda body: error_reply(404, "The model fake-llm does not exist.")) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, concurrency=4)
        code, _, err = run_cli(["realign", many_tasks(tmp_path / "in", 30), "--config", cfg,
                                "--out", tmp_path / "o.jsonl", "--no-progress"], capsys)
        sent = len(server.requests)
    assert code == 2 and "HTTP 404: The model fake-llm does not exist." in err and "model name" in err
    assert "rerun the same command to resume" in err and sent < 30
    assert read_journal(tmp_path / "o.journal.jsonl")[1] == {}


def test_realign_with_one_task_that_crashes_the_server_finishes_and_its_rerun_too(tmp_path, capsys):
    import random

    rng = random.Random(0)

    def respond(body):
        if "the square number 3" in user_text(body):
            return FakeReply(200, b"", hang_up=True)
        return chat_reply(valid_decision(body, rng))

    with FakeChatServer(respond) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, concurrency=1)
        args = ["realign", many_tasks(tmp_path / "in", 6), "--config", cfg, "--out", tmp_path / "o.jsonl",
                "--no-progress", "--no-cache"]
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        done = read_journal(tmp_path / "o.journal.jsonl")[1]
        assert len(done) == 6 and [k for k, v in done.items() if v["verdict"] == "failed"] == ["3"]
        code, _, err = run_cli(args, capsys)  # only the failed task is run again, alone
    assert code != 2 and "unreachable" not in err
