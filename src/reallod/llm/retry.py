"""Retries with backoff, per-request timeouts, per-endpoint limits and the response cache, around any
backend. The backend itself stays simple: it makes one call and raises :class:`BackendError`.

Connection errors are not charged to a task: they are retried (with backoff) until the endpoint answers
again or ``down_after`` of them in a row say it is down, which stops the whole run (:class:`EndpointDown`)
instead of failing every task on the way and recording those failures as if they were the tasks' own.
Only while the endpoint answers nobody, though: a request that loses its connection again after others
were answered in between is charged like any failed attempt.
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
from reallod.llm.cache import ResponseCache, digests_known, occurrence_key, request_key
from reallod.llm.policy import RetryPolicy, backoff_delay


class EndpointDown(ConfigError):
    """An endpoint refused every connection: the run stops cleanly instead of failing every task.

    A :class:`ConfigError` so that the workflow treats it as a run-level problem, never a task's.
    """


@dataclass
class CallStats:
    calls: int = 0  # requests answered by the backend (not the cache)
    cache_hits: int = 0
    retries: Counter = field(default_factory=Counter)  # requests sent again, by error kind
    failures: Counter = field(default_factory=Counter)  # calls given up, by error kind
    in_flight: int = 0


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
        self._consecutive_connection_failures = 0

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
            done.set_result(None)
            return completion
        except BackendError as e:
            done.set_result(e)  # the same request fails the same way for those waiting
            raise
        finally:
            done.cancel()  # ended otherwise (cancelled, stopped): those waiting ask for themselves
            del cache.in_flight[key]

    async def _call(self, messages: list[Message], kwargs: dict[str, Any]) -> Completion:
        attempt = 0  # attempts charged to the call (connection failures are not)
        tries = 0
        answered_then: int | None = None  # requests answered at this one's last connection failure
        while True:
            tries += 1
            try:
                start = time.perf_counter()
                if self.limit is not None:
                    async with self.limit:
                        completion = await self._timed(messages, kwargs)
                else:
                    completion = await self._timed(messages, kwargs)
                completion.latency_s = completion.latency_s or time.perf_counter() - start
                completion.meta["attempts"] = tries
                self.stats.calls += 1
                self._consecutive_connection_failures = 0
                return completion
            except BackendError as e:
                others_answered = answered_then is not None and self.stats.calls > answered_then
                if e.kind == "connection":
                    answered_then = self.stats.calls
                if e.kind == "connection" and not others_answered:
                    self._consecutive_connection_failures += 1
                    if self._consecutive_connection_failures >= self.policy.down_after:
                        self.stats.failures[e.kind] += 1
                        raise EndpointDown(f"{self.name}: endpoint unreachable ({e}); "
                                           "check that the server is running and the base URL is right") from None
                    # not charged to the task: either the endpoint comes back or the run stops
                    self.stats.retries[e.kind] += 1
                    await asyncio.sleep(backoff_delay(min(tries, 6), self.policy, self._rng, e.retry_after))
                    continue
                # charged: the endpoint answered, if badly, or answered others since this request last
                # lost its connection (a request that crashes a server worker must not loop for ever)
                attempt += 1
                self._consecutive_connection_failures = 0
                if not e.retryable or attempt >= self.policy.max_attempts:
                    self.stats.failures[e.kind] += 1
                    raise BackendError(f"{e} (after {attempt} attempt{'s' * (attempt > 1)})",
                                       retryable=False, kind=e.kind) from None
                self.stats.retries[e.kind] += 1
                await asyncio.sleep(backoff_delay(attempt, self.policy, self._rng, e.retry_after))

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

