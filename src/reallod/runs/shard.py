"""Deterministic sharding: shard K of N always holds the same tasks, whatever the machine or order."""

from __future__ import annotations

import hashlib

from reallod.errors import ConfigError


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"2/4"`` → (2, 4): the second of four shards (K counts from 1)."""
    if spec is None:
        return None
    try:
        k_str, n_str = spec.split("/")
        k, n = int(k_str), int(n_str)
    except ValueError:
        raise ConfigError(f"--shard {spec!r}: expected K/N, e.g. 1/4") from None
    if n < 1:
        raise ConfigError(f"--shard {spec!r}: N, the number of shards, must be at least 1")
    if not 1 <= k <= n:
        raise ConfigError(f"--shard {spec!r}: K must be between 1 and N (shards are numbered 1..N)")
    return k, n


def shard_of(task_id: str, n: int) -> int:
    """The shard (1..n) a task belongs to: a stable hash of its id, so shards are balanced and fixed."""
    digest = hashlib.blake2b(task_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n + 1


def in_shard(task_id: str, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of(task_id, shard[1]) == shard[0]
