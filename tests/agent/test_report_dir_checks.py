"""--report-dir is checked before the run as --out and --report are: a file in its way failed only once
every task had run (and printed no summary), and an input named DIR/index.md was overwritten by the report.
--limit 0 (a run that selects nothing) is refused as every other command refuses it."""

from __future__ import annotations

import shutil

import pytest

import reallod.agent.agent_config as agent_config
from reallod.agent.realign import RealignOptions, realign
from reallod.errors import ConfigError
from tests.agent.io_helpers import EXAMPLES
from tests.agent.scripted import colour_judge, scripted_roles
from tests.cli_helpers import run_cli


def go(tmp_path, report_dir, **extra):
    """realign over the example with scripted roles; returns the roles (their calls)."""
    roles = scripted_roles(colour_judge, vlm=False)
    extra.setdefault("input", EXAMPLES / "realdata.jsonl")
    extra.setdefault("images", EXAMPLES / "images")
    realign(RealignOptions(config="scripted", out=tmp_path / "o.jsonl", report_dir=report_dir, limit=2, **extra),
            roles=roles)
    return roles


def refused(tmp_path, match, report_dir, **extra):
    roles = scripted_roles(colour_judge, vlm=False)
    extra.setdefault("input", EXAMPLES / "realdata.jsonl")
    extra.setdefault("images", EXAMPLES / "images")
    opts = RealignOptions(config="scripted", out=tmp_path / "o.jsonl", report_dir=report_dir, limit=2, **extra)
    with pytest.raises(ConfigError, match=match):
        realign(opts, roles=roles)
    assert roles.reflector.backend.calls == [] and not (tmp_path / "o.journal.jsonl").exists()


def test_a_report_dir_with_a_file_in_its_way_is_refused_before_any_task_runs(tmp_path):
    (tmp_path / "afile").write_text("{}")
    refused(tmp_path, r"--report-dir .*afile: a file, where a folder is written; give another --report-dir",
            tmp_path / "afile")
    refused(tmp_path, r"--report-dir .*afile/rep: .*afile is a file, not a folder", tmp_path / "afile" / "rep")
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "img").write_text("x")
    refused(tmp_path, r"--report-dir .*rep/img: a file, where a folder is written; the report's pictures go in "
            r"this folder", tmp_path / "rep")
    (tmp_path / "rep2" / "index.md").mkdir(parents=True)
    refused(tmp_path, r"--report-dir .*rep2/index\.md: a folder, where a file is written; remove it",
            tmp_path / "rep2")
    assert (tmp_path / "afile").read_text() == "{}"


def test_a_report_dir_whose_pages_would_overwrite_what_the_run_reads_or_writes_is_refused(tmp_path):
    index = tmp_path / "index.md"
    shutil.copy(EXAMPLES / "realdata.jsonl", index)
    before = index.read_bytes()
    refused(tmp_path, r"--report-dir .* would overwrite the input \(.*index\.md\) with its index\.md: give another "
            "--report-dir", tmp_path, input=index)
    assert index.read_bytes() == before
    index.unlink()
    refused(tmp_path, r"would overwrite the --report file index\.md \(.*\) with its index\.md", tmp_path,
            report=tmp_path / "index")
    roles = scripted_roles(colour_judge, vlm=False)
    with pytest.raises(ConfigError, match=r"would overwrite the --out output \(.*index\.md\) with its index\.md"):
        realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "index.md",
                               images=EXAMPLES / "images", report_dir=tmp_path), roles=roles)
    config = tmp_path / "rep" / "index.html"
    config.parent.mkdir()
    config.write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"would overwrite the agent config \(.*index\.html\) with its index\.html"):
        realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config=str(config), out=tmp_path / "o.jsonl",
                               images=EXAMPLES / "images", report_dir=config.parent), roles=roles)
    assert config.read_text() == "name: x\n" and roles.reflector.backend.calls == []


def test_a_report_dir_whose_pictures_would_go_among_the_images_is_refused(tmp_path):
    images = tmp_path / "rep" / "img"
    shutil.copytree(EXAMPLES / "images", images)
    refused(tmp_path, r"--report-dir .*rep would write its pictures into the image root --images \(.*img\)",
            tmp_path / "rep", images=images)
    assert sorted(p.name for p in images.iterdir()) == sorted(p.name for p in (EXAMPLES / "images").iterdir())
    tasks = tmp_path / "rep2" / "img" / "tasks.jsonl"
    tasks.parent.mkdir(parents=True)
    shutil.copy(EXAMPLES / "realdata.jsonl", tasks)
    refused(tmp_path, r"--report-dir .*rep2 would write its pictures into the folder of the input \(.*img\), among "
            "files the run reads: give another --report-dir", tmp_path / "rep2", input=tasks)


def test_a_report_dir_that_can_be_written_still_gets_its_report(tmp_path):
    """The checks refuse only what would fail or overwrite: a report dir holding an earlier report is fine."""
    for _ in range(2):
        go(tmp_path, tmp_path / "rep")
        assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "rep" / "index.md").is_file()
        assert any((tmp_path / "rep" / "img").iterdir())


def test_limit_zero_is_refused(tmp_path, capsys, monkeypatch):
    """--limit 0 ran nothing, wrote an empty output and exited 0."""
    with pytest.raises(ConfigError, match=r"--limit 0: must be at least 1"):
        realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "o.jsonl",
                               images=EXAMPLES / "images", limit=0), roles=scripted_roles(colour_judge, vlm=False))
    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: pytest.fail("the models were built"))
    code, _, err = run_cli(["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out",
                            tmp_path / "o.jsonl", "--images", EXAMPLES / "images", "--limit", "0"], capsys)
    assert code == 2 and "Invalid value for '--limit'" in err, err
    assert not any(tmp_path.iterdir())
