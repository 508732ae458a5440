"""Retries with backoff, per-request timeouts, per-endpoint limits and the response cache, around any
backend. The backend itself stays simple: it makes one call and raises :class:`BackendError`.

A request that finds the endpoint out (no connection, or a gateway's 502/503/504: nginx, LiteLLM or a
k8s ingress in front of a server that is gone) is not charged to its task: it is retried (with backoff)
until the endpoint answers again or is down, which stops the whole run (:class:`EndpointDown`) instead
of failing every task on the way and recording those failures as if they were the tasks' own. Down
means ``down_after`` requests in a row found it out and, once it has answered in this run, it answered
nobody for ``down_after_s`` (a server restarting, a blip of a few seconds, must not stop a long run;
one that never answered is a wrong URL or a server not started, said at once). Only while the endpoint
answers nobody, though: a request that finds it out again after a request sent since was answered is
charged like any failed attempt.
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
from reallod.llm.backends.http import HTTPStatusError
from reallod.llm.cache import ResponseCache, digests_known, occurrence_key, request_key
from reallod.llm.policy import RetryPolicy, backoff_delay

GATEWAY_STATUSES = (502, 503, 504)  # a proxy in front of the server says the server is not there


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


def finds_endpoint_out(error: BackendError) -> bool:
    """Whether the error says the endpoint answers nobody, rather than that it answered this request badly."""
    if error.kind == "connection":
        return True
    cause = error.__cause__
    return error.kind == "server" and isinstance(cause, HTTPStatusError) and cause.status in GATEWAY_STATUSES


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
        self._out_since: float | None = None  # when a request first found it out since then
        self._out_count = 0  # requests that found it out since then

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
            completion = cache.put(key, await self._call(messages, kwargs))
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
        attempt = 0  # attempts charged to the call (finding the endpoint out is not)
        tries = 0
        out_at: float | None = None  # when this request last found the endpoint out
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
                out = finds_endpoint_out(e)
                if out and (out_at is None or self._up_at <= out_at):
                    # not charged to the task: either the endpoint comes back or the run stops
                    out_at = time.monotonic()
                    self._found_out(out_at, e)
                    self.stats.retries[e.kind] += 1
                    await asyncio.sleep(backoff_delay(min(tries, 6), self.policy, self._rng, e.retry_after))
                    continue
                # charged: the endpoint answered, if badly, or answered a request sent since this one
                # last found it out (a request that crashes a server worker must not loop for ever)
                if not out and e.kind != "timeout":
                    self._answered_at(sent)
                attempt += 1
                if not e.retryable or attempt >= self.policy.max_attempts:
                    self.stats.failures[e.kind] += 1
                    raise BackendError(f"{e} (after {attempt} attempt{'s' * (attempt > 1)})",
                                       retryable=False, kind=e.kind) from None
                self.stats.retries[e.kind] += 1
                await asyncio.sleep(backoff_delay(attempt, self.policy, self._rng, e.retry_after))

    def _answered_at(self, sent: float) -> None:
        """The endpoint answered a request sent at ``sent``: it was up then."""
        self._answered = True
        self._up_at = max(self._up_at, sent)

    def _found_out(self, now: float, error: BackendError) -> None:
        """Count a request that found the endpoint out; raise :class:`EndpointDown` once it is down."""
        if self._out_since is None or self._up_at > self._out_since:  # it answered since: a new outage
            self._out_since, self._out_count = now, 0
        self._out_count += 1
        out_for = now - self._out_since
        if self._out_count < self.policy.down_after or (self._answered and out_for < self.policy.down_after_s):
            return
        self.stats.failures[error.kind] += 1
        if not self._answered:
            raise EndpointDown(f"{self.name}: endpoint unreachable ({error}); check that the server, and any "
                               "proxy in front of it, is running and the base URL is right") from None
        raise EndpointDown(f"{self.name}: endpoint unreachable for {out_for:.0f} s after it had answered "
                           f"({error}); check that the server, and any proxy in front of it, is running "
                           f"(a run waits {self.policy.down_after_s:g} s for it to come back)") from None

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

