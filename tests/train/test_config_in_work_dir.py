"""``reallod train W/config.yaml --work-dir W`` wrote the run's resolved config over the user's file, its comments
and ``_base_`` lost: it is refused before anything is written, unless the file is that resolved config already
(a resume from the file an earlier run wrote there)."""

from __future__ import annotations

import yaml

from reallod.train.loop import train
from tests.cli_helpers import run_cli

from .helpers import quiet, tiny_config, tiny_raw, write_yaml


def test_a_config_in_the_work_dirs_config_yaml_is_not_written_over(tmp_path, shapes, capsys):
    write_yaml(tmp_path / "tiny.yaml", tiny_raw(shapes))
    work = tmp_path / "w"
    work.mkdir()
    mine = "# my notes\n_base_: ../tiny.yaml\nschedule:\n  max_steps: 1\n"
    (work / "config.yaml").write_text(mine)
    code, _, err = run_cli(["train", work / "config.yaml", "--work-dir", work], capsys)
    assert code != 0
    assert (f"{work / 'config.yaml'}: the run writes its resolved config to {work / 'config.yaml'} (the "
            "--work-dir's config.yaml), which would replace this file, its comments and _base_ lost: rename it "
            f"(e.g. to {work / 'train.yaml'}) and train from that, or give another --work-dir") in " ".join(err.split())
    assert (work / "config.yaml").read_text() == mine
    assert [p.name for p in work.iterdir()] == ["config.yaml"]


def test_a_resume_from_the_resolved_config_a_run_wrote_there_goes_on(tmp_path, shapes, capsys):
    train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, echo=quiet)
    code, out, _ = run_cli(["train", tmp_path / "config.yaml", "--work-dir", tmp_path, "--resume",
                            "--cfg-options", "schedule.max_steps=2"], capsys)
    assert code == 0 and "trained to step 2" in out
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["schedule"]["max_steps"] == 2
