"""The progress bar, the run table and ``--report FILE`` (JSON + Markdown)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from reallod.agent.realign import RealignOptions, realign
from reallod.agent.run_report import report_paths, run_table
from reallod.agent.task import VERDICTS
from reallod.runs.progress import RichMonitor
from tests.agent.io_helpers import EXAMPLES
from tests.agent.scripted import colour_judge, scripted_roles


def test_report_paths():
    assert report_paths("run") == (Path("run.json"), Path("run.md"))
    assert report_paths("out/run.json") == (Path("out/run.json"), Path("out/run.md"))
    assert report_paths("run.md") == (Path("run.json"), Path("run.md"))


def test_progress_bar_and_reports(tmp_path):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    monitor = RichMonitor(console, labels=VERDICTS)
    run = realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "o.jsonl",
                                 images=EXAMPLES / "images", report=tmp_path / "run", concurrency=3),
                  roles=scripted_roles(colour_judge, vlm=False), monitor=monitor)
    screen = buf.getvalue()
    for words in ("re-aligning", "22/22", "tasks/s", "ETA", "in flight", "correct 18", "rewritten 4"):
        assert words in screen, words
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["tasks"] == 22 and report["verdicts"]["rewritten"] == 4
    assert report["roles"]["reflector"]["calls"] > 0 and report["roles"]["reflector"]["prompt_tokens"] > 0
    assert set(report["run"]["stages_s"]) == {"prepare", "agent", "output"}
    assert report["run"]["requests"]["sent"] == sum(r["attempts"] for r in report["roles"].values())
    assert report["failures"]["by_reason"] == {}
    md = (tmp_path / "run.md").read_text()
    for section in ("## Verdicts", "| rewritten | 4 |", "## Calls per role", "## Requests", "## Failed tasks",
                    "## Time per stage"):
        assert section in md, section
    table = io.StringIO()
    Console(file=table, width=200).print(run_table(run.info))
    assert "22 (0 resumed from the journal, 22 run now)" in table.getvalue()


def test_a_rerun_answered_by_the_cache_counts_no_model_requests_or_tokens(tmp_path):
    """The per-role table counts what the model was asked; the cache's answers are a column of their own."""
    def run(out: str):
        return realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / out,
                                      images=EXAMPLES / "images", cache=tmp_path / "cache.sqlite", concurrency=3,
                                      report=tmp_path / out.replace(".jsonl", "")),
                       roles=scripted_roles(colour_judge, vlm=False))

    first, again = run("a.jsonl"), run("b.jsonl")
    asked = first.summary.roles["reflector"]
    assert asked.attempts > 0 and asked.cached == 0 and asked.prompt_tokens > 0
    cached = again.summary.roles["reflector"]
    assert (cached.calls, cached.cached) == (asked.calls, asked.attempts)
    assert (cached.attempts, cached.prompt_tokens, cached.completion_tokens) == (0, 0, 0)
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["run"]["requests"]["sent"] == sum(r["attempts"] for r in report["roles"].values()) == 0
    assert f"| reflector | {asked.calls} | 0 | {asked.attempts} |" in (tmp_path / "b.md").read_text()


def test_the_bar_of_a_smaller_limit_counts_only_its_own_tasks(tmp_path):
    """After a run over 10 tasks, one with ``--limit 4`` resumes 4 of them: its bar says 4, not 10 (it ends
    before the count of the input: a run of millions counts in a thread while it goes)."""
    def run(limit: int, console: Console | None = None):
        monitor = RichMonitor(console, labels=VERDICTS) if console else None
        return realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "o.jsonl",
                                      images=EXAMPLES / "images", no_cache=True, limit=limit),
                       roles=scripted_roles(colour_judge, vlm=False), monitor=monitor)

    run(10)
    buf = io.StringIO()
    run(4, Console(file=buf, force_terminal=True, width=160))
    screen = buf.getvalue()
    assert " 4/" in screen and "10/" not in screen, screen


def test_report_dir_of_a_smaller_limit_shows_only_its_own_tasks(tmp_path):
    """The trace keeps every task the journal holds; ``--report-dir`` is this run's, as its output is."""
    def run(limit: int):
        return realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "o.jsonl",
                                      images=EXAMPLES / "images", no_cache=True, limit=limit,
                                      report_dir=tmp_path / f"rep{limit}"),
                       roles=scripted_roles(colour_judge, vlm=False))

    run(6)
    small = run(2)
    assert small.summary.tasks == 2
    md = (tmp_path / "rep2" / "index.md").read_text()
    assert md.count("## task ") == 2 and "· 2 task(s)" in md, md[:300]
    assert (tmp_path / "rep6" / "index.md").read_text().count("## task ") == 6


def test_the_per_role_requests_count_the_backends_retries(tmp_path, capsys):
    """A 429 retried by the backend was no 'try': the table said fewer requests than the server got."""
    import random

    from tests.agent.fake_openai_server import FakeChatServer, chat_reply, error_reply, valid_decision
    from tests.agent.io_helpers import fake_server_config, many_tasks
    from tests.cli_helpers import run_cli

    rng = random.Random(0)

    def respond(body):
        if len(server.requests) % 3 == 1:  # every third request, the first included
            return error_reply(429, "slow down", {"retry-after": "0"})
        return chat_reply(valid_decision(body, rng))

    with FakeChatServer(respond) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, concurrency=1)
        code, _, err = run_cli(["realign", many_tasks(tmp_path / "in", 6), "--config", cfg, "--out",
                                tmp_path / "o.jsonl", "--report", tmp_path / "run"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["run"]["requests"]["retries"].get("rate_limit", 0) > 0
    assert sum(r["attempts"] for r in report["roles"].values()) == len(server.requests)
