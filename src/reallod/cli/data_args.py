"""What the ``reallod data`` commands share: ``-`` for standard input and output, ``--source``, and the
line that says what a command wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from reallod.cli.common import reports_to_stderr


def stdin_path(path: Any) -> Any:
    """``-`` is standard input, as for most Unix tools: read as ``/dev/stdin`` (a pipe, read once)."""
    if isinstance(path, list):
        return [stdin_path(p) for p in path]
    return Path("/dev/stdin") if path is not None and str(path) == "-" else path


def stdout_path(path: Any) -> Any:
    """``-`` is standard output (written through as ``/dev/stdout``; the command's report goes to stderr)."""
    return Path("/dev/stdout") if path is not None and str(path) == "-" else path


SourcesOpt = Annotated[list[str] | None, typer.Option(
    "--source", "-s", help="Use only this source (vlm_short, vlm_long, llm, category...); repeat for several. "
    "Default: every source.", show_default=False)]


def say_written(summary: str, *outputs: Path) -> None:
    """Say what a command wrote; on stderr when an output is a pipe or a device (the data stream)."""
    typer.echo(f"{' + '.join(map(str, outputs))}: {summary}", err=reports_to_stderr(*outputs))
