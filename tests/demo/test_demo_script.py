"""`examples/demo.sh` (what `make demo` runs) ends by printing a command that reads one task of the trace:
with `LIMIT=1` it named 0/vlm_short/0/1, a task the run never did, and that command failed; then it printed
the id again on two lines of their own (the trace's line holds it three times)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Stands in for `reallod realign ...`: writes a trace holding the one task id it is given, as a run would.
STUB = """#!/usr/bin/env bash
while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
trace=${out%.jsonl}.trace.jsonl
mkdir -p "$(dirname "$trace")"
printf '{"trace":2,"input":"examples/realdata.jsonl"}\\n{"task_id":"%s","task":{"task_id":"%s"}}\\n' "$TASK_ID" "$TASK_ID" > "$trace"
"""


@pytest.mark.parametrize("task", ["0/vlm_short/0/0", "1/llm/2/0"])
def test_the_printed_explain_command_names_a_task_the_run_did(task, tmp_path):
    stub = tmp_path / "reallod"
    stub.write_text(STUB)
    stub.chmod(0o755)
    out = tmp_path / "demo"
    env = {**os.environ, "REALLOD": str(stub), "OUT": str(out), "LIMIT": "1", "TASK_ID": task}
    done = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = next(i for i, x in enumerate(lines) if "read one task:" in x)
    assert lines[at].split("read one task:")[1].split() == [str(stub), "realign", "--explain",
                                                           str(out / "realigned.trace.jsonl"), "--task", task]
    # the trace line holds the id more than once: it was printed again on lines of its own
    assert lines[at + 1].lstrip().startswith("report:") and task not in "\n".join(lines[at + 1:]), done.stdout
