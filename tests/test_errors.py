"""An accelerator out of memory is told apart from other errors and said in its own first words."""

from __future__ import annotations

import pytest

from reallod.errors import out_of_memory, release_after_oom, smaller_batches
from tests.cli_helpers import CUDA_OOM_SAID, cuda_out_of_memory


def test_torchs_out_of_memory_error_is_said_without_its_allocator_advice() -> None:
    assert out_of_memory(cuda_out_of_memory()) == CUDA_OOM_SAID


def test_a_backend_library_s_runtime_error_for_it_counts_too() -> None:
    mps = RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB, max "
                       "allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool. Use "
                       "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations")
    assert out_of_memory(mps) == ("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB, "
                                  "max allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool")


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: an illegal memory access was encountered"),
                                   ValueError("out of memory"), MemoryError()])
def test_other_errors_are_not_taken_for_it(error: BaseException) -> None:
    assert out_of_memory(error) is None


@pytest.mark.parametrize(("batch", "accum", "smaller"), [(8, 1, (4, 2)), (6, 2, (3, 4)), (3, 1, (1, 3)),
                                                          (1, 4, None)])
def test_the_same_examples_per_step_in_smaller_batches(batch: int, accum: int, smaller) -> None:
    assert smaller_batches(batch, accum) == smaller


def test_what_an_out_of_memory_errors_frames_hold_is_freed_while_the_error_is_kept() -> None:
    """The error's traceback keeps the failed call's tensors (its activations on a GPU) for as long as it,
    or an error raised from it, is referenced: a long-lived process (the demo) held them."""
    import weakref

    import torch

    held: list[weakref.ref] = []

    def forward() -> None:
        activations = torch.zeros(1000)
        held.append(weakref.ref(activations))
        raise cuda_out_of_memory()

    try:
        forward()
    except torch.OutOfMemoryError as e:
        kept = e
        assert held[0]() is not None  # what it held before
        release_after_oom(e)
    assert held[0]() is None and out_of_memory(kept) == CUDA_OOM_SAID
