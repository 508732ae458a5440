"""Reliability against a real HTTP server (the fake one, through the real openai client): kill -9 at
random moments with resume, a server failing one request in five, an endpoint that is down, Ctrl-C
mid-run and while the offline model loads."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from reallod.agent.task import VERDICTS
from reallod.agent.trace import read_trace, trace_path_for
from reallod.runs.journal import read_journal
from tests.agent.fake_openai_server import FakeChatServer, FakeReply, chat_reply, error_reply, valid_decision
from tests.agent.io_helpers import REPO, fake_server_config, many_tasks, read_jsonl
from tests.cli_helpers import run_cli

CLI = [sys.executable, "-c", "from reallod.cli import main; main()"]


def journal_tasks(path) -> int:
    try:
        return max(path.read_bytes().count(b"\n") - 1, 0)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("name", ["o.jsonl", "o.jsonl.gz"])  # gzip: each kill leaves the trace's member open
def test_sigkill_at_ten_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, name):
    pick = random.Random(20240501)
    server_rng = random.Random(7)  # answers are random: only the cache makes a rerun give the same

    def respond(body):
        return FakeReply(*chat_reply(valid_decision(body, server_rng)), delay_s=server_rng.uniform(0.005, 0.03))

    with FakeChatServer(respond) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, concurrency=4)
        src = many_tasks(tmp_path / "in", 60)
        out, cache = tmp_path / "out" / name, tmp_path / "cache.sqlite"
        journal = tmp_path / "out" / "o.journal.jsonl"
        def command(target):
            return [*CLI, "realign", str(src), "--config", str(cfg), "--out", str(target), "--cache", str(cache),
                    "--no-progress"]

        args = command(out)
        kills = 0
        for _ in range(10):
            target = journal_tasks(journal) + pick.randint(0, 6)  # 0: kill during start-up
            proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while proc.poll() is None and journal_tasks(journal) < target and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(pick.uniform(0, 0.03))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(30)
        assert kills >= 8, "the run finished too early for the kills to mean anything"
        final = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
        before = len(server.requests)
        ref = subprocess.run(command(tmp_path / "ref" / "r.jsonl"), cwd=REPO, capture_output=True, text=True,
                             timeout=120)  # plain: its trace is the reference for both
        assert ref.returncode == 0, ref.stderr
        assert len(server.requests) == before  # the uninterrupted rerun came entirely from the cache
    assert read_jsonl(out) == read_jsonl(tmp_path / "ref" / "r.jsonl")
    _, done = read_journal(journal)
    assert sorted(done, key=int) == [str(i) for i in range(60)]
    assert journal.read_bytes().count(b"\n") == 61  # header + one line per task: none twice
    entries = list(read_trace(trace_path_for(out))[1])
    assert sorted((e["task_id"] for e in entries), key=int) == [str(i) for i in range(60)]
    assert all(e["result"]["steps"] for e in entries)  # every task's full entry, none rebuilt from the journal
    ref_journal = read_journal(tmp_path / "ref" / "r.journal.jsonl")[1]
    assert {k: (v["verdict"], v["expression"]) for k, v in done.items()} == \
        {k: (v["verdict"], v["expression"]) for k, v in ref_journal.items()}


def test_a_server_failing_one_request_in_five(tmp_path, capsys):
    rng = random.Random(11)
    kinds = []
    requests = []
    forced = [0.0, 0.06, 0.1, 0.14, 0.16, 0.18]  # one of each fault among the first requests, whatever the timing

    def respond(body):
        x = rng.random()
        valid = valid_decision(body, rng)
        n = len(requests)
        requests.append(n)
        if n % 5 == 0 and n // 5 < len(forced):
            x = forced[n // 5]
        if x < 0.05:
            kinds.append("500")
            return error_reply(500, "internal error")
        if x < 0.09:
            kinds.append("429")
            return error_reply(429, "slow down", {"retry-after": "0.05"})
        if x < 0.13:
            kinds.append("timeout")
            return FakeReply(*chat_reply(valid), delay_s=1.0)
        if x < 0.15:
            kinds.append("truncated")
            return FakeReply(*chat_reply(valid), truncate=True)
        if x < 0.17:
            kinds.append("hung up")
            return FakeReply(*chat_reply(valid), hang_up=True)
        if x < 0.20:
            kinds.append("invalid")
            return chat_reply('{"verdict": "corr')
        return chat_reply(valid)

    with FakeChatServer(respond) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, timeout_s=0.4, concurrency=8)
        src = many_tasks(tmp_path / "in", 40)
        out = tmp_path / "o.jsonl"
        code, _, err = run_cli(["realign", src, "--config", cfg, "--out", out, "--report", tmp_path / "run"], capsys)
    assert code == 0, err
    assert {"500", "429", "timeout", "truncated", "hung up", "invalid"} <= set(kinds)
    _, done = read_journal(tmp_path / "o.journal.jsonl")
    assert sorted(done, key=int) == [str(i) for i in range(40)]
    for result in done.values():
        assert result["verdict"] in VERDICTS
        if result["verdict"] == "failed":
            assert result["error"]
    report = json.loads((tmp_path / "run.json").read_text())
    retried = report["run"]["requests"]["retries"]
    assert {"server", "rate_limit", "timeout", "connection"} <= set(retried), retried
    # every request sent is counted once, a call's that gave up after its retries included; the server
    # got them all but those the client gave up on before the server had read them whole (a timeout on
    # a loaded machine: the handler then reads a body cut short and records nothing)
    sent = sum(r["attempts"] for r in report["roles"].values())
    timed_out = retried.get("timeout", 0) + (report["run"]["requests"].get("gave_up") or {}).get("timeout", 0)
    assert len(server.requests) <= sent <= len(server.requests) + timed_out, (sent, len(server.requests), timed_out)
    assert report["tasks"] == 40 and sum(report["verdicts"].values()) == 40
    assert "## Requests (this session)" in (tmp_path / "run.md").read_text()
    assert len(read_jsonl(out)) == 5


def test_an_endpoint_that_is_down_is_reported_once_and_the_run_stops(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = fake_server_config(tmp_path / "cfg.yaml", f"http://127.0.0.1:{port}/v1", concurrency=4)
    src = many_tasks(tmp_path / "in", 10)
    started = time.monotonic()
    code, _, err = run_cli(["realign", src, "--config", cfg, "--out", tmp_path / "o.jsonl"], capsys)
    assert code == 2 and time.monotonic() - started < 30
    assert err.count("endpoint unreachable") == 1 and err.count("\n") == 1
    assert "rerun the same command to resume" in err and "Traceback" not in err
    _, done = read_journal(tmp_path / "o.journal.jsonl")
    assert done == {}  # no task was charged with the endpoint's failure
    assert not (tmp_path / "o.jsonl").exists()


# --- Ctrl-C -------------------------------------------------------------------------------------


def wait_for(predicate, proc, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.02)


def interrupt(proc, sig: int = signal.SIGINT) -> tuple[float, str]:
    """SIGINT, as Ctrl-C sends it (or ``sig``); (seconds until the process ended, its stderr)."""
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return time.monotonic() - sent, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_mid_run_stops_at_once_says_what_is_safe_and_a_rerun_resumes(tmp_path, sig):
    """SIGTERM (a scheduler's preemption) does what Ctrl-C does."""
    rng = random.Random(5)

    def respond(body):  # slow enough that the run is mid-way when interrupted
        return FakeReply(*chat_reply(valid_decision(body, rng)), delay_s=0.1)

    with FakeChatServer(respond) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, concurrency=2)
        out, journal = tmp_path / "o.jsonl", tmp_path / "o.journal.jsonl"
        args = [*CLI, "realign", str(REPO / "examples" / "realdata.jsonl"), "--images", str(REPO / "examples" / "images"),
                "--config", str(cfg), "--out", str(out), "--cache", str(tmp_path / "cache.sqlite"), "--no-progress"]
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: journal_tasks(journal) >= 2, proc)
        took, err = interrupt(proc, sig)
        assert proc.returncode == 130 and took < 10, (took, err)
        done = len(read_journal(journal)[1])
        assert 2 <= done < 22
        assert err.strip() == f"interrupted: {done} task(s) are in the journal {journal}; rerun the same command " \
                              "to resume", err
        assert not out.exists()
        rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"22 ({done} resumed from the journal, {22 - done} run now)" in rerun.stdout
    assert len(read_journal(journal)[1]) == 22


SLOW_MODEL = """
import pathlib, sys, time
import reallod.llm.backends.packaged as packaged
import reallod.llm.backends.transformers_backend as tb

def stand_in(package):  # no GGUF assembled: the model never loads anyway
    path = pathlib.Path(sys.argv[1]) / "models" / "stand-in.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF stand-in")
    return path

def loading(*args):  # what Gemma does for over a minute on a small CPU, holding its worker thread
    (pathlib.Path(sys.argv[1]) / "loading").write_text("now")
    time.sleep(120)

packaged.packaged_gguf, tb._load = stand_in, loading
from reallod.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("command", ["realign", "pipeline", "agent-eval"])
def test_ctrl_c_while_the_offline_model_loads_stops_at_once(tmp_path, command):
    examples = REPO / "examples"
    out = tmp_path / "o.jsonl"
    args = {
        "realign": ["realign", str(examples / "realdata.jsonl"), "--images", str(examples / "images"), "--out", str(out)],
        "pipeline": ["pipeline", "--annotations", str(examples / "annotations.json"), "--images",
                     str(examples / "images"), "--out", str(out), "--limit", "1"],
        "agent-eval": ["agent-eval", str(examples / "labelled.jsonl"), "--images", str(examples / "images")],
    }[command]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MODEL, str(tmp_path), *args, "--config", "offline",
                             "--no-cache"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for((tmp_path / "loading").exists, proc)
    took, err = interrupt(proc)
    assert proc.returncode == 130 and took < 10, (took, err)
    said = {"realign": f"interrupted: 0 task(s) are in the journal {tmp_path / 'o.journal.jsonl'}; rerun the same "
                       "command to resume",
            "pipeline": f"interrupted: 0 image(s) are in the journal {tmp_path / 'o.generated.journal.jsonl'}; rerun "
                        "the same command to resume",
            "agent-eval": "interrupted: agent-eval ran in a temporary folder (no --out), so nothing was kept; pass "
                          "--out to make a run resumable"}[command]
    assert err.strip() == said, err
