"""A GPU that runs out of memory stops training with one line (exit 2) that says what ran out, where, what
is saved and the command that goes on in less memory: the same images per step in smaller batches,
accumulated, which a resume accepts."""

from __future__ import annotations

import csv
import re

import pytest

from reallod.errors import OutOfMemory
from reallod.train import checkpoint as C
from reallod.train import evaluate, loop
from reallod.train.loop import train
from tests.cli_helpers import CUDA_OOM_SAID, cuda_out_of_memory

from .helpers import interrupt_at, quiet, tiny_config

# batches of 4 (3 steps an epoch); images of 128 pixels, large enough for a batch of one (the coarsest
# feature level is then 2×2, and GroupNorm needs more than one value per group)
OPTS = ["schedule.max_steps=4", "checkpoint.every_steps=2", "train.batch_size=4", "augment.scales=[128]",
        "augment.max_size=160", "augment.crop_prob=0"]


def test_a_full_gpu_names_the_batch_size_and_the_command_that_goes_on(tmp_path, shapes, monkeypatch):
    whole = train(tiny_config(shapes, OPTS), tmp_path / "whole", echo=quiet)
    work = tmp_path / "run"
    monkeypatch.setattr(loop, "training_loss", interrupt_at(loop.training_loss, 3, cuda_out_of_memory()))
    command = f"reallod train tiny.yaml --work-dir {work} --resume"
    with pytest.raises(OutOfMemory) as e:
        train(tiny_config(shapes, OPTS), work, echo=quiet, resume_command=command)
    ckpt = C.latest_checkpoint(work)
    assert str(e.value) == (f"{CUDA_OOM_SAID} (at step 2, train.batch_size 4 per process); checkpoint at step 2 in "
                            f"{work} ({ckpt.name}); the same images per step fit in less memory as smaller batches "
                            f"accumulated: `{command} --cfg-options train.batch_size=2 train.grad_accum=2`")
    monkeypatch.undo()
    given = str(e.value).rsplit("--cfg-options ", 1)[1].rstrip("`").split()
    resumed = train(tiny_config(shapes, OPTS + given), work, resume=True, echo=quiet)
    assert resumed.step == whole.step == 4
    with open(work / "log.csv", newline="") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2", "3", "4"]


def test_without_a_command_line_the_library_call_is_named(tmp_path, shapes, monkeypatch):
    monkeypatch.setattr(loop, "training_loss", interrupt_at(loop.training_loss, 1, cuda_out_of_memory()))
    with pytest.raises(OutOfMemory, match=rf"\(at step 0, train.batch_size 4 per process\); no checkpoint in "
                                          rf"{re.escape(str(tmp_path))} yet; .*: `train\(\.\.\.\) with "
                                          r"train.batch_size=2, train.grad_accum=2 and resume=True`"):
        train(tiny_config(shapes, OPTS), tmp_path, echo=quiet)


def test_a_batch_of_one_that_does_not_fit_points_at_the_image_size(tmp_path, shapes, monkeypatch):
    monkeypatch.setattr(loop, "training_loss", interrupt_at(loop.training_loss, 1, cuda_out_of_memory()))
    with pytest.raises(OutOfMemory, match=r"one image per batch does not fit: lower augment.scales and "
                                          r"augment.max_size, train with --amp, or use a GPU with more memory"):
        train(tiny_config(shapes, [*OPTS, "train.batch_size=1"]), tmp_path, echo=quiet)


def test_a_full_gpu_while_evaluating_names_the_evaluation_batch_size(tmp_path, shapes, monkeypatch):
    monkeypatch.setattr(evaluate, "detect_queries", interrupt_at(evaluate.detect_queries, 1, cuda_out_of_memory()))
    with pytest.raises(OutOfMemory) as e:
        train(tiny_config(shapes, ["schedule.epochs=1", "eval.every_epochs=1"]), tmp_path, echo=quiet)
    assert str(e.value) == (f"{CUDA_OOM_SAID} (evaluating step 6 with eval.batch_size 8); resume with a smaller one "
                            "(--cfg-options eval.batch_size=N): the evaluation of step 6 is done again")


def test_another_runtime_error_is_not_taken_for_a_full_gpu(tmp_path, shapes, monkeypatch):
    monkeypatch.setattr(loop, "training_loss", interrupt_at(loop.training_loss, 1, RuntimeError("CUDA error: an "
                                                                                                "illegal memory access")))
    with pytest.raises(RuntimeError, match="illegal memory access") as e:
        train(tiny_config(shapes, OPTS), tmp_path, echo=quiet)
    assert not isinstance(e.value, OutOfMemory)
