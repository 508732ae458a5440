"""The ``reallod`` command: a thin Typer layer that parses arguments and calls library functions.

Heavy modules (torch, transformers, gradio) are imported inside the commands that need them, so
``reallod data ...`` starts fast and stays small in memory.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from reallod.errors import ReallodError

app = typer.Typer(
    name="reallod", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Real-LOD: re-align language to visual objects, the Real-Data toolkit and Real-Model.",
)
data_app = typer.Typer(no_args_is_help=True, help="Real-Data toolkit: validate, stats, convert, filter, show.")
app.add_typer(data_app, name="data")


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        from reallod import __version__

        typer.echo(__version__)
        raise typer.Exit()


# ---------------------------------------------------------------------------------------------
# reallod data ...
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reallod realign ... (agent)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reallod detect / convert-checkpoint (model)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; errors a user can act on are printed as one line, never as a traceback."""
    try:
        app(args=argv)  # standalone: usage errors, --help and exit codes are handled by Typer
    except ReallodError as e:
        _fail(f"error: {e}", 2)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        _fail(f"error: {e.filename}: {e.strerror}", 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:
        if os.environ.get("REALLOD_DEBUG") == "1":
            raise
        _fail(f"error: unexpected {type(e).__name__}: {e} (set REALLOD_DEBUG=1 for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    typer.echo(message, err=True)
    sys.exit(code)
