"""The learning rate drops where a milestone epoch begins, also after a resume that splits its steps otherwise
(another batch size, gradient accumulation or process count). The milestones were turned into steps with the
resumed run's steps per epoch while its step count went on from the checkpoint's: resumed with 4 images a batch
instead of 2, the drop came an epoch early."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from reallod.train.loop import train
from reallod.train.optim import milestone_steps

from .helpers import quiet, tiny_config

RUN = ["schedule.epochs=2", "schedule.milestones=[1]"]  # 12 images, 2 a batch: 6 steps an epoch, warm-up 2 steps


def _lr_by_epoch(work_dir: Path) -> dict[int, set[float]]:
    """The rates of the steps after the warm-up, by epoch (log.csv)."""
    with open(work_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[int, set[float]] = {}
    for row in rows:
        if int(row["step"]) > 2:
            out.setdefault(int(row["epoch"]), set()).add(round(float(row["lr"]), 12))
    return out


@pytest.mark.parametrize(("batch_size", "accum"), [(4, 1), (2, 2)])
def test_a_resume_with_another_split_drops_the_rate_at_the_same_epoch(tmp_path, shapes, batch_size, accum):
    train(tiny_config(shapes, RUN), tmp_path / "whole", echo=quiet)
    train(tiny_config(shapes, [*RUN, "schedule.max_steps=4"]), tmp_path / "resumed", echo=quiet)  # 8 of 12 images
    train(tiny_config(shapes, [*RUN, f"train.batch_size={batch_size}", f"train.grad_accum={accum}"]),
          tmp_path / "resumed", resume=True, echo=quiet)
    whole = _lr_by_epoch(tmp_path / "whole")
    assert whole == {0: {1e-3}, 1: {1e-4}}
    assert _lr_by_epoch(tmp_path / "resumed") == whole


def test_milestone_steps_count_on_from_where_a_resume_starts():
    assert milestone_steps([6, 8], 100) == [600, 800]
    # the same split: the same steps, from any checkpoint
    assert milestone_steps([6, 8], 100, step=250, epoch=2, steps_left=50) == [600, 800]
    # 4 steps of 2 images, then 4 images a step: 1 step left of epoch 0, then 3 an epoch
    assert milestone_steps([1, 2], 3, step=4, epoch=0, steps_left=1) == [5, 8]
    # resumed again later at that split: the same steps; a milestone already passed stays passed
    assert milestone_steps([1, 2], 3, step=6, epoch=1, steps_left=2) == [5, 8]
