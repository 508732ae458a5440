"""realign and agent-eval refuse an output in a folder they cannot write in before the agent's models are
built, as every command does (the one check of :func:`reallod.data.io.check_writable`)."""

from __future__ import annotations

import os

import pytest

import reallod.agent.agent_config as agent_config
from tests.agent.io_helpers import EXAMPLES
from tests.cli_helpers import run_cli


def no_model(cfg):
    raise AssertionError("the agent's models were built: the refusal came after the run started")


@pytest.mark.parametrize(("command", "option"), [("realign", "--out"), ("realign", "--report"),
                                                 ("agent-eval", "--report")])
def test_an_output_in_a_folder_that_cannot_be_written_is_refused_before_the_run(
        tmp_path, capsys, monkeypatch, command, option):
    """A --report there failed only once the whole run was done (agent-eval without --out then threw the
    run away); an --out there, once the models were built, when the journal could not be made."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # denied as for a user without the right (root may write anywhere)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: os.path.abspath(p) != str(locked)
                        and real_access(p, mode, **kw))
    monkeypatch.setattr(agent_config, "build_roles", no_model)
    given = {"--out": tmp_path / "o.jsonl", "--report": tmp_path / "rep", option: locked / "o.jsonl"}
    tasks = EXAMPLES / ("realdata.jsonl" if command == "realign" else "labelled.jsonl")
    extra = ["--out", given["--out"]] if command == "realign" else []
    code, _, err = run_cli([command, tasks, "--config", "offline", "--images", EXAMPLES / "images", *extra,
                            "--report", given["--report"]], capsys)
    assert code == 2, err
    assert f"error: {option} {locked / 'o.jsonl'}" in err and f"cannot write in {locked} (permission denied)" in err
    assert not any(locked.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["locked"]
