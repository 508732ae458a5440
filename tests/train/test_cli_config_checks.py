"""What `reallod train` refuses before it writes anything: a config that is a name or a folder (the shipped
configs listed), `--cfg-options KEY VALUE` (told the KEY=VALUE form), and a data file or image root that is
not there, named by its config field (the run left TensorBoard files in the work dir before it found it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reallod.cli.train import split_extra_args
from reallod.errors import ConfigError
from tests.cli_helpers import run_cli


def _said(err: str) -> str:
    return " ".join(err.split())


def test_cfg_options_with_a_space_for_the_equals_sign_are_told_the_key_value_form(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}")
    with pytest.raises(ConfigError, match=r"^--cfg-options optim\.lr: expected KEY=VALUE, one word each \(e\.g\. "
                       r"--cfg-options optim\.lr=1e-5\)$"):
        split_extra_args(cfg, ["1e-5"], False, ["optim.lr"])  # `--cfg-options optim.lr 1e-5` as Typer splits it
    with pytest.raises(ConfigError, match=r"right after --resume; --cfg-options takes KEY=VALUE words"):
        split_extra_args(cfg, ["1e-5"], False, ["optim.lr=1"])


def test_a_config_name_or_folder_lists_the_shipped_configs(tmp_path, capsys, monkeypatch):
    from reallod.cli.common import shipped_config_dir

    monkeypatch.chdir(tmp_path)
    shipped = sorted(shipped_config_dir("train").glob("*.yaml"))
    assert any(p.stem == "tiny-cpu" for p in shipped)
    code, _, err = run_cli(["train", "tiny-cpu"], capsys)
    assert code == 2 and _said(err).endswith("tiny-cpu: config file not found; the shipped training configs: "
                                             + ", ".join(str(p) for p in shipped))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.yaml").write_text("{}")
    code, _, err = run_cli(["train", "mine"], capsys)
    assert code == 2 and "mine: a folder, not a config file; give a YAML file such as mine/a.yaml" in _said(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("entry, field, said", [
    ("{file: nope.jsonl, images: imgs}", "data.train.0.file", "nope.jsonl: training data file not found"),
    ("{file: data.jsonl, images: no-imgs}", "data.train.0.images", "no-imgs: image root not found")])
def test_a_missing_data_file_or_image_root_is_named_by_its_field_before_the_work_dir_is_touched(
        entry, field, said, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "data.jsonl").write_text("{}\n")
    (tmp_path / "t.yaml").write_text(f"model:\n  init: org/detector\ndata:\n  train:\n    - {entry}\n")
    code, _, err = run_cli(["train", "t.yaml", "--work-dir", tmp_path / "w"], capsys)
    assert code == 2 and f"t.yaml:5: {field}: {said}" in _said(err), err
    assert not (tmp_path / "w").exists()  # no tensorboard/events.* left behind
    code, _, err = run_cli(["train", "t.yaml", "--work-dir", tmp_path / "w", "--cfg-options",
                            "eval.file=held.jsonl", "eval.images=imgs", "data.train.0.file=data.jsonl",
                            "data.train.0.images=imgs"], capsys)
    assert code == 2 and ("--cfg-options eval.file=held.jsonl: eval.file: held.jsonl: evaluation data file not "
                          "found") in _said(err), err
    assert not (tmp_path / "w").exists()


def test_a_work_dir_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    """It said only the OS's "FILE: File exists"."""
    (tmp_path / "w").write_text("notes\n")
    config = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny-cpu.yaml"
    code, _, err = run_cli(["train", config, "--work-dir", tmp_path / "w"], capsys)
    assert code == 2 and f"--work-dir {tmp_path / 'w'}: a file, where a folder is written; give a folder" in err
    assert (tmp_path / "w").read_text() == "notes\n"
