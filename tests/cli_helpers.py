"""Running the ``reallod`` command in-process, the way every CLI test does."""

from __future__ import annotations

import os
from collections.abc import Iterable

from reallod.cli import main


def run_cli(args: Iterable[str | os.PathLike], capsys) -> tuple[int, str, str]:
    """Run ``reallod ARGS...`` (paths and numbers are turned into words) through :func:`reallod.cli.main`,
    as the console script does; returns (exit code, stdout, stderr), the code 0 when it just returned."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    out, err = capsys.readouterr()
    return code, out, err


# What torch says when a CUDA allocation fails (torch 2.x), its allocator advice included.
CUDA_OOM_TEXT = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which "
                 "1.25 GiB is free. Including non-PyTorch memory, this process has 77.84 GiB memory in use. Of the "
                 "allocated memory 76.02 GiB is allocated by PyTorch, and 1.12 GiB is reserved by PyTorch but "
                 "unallocated. If reserved but unallocated memory is large try setting "
                 "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
                 "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
# What a run says of it: the first three sentences
CUDA_OOM_SAID = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which "
                 "1.25 GiB is free")


def cuda_out_of_memory():
    """The error a CUDA allocation raises when the GPU is full (a test double: no GPU needed)."""
    import torch

    return torch.OutOfMemoryError(CUDA_OOM_TEXT)
