"""Malformed MMDetection checkpoints and configs: each error names the file, the key and the shapes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reallod.errors import ConfigError, DataError
from reallod.model.convert_checkpoint import config_from_file, convert_checkpoint
from reallod.model.loading import load_detector
from reallod.model.tiny import minilm_dir, tiny_config

from .mmdet_layout import to_mmdet_layout


@pytest.fixture(scope="module")
def mmdet_state(tiny_model_dir):
    config = tiny_config()
    return to_mmdet_layout(load_file(str(tiny_model_dir / "model.safetensors")), config), config


def _with(tmp_path, mm, name, key_part, make):
    state = dict(mm)
    key = next(k for k in state if key_part in k)
    state[key] = make(state[key])
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": state}, path)
    return path, key


@pytest.mark.parametrize(("key_part", "make", "shape", "expected"), [
    ("cls_branches", lambda t: torch.zeros(3), "[3]", "one value"),
    ("downsample.norm.weight", lambda t: torch.zeros(t.shape[0] - 1), "[63]", "divisible by 4"),
    ("downsample.reduction.weight", lambda t: torch.zeros(t.shape[0], t.shape[1] - 2), "[32, 62]", "divisible by 4"),
    ("w_msa.qkv.weight", lambda t: torch.zeros(t.shape[0] - 1, t.shape[1]), "[47, 16]", "divisible by 3"),
])
def test_a_tensor_its_key_cannot_take_names_the_file_key_and_shape(mmdet_state, tmp_path, tiny_model_dir, key_part,
                                                                    make, shape, expected):
    """These were 'unexpected RuntimeError: shape '[]' is invalid for input of size 3': no file, no key."""
    mm, config = mmdet_state
    src, key = _with(tmp_path, mm, "bad", key_part, make)
    said = (re.escape(f"{src}: {key}: a tensor of shape {shape} that cannot be converted (expected ")
            + f".*{expected}")
    with pytest.raises(DataError, match=said):
        convert_checkpoint(src, tmp_path / "out", config=config, tokenizer=minilm_dir())
    with pytest.raises(DataError, match=said):  # converted on the fly by detect --weights
        load_detector(tiny_model_dir, weights=src, device="cpu")
    assert not (tmp_path / "out").exists()


def test_a_misshaped_weight_names_the_checkpoint_not_the_temporary_folder(mmdet_state, tmp_path):
    """The loaded-back check named '.out.1a2b3c4d.tmp', a folder deleted by the time the user reads it."""
    mm, config = mmdet_state
    src, _ = _with(tmp_path, mm, "short", "w_msa.qkv.weight", lambda t: torch.zeros(t.shape[0] - 3, t.shape[1]))
    with pytest.raises(ConfigError, match=f"^{re.escape(str(src))}: weights do not match .*mismatched keys: "
                                          r".*\(file \[15, 16\], model \[16, 16\]\)") as e:
        convert_checkpoint(src, tmp_path / "out", config=config, tokenizer=minilm_dir())
    assert ".tmp" not in str(e.value) and not list(tmp_path.glob(".out.*"))


def test_a_config_file_that_is_not_an_object_is_refused(tmp_path):
    """A JSON list gave 'unexpected AttributeError: 'list' object has no attribute 'get''."""
    path = tmp_path / "cfg.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"cfg.json: holds a JSON list, not a config"):
        config_from_file(path)


def test_a_weights_only_refusal_keeps_the_refused_type(mmdet_state, tmp_path):
    """The message was cut at 160 characters, inside torch's advice, before the type it refused."""
    mm, _ = mmdet_state
    path = tmp_path / "np_meta.pth"
    torch.save({"meta": {"seed": np.int64(0)}, "state_dict": mm}, path)
    with pytest.raises(DataError, match=r"weights_only=True\): Unsupported global: GLOBAL numpy.*scalar was not an "
                                        r"allowed global by default\. \(only tensors") as e:
        convert_checkpoint(path, tmp_path / "out", config=tiny_config(), tokenizer=minilm_dir())
    assert "\x1b" not in str(e.value) and "two options" not in str(e.value)
    assert json.dumps(str(e.value))  # one plain line
