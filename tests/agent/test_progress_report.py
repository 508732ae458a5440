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
