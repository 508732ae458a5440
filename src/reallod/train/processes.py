"""One process's failure stops every process of a multi-process run at the same point.

A part only some processes do (the main process writes a checkpoint or ``best/``, each writes its RNG
state) ends with :func:`settle` instead of ``wait_for_everyone``: every process learns whether any
failed, the one that did raises its own error, and the others stop with :class:`PeerFailed` naming
it, rather than waiting at the next synchronisation until the launcher kills them, or dying there
with an 'unexpected RuntimeError: Connection closed by peer'.
"""

from __future__ import annotations

from typing import Any

import torch

from reallod.errors import ReallodError


class PeerFailed(ReallodError):
    """Another process of the run failed (its own error says why); this one stops with it."""

    exit_code = 1


def settle(accelerator: Any, error: BaseException | None, what: str) -> None:
    """A synchronisation of all processes that also shares whether ``what`` failed in any: raises
    ``error`` in the process it happened in, :class:`PeerFailed` in the others; returns when none failed."""
    failed = int(error is not None)
    if accelerator.num_processes > 1:
        flag = torch.tensor([failed], device=accelerator.device)
        failed = int(accelerator.reduce(flag, reduction="sum").item())
    if error is not None:
        raise error
    if failed:
        raise PeerFailed(f"{what} failed in {failed} other process(es) of this run (see its error above): this one "
                         "stops with it")
