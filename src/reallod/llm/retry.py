"""Retries with backoff, per-request timeouts, per-endpoint limits and the response cache, around any
backend. The backend itself stays simple: it makes one call and raises :class:`BackendError`.

A request that got no answer says something about the request or about the endpoint. When the
endpoint answers nobody — no connection, a 502/503/504 (a proxy whose server is gone, a server still
loading its model), a 401/403/404 (a wrong key or model name), a web page where the API's JSON is due
(a web UI or proxy at the base URL), requests that time out or whose
connection is closed without a reply — the run stops (:class:`EndpointDown`) instead of failing every
task on the way and recording those failures as if they were the tasks' own.

Down means ``down_after`` requests in a row got no answer, none sent since the first of them answered,
and: at once for a refusal (401/403/404 or a web page, never a blip) and for an endpoint that never answered in this
run (a wrong URL, a server not started, a hung one) unless it replied 502/503/504 (it, or a proxy, is
there: a model still loading is waited for); else after ``down_after_s`` of it (a server restarting,
a blip of a few seconds, must not stop a long run).

Whether the request is charged is another matter. A request that could not connect, got a 502/503/504
or a refusal is not charged while nobody is answered: it is retried (with backoff) until the endpoint
answers again, or is down. Once a request sent since was answered, it is charged like any failed
attempt. A timeout, or a connection closed without a reply, is always charged: the server took the
request, and that request may be its own problem (a prompt too long for the timeout, or one that
crashes a server worker), so it fails alone after ``max_attempts``, even with no other request in
flight to tell, instead of stopping the run on every rerun.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from reallod.errors import ConfigError
from reallod.llm.backends.base import Backend, BackendError, Completion, Message, message_images
from reallod.llm.backends.http import HTTPStatusError, NoReply, NotTheAPI
from reallod.llm.cache import ResponseCache, digests_known, occurrence_key, request_key
from reallod.llm.policy import RetryPolicy, backoff_delay

UNAVAILABLE_STATUSES = (502, 503, 504)  # a proxy whose server is gone, a server loading its model
REFUSED_STATUSES = (401, 403, 404)  # a wrong API key or model name: every request gets the same
WAITED = ("connection", "unavailable", "refused", "page")  # not charged while the endpoint answers nobody
REFUSAL_HINTS = {401: "the API key (the variable the role's api_key_env names)",
                 403: "that the API key may use this model",
                 404: "the role's model name (GET BASE_URL/models lists the server's) and that the base URL "
                      "ends where the server's API starts (often /v1)"}


class EndpointDown(ConfigError):
    """An endpoint answered nobody for too long: the run stops cleanly instead of failing every task.

    A :class:`ConfigError` so that the workflow treats it as a run-level problem, never a task's.
    """


@dataclass
class CallStats:
    calls: int = 0  # requests answered by the backend (not the cache)
    cache_hits: int = 0
    retries: Counter = field(default_factory=Counter)  # requests sent again, by error kind
    failures: Counter = field(default_factory=Counter)  # calls given up, by error kind
    in_flight: int = 0


def no_answer(error: BackendError) -> str | None:
    """Why the endpoint gave the request no answer (``connection``, ``unavailable``, ``refused``,
    ``timeout``, ``no_reply``), or None when it answered, if with an error of the request's own."""
    cause = error.__cause__
    if isinstance(cause, HTTPStatusError):
        return "unavailable" if cause.status in UNAVAILABLE_STATUSES else \
            "refused" if cause.status in REFUSED_STATUSES else None
    if isinstance(cause, NoReply):
        return "no_reply"
    if isinstance(cause, NotTheAPI):
        return "page"
    return error.kind if error.kind in ("connection", "timeout") else None


class ResilientBackend:
    """Cache → endpoint limit → timeout → retry, for one backend (one role or one shared endpoint)."""

    def __init__(self, backend: Backend, *, policy: RetryPolicy | None = None, cache: ResponseCache | None = None,
                 limit: asyncio.Semaphore | None = None, seed: int | None = None,
                 stats: CallStats | None = None, model_id: str | None = None) -> None:
        self.backend = backend
        self.name = backend.name
        self.supports_images = backend.supports_images
        self.policy = policy or RetryPolicy()
        self.cache = cache
        self.limit = limit
        self.stats = stats or CallStats()
        self.model_id = model_id or backend.name
        self._rng = random.Random(seed)
        self._answered = False  # whether the endpoint answered any request in this run
        self._up_at = float("-inf")  # when the latest request it answered was sent (monotonic)
        self._silent_since: float | None = None  # when the first request it gave no answer since was sent
        self._silent_count = 0  # requests it gave no answer since then

    async def complete(self, messages: list[Message], *, schema: dict[str, Any] | None = None,
                       choices: list[str] | None = None, max_tokens: int | None = None,
                       temperature: float | None = None) -> Completion:
        kwargs = {"schema": schema, "choices": choices, "max_tokens": max_tokens, "temperature": temperature}
        cache = self.cache
        if cache is None:
            return await self._call(messages, kwargs)
        if not digests_known(message_images(messages)):  # hashing pixels takes a while: off the loop
            base = await asyncio.to_thread(request_key, self.model_id, messages, kwargs)
        else:
            base = request_key(self.model_id, messages, kwargs)
        key = occurrence_key(base)  # in the task's own context: counts per task
        while True:
            if (hit := cache.get(key)) is not None:
                self.stats.cache_hits += 1
                hit.meta["cache_key"] = key
                return hit
            if (first := cache.in_flight.get(key)) is None:
                break
            await asyncio.wait([first])  # another task asks the same: its answer is ours (the cache's)
            if not first.cancelled() and isinstance(error := first.result(), BackendError):
                raise BackendError(str(error), retryable=False, kind=error.kind) from None
        done = asyncio.get_running_loop().create_future()
        cache.in_flight[key] = done
        try:
            completion = await self._call(messages, kwargs)
            if completion.meta.get("finish_reason") != "length":  # a reply cut short is never replayed
                completion = cache.put(key, completion)
            completion.meta["cache_key"] = key
            done.set_result(None)
            return completion
        except BackendError as e:
            done.set_result(e)  # the same request fails the same way for those waiting
            raise
        finally:
            done.cancel()  # ended otherwise (cancelled, stopped): those waiting ask for themselves
            del cache.in_flight[key]

    def forget(self, completion: Completion) -> None:
        """Drop a reply of a call that failed its task from the cache, so that a rerun of the task asks
        the model again instead of replaying it (a server that answered empty or garbage until it was
        fixed). Only for the replies of a failed call: a done task must replay all it used, rejected
        replies included (the later requests carry them)."""
        key = completion.meta.get("cache_key")
        if self.cache is not None and isinstance(key, str):
            self.cache.drop(key)

    async def _call(self, messages: list[Message], kwargs: dict[str, Any]) -> Completion:
        attempt = 0  # attempts charged to the call (waiting for the endpoint is not)
        tries = 0
        out_at: float | None = None  # when this request last found the endpoint answering nobody
        while True:
            tries += 1
            sent = time.monotonic()
            try:
                start = time.perf_counter()
                if self.limit is not None:
                    async with self.limit:
                        sent = time.monotonic()
                        completion = await self._timed(messages, kwargs)
                else:
                    completion = await self._timed(messages, kwargs)
                completion.latency_s = completion.latency_s or time.perf_counter() - start
                completion.meta["attempts"] = tries
                self.stats.calls += 1
                self._answered_at(sent)
                return completion
            except BackendError as e:
                why = no_answer(e)
                if why is None:
                    self._answered_at(sent)  # answered, if badly: charged
                else:
                    self._unanswered(sent, why, e)  # raises EndpointDown once it is down
                if why in WAITED and (out_at is None or self._up_at <= out_at):
                    # not charged to the task: either the endpoint answers again or the run stops
                    out_at = time.monotonic()
                    self.stats.retries[e.kind] += 1
                    # an endpoint that has answered nothing yet is tried again at the first step's pace: it
                    # counts as down after down_after tries, which one request at a time (--limit 1) took a
                    # minute of growing back-off to reach
                    step = min(tries, 6) if self._answered else 1
                    await asyncio.sleep(backoff_delay(step, self.policy, self._rng, e.retry_after))
                    continue
                # charged: the endpoint answered, if badly, or answered a request sent since this one last
                # found it answering nobody, or took the request and gave it nothing (a timeout, a closed
                # connection: the request's own doing, maybe; a server that does it to all is down above)
                attempt += 1
                if not e.retryable or attempt >= self.policy.max_attempts:
                    self.stats.failures[e.kind] += 1
                    raise BackendError(f"{e} (after {attempt} attempt{'s' * (attempt > 1)})",
                                       retryable=False, kind=e.kind, requests=tries) from None
                self.stats.retries[e.kind] += 1
                await asyncio.sleep(backoff_delay(attempt, self.policy, self._rng, e.retry_after))

    def _answered_at(self, sent: float) -> None:
        """The endpoint answered a request sent at ``sent``: it was up then."""
        self._answered = True
        self._up_at = max(self._up_at, sent)

    def _unanswered(self, sent: float, why: str, error: BackendError) -> None:
        """Count a request sent at ``sent`` that got no answer (``why``: :func:`no_answer`); raise
        :class:`EndpointDown` once the endpoint is down (see the module's docstring)."""
        if sent < self._up_at:
            return  # a request sent later was answered: the endpoint was up after this one
        if self._silent_since is None or self._up_at > self._silent_since:  # it answered since: a new silence
            self._silent_since, self._silent_count = sent, 0
        self._silent_since = min(self._silent_since, sent)
        self._silent_count += 1
        silent_for = time.monotonic() - self._silent_since
        at_once = why in ("refused", "page") or (not self._answered and why != "unavailable")
        if self._silent_count < self.policy.down_after or not (at_once or silent_for >= self.policy.down_after_s):
            return
        self.stats.failures[error.kind] += 1
        raise EndpointDown(self._down_message(why, error, silent_for)) from None

    def _down_message(self, why: str, error: BackendError, silent_for: float) -> str:
        """Which endpoint is down, how it failed and what to check."""
        name, count, wait = self.name, self._silent_count, self.policy.down_after_s
        since = f", {silent_for:.0f} s after it had answered" if self._answered else " since the run started"
        waits = f"(a run waits {wait:g} s for it: retry.down_after_s in the config)"
        if why == "refused":
            status = error.__cause__.status if isinstance(error.__cause__, HTTPStatusError) else 0
            return (f"{name}: the server refused {count} requests in a row ({error}); check "
                    f"{REFUSAL_HINTS.get(status, 'the API key, the model name and the base URL')}")
        if why == "page":
            return (f"{name}: the server answered {count} requests in a row with a web page, not the API's JSON "
                    f"({error}); check that the base URL is the API's, not a web UI or proxy page (an "
                    "OpenAI-compatible API usually ends in /v1)")
        if why == "unavailable":
            after = " after it had answered" if self._answered else ""
            return (f"{name}: endpoint unavailable for {silent_for:.0f} s{after} ({error}); check that the server "
                    f"is running and has loaded its model, and that any proxy in front of it reaches it {waits}")
        if why == "timeout":
            return (f"{name}: no answer to {count} requests in a row{since} ({error}); the server takes "
                    "requests but answers none: check that it works (its log), or raise the role's timeout_s")
        if why == "no_reply":
            return (f"{name}: the server closed {count} requests in a row without a reply{since} ({error}); "
                    "check its log (a server still starting behind a port forward or proxy, a crashing worker)")
        if not self._answered:
            return (f"{name}: endpoint unreachable ({error}); check that the server, and any proxy in front "
                    "of it, is running and the base URL is right")
        return (f"{name}: endpoint unreachable for {silent_for:.0f} s after it had answered ({error}); check "
                f"that the server, and any proxy in front of it, is running {waits}")

    async def _timed(self, messages: list[Message], kwargs: dict[str, Any]) -> Completion:
        self.stats.in_flight += 1
        try:
            if self.policy.timeout_s is None:
                return await self.backend.complete(messages, **kwargs)
            async with asyncio.timeout(self.policy.timeout_s):  # unlike wait_for, no extra task per call
                return await self.backend.complete(messages, **kwargs)
        except TimeoutError:
            raise BackendError(f"no answer within {self.policy.timeout_s:g} s", retryable=True, kind="timeout") from None
        finally:
            self.stats.in_flight -= 1

    @property
    def model_identity(self) -> str:
        """The wrapped backend's (see :func:`reallod.llm.endpoints.model_id`)."""
        return self.model_id

    async def aclose(self) -> None:
        await self.backend.aclose()

