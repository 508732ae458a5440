"""A resume that splits its steps otherwise (another batch size or gradient accumulation) goes on right
after the images of the epoch the checkpoint trained: each image of the epoch is trained once, in the
epoch's order. The checkpoint counted batches of its own size, which the resumed run used to read as
batches of the new size: with 2 × accum 2 → 4 × 1 it skipped 4 images and the epoch was a step short."""

from __future__ import annotations

import json

import pytest

from reallod.errors import ConfigError
from reallod.train import checkpoint as C
from reallod.train import loop
from reallod.train.dataset import TrainDataset
from reallod.train.loop import train
from reallod.train.resume import ResumeFrom

from .helpers import quiet, tiny_config

FIRST = ["schedule.epochs=1", "train.grad_accum=2", "schedule.max_steps=1"]  # 4 of the 12 images: 2 batches of 2


def _trained_positions(monkeypatch) -> list[tuple[int, int]]:
    """(epoch, position in the epoch) of each sample the runs load, in order."""
    seen: list[tuple[int, int]] = []
    getitem = TrainDataset.__getitem__

    def recording(self, key):
        seen.append((key[0], key[1]))
        return getitem(self, key)

    monkeypatch.setattr(TrainDataset, "__getitem__", recording)
    return seen


@pytest.mark.parametrize(("batch_size", "accum", "steps"), [
    (4, 1, 2),  # the same 4 images a step: 2 steps of 4 are left
    (3, 1, 3),  # 4 is no whole number of batches of 3: a batch of the 2 left of one, then 2 of 3
    (2, 3, 2),  # batches 2-5 of 2: the first step takes batch 2, the one left of the group 0-2
])
@pytest.mark.parametrize("state", ["images counted", "written before images were counted"])
def test_a_resume_with_another_split_trains_each_image_once(tmp_path, shapes, monkeypatch, batch_size, accum, steps,
                                                            state):
    seen = _trained_positions(monkeypatch)
    train(tiny_config(shapes, FIRST), tmp_path, echo=quiet)
    ckpt = C.latest_checkpoint(tmp_path)
    saved = json.loads((ckpt / "state.json").read_text())
    if state != "images counted":  # 2 batches of the checkpoint's train.batch_size (its config.yaml)
        saved.pop("images_in_epoch", None)
        (ckpt / "state.json").write_text(json.dumps(saved))
    messages: list[str] = []
    result = train(tiny_config(shapes, ["schedule.epochs=1", f"train.batch_size={batch_size}",
                                        f"train.grad_accum={accum}"]), tmp_path, resume=True, echo=messages.append)
    assert seen == [(0, p) for p in range(12)]
    assert result.step == 1 + steps
    assert (saved["batch_in_epoch"], saved.get("images_in_epoch", 4)) == (2, 4)
    warning = next(m for m in messages if m.startswith("warning: the checkpoint was written by"))
    assert f"1 process(es) × 4 images per step; this run has 1 × {batch_size * accum}" in warning
    assert "after the 4 images of epoch 0 it had trained" in warning


def test_the_warning_says_what_changed_and_what_stays(tmp_path, shapes):
    train(tiny_config(shapes, FIRST), tmp_path, echo=quiet)
    messages: list[str] = []
    train(tiny_config(shapes, ["schedule.epochs=1", "train.batch_size=4"]), tmp_path, resume=True,
          echo=messages.append)
    assert ("warning: the checkpoint was written by 1 process(es) × 4 images per step; this run has 1 × 4 "
            "(train.batch_size 2 → 4, train.grad_accum 2 → 1): training goes on after the 4 images of epoch 0 it "
            "had trained, with the same images per step, split otherwise") in "\n".join(messages)


def test_a_process_count_that_cannot_share_the_rest_of_the_epoch_is_refused(tmp_path, shapes):
    train(tiny_config(shapes, FIRST), tmp_path, echo=quiet)
    ckpt = C.latest_checkpoint(tmp_path)
    cfg = tiny_config(shapes, ["schedule.epochs=1"])
    assert ResumeFrom.read(ckpt, cfg, 2).images == 4  # 2 images each
    with pytest.raises(ConfigError, match=r"stopped after 4 images of epoch 0, which 3 processes cannot share evenly "
                                          r"\(it was written by 1\): resume with 1 process\(es\) until the epoch ends"):
        ResumeFrom.read(ckpt, cfg, 3)


def test_a_step_cut_short_by_the_resume_averages_the_batches_it_has(tmp_path, shapes, monkeypatch):
    """Resumed at batch 2 in groups of 3 (batches 0-2, 3-5): the first step has one batch, whose loss is not
    divided by 3."""
    from accelerate import Accelerator

    train(tiny_config(shapes, FIRST), tmp_path, echo=quiet)
    losses, scaled = [], []
    training_loss, backward = loop.training_loss, Accelerator.backward

    def recording_loss(*args, **kwargs):
        loss, terms = training_loss(*args, **kwargs)
        losses.append(float(loss.detach()))
        return loss, terms

    def recording_backward(self, loss, **kwargs):
        scaled.append(float(loss.detach()))
        return backward(self, loss, **kwargs)

    monkeypatch.setattr(loop, "training_loss", recording_loss)
    monkeypatch.setattr(Accelerator, "backward", recording_backward)
    train(tiny_config(shapes, ["schedule.epochs=1", "train.grad_accum=3"]), tmp_path, resume=True, echo=quiet)
    assert [round(a / b) for a, b in zip(losses, scaled, strict=True)] == [1, 3, 3, 3]
