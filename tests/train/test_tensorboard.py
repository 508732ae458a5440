"""TensorBoard and the CSV logs on resume: the steps after the checkpoint are done again, and each step
shows once, with the resumed run's value (``MetricsLog.drop_after`` opens the writer with ``purge_step``);
so too when a run killed before its first checkpoint is started again.

Needs the ``tensorboard`` package (optional for users, in the dev extra): skipped without it.
"""

from __future__ import annotations

import csv

import pytest

from reallod.train import loop
from reallod.train.loop import TrainInterrupted, train

from .helpers import interrupt_at, quiet, tiny_config

pytest.importorskip("tensorboard")

OPTS = ["log.tensorboard=true", "eval.every_steps=1", "eval.every_epochs=0", "checkpoint.every_steps=2"]


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar, as TensorBoard shows them (its own reader, purging as it does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_resumed_run_shows_each_step_once_with_its_own_values(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(loop, "training_loss", interrupt_at(loop.training_loss, 4))
        with pytest.raises(TrainInterrupted, match="checkpoint at step 2"):  # steps 1-3 logged and evaluated
            train(tiny_config(tmp_path / "shapes", OPTS), run, echo=quiet)
    before = _scalars(run / "tensorboard")
    assert [s for s, _ in before["train/loss"]] == [1, 2, 3]
    # another learning rate: the redone step 3 logs another one than the killed run's
    train(tiny_config(tmp_path / "shapes", [*OPTS, "schedule.max_steps=4", "optim.lr=3e-3"]), run, resume=True,
          echo=quiet)
    shown = _scalars(run / "tensorboard")
    for table, csv_name in (("train", "log.csv"), ("eval", "eval.csv")):
        with open(run / csv_name, newline="") as f:
            rows = {int(r["step"]): r for r in csv.DictReader(f)}
        assert list(rows) == [1, 2, 3, 4]
        tags = [t for t in shown if t.startswith(f"{table}/")]
        assert f"{table}/loss" in tags or table == "eval"
        for tag in tags:
            assert [s for s, _ in shown[tag]] == [1, 2, 3, 4], tag  # each step once
            column = tag.split("/", 1)[1]
            for step, value in shown[tag]:
                assert value == pytest.approx(float(rows[step][column]), rel=1e-3, abs=1e-6), (tag, step)
    assert shown["train/lr"][2][1] == pytest.approx(3 * before["train/lr"][2][1])  # step 3 is the resumed run's


def test_a_run_started_again_after_one_killed_before_any_checkpoint_logs_each_step_once(tmp_path, monkeypatch):
    """No checkpoint: the rerun is a new start (no --resume needed), and the killed run's rows went double."""
    run = tmp_path / "run"
    opts = [*OPTS, "checkpoint.every_steps=10", "schedule.max_steps=3"]
    with monkeypatch.context() as m:
        m.setattr(loop, "training_loss", interrupt_at(loop.training_loss, 3))
        with pytest.raises(TrainInterrupted):
            train(tiny_config(tmp_path / "shapes", opts), run, echo=quiet)
    train(tiny_config(tmp_path / "shapes", opts), run, echo=quiet)
    for csv_name in ("log.csv", "eval.csv"):
        with open(run / csv_name, newline="") as f:
            assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3], csv_name
    assert [s for s, _ in _scalars(run / "tensorboard")["train/loss"]] == [1, 2, 3]
