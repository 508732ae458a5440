"""Puts every role's backend behind the run's safety net: response cache, per-endpoint request limit,
per-request timeout, retries with backoff, and down-endpoint detection (:class:`ResilientBackend`).

Roles that share a backend keep sharing one wrapper, and wrappers that talk to the same endpoint
(base URL) share one request limit, so ``endpoint_limit`` bounds what one server sees, whatever the
number of roles or tasks in flight.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from reallod.agent.backends.base import Backend
from reallod.agent.cache import ResponseCache
from reallod.agent.retry import CallStats, ResilientBackend, RetryPolicy
from reallod.agent.roles import ROLE_NAMES, Roles


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
    (a server moved to another port still answers the same)."""
    model = getattr(backend, "model", None)
    if model is None:
        return backend.name
    kind = backend.name.split(":", 1)[0]
    params = orjson.dumps(getattr(backend, "params", {}) or {}, option=orjson.OPT_SORT_KEYS).decode()
    return f"{kind}:{model}:{params}:{getattr(backend, 'image_format', '')}"


def policy_for(backend: Backend, roles: Roles, *, down_after: int = 8) -> RetryPolicy:
    """The config's retry settings, with the backend's own timeout (none for in-process models)."""
    return replace(roles.retry, timeout_s=getattr(backend, "timeout_s", None), down_after=down_after)


def harden(roles: Roles, *, cache: ResponseCache | None = None, endpoint_limit: int | None = None,
           seed: int | None = None, down_after: int = 8) -> tuple[Roles, Endpoints]:
    """The same roles, each backend wrapped once; the returned :class:`Endpoints` sees their stats."""
    wrapped: dict[int, ResilientBackend] = {}
    limits: dict[str, asyncio.Semaphore] = {}
    endpoints = Endpoints()
    new: dict[str, Any] = {}
    for name in ROLE_NAMES:
        role = roles.get(name)
        if role is None:
            continue
        backend = role.backend
        if isinstance(backend, ResilientBackend):  # already hardened by the caller
            new[name] = role
            continue
        if id(backend) not in wrapped:
            limit = None
            if endpoint_limit is not None:
                limit = limits.setdefault(endpoint_of(backend), asyncio.Semaphore(endpoint_limit))
            w = ResilientBackend(backend, policy=policy_for(backend, roles, down_after=down_after), cache=cache,
                                 limit=limit, seed=None if seed is None else seed + len(wrapped),
                                 model_id=model_id(backend))
            wrapped[id(backend)] = w
            endpoints.wrappers.append(w)
        new[name] = replace(role, backend=wrapped[id(backend)])
    return Roles(**new, retry=roles.retry), endpoints
