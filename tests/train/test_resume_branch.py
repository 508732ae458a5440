"""``--resume OLDER_CKPT``: the checkpoints after it, of the abandoned run, move to ``checkpoints.dropped/``.
Left in place they took over: a later plain ``--resume`` went back to the abandoned run's newest, the
Ctrl-C message named it, and ``keep_last`` counted them as the newest, deleting the resumed run's own
interval checkpoint as soon as it was written."""

from __future__ import annotations

import csv
import json

from reallod.train import checkpoint as C
from reallod.train.loop import TrainInterrupted, train

from .helpers import quiet, tiny_config


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_resume_from_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, shapes):
    run = tmp_path / "run"
    train(tiny_config(shapes, ["schedule.epochs=2", "checkpoint.every_steps=3", "checkpoint.keep_last=2"]), run,
          echo=quiet)
    assert [p.name for p in C.list_checkpoints(run)] == [C.checkpoint_name(s) for s in (3, 6, 9, 12)]
    messages: list[str] = []
    older = run / "checkpoints" / C.checkpoint_name(3)
    train(tiny_config(shapes, ["schedule.epochs=2", "checkpoint.every_steps=2", "checkpoint.keep_last=1",
                               "schedule.max_steps=5", "optim.lr=5e-4"]), run, resume=older, echo=messages.append)
    # this run's own: the interval one at 4 is the newest kept (3 pruned by keep_last=1), the final one at 5
    assert [p.name for p in C.list_checkpoints(run)] == [C.checkpoint_name(4), C.checkpoint_name(5)]
    dropped = run / C.DROPPED
    assert _names(dropped) == [C.checkpoint_name(s) for s in (6, 9, 12)]
    assert (f"checkpoint(s) after step 3, where this run starts (those steps are done again), moved to {dropped}: "
            "ckpt-00000006, ckpt-00000009, ckpt-00000012") in messages
    assert "checkpoint at step 5" in str(TrainInterrupted.at(7, run, None))
    messages.clear()
    train(tiny_config(shapes, ["schedule.epochs=2", "schedule.max_steps=6"]), run, resume=True, echo=messages.append)
    assert any(m.startswith(f"resumed from {run / 'checkpoints' / C.checkpoint_name(5)} (step 5,") for m in messages)
    with open(run / "log.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_dropped_twice_keeps_both(tmp_path):
    for step in (2, 4):
        folder = C.checkpoint_dir(tmp_path) / C.checkpoint_name(step)
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"step": step, "epoch": 0, "batch_in_epoch": step}))
    (tmp_path / C.DROPPED / C.checkpoint_name(4)).mkdir(parents=True)  # an earlier resume's
    moved = C.drop_after(tmp_path, 2)
    assert moved == [tmp_path / C.DROPPED / f"{C.checkpoint_name(4)}-2"]
    assert _names(tmp_path / C.DROPPED) == [C.checkpoint_name(4), f"{C.checkpoint_name(4)}-2"]
    assert [p.name for p in C.list_checkpoints(tmp_path)] == [C.checkpoint_name(2)]
