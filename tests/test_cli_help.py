"""Every option of every ``reallod`` command says what it does in ``--help``."""

from __future__ import annotations

import inspect
from typing import Any

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
