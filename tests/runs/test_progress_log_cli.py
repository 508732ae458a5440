"""``reallod realign ... --progress 2> job.log`` (SLURM, nohup): progress lines reach the log while the
run goes, not one frame at its end."""

from __future__ import annotations

import os
import random
import subprocess
import sys

from tests.agent.fake_openai_server import FakeChatServer, FakeReply, chat_reply, valid_decision
from tests.agent.io_helpers import REPO, fake_server_config, many_tasks

CLI = [sys.executable, "-c", "from reallod.cli import main; main()"]


def test_realign_with_progress_into_a_file_writes_lines_while_it_runs(tmp_path):
    rng = random.Random(3)
    log = tmp_path / "job.log"
    seen: list[str] = []  # the log as each request reached the server

    def respond(body):
        seen.append(log.read_text() if log.exists() else "")
        return FakeReply(*chat_reply(valid_decision(body, rng)), delay_s=0.03)

    with FakeChatServer(respond) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, concurrency=2)
        args = [*CLI, "realign", str(many_tasks(tmp_path / "in", 30)), "--config", str(cfg),
                "--out", str(tmp_path / "o.jsonl"), "--no-cache", "--progress"]
        env = {**os.environ, "REALLOD_PROGRESS_INTERVAL": "0.1"}
        env.pop("FORCE_COLOR", None)
        env.pop("TTY_COMPATIBLE", None)
        with log.open("w") as err:
            done = subprocess.run(args, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                  timeout=120)
    text = log.read_text()
    assert done.returncode == 0, text
    first = next((k for k, snapshot in enumerate(seen) if "re-aligning: " in snapshot), None)
    assert first is not None and len(seen) - first >= 5, \
        f"no progress line in the log while the server was still asked ({len(seen)} requests); log: {text!r}"
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("re-aligning: ") for line in lines), text
    assert "\r" not in text and "\x1b" not in text  # plain lines: no bar redrawn, no colours
    assert " in flight " in lines[0] and " tasks/s  ETA " in lines[0], lines[0]
    assert lines[-1].startswith("re-aligning: 30/30 tasks (100.0%)  ") and "  took " in lines[-1], lines[-1]


def test_a_bad_interval_is_an_error_naming_the_variable_before_any_work(tmp_path, capsys, monkeypatch):
    from tests.cli_helpers import run_cli

    monkeypatch.setenv("REALLOD_PROGRESS_INTERVAL", "soon")
    cfg = fake_server_config(tmp_path / "cfg.yaml", "http://127.0.0.1:9/v1")  # never asked
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(["realign", many_tasks(tmp_path / "in", 3), "--config", cfg, "--out", out, "--no-cache",
                            "--progress"], capsys)
    assert code == 2, err
    assert err.strip() == ("error: REALLOD_PROGRESS_INTERVAL='soon': expected seconds between progress lines, "
                           "a number > 0 (default 30)"), err
    assert not out.exists() and not (tmp_path / "o.journal.jsonl").exists()
