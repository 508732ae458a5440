"""benchmarks/agent_throughput.py at a tiny size: the HTTP floor posts bodies of the runner's mean size,
to the byte, and its CPU is compared with the runner's like for like."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "agent_throughput.py"


def test_the_floor_body_has_the_size_asked_for():
    spec = importlib.util.spec_from_file_location("agent_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for size in (200, 2_001, 24_182):
        body = module.floor_body(size)
        assert len(body) == size and b"Expression to judge: word word" in body
    assert module.floor_share(0.15, 2.84) == 0.15 / 2.84  # over the runner's wall, not the floor's own


def test_agent_throughput_runs_small_and_the_floor_matches_the_runner():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tasks", "4", "--concurrency", "2", "--latency-ms", "1",
                           "--skip-openai"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = re.search(r"\(bare aiohttp, (\d+) B bodies, as \(b\)'s mean (\d+) B\)", proc.stdout)
    assert sizes and sizes[1] == sizes[2] and int(sizes[1]) > 1000, proc.stdout
    assert "the HTTP floor's CPU for the same requests: " in proc.stdout and "% of this run's wall" in proc.stdout
