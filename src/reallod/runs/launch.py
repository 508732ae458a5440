"""Where this process stands among the processes ``torchrun`` or ``accelerate launch`` started.

Both launchers describe a process by ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment;
a job that needs no collective (``reallod detect``) reads them alone, one that gathers (``reallod
eval``) also joins a process group. Started on its own, a process is rank 0 of 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from reallod.errors import ConfigError
from reallod.runs.shard import in_shard


@dataclass(frozen=True)
class Place:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's number on its machine: its GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def takes(self, name: str) -> bool:
        """Whether the item ``name`` is this process's: its name's hash picks the rank, so every process
        agrees however it came by the list."""
        return self.world_size == 1 or in_shard(name, (self.rank + 1, self.world_size))


def _number(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "") or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} in the environment: expected a whole number (torchrun and "
                          "accelerate launch set it)") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} in the environment: expected 0 or more")
    return value


def launch_place(env: Mapping[str, str] | None = None) -> Place:
    """This process's place, from the launcher's environment (rank 0 of 1 without one)."""
    env = os.environ if env is None else env
    world = max(1, _number(env, "WORLD_SIZE", 1))
    if world == 1:
        return Place()
    rank = _number(env, "RANK", 0)
    if rank >= world:
        raise ConfigError(f"RANK={rank} in the environment is not below WORLD_SIZE={world}")
    return Place(rank, world, _number(env, "LOCAL_RANK", rank))


def process_device(device: str | None, local_rank: int, world_size: int) -> str | None:
    """Each process of several on its own GPU (``cuda:LOCAL_RANK``) unless a device index was given."""
    if world_size == 1 or device not in (None, "", "auto", "cuda"):
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return device if device not in ("", "auto") else None
