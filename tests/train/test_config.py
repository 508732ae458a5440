"""Training configs: the shipped YAML files, _base_ inheritance, --cfg-options, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from reallod.cli.train import split_extra_args
from reallod.errors import ConfigError
from reallod.train.config import TrainConfig, apply_overrides, load_config, resolve_paths

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


@pytest.mark.parametrize("name", ["tiny-cpu.yaml", "real-model-t.yaml", "real-model-b.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, TrainConfig)


def test_published_recipe_values():
    t = load_config(CONFIGS / "real-model-t.yaml")
    b = load_config(CONFIGS / "real-model-b.yaml")
    assert t.data.source_probs == {"category": 0.5, "vlm_short": 0.2, "llm": 0.2, "vlm_long": 0.1}
    assert (t.data.positives_per_instance, t.data.max_negatives, t.model.max_text_len) == (1, 50, 512)
    assert (t.optim.lr, t.optim.weight_decay, t.optim.clip_grad) == (2e-6, 1e-4, 0.1)
    assert (t.optim.backbone_lr_mult, t.optim.text_lr_mult) == (0.1, 0.1)
    assert (t.schedule.epochs, t.schedule.warmup_steps, t.schedule.milestones) == (10, 1000, [6, 8])
    assert t.train.batch_size * 16 == t.optim.base_batch_size
    assert b.model.init != t.model.init and "base" in b.model.init
    assert b.optim == t.optim and b.data == t.data  # B inherits everything else from T


def test_overrides_set_nested_fields_and_list_items(tmp_path):
    raw = {"model": {"tiny": {}}, "data": {"train": [{"file": "a", "images": "i"}, {"file": "b", "images": "j"}]}}
    cfg = load_config(data=raw, options=["optim.lr=1e-5", "data.train.1.ratio=2.5", "schedule.milestones=[8, 11]",
                                         "eval.file=null", "train.mixed_precision=bf16", "model.tiny.d_model=32"])
    assert cfg.optim.lr == 1e-5 and cfg.data.train[1].ratio == 2.5 and cfg.schedule.milestones == [8, 11]
    assert cfg.train.mixed_precision == "bf16" and cfg.model.tiny.d_model == 32
    assert raw["data"]["train"][1].get("ratio") is None  # the input is not modified
    assert apply_overrides({}, ["a.b.c=3"]) == {"a": {"b": {"c": 3}}}


@pytest.mark.parametrize(("options", "message"), [
    (["optim.lrr=1"], "optim.lrr: unknown key; known keys here: lr, "),
    (["optim.lr=fast"], "optim.lr: expected a number"),
    (["train.batch_size=2.5"], "train.batch_size: expected an integer"),
    (["data.train.5.ratio=1"], "index 5 is out of range"),
    (["optim.lr"], "expected key=value"),
    (["train.mixed_precision=fp8"], "train.mixed_precision: use no, bf16 or fp16"),
    (["model.init=x"], "set exactly one of model.init"),
    (["schedule.max_steps=0"], "schedule.max_steps: must be >= 1"),
    (["augment.crop_size=[1]"], "augment.crop_size: takes two numbers"),
    # they were "unexpected TypeError: 'float' object does not support item assignment", and a key with an
    # empty part was blamed on the config file's line
    (["optim.lr=1", "optim.lr.x=1"], "--cfg-options optim.lr.x=1: optim.lr is the number 1, not a section"),
    (["optim..lr=1"], "the key 'optim..lr' has an empty part"),
    (["optim.lr.=1"], "the key 'optim.lr.' has an empty part"),
])
def test_bad_configs_name_the_key(options, message):
    raw = {"model": {"tiny": {}}, "data": {"train": [{"file": "a", "images": "i"}]}}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(data=raw, options=options)


def test_an_empty_section_keeps_the_bases_and_a_yaml_boolean_key_is_named(tmp_path):
    """`optim:` with every line under it commented out reset the base's optim to the defaults (lr 2e-6);
    a key `on:` (YAML's true) beside a string key was "unexpected TypeError: '<' not supported"."""
    (tmp_path / "base.yaml").write_text("model: {tiny: {d_model: 32}}\ndata: {synthetic: {num_train: 5}}\n"
                                        "optim: {lr: 0.1, clip_grad: 2.0}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n#  lr: 0.2\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.optim.lr, cfg.optim.clip_grad) == (0.1, 2.0)
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"child\.yaml:3: optim\.lr: expected a number"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "bools.yaml").write_text("_base_: base.yaml\naugment:\n  on: 1\n  flip: 0.5\n")
    with pytest.raises(ConfigError, match=r"augment\.True: unknown key \(YAML reads an unquoted on, off, yes or no "
                                          r"as True: quote the key if it is a word\)"):
        load_config(tmp_path / "bools.yaml")


def test_base_inheritance_and_file_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {tiny: {d_model: 32}}\ndata: {synthetic: {num_train: 5}}\n"
                                        "optim: {lr: 0.1, clip_grad: 2.0}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim: {lr: 0.2}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.optim.lr, cfg.optim.clip_grad, cfg.model.tiny.d_model) == (0.2, 2.0, 32)
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(tmp_path / "list.yaml")


def test_work_dir_placeholder_is_resolved():
    cfg = load_config(CONFIGS / "tiny-cpu.yaml")
    assert resolve_paths(cfg, "/w").data.synthetic.dir == "/w/shapes"
    assert cfg.data.synthetic.dir == "{work_dir}/shapes"


def test_cli_extra_words_are_sorted_out(tmp_path):
    cfg = tmp_path / "c.yaml"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert split_extra_args(cfg, ["b=2"], False, ["a=1"]) == (cfg, None, ["a=1", "b=2"])
    assert split_extra_args(cfg, [str(ckpt), "b=2"], True, ["a=1"]) == (cfg, ckpt, ["a=1", "b=2"])
    cfg.write_text("{}")
    assert split_extra_args(ckpt, [str(cfg)], True, []) == (cfg, ckpt, [])  # --resume CKPT CONFIG
    with pytest.raises(ConfigError, match="no such option: --wrok-dir"):
        split_extra_args(cfg, ["--wrok-dir", "x"], False, [])
    with pytest.raises(ConfigError, match="after --cfg-options"):
        split_extra_args(cfg, ["a=1"], False, [])
    with pytest.raises(ConfigError, match="right after --resume"):
        split_extra_args(cfg, ["ckpt"], False, [])
