"""Every option of every ``reallod`` command says what it does in ``--help``."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import typer

from reallod.cli import app

EXEMPT = {"--help", "--version"}  # Typer's and the root's own, self-explanatory


def commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) of every command that is not hidden, groups included (typer vendors its own
    click, so the walk is duck-typed). A hidden command is left out, unless it is a group's default
    (``reallod realign INPUT`` runs the hidden ``run``): its options are what users type."""
    found = [(path, command)]
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and (not sub.hidden or (path, name) == (("realign",), "run")):
                found.extend(commands(sub, (*path, name)))
    return found


def test_no_option_has_an_empty_help_text():
    blank = []
    walked = commands(typer.main.get_command(app))
    for path, command in walked:
        for param in command.params:
            if param.param_type_name != "option" or param.hidden or EXEMPT & set(param.opts):
                continue
            if not (getattr(param, "help", None) or "").strip():
                blank.append(f"reallod {' '.join(path)} {'/'.join(param.opts)}")
    assert len(walked) > 20, [p for p, _ in walked]
    assert not blank, f"options without a help text: {blank}"


def test_every_command_lists_a_short_summary():
    """A group's help lists each command by its help's first paragraph: it must read as one summary,
    not the whole text with its example (``agent-eval`` once filled ten lines of ``reallod --help``)."""
    long = {}
    for path, command in commands(typer.main.get_command(app)):
        first = inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0]
        if not first.strip() or len(first) > 200:
            long[" ".join(path)] = len(first)
    assert not long, f"commands whose summary is empty or over 200 characters: {long}"


def test_flags_show_no_value_type_and_help_texts_keep_their_brackets(capsys, monkeypatch):
    """Typer's rich help showed `--show <bool>` (as if `--show true` worked: it is an error), and an
    unescaped `[default: ...]` in a help text vanished as rich markup."""
    from tests.cli_helpers import run_cli

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["detect", "--help"], capsys)
    assert code == 0
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ --")}
    assert "<bool>" not in rows["--show"] and "<bool>" not in rows["--no-save-vis"]
    assert "<int range>" in rows["--batch-size"]  # options that take a value keep their type
    for command in (["detect"], ["eval", "omnilabel"], ["demo", "model"]):
        code, out, _ = run_cli([*command, "--help"], capsys)
        device = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("--device"))
        assert "[default: cuda if available" in device, (command, device)


def test_the_cli_default_pixel_budget_is_the_libraries():
    """cli/common.py repeats the number so that `reallod data ...` does not import PIL to show help."""
    from reallod.cli.common import MAX_PIXELS
    from reallod.data.images import DEFAULT_MAX_PIXELS

    assert MAX_PIXELS == DEFAULT_MAX_PIXELS


def test_every_command_summary_is_one_line_of_its_docstring():
    """A group's listing keeps the summary's line breaks: `detect` read "... and one" / "labelled picture"."""
    broken = {" ".join(path): first for path, command in commands(typer.main.get_command(app))
              if "\n" in (first := inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0])}
    assert not broken, broken


def _help(args: list[str], capsys, monkeypatch) -> str:
    from tests.cli_helpers import run_cli

    monkeypatch.setenv("COLUMNS", "1000")  # one line per help text: phrases are not broken
    code, out, _ = run_cli([*args, "--help"], capsys)
    assert code == 0
    return " ".join(out.replace("│", " ").split())


def test_the_shipped_agent_configs_named_in_help_are_those_shipped(capsys, monkeypatch):
    """`pipeline`/`generate --config` listed offline, vllm, published, without vllm-student."""
    from reallod.agent.agent_config import SHIPPED_DIR
    from reallod.cli.common import shipped_config_dir

    assert shipped_config_dir("agent") == SHIPPED_DIR
    names = sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))
    assert "vllm-student" in names
    for command in (["pipeline"], ["generate"], ["realign", "run"], ["agent-eval"], ["demo", "agent"]):
        assert f"{', '.join(names)})" in _help(command, capsys, monkeypatch), command


def test_data_help_names_every_data_command(capsys, monkeypatch):
    from reallod.cli.data import app as data_app

    listed = [c.name for c in typer.main.get_command(data_app).commands.values()]
    summary = _help(["data"], capsys, monkeypatch)
    assert f"Real-Data toolkit: {', '.join(sorted(listed, key=summary.index))}." in summary
    assert {"sample", "split", "merge"} <= set(listed)


def test_eval_help_says_what_topk_and_show_dir_do_for_each_benchmark(capsys, monkeypatch):
    """`eval ovdeval --topk` said "the metrics use at most 100" beside [default: 300]; `--show-dir` said
    <image id>.png, where OVDEval writes <subset>_<image id>.png."""
    ovd = _help(["eval", "ovdeval"], capsys, monkeypatch)
    assert "before OVDEval's NMS (the metrics then read at most 100 per image and description). [default: 300]" in ovd
    assert "<subset>_<image id>.png" in ovd
    assert "per image and description). [default: 100]" in _help(["eval", "d3"], capsys, monkeypatch)


@pytest.mark.parametrize("command", [["pipeline", "--annotations", "a.json", "--images", "."],
                                     ["realign", "data.jsonl", "--out", "o.jsonl"],
                                     ["agent-eval", "labelled.jsonl"]])
def test_a_folder_given_as_the_agent_config_is_named_a_folder(command, capsys, tmp_path, monkeypatch):
    """`--config configs/agent` was "no such config file"."""
    from tests.cli_helpers import run_cli

    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "mine.yaml").write_text("name: mine\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*command, "--config", "agent"], capsys)
    said = " ".join(err.replace("│", " ").split())
    assert code == 2 and "agent is a folder, not a config file: give one of its files (agent/mine.yaml)" in said
