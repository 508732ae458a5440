"""Every shell example of README.md and docs/*.md is run, or visibly marked and parse-checked.

One test case per fenced block, id ``FILE:LINE`` (the line of its opening fence). An unmarked block
is run command by command, in-process through ``reallod.cli.main``, in a temporary working directory
where the paths the docs use for "your data" hold small fixtures (``PLACEHOLDERS`` in
``tests/docs_examples.py``: the bundled example, the tiny random detector, synthetic benchmark sets),
every server URL is a local fake OpenAI-compatible server answering valid decisions and generations,
and every absolute path is moved into the temporary directory. Each command must exit 0 (or its
documented status, ``EXPECTED_EXIT``) and leave the files it names as outputs. A block marked
``*Not run by the tests: REASON.*`` is parse-checked: its reallod commands and options exist.

Three kinds of command are run differently from the page, so that the suite stays fast:

- ``--config offline`` (Gemma 3 270M in-process, about a minute a run on 2 cores) uses a copy of the
  offline config whose LLM roles talk to the fake server (still no VLM). The same blocks run with the
  real offline model in ``test_doc_example_with_the_offline_model``, marked ``slow``.
- ``reallod train`` gets ``--cfg-options`` from ``TRAIN_QUICK``: two steps on 16 generated images
  instead of a few minutes.
- ``reallod demo`` builds the page and serves it on a free port of 127.0.0.1; the tests load the page
  once and close it instead of serving until Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import socket
import traceback
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.agent.fake_openai_server import FakeChatServer, chat_reply, role_of, valid_decision
from tests.cli_helpers import run_cli
from tests.docs_examples import (
    EXPECTED_EXIT,
    MARKER_PREFIX,
    REASONS,
    ROOT,
    Block,
    Command,
    Plan,
    Sandbox,
    doc_blocks,
    doc_plans,
    outputs,
    plan_block,
    python_code,
    read_blocks,
    reallod_args,
    split_commands,
)
from tests.engine.scripted_models import DEFAULTS, category_in, prompt_text, step_of

BLOCKS = doc_blocks()
MIN_BLOCKS = 32  # the shell blocks of README.md and docs/*.md when the harness was written


@functools.cache
def plans() -> dict[str, Plan]:
    return doc_plans(BLOCKS)


# ------------------------------------------------------------------------------------------ fixtures
def doc_answers(rng: random.Random):
    """A responder for the fake server: valid decisions for the agent's roles (tests.agent), scripted
    generations for the data engine's steps (tests.engine), chosen from the request itself."""

    def answer(body: dict[str, Any]):
        if role_of(body) != "unknown":
            return chat_reply(valid_decision(body, rng))
        text = prompt_text(body["messages"])
        image = any(isinstance(m["content"], list) and any(p.get("type") == "image_url" for p in m["content"])
                    for m in body["messages"])
        step = step_of("vlm" if image else "rewriter", text)
        return chat_reply(DEFAULTS[step](category_in(text), text) if step in DEFAULTS else "{}")

    return answer


@pytest.fixture(scope="module")
def doc_server():
    with FakeChatServer(responder=doc_answers(random.Random(0))) as server:
        yield server


@pytest.fixture(scope="module")
def fake_configs(doc_server, tmp_path_factory) -> dict[str, Path]:
    """The shipped offline and vllm configs with every role's server the fake one (offline: the
    Gemma roles become openai roles; vllm: only the URLs change)."""
    folder = tmp_path_factory.mktemp("doc-configs")
    out = {}
    for name in ("offline", "vllm"):
        cfg = yaml.safe_load((ROOT / "configs" / "agent" / f"{name}.yaml").read_text())
        for role, spec in cfg["roles"].items():
            if spec is None:
                continue
            if spec.get("backend") != "openai":
                spec = {"backend": "openai", "model": f"fake-{role}", "max_tokens": 64, "temperature": 0.0}
            cfg["roles"][role] = {**spec, "base_url": doc_server.url, "timeout_s": 30}
        cfg["name"] = f"{name}-fake-server"
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out[name] = path
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_once(monkeypatch) -> None:
    """``reallod demo``: serve the page on a free port, load it once, close it, return."""
    from reallod.demo import agent_app, model_app, server

    real_launch = server.launch

    def launch(blocks, options, limits, *, block=True, cleanup=None):
        running = real_launch(blocks, dataclasses.replace(options, server_port=free_port()), limits,
                              block=False, cleanup=cleanup)
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(running.url, timeout=60) as reply:
                assert reply.status == 200, f"the page answered {reply.status}"
        finally:
            running.close()
        return running

    monkeypatch.setattr(model_app, "launch", launch)
    monkeypatch.setattr(agent_app, "launch", launch)


# ------------------------------------------------------------------------------------------ running
def run_command(cmd: Command, doc: str, sandbox: Sandbox, capsys, monkeypatch) -> str | None:
    """Run one command; None when it did what the page says, else why not."""
    where = f"{doc}:{cmd.line}"
    with monkeypatch.context() as mp:
        for name, value in cmd.env:
            mp.setenv(name, sandbox.word(value))
        code = python_code(cmd.argv)
        if code is not None:
            try:
                exec(compile(code, where, "exec"), {"__name__": "__main__"})
                status, out, err = 0, *capsys.readouterr()
            except Exception:
                status, out, err = 1, "", traceback.format_exc()
            args: list[str] = []
        else:
            args = sandbox.argv(reallod_args(cmd.argv) or [])
            if args[:1] == ["demo"]:
                serve_once(mp)
            status, out, err = run_cli(args, capsys)
    if cmd.stdout:
        (sandbox.cwd / sandbox.word(cmd.stdout)).write_text(out)
    expected = EXPECTED_EXIT.get(where, 0)
    if status != expected:
        tail = "\n".join((err or out).strip().splitlines()[-15:])
        return f"{where}: `{cmd.text}` exited with {status} (expected {expected}):\n{tail}"
    if expected != 0:
        return None
    written = (outputs(args) if args else []) + [sandbox.word(f) for f in cmd.writes]
    missing = [f for f in written if not (sandbox.cwd / f).exists()]
    if missing:
        return f"{where}: `{cmd.text}` exited with 0 but did not write {', '.join(missing)}"
    return None


def run_plan(plan: Plan, sandbox: Sandbox, capsys, monkeypatch) -> None:
    """Every command of the block in order (later ones read what earlier ones wrote); all failures
    are reported together."""
    monkeypatch.chdir(sandbox.cwd)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    failures = [f for cmd in plan.commands if (f := run_command(cmd, plan.block.doc, sandbox, capsys, monkeypatch))]
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_example(block: Block, request, tmp_path, capsys, monkeypatch) -> None:
    """Run the example (offline config against the fake server, train for 2 steps, demos served once),
    or, when it is marked, check that its reallod commands and options exist."""
    plan = plans()[block.id]
    assert not plan.problems, "\n".join(plan.problems)
    if plan.kind == "parse":
        return  # plan_block parse-checked every reallod command
    sandbox = Sandbox(tmp_path, server_url=request.getfixturevalue("doc_server").url,
                      configs=request.getfixturevalue("fake_configs"),
                      detector=request.getfixturevalue("tiny_model_dir"))
    run_plan(plan, sandbox, capsys, monkeypatch)


OFFLINE = [b for b in BLOCKS if "--config offline" in " ".join(b.lines) and not b.marker]


@pytest.mark.slow
@pytest.mark.parametrize("block", OFFLINE, ids=[b.id for b in OFFLINE])
def test_doc_example_with_the_offline_model(block: Block, request, tmp_path, capsys, monkeypatch) -> None:
    """The examples that name ``--config offline``, with the real Gemma 3 270M in-process."""
    plan = plans()[block.id]
    assert not plan.problems, "\n".join(plan.problems)
    configs = {k: v for k, v in request.getfixturevalue("fake_configs").items() if k != "offline"}
    sandbox = Sandbox(tmp_path, server_url=request.getfixturevalue("doc_server").url, configs=configs,
                      detector=request.getfixturevalue("tiny_model_dir"))
    run_plan(plan, sandbox, capsys, monkeypatch)


# ------------------------------------------------------------------------------------------ the harness
def test_the_docs_have_their_examples() -> None:
    assert len(BLOCKS) >= MIN_BLOCKS, f"{len(BLOCKS)} shell blocks; were there not {MIN_BLOCKS}?"
    kinds = [plans()[b.id].kind for b in BLOCKS]
    assert kinds.count("run") > kinds.count("parse"), "most examples should run"
    problems = [p for b in BLOCKS for p in plans()[b.id].problems]
    assert not problems, "\n".join(problems)


def _plan(text: str) -> Plan:
    blocks = read_blocks(text, "synthetic.md")
    assert len(blocks) == 1
    return plan_block(blocks[0])


def test_an_unmarked_block_the_harness_cannot_run_fails_naming_file_and_line() -> None:
    plan = _plan("# Title\n\nSome text.\n\n```bash\nreallod data stats x.jsonl\npip install reallod\n```\n")
    assert plan.kind == "run"
    assert len(plan.problems) == 1 and plan.problems[0].startswith("synthetic.md:7: the tests cannot run `pip")
    assert MARKER_PREFIX in plan.problems[0]


def test_a_marked_block_is_parse_checked_and_needs_a_known_reason() -> None:
    marked = "text\n\n*Not run by the tests: needs a GPU and the internet.*\n\n```bash\n{}\n```\n"
    plan = _plan(marked.format("pip install vllm\nreallod detect photos/ m --device cuda --dtype fp16"))
    assert plan.kind == "parse" and plan.reasons == ("needs a GPU", "needs the internet") and not plan.problems
    bad_option = _plan(marked.format("reallod detect photos/ m --gpu"))
    assert bad_option.problems and "synthetic.md:6" in bad_option.problems[0] and "--gpu" in bad_option.problems[0]
    bad_command = _plan(marked.format("reallod data frobnicate x.jsonl"))
    assert bad_command.problems and "no such command" in bad_command.problems[0]
    launcher = _plan(marked.format("torchrun --nproc_per_node 8 $(which reallod) eval d3 --annotations a --nope"))
    assert launcher.problems and "--nope" in launcher.problems[0]
    unknown = _plan("*Not run by the tests: needs a quantum computer.*\n```bash\nreallod data stats x\n```\n")
    assert unknown.problems and "unknown reason" in unknown.problems[0] and "synthetic.md:2" in unknown.problems[0]
    misspelt = _plan("*not run by the tests (GPU)*\n```bash\nreallod data stats x\n```\n")
    assert misspelt.problems and "a marker reads" in misspelt.problems[0]
    assert set(REASONS) >= set(plan.reasons)


def test_non_shell_blocks_are_not_examples() -> None:
    text = "```yaml\nname: x\n```\n```python\nimport os\n```\n```\nplain\n```\n```console\nreallod --help\n```\n"
    assert [b.lang for b in read_blocks(text, "x.md")] == ["console"]


def test_commands_are_split_as_a_shell_would() -> None:
    block = read_blocks(
        "```bash\n"
        "M=models/m        # a folder\n"
        "reallod eval d3 --model $M \\\n"
        "    --out 'a b.json'  # → a.json, b.md\n"
        "reallod data validate x.jsonl && reallod data stats \"${M}/x.jsonl\"   # two\n"
        "REALLOD_DEBUG=1 reallod data validate x.jsonl --json > report.json\n"
        "reallod detect p.jpg m --texts '$: coco'   # not a # comment inside '#quotes'\n"
        "reallod realign in.jsonl --config c --out out/s1.jsonl --shard 1/3   # ... 3/3\n"
        "```\n", "x.md")[0]
    cmds = split_commands(block)
    assert [c.line for c in cmds] == [3, 5, 5, 6, 7, 8, 8, 8]
    assert cmds[0].argv == ("reallod", "eval", "d3", "--model", "models/m", "--out", "a b.json")
    assert cmds[0].writes == ("a.json", "b.md")
    assert cmds[2].argv == ("reallod", "data", "stats", "models/m/x.jsonl")
    assert cmds[3].env == (("REALLOD_DEBUG", "1"),) and cmds[3].stdout == "report.json"
    assert cmds[4].argv[-1] == "$: coco"
    assert [c.argv[-1] for c in cmds[5:]] == ["1/3", "2/3", "3/3"]
    assert [c.argv[-3] for c in cmds[5:]] == ["out/s1.jsonl", "out/s2.jsonl", "out/s3.jsonl"]
    assert reallod_args(("torchrun", "--nproc_per_node", "2", "-m", "reallod", "train", "c.yaml")) == ["train", "c.yaml"]
    assert reallod_args(("python", "-m", "reallod", "data", "stats")) == ["data", "stats"]
    assert reallod_args(("vllm", "serve", "m")) is None and python_code(("python", "-c", "print(1)")) == "print(1)"


def test_a_console_block_runs_the_lines_after_its_prompt() -> None:
    block = read_blocks("```console\n$ reallod data stats x.jsonl \\\n    --json\n{\"total\": 1}\n```\n", "x.md")[0]
    assert [c.argv for c in split_commands(block)] == [("reallod", "data", "stats", "x.jsonl", "--json")]


def test_an_unset_variable_or_a_pipe_is_a_problem_of_the_block() -> None:
    problems = _plan("```bash\nreallod eval d3 --model $M\n```\n").problems
    assert problems == ["synthetic.md:2: $M is not set earlier on the page"]
    assert "'|'" in _plan("```bash\nreallod data stats x --json | jq .\n```\n").problems[0]


def test_the_realign_default_command_and_merge_resolve() -> None:
    assert not _plan("```bash\nreallod realign in.jsonl --config vllm --out o.jsonl --ray auto\n"
                     "reallod realign merge a.jsonl b.jsonl --out o.jsonl\n```\n").problems
    assert "--frobnicate" in _plan("```bash\nreallod realign in.jsonl --frobnicate\n```\n").problems[0]
