"""The shape of the ``reallod`` command: sections in data-flow order, every data tool listed, a working
``--version``, and a CLI package made of thin files."""

from __future__ import annotations

import re
from pathlib import Path

import reallod
from tests.cli_helpers import run_cli

CLI_DIR = Path(reallod.__file__).parent / "cli"
DATA_FLOW = ("data", "generate", "pipeline", "realign", "agent-eval", "agent", "detect", "convert-checkpoint", "train",
             "eval", "demo")
DATA_TOOLS = ("validate", "stats", "convert", "filter", "sample", "split", "merge", "show")


def listed_commands(help_text: str) -> list[str]:
    """Command names of a help page's Commands section, in the order shown (plain or rich layout)."""
    section = help_text.split("Commands", 1)[1]
    names = [m.group(1) for m in re.finditer(r"^[│|]?\s{1,3}([a-z][a-z-]*)\s{2,}\S", section, flags=re.M)]
    return names


def test_top_level_help_lists_commands_in_data_flow_order(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    assert listed_commands(out) == list(DATA_FLOW)


def test_data_help_lists_every_tool_in_order(capsys):
    code, out, _ = run_cli(["data", "--help"], capsys)
    assert code == 0
    assert listed_commands(out) == list(DATA_TOOLS)


def test_version_prints_the_version_and_exits_0(capsys):
    code, out, err = run_cli(["--version"], capsys)
    assert code == 0, err
    assert out.strip() == reallod.__version__


def test_cli_files_are_thin():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in CLI_DIR.glob("*.py")}
    assert {"__init__.py", "common.py", "data.py", "realign.py"} <= set(sizes)
    assert max(sizes.values()) <= 350, sizes


def test_realign_argv_defaults_to_run_and_reads_a_bare_ray_as_local():
    from reallod.cli.realign import realign_argv

    subcommands = ("run", "merge")
    assert realign_argv(["in.jsonl", "--config", "c"], subcommands) == ["run", "in.jsonl", "--config", "c"]
    assert realign_argv([], subcommands) == ["run"]
    assert realign_argv(["merge", "a.jsonl"], subcommands) == ["merge", "a.jsonl"]
    assert realign_argv(["x", "--ray"], subcommands) == ["run", "x", "--ray", "local"]
    assert realign_argv(["--ray", "--ray-shards", "2"], subcommands) == ["run", "--ray", "local", "--ray-shards", "2"]
    assert realign_argv(["--ray", "head:6379", "x"], subcommands) == ["run", "--ray", "head:6379", "x"]
    assert realign_argv(["--ray", "x.jsonl"], subcommands) == ["run", "--ray", "local", "x.jsonl"]
