"""Retries with backoff, per-request timeouts, per-endpoint limits and the response cache, around any
backend. The backend itself stays simple: it makes one call and raises :class:`BackendError`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from reallod.agent.backends.base import Backend, BackendError, Completion, Message
from reallod.agent.cache import ResponseCache, occurrence_key, request_key
from reallod.errors import ReallodError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_s: float = 120.0
    down_after: int = 8  # consecutive connection failures across tasks before the endpoint counts as down


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff after failed attempt ``attempt`` (1-based); never shorter
    than the server's ``Retry-After``."""
    cap = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    delay = rng.uniform(0, cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_delay_s * 4))
    return delay


class EndpointDown(ReallodError):
    """An endpoint refused every connection: the run stops cleanly instead of failing every task."""


@dataclass
class CallStats:
    calls: int = 0
    cache_hits: int = 0
    retries: Counter = field(default_factory=Counter)  # by error kind
    failures: Counter = field(default_factory=Counter)
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
        key = occurrence_key(request_key(self.model_id, messages, kwargs)) if self.cache else None
        if key and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return hit
        completion = await self._call(messages, kwargs)
        if key:
            self.cache.put(key, completion)
        return completion

    async def _call(self, messages: list[Message], kwargs: dict[str, Any]) -> Completion:
        attempt = 0
        while True:
            attempt += 1
            try:
                start = time.perf_counter()
                if self.limit is not None:
                    async with self.limit:
                        completion = await self._timed(messages, kwargs)
                else:
                    completion = await self._timed(messages, kwargs)
                completion.latency_s = completion.latency_s or time.perf_counter() - start
                completion.meta["attempts"] = attempt
                self.stats.calls += 1
                self._consecutive_connection_failures = 0
                return completion
            except BackendError as e:
                self.stats.retries[e.kind] += 1
                if e.kind == "connection":
                    self._consecutive_connection_failures += 1
                    if self._consecutive_connection_failures >= self.policy.down_after:
                        raise EndpointDown(f"{self.name}: endpoint unreachable ({e}); "
                                           "check that the server is running and the base URL is right") from None
                if not e.retryable or attempt >= self.policy.max_attempts:
                    self.stats.failures[e.kind] += 1
                    raise BackendError(f"{e} (after {attempt} attempt{'s' * (attempt > 1)})",
                                       retryable=False, kind=e.kind) from None
                await asyncio.sleep(backoff_delay(attempt, self.policy, self._rng, e.retry_after))

    async def _timed(self, messages: list[Message], kwargs: dict[str, Any]) -> Completion:
        self.stats.in_flight += 1
        try:
            return await asyncio.wait_for(self.backend.complete(messages, **kwargs), self.policy.timeout_s)
        except TimeoutError:
            raise BackendError(f"no answer within {self.policy.timeout_s:g} s", retryable=True, kind="timeout") from None
        finally:
            self.stats.in_flight -= 1

    async def aclose(self) -> None:
        await self.backend.aclose()
