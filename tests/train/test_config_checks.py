"""Training configs: every range and length checked when the config is read, and errors naming where the bad
value was set (file and line, through _base_ files, or the --cfg-options word); duplicate keys and _base_
cycles refused."""

from __future__ import annotations

import pytest

from reallod.errors import ConfigError
from reallod.train.config import load_config

RAW = {"model": {"tiny": {}}, "data": {"train": [{"file": "a", "images": "i"}]}}


@pytest.mark.parametrize(("option", "message"), [
    ("eval.batch_size=0", "eval.batch_size: must be >= 1, not 0"),  # was: a whole epoch, then no field named
    ("augment.crop_size=[100,50]", "augment.crop_size: the smallest side comes first"),  # was: low >= high
    ("augment.scales=[0]", "augment.scales.0: must be >= 1, not 0"),  # was: index out of range in the model
    ("augment.scales=[]", "augment.scales: needs at least one"),
    ("optim.betas=[0.9]", "optim.betas: takes two numbers"),  # was: IndexError
    ("optim.betas=[0.9, 1.0]", "optim.betas.1: must be in [0, 1)"),
    ("optim.eps=-1", "optim.eps: must be >= 0"),  # was: ValueError from torch
    ("seed=-1", "seed: must be between 0 and 4294967295, not -1"),
    ("data.num_workers=-1", "data.num_workers: must be >= 0"),
    ("augment.flip_prob=2", "augment.flip_prob: must be between 0 and 1, not 2.0"),  # was accepted
    ("checkpoint.every_steps=-2", "checkpoint.every_steps: must be >= 0"),  # was accepted
    ("checkpoint.every_epochs=0", "checkpoint.every_epochs: must be >= 1, not 0"),  # still saved every epoch
    ("eval.negatives_per_image=-1", "eval.negatives_per_image: must be >= 0"),  # was: all negatives but one
    ("data.max_negatives=-1", "data.max_negatives: must be >= 0"),  # was: no "data." and after the model
    ("data.source_probs={llm: 0}", "data.source_probs: at least one text source"),
    ("data.relations=[pairs]", "data.relations: use single, multi or both"),
    ("optim.clip_grad=-1", "optim.clip_grad: must be > 0"),  # would flip the gradient's sign
    ("schedule.gamma=0", "schedule.gamma: must be > 0"),
    ("train.threads=0", "train.threads: must be >= 1"),
    ("train.dist_timeout_s=0", "train.dist_timeout_s: must be >= 1"),
    ("optim.lr=.nan", "optim.lr: must be a finite number, not nan"),  # NaN passes every comparison
    ("data.train.0.ratio=.inf", "data.train.0.ratio: must be a finite number"),
    ("model.tiny.d_model=48", "model.tiny.d_model: must be a multiple of 32"),
    ("data.synthetic={size: [80]}", "data.synthetic.size: takes two numbers"),
])
def test_every_range_is_checked_when_the_config_is_read(option, message):
    with pytest.raises(ConfigError) as e:
        load_config(data=RAW, options=[option])
    assert str(e.value).startswith(f"--cfg-options {option}: ")  # the option is where the value came from
    assert message in str(e.value)


def test_errors_name_the_file_and_line_that_set_the_value(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  tiny: {}\ndata:\n  train:\n    - {file: a, images: i, ratio: -1}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"child\.yaml:3: optim\.lr: expected a number, got 'fast'"):
        load_config(tmp_path / "child.yaml")
    with pytest.raises(ConfigError, match=r"base\.yaml:5: data\.train\.0\.ratio: must be >= 0, not -1"):
        load_config(tmp_path / "child.yaml", ["optim.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"^--cfg-options data\.train=\[\{file: a, images: i, ratio: -2\}\]: "
                                          r"data\.train\.0\.ratio: must be >= 0, not -2"):
        load_config(tmp_path / "child.yaml", ["optim.lr=1e-4", "data.train=[{file: a, images: i, ratio: -2}]"])
    (tmp_path / "typo.yaml").write_text("_base_: base.yaml\ncheckpoint:\n  every_epochs: 1\n  keep_lst: 2\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml:4: checkpoint\.keep_lst: unknown key"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match=r"^--cfg-options model\.tiny=null: model\.tiny: set exactly one"):
        load_config(tmp_path / "child.yaml", ["optim.lr=1e-4", "data.train.0.ratio=1", "model.tiny=null"])
    (tmp_path / "nodata.yaml").write_text("model: {tiny: {}}\n")
    with pytest.raises(ConfigError, match=r"nodata\.yaml: data\.train: no training files"):  # a default: the file
        load_config(tmp_path / "nodata.yaml")


def test_a_duplicate_key_is_refused_naming_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: the first block's settings vanished without a word."""
    (tmp_path / "dup.yaml").write_text("model: {tiny: {}}\ndata: {synthetic: {}}\noptim:\n  lr: 5.0e-4\n"
                                       "schedule: {epochs: 1}\noptim:\n  weight_decay: 0.05\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:6: optim: duplicate key \(first at line 3\)"):
        load_config(tmp_path / "dup.yaml")
    (tmp_path / "dup2.yaml").write_text("model: {tiny: {d_model: 32, d_model: 64}}\n")
    with pytest.raises(ConfigError, match=r"dup2\.yaml:1: model\.tiny\.d_model: duplicate key"):
        load_config(tmp_path / "dup2.yaml")


def test_base_cycles_and_missing_bases_name_the_files(tmp_path):
    (tmp_path / "self.yaml").write_text("_base_: self.yaml\n")
    with pytest.raises(ConfigError, match=r"self\.yaml:1: _base_ self\.yaml: a cycle of _base_ files"):
        load_config(tmp_path / "self.yaml")  # was: unexpected RecursionError
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("x: 1\n_base_: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"b\.yaml:2: _base_ a\.yaml: a cycle .*a\.yaml → .*b\.yaml → .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("_base_: nothere.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan\.yaml:1: _base_ nothere\.yaml: config file not found"):
        load_config(tmp_path / "orphan.yaml")
    # the same base reached twice (not a cycle) is fine
    (tmp_path / "common.yaml").write_text("model: {tiny: {}}\ndata: {synthetic: {}}\n")
    (tmp_path / "left.yaml").write_text("_base_: common.yaml\noptim: {lr: 0.1}\n")
    (tmp_path / "both.yaml").write_text("_base_: [common.yaml, left.yaml]\n")
    assert load_config(tmp_path / "both.yaml").optim.lr == 0.1


def test_text_options_name_the_data_field():
    """TextOptions is built from ``data.*`` after the model: its own messages lacked the ``data.`` path."""
    from reallod.train.sampling import TextOptions

    with pytest.raises(ConfigError, match=r"^data\.max_negatives: must be >= 0, not -1$"):
        TextOptions(max_negatives=-1)
    with pytest.raises(ConfigError, match=r"^data\.positives_per_instance: must be >= 1, not 0$"):
        TextOptions(positives_per_instance=0)


@pytest.mark.parametrize("text", ["", "\n  \n", "# nothing set yet\n"])
def test_an_empty_config_is_called_empty(tmp_path, text):
    """It was told of the first field a config must set ('model.tiny: set exactly one of ...')."""
    (tmp_path / "e.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"e\.yaml: the config is empty: set at least model"):
        load_config(tmp_path / "e.yaml")
