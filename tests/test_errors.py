"""An accelerator out of memory is told apart from other errors and said in its own first words."""

from __future__ import annotations

import pytest

from reallod.errors import out_of_memory, smaller_batches
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
