"""A resume compares the config with the checkpoint's ``config.yaml``: a change to what the checkpoint's model
was built from is refused before anything is loaded (the checkpoint's model won silently, while the work
dir's ``config.yaml`` and the next checkpoint's recorded the new values), and every other change is named
in one log line."""

from __future__ import annotations

import pytest

from reallod.errors import ConfigError
from reallod.train import loop
from reallod.train.loop import train

from .helpers import quiet, tiny_config


def test_a_resume_that_changes_the_model_is_refused_before_loading_it(tmp_path, shapes, monkeypatch):
    train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, echo=quiet)
    before = {name: (tmp_path / name).read_bytes() for name in ("config.yaml", "log.csv")}

    def no_model(*args, **kwargs):
        raise AssertionError("the model is loaded")

    monkeypatch.setattr(loop, "build_detector", no_model)
    with pytest.raises(ConfigError, match=r"ckpt-00000001: a resume trains the checkpoint's model, and this config "
                                          r"changes what it was built from: model\.tiny\.d_model 32 → 64, "
                                          r"model\.max_text_len 64 → 128; resume with the checkpoint's values"):
        train(tiny_config(shapes, ["schedule.max_steps=2", "model.tiny.d_model=64", "model.max_text_len=128"]),
              tmp_path, resume=True, echo=quiet)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_resume_names_the_other_settings_it_changes(tmp_path, shapes):
    train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, echo=quiet)
    messages: list[str] = []
    train(tiny_config(shapes, ["schedule.max_steps=2", "optim.lr=5e-4", "model.aux_loss=false"]), tmp_path,
          resume=True, echo=messages.append)
    config = tmp_path / "checkpoints" / "ckpt-00000001" / "config.yaml"
    assert (f"the config differs from the checkpoint's ({config}): model.aux_loss True → False, "
            "optim.lr 0.001 → 0.0005, schedule.max_steps 1 → 2") in messages
