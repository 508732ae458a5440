"""What the commands print holds the user's paths, file names and errors: Rich took `[x]` in them for a
markup tag and dropped it (`out-[x].jsonl` shown as `out-.jsonl`, "expected [x1, y1, x2, y2]" as
"expected "), so the console reads no markup."""

from __future__ import annotations

import io

from rich.console import Console

from reallod.agent.summary import render, summarize
from reallod.cli.common import console


def test_paths_and_errors_with_brackets_are_printed_as_they_are(monkeypatch):
    summary = summarize([{"task_id": "[red]t[/red]", "verdict": "failed", "error_kind": "bad_box",
                          "error": "[red]photo[/red].jpg: pairs.s[0].bboxes: expected [x1, y1, x2, y2]"}])
    shown = console()
    assert isinstance(shown, Console)
    buffer = io.StringIO()
    monkeypatch.setattr(shown, "file", buffer)
    shown.print(render(summary, out="out-[x].jsonl", trace="out-[x].trace.jsonl.gz"))
    text = buffer.getvalue()
    assert "output: out-[x].jsonl" in text and "trace: out-[x].trace.jsonl.gz" in text
    assert "[red]photo[/red].jpg" in text and "expected [x1, y1, x2, y2]" in " ".join(text.split())
