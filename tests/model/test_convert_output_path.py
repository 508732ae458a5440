"""`reallod convert-checkpoint SRC .` (or `..`): the output path is made absolute and checked before any
work (it crashed after the whole conversion: `PosixPath('.') has an empty name`)."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

import reallod.model.convert_checkpoint as convert
from reallod.errors import ConfigError
from reallod.model.tiny import minilm_dir, tiny_config
from tests.cli_helpers import run_cli

from .mmdet_layout import to_mmdet_layout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_dir):
    """The tiny detector's weights saved as an MMDetection checkpoint, and the config that fits them."""
    config = tiny_config()
    mm = to_mmdet_layout(load_file(str(tiny_model_dir / "model.safetensors")), config)
    path = tmp_path_factory.mktemp("mmdet") / "real-model_tiny-test.pth"
    torch.save({"state_dict": mm}, path)
    return path, config


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the checkpoint is read: the output must be refused first."""
    def load(path):
        raise AssertionError("the checkpoint was read before the output was checked")

    monkeypatch.setattr(convert, "load_state_file", load)


def test_the_current_empty_folder_is_filled_in_place(checkpoint, tmp_path, monkeypatch):
    src, config = checkpoint
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    before = os.stat(".")
    result = convert.convert_checkpoint(src, ".", config=config, tokenizer=minilm_dir())
    assert result.out_dir == here and (here / "model.safetensors").is_file() and (here / "config.json").is_file()
    assert os.path.samestat(os.stat("."), before)  # the shell's folder itself, not a new one at its name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]  # no temporary or replaced folder left


def test_the_command_converts_into_dot(capsys, checkpoint, tmp_path, monkeypatch):
    src, _ = checkpoint
    config = tmp_path / "config.json"
    config.write_text(tiny_config().to_json_string())
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, stdout, err = run_cli(["convert-checkpoint", src, ".", "--config", config, "--tokenizer", minilm_dir()],
                                capsys)
    assert code == 0, err
    assert f"{here}: MM-Grounding-DINO-custom" in stdout and (here / "model.safetensors").is_file()


def test_a_parent_or_root_output_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch, no_work):
    src, config = checkpoint
    inside = tmp_path / "models" / "work"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    with pytest.raises(ConfigError, match=r"^\.\.: exists and is not empty \(pass --overwrite"):
        convert.convert_checkpoint(src, "..", config=config, tokenizer=minilm_dir())
    for out in ("..", "."):
        (inside / "notes.txt").write_text("mine")
        with pytest.raises(ConfigError, match=rf"^\{out}: is \(or holds\) the current folder, which replacing it "
                                              "would delete"):
            convert.convert_checkpoint(src, out, config=config, tokenizer=minilm_dir(), overwrite=True)
    assert (inside / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match=r"^/: is the root folder"):
        convert.convert_checkpoint(src, "/", config=config, tokenizer=minilm_dir(), overwrite=True)
