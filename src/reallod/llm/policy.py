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
    down_after: int = 8  # consecutive connection failures across tasks before the endpoint counts as down


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff after failed attempt ``attempt`` (1-based); never shorter
    than the server's ``Retry-After``."""
    cap = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    delay = rng.uniform(0, cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_delay_s * 4))
    return delay
