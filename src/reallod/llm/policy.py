"""How often one model call is tried and how long to wait between tries: the config's ``retry:``
section. Kept apart from the resilient wrapper so that code which only carries the policy (roles,
configs) does not load the response cache."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often one call is tried (the config's ``retry:`` section); backend errors and unusable
    replies both count against ``max_attempts``."""

    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    timeout_s: float | None = 120.0  # None: no per-request timeout (an in-process model)
    down_after: int = 8  # requests in a row that found the endpoint out before it can count as down
    # ... and, once it has answered in this run, for how long it answered nobody: a restart or a blip
    # of a few seconds must not stop a run, a server gone for good must not fail every task
    down_after_s: float = 90.0
    max_retry_after_s: float = 600.0  # a longer Retry-After (a spent quota) is waited for this long


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff after failed attempt ``attempt`` (1-based); never shorter
    than the server's ``Retry-After``, up to ``max_retry_after_s``."""
    cap = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    delay = rng.uniform(0, cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after_s))
    return delay
