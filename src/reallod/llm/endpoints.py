"""Puts every backend of a run behind the run's safety net: response cache, per-endpoint request limit,
per-request timeout, retries with backoff, and down-endpoint detection (:class:`ResilientBackend`).

Names (roles) that share a backend keep sharing one wrapper, and wrappers that talk to the same endpoint
(base URL) share one request limit, so ``endpoint_limit`` bounds what one server sees, whatever the
number of roles or tasks in flight.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import orjson

from reallod.llm.backends.base import Backend
from reallod.llm.cache import ResponseCache
from reallod.llm.policy import RetryPolicy
from reallod.llm.retry import CallStats, ResilientBackend


@dataclass
class Endpoints:
    """The wrappers of one run, for progress (requests in flight) and the report (retries, hits)."""

    wrappers: list[ResilientBackend] = field(default_factory=list)

    def in_flight(self) -> int:
        return sum(w.stats.in_flight for w in self.wrappers)

    def totals(self) -> CallStats:
        total = CallStats(retries=Counter(), failures=Counter())
        for w in self.wrappers:
            total.calls += w.stats.calls
            total.cache_hits += w.stats.cache_hits
            total.retries.update(w.stats.retries)
            total.failures.update(w.stats.failures)
        return total


def endpoint_of(backend: Backend) -> str:
    """What identifies the server a backend talks to (its base URL; an in-process model is its own)."""
    return str(getattr(backend, "base_url", None) or backend.name)


def model_id(backend: Backend) -> str:
    """The cache's idea of "the same model": backend kind, model and sampling parameters, not the URL
    (a server moved to another port still answers the same); journals fingerprint it too.

    A backend may name itself (``model_identity``): an in-process model is named by what it is (a
    packaged GGUF by package and version, a local file by name, size and content, a hub id by the id),
    not by the path it was loaded from, so moving ``$REALLOD_CACHE`` keeps journals resumable and cached
    answers valid. (This used to be the backend's name, path included: the response cache entries of
    in-process models made before that change are not found again, once; openai backends are keyed as
    they always were.)"""
    identity = getattr(backend, "model_identity", None)
    if isinstance(identity, str):
        return identity
    model = getattr(backend, "model", None)
    if model is None:
        return backend.name
    kind = backend.name.split(":", 1)[0]
    params = orjson.dumps(getattr(backend, "params", {}) or {}, option=orjson.OPT_SORT_KEYS).decode()
    return f"{kind}:{model}:{params}:{getattr(backend, 'image_format', '')}"


def harden_backends(backends: Mapping[str, Backend], *, retry: RetryPolicy, cache: ResponseCache | None = None,
           endpoint_limit: int | None = None, seed: int | None = None,
           down_after: int = 8) -> tuple[dict[str, Backend], Endpoints]:
    """The same named backends, each distinct one wrapped once (names that share a backend share its
    wrapper; one already wrapped is kept); the returned :class:`Endpoints` sees their stats. Each
    wrapper takes the ``retry`` settings with the backend's own timeout (none for in-process models)."""
    wrapped: dict[int, ResilientBackend] = {}
    limits: dict[str, asyncio.Semaphore] = {}
    endpoints = Endpoints()
    out: dict[str, Backend] = {}
    for name, backend in backends.items():
        if isinstance(backend, ResilientBackend):  # already hardened by the caller
            out[name] = backend
            continue
        if id(backend) not in wrapped:
            limit = None
            if endpoint_limit is not None:
                limit = limits.setdefault(endpoint_of(backend), asyncio.Semaphore(endpoint_limit))
            policy = replace(retry, timeout_s=getattr(backend, "timeout_s", None), down_after=down_after)
            w = ResilientBackend(backend, policy=policy, cache=cache, limit=limit,
                                 seed=None if seed is None else seed + len(wrapped), model_id=model_id(backend))
            wrapped[id(backend)] = w
            endpoints.wrappers.append(w)
        out[name] = wrapped[id(backend)]
    return out, endpoints
