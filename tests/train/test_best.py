"""best/ on resume: it is the best of the evaluations the resumed run's history has, never a best from the
steps after its checkpoint, which the resumed run does again (and may not reach again).

Here the evaluation runs every step and a checkpoint is written every 2: a run killed after its step-3
evaluation (a new best) resumes from step 2. The score is scripted: each model state, told apart by its
detections, gets the next score of a list the first time it is evaluated, so a step redone to the same
weights scores the same and one redone to other weights (another learning rate) scores anew."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reallod.train import best as B
from reallod.train import checkpoint as C
from reallod.train import evaluate, loop
from reallod.train.loop import TrainInterrupted, train

from .helpers import interrupt_at, quiet, tiny_config

OPTS = ["eval.every_steps=1", "eval.every_epochs=0", "checkpoint.every_steps=2"]


def _scripted(monkeypatch, scores: list[float]) -> None:
    by_state: dict[bytes, float] = {}
    left = iter(scores)

    def pooled_ap(queries, detections):
        state = b"".join(d.scores.tobytes() for d in detections)
        if state not in by_state:
            by_state[state] = next(left)
        value = by_state[state]
        return {"ap": value, "ap50": value, "ap_pos": value, "ap50_pos": value}

    monkeypatch.setattr(evaluate, "pooled_ap", pooled_ap)


def _ctrl_c_at_step(monkeypatch, n: int) -> None:
    """Ctrl-C in the forward pass of step ``n``: after step ``n - 1``'s evaluation, before its checkpoint."""
    monkeypatch.setattr(loop, "training_loss", interrupt_at(loop.training_loss, n))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(("case", "resumed_with", "redone_score", "want_step"), [
    ("same config", [], None, 3),  # step 3 done again to the same weights: the same best, once
    ("redone step 3 scores above step 2", ["optim.lr=3e-3"], 0.5, 3),
    ("redone step 3 scores below step 2", ["optim.lr=3e-3"], 0.1, 2),
    ("stops before step 3", ["schedule.max_steps=2"], None, 2),  # resumed with a shorter schedule: ends at once
])
def test_a_best_from_the_steps_a_resume_does_again_gives_way(tmp_path, shapes, monkeypatch, case, resumed_with,
                                                             redone_score, want_step):
    _scripted(monkeypatch, [0.2, 0.3, 0.9] + ([redone_score] if redone_score is not None else []))
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _ctrl_c_at_step(m, 4)
        with pytest.raises(TrainInterrupted, match="checkpoint at step 2"):
            train(tiny_config(shapes, OPTS), run, echo=quiet)
    killed_best = run / "killed-best"
    shutil.copytree(run / "best", killed_best)
    assert json.loads((killed_best / "best.json").read_text())["step"] == 3
    messages: list[str] = []
    result = train(tiny_config(shapes, [*OPTS, "schedule.max_steps=3", *resumed_with]), run, resume=True,
                   echo=messages.append)

    best = json.loads((run / "best" / "best.json").read_text())
    with open(run / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, result.step + 1))  # each step evaluated once
    top = max(rows, key=lambda r: float(r["ap50"]))  # the first of equal ones, as the run keeps them
    assert best["step"] == int(top["step"]) == result.best["step"] == want_step
    assert best["value"] == pytest.approx(float(top["ap50"]), rel=1e-3)
    # best/ holds that step's weights: the checkpoint written at it, in the resumed run's history
    assert _same_weights(run / "best", run / "checkpoints" / C.checkpoint_name(want_step) / "model")
    assert not (run / B.CHECKPOINTED).exists()
    # the killed run's best is set aside, not lost, and the log says so
    assert _same_weights(run / B.DROPPED, killed_best)
    assert any("best/ held step 3 (ap50 0.9000), after step 2 where this run starts" in m for m in messages)
    if case == "same config":
        assert _same_weights(run / "best", killed_best) and best["value"] == pytest.approx(0.9)


# --- the folders a kill can leave: best/, best.checkpointed/, best.old/ -------------------------------


def _best(work_dir: Path, name: str, step: int, value: float) -> None:
    folder = work_dir / name
    folder.mkdir(parents=True)
    (folder / "best.json").write_text(json.dumps({"metric": "ap50", "value": value, "step": step}))


def _save(work_dir: Path, step: int, value: float, checkpoint_step: int) -> None:
    B.save(work_dir, {"metric": "ap50", "value": value, "step": step}, lambda folder: folder.mkdir(),
           checkpoint_step)


def _step(folder: Path) -> int | None:
    best = B.read(folder)
    return None if best is None else best["step"]


def test_the_best_as_of_the_checkpoint_is_kept_until_the_next_one(tmp_path):
    _save(tmp_path, 2, 0.3, checkpoint_step=2)
    _save(tmp_path, 3, 0.5, checkpoint_step=2)  # no checkpoint covers step 3: step 2's is kept
    assert (_step(tmp_path / "best"), _step(tmp_path / B.CHECKPOINTED)) == (3, 2)
    _save(tmp_path, 4, 0.6, checkpoint_step=2)
    assert (_step(tmp_path / "best"), _step(tmp_path / B.CHECKPOINTED)) == (4, 2)
    assert B.restore(tmp_path, 2, quiet)["step"] == 2  # a resume from step 2
    assert _step(tmp_path / B.DROPPED) == 4 and not (tmp_path / B.CHECKPOINTED).exists()
    _save(tmp_path, 5, 0.7, checkpoint_step=4)
    B.checkpoint_written(tmp_path)  # a checkpoint at step 6 covers best/
    assert _step(tmp_path / "best") == 5 and not (tmp_path / B.CHECKPOINTED).exists()
    assert B.restore(tmp_path, 6, quiet)["step"] == 5


@pytest.mark.parametrize("left", [B.CHECKPOINTED, B.OLD])
def test_a_kill_between_the_two_renames_of_a_new_best_loses_nothing(tmp_path, left):
    """Killed with best/ moved away and the new one not yet in its place: the resume finds the best as of
    its checkpoint where the kill left it (it used to count as no best, and the next evaluation, however
    low, replaced it and deleted it)."""
    _best(tmp_path, left, 2, 0.3)
    _best(tmp_path, "best.new", 3, 0.5)
    assert B.restore(tmp_path, 2, quiet)["step"] == 2
    assert _step(tmp_path / "best") == 2 and not (tmp_path / left).exists()


def test_a_best_up_to_the_start_stays(tmp_path):
    _best(tmp_path, "best", 2, 0.3)
    _best(tmp_path, B.CHECKPOINTED, 1, 0.2)  # a checkpoint written, the kill before it was cleared
    messages: list[str] = []
    assert B.restore(tmp_path, 4, messages.append)["step"] == 2
    assert not messages and not (tmp_path / B.CHECKPOINTED).exists() and not (tmp_path / B.DROPPED).exists()
    assert B.restore(tmp_path / "nothing", 4, messages.append) is None


# --- a resume that changes eval.metric ---------------------------------------------------------------------


def _scripted_metrics(monkeypatch, ap: list[float], ap50_pos: list[float]) -> None:
    """As :func:`_scripted`, each new model state's ap and ap50_pos the next of their lists."""
    by_state: dict[bytes, dict[str, float]] = {}
    left = iter(zip(ap, ap50_pos, strict=True))

    def pooled_ap(queries, detections):
        state = b"".join(d.scores.tobytes() for d in detections)
        if state not in by_state:
            a, p = next(left)
            by_state[state] = {"ap": a, "ap50": a, "ap_pos": a, "ap50_pos": p}
        return by_state[state]

    monkeypatch.setattr(evaluate, "pooled_ap", pooled_ap)


@pytest.mark.parametrize(("case", "ap50_pos", "want_step", "want_value", "said"), [
    # steps 1-4 evaluated by ap (best: step 4, 0.4); step 5, after the resume, scores 0.5 by ap50_pos
    ("at a checkpoint's step", [0.1, 0.9, 0.2, 0.3, 0.5], 2, 0.9, "best/ is the best by ap50_pos in eval.csv, step 2"),
    ("at the old best's step", [0.1, 0.2, 0.3, 0.9, 0.5], 4, 0.9, "its step 4 is also the best by ap50_pos"),
    ("its model in no checkpoint", [0.1, 0.2, 0.9, 0.3, 0.35], 5, 0.35,
     "the model of step 3, the best by ap50_pos in eval.csv, is in no checkpoint: best/ starts afresh"),
])
def test_a_resume_that_changes_the_metric_keeps_the_best_by_the_new_one(tmp_path, shapes, monkeypatch, case,
                                                                       ap50_pos, want_step, want_value, said):
    """The best by ap was compared with ap50_pos scores: 'new best ap50_pos 0.0048 at step 14' although
    step 12 had 0.00495."""
    _scripted_metrics(monkeypatch, [0.1, 0.2, 0.3, 0.4, 0.45], ap50_pos)
    run = tmp_path / "run"
    train(tiny_config(shapes, [*OPTS, "schedule.max_steps=4", "eval.metric=ap"]), run, echo=quiet)
    assert B.read(run / "best")["step"] == 4
    messages: list[str] = []
    train(tiny_config(shapes, [*OPTS, "schedule.max_steps=5", "eval.metric=ap50_pos"]), run, resume=True,
          echo=messages.append)
    best = B.read(run / "best")
    assert (best["metric"], best["step"], best["value"]) == ("ap50_pos", want_step, pytest.approx(want_value))
    assert any(said in m for m in messages)
    if want_step == 2:  # its model: the checkpoint's of that step; the best by ap is set aside
        assert _same_weights(run / "best", run / "checkpoints" / C.checkpoint_name(2) / "model")
        assert B.read(run / "best.by-ap")["step"] == 4
