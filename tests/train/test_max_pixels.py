"""The pixel budget of training (``data.max_pixels``, ``reallod train --max-pixels``): training decoded with
Pillow's 89.5 M pixel budget and had no way to raise it, so genuine large images were always skipped."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from PIL import Image

from reallod.errors import ConfigError, DataError
from reallod.train import checkpoint as C
from reallod.train.loop import train
from tests.cli_helpers import run_cli

from .helpers import quiet, tiny_config

HINT = "raise --max-pixels or data.max_pixels if it is genuine"


def test_a_training_image_above_the_budget_is_skipped_and_named_and_read_with_a_larger_one(tmp_path, shapes):
    """One 160×160 training image (the others are 80×80): above a budget of 10,000 pixels it is replaced by
    another record and counted, with the option in the message; a budget of 30,000 reads it."""
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    first = json.loads((data / "train.jsonl").read_text().splitlines()[0])["filename"]
    big = data / first
    Image.open(big).convert("RGB").resize((160, 160)).save(big)  # boxes follow: they are scaled to the image
    opts = ["schedule.max_steps=6", f"data.train=[{{file: {data / 'train.jsonl'}, images: {data}}}]"]  # one epoch
    messages: list[str] = []
    small = train(tiny_config(shapes, [*opts, "data.max_pixels=10000"]), tmp_path / "small", echo=messages.append)
    assert small.failed_images == 1
    skipped = [m for m in messages if m.startswith("skipped 1 unusable image")]
    assert len(skipped) == 1 and str(big) in skipped[0]
    assert f"image is 160×160 = 25,600 pixels, above the limit of 10,000 ({HINT})" in skipped[0]
    # the option replaces the config's budget
    large = train(tiny_config(shapes, [*opts, "data.max_pixels=10000"]), tmp_path / "large", max_pixels=30_000,
                  echo=quiet)
    assert large.failed_images == 0 and large.step == 6


def test_a_held_out_image_above_the_budget_stops_the_run_at_setup(tmp_path, shapes):
    """The evaluation decodes held-out images with the same budget: one above it would end the run at the
    first evaluation, so setup refuses it, naming the file and the option."""
    cfg = tiny_config(shapes, ["schedule.max_steps=1", "eval.every_epochs=1", f"eval.file={shapes / 'val.jsonl'}",
                               f"eval.images={shapes}", "data.max_pixels=50000"])
    with pytest.raises(DataError, match=r"val_00000\.png: held-out image is 80×80 = 6,400 pixels, above the limit "
                                        r"of 6,000 \(" + re.escape(HINT)):
        train(cfg, tmp_path / "run", max_pixels=6000, echo=quiet)
    assert C.latest_checkpoint(tmp_path / "run") is None  # found before any training
    assert train(cfg, tmp_path / "ok", max_pixels=6400, echo=quiet).step == 1


def test_the_budget_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.max_pixels: must be >= 1, not 0"):
        tiny_config(tmp_path, ["data.max_pixels=0"])


def test_reallod_train_max_pixels_reaches_the_run_and_its_resume_command(tmp_path, capsys, monkeypatch):
    from reallod.train import loop

    seen: dict = {}

    def fake_train(cfg, work_dir, **kwargs):
        seen.update(kwargs)
        return loop.TrainResult(work_dir, 0, 0, None)

    monkeypatch.setattr(loop, "train", fake_train)
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {tiny: {}}\ndata: {synthetic: {}}\n")
    code, _, err = run_cli(["train", config, "--work-dir", tmp_path / "w", "--max-pixels", "200000000"], capsys)
    assert code == 0, err
    assert seen["max_pixels"] == 200_000_000 and "--max-pixels 200000000" in seen["resume_command"]
    code, _, err = run_cli(["train", config, "--work-dir", tmp_path / "w"], capsys)
    assert code == 0 and seen["max_pixels"] is None  # the config's data.max_pixels
    code, _, err = run_cli(["train", config, "--max-pixels", "0"], capsys)
    assert code == 2 and "--max-pixels" in err
