"""Config values YAML reads otherwise than documented, and overrides of list items the config file leaves at
their defaults.

``train.mixed_precision: no`` (a documented value) is the boolean false in YAML 1.1 and was refused as "expected
a string"; ``--cfg-options optim.betas.1=0.99`` on a file that does not set ``optim.betas`` made a mapping of the
list and blamed a line of the file for it."""

from __future__ import annotations

import pytest

from reallod.errors import ConfigError
from reallod.train.config import load_config

from .helpers import tiny_raw, write_yaml


@pytest.mark.parametrize("how", ["file", "option"])
def test_mixed_precision_no_is_the_word_not_a_boolean(tmp_path, how):
    raw = tiny_raw(tmp_path / "shapes")
    path = write_yaml(tmp_path / "c.yaml", raw)
    if how == "file":
        path.write_text(path.read_text().replace("train:\n", "train:\n  mixed_precision: no\n"))
    cfg = load_config(path, ["train.mixed_precision=no"] if how == "option" else [])
    assert cfg.train.mixed_precision == "no"


def test_another_yaml_boolean_for_a_string_says_to_quote_it(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", tiny_raw(tmp_path / "shapes"))
    with pytest.raises(ConfigError, match=r"^--cfg-options train\.mixed_precision=on: train\.mixed_precision: "
                                          r"expected a string, got True \(YAML reads yes, no, on, off unquoted as "
                                          r"true or false: quote the value\)$"):
        load_config(path, ["train.mixed_precision=on"])


def test_an_item_of_a_default_list_can_be_set(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", tiny_raw(tmp_path / "shapes"))  # no optim.betas
    assert load_config(path, ["optim.betas.1=0.99"]).optim.betas == [0.9, 0.99]
    assert load_config(path, ["optim.betas.-1=0.99", "optim.betas.0=0.8"]).optim.betas == [0.8, 0.99]
    with pytest.raises(ConfigError, match=r"^--cfg-options optim\.betas\.1=1: optim\.betas\.1: must be in \[0, 1\)"):
        load_config(path, ["optim.betas.1=1"])  # named by the option, not by a line of the file


@pytest.mark.parametrize(("option", "message"), [
    ("optim.betas.2=0.5", "optim.betas is not set in the config, and its default [0.9, 0.999] has no item 2: give the "
                          "whole list instead, e.g. optim.betas=[0.9, 0.999]"),
    ("data.train.0.file=x", "data.train is not set in the config, and its default [] has no item 0: give the whole "
                            "list instead, e.g. data.train=[{file: ..., images: ..., ratio: ...}]"),
])
def test_an_item_past_the_end_of_a_default_list_is_refused(tmp_path, option, message):
    path = write_yaml(tmp_path / "c.yaml", tiny_raw(tmp_path / "shapes"))
    with pytest.raises(ConfigError) as e:
        load_config(path, [option])
    assert str(e.value) == f"--cfg-options {option}: {message}"
