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

# The tensor of the latest reduction, kept: were its last reference gloo's worker thread's, the thread would
# take the GIL to free it, and with torch 2.6-2.7 destroying the process group (as a refused run does)
# joins that thread holding the GIL: the process hung until torchrun killed it, its error unsaid.
_last_total: list[torch.Tensor] = []


class PeerFailed(ReallodError):
    """Another process of the run failed (its own error says why); this one stops with it."""

    exit_code = 1


def settle(accelerator: Any, error: BaseException | None, what: str) -> None:
    """A synchronisation of all processes that also shares whether ``what`` failed in any: raises
    ``error`` in the process it happened in, :class:`PeerFailed` in the others; returns when none failed."""
    failed = int(error is not None)
    if accelerator.num_processes > 1:
        total = accelerator.reduce(torch.tensor([failed], device=accelerator.device), reduction="sum")
        _last_total[:] = [total]
        failed = int(total.item())
    if error is not None:
        raise error
    if failed:
        raise PeerFailed(f"{what} failed in {failed} other process(es) of this run (see its error above): this one "
                         "stops with it")
