"""The ``reallod`` command: a thin Typer layer that parses arguments and calls library functions.

One module per section, registered here in the order data flows (which is also the order of
``reallod --help``): ``data`` (Real-Data toolkit), ``generate`` / ``pipeline`` (engine), ``realign`` /
``agent-eval`` (agent), ``agent`` (fine-tuning the agent's models on its traces), ``detect`` /
``convert-checkpoint`` (model), ``train``, ``eval``, ``demo``.

Heavy modules (torch, transformers, gradio, the agent) are imported inside the commands that need
them, so ``reallod data ...`` starts fast and stays small in memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from reallod.cli import agent, data, demo, engine, model, realign, train
from reallod.cli import eval as eval_
from reallod.cli.common import ordered_group
from reallod.errors import Interrupted, ReallodError

__all__ = ["app", "main"]

SECTIONS = (data, engine, realign, agent, model, train, eval_, demo)
"""The CLI's sections, in the order data flows: each adds its commands with ``register(app)``."""

COMMANDS = ("data", "generate", "pipeline", "realign", "agent-eval", "agent", "detect", "convert-checkpoint",
            "train", "eval", "demo")
"""The commands, as ``reallod --help`` lists them (Typer would put single commands before groups)."""

app = typer.Typer(
    name="reallod", cls=ordered_group(*COMMANDS), no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Real-LOD: re-align language to visual objects, the Real-Data toolkit and Real-Model.",
)


def _print_version(value: bool) -> None:
    if value:
        from reallod import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True, callback=_print_version)] = False) -> None:
    # no docstring: the help is the Typer's; --version is eager, so it works without a command
    pass


for _section in SECTIONS:
    _section.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; errors a user can act on are printed as one line, never as a traceback.

    Exit status: 0 done; 1 an unexpected error, or a run in which every task failed; 2 an error in the
    input, the config or the environment (nothing or not everything ran; the message says what is
    safe); 130 interrupted (Ctrl-C, or SIGTERM: see :func:`sigterm_as_ctrl_c`), with what is safe when the
    run says so."""
    try:
        with sigterm_as_ctrl_c(), plain_warnings():
            app(args=argv)  # standalone: usage errors, --help and exit codes are handled by Typer
    except Interrupted as e:  # Ctrl-C in a command that says what is safe (train)
        _fail(str(e), e.exit_code)  # its message starts with "interrupted"
    except ReallodError as e:
        _fail(f"error: {e}", getattr(e, "exit_code", 2))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        _fail(f"error: {e.filename}: {e.strerror}", 2)
    except OSError as e:  # a full disk, an I/O error: the system's reason, not a bug of reallod
        if e.errno is None:  # an OSError subclass that is no system error (a client library's)
            _unexpected(e)
        _fail(f"error: {_os_error(e)}", 2)
    except KeyboardInterrupt as e:
        _fail(_interrupted(e), 130)
    except SystemExit as e:
        interrupt = _interrupt_behind(e)
        if interrupt is None:
            raise
        _fail(_interrupted(interrupt), 130)
    except Exception as e:
        _unexpected(e)


def _unexpected(e: Exception) -> None:
    if os.environ.get("REALLOD_DEBUG") == "1":
        raise e
    _fail(f"error: unexpected {type(e).__name__}: {e} (set REALLOD_DEBUG=1 for the traceback)", 1)


def _os_error(e: OSError) -> str:
    """``PATH: reason``, the path where the error names one; a full disk says what to do."""
    where = f"{e.filename}: " if e.filename is not None else ""
    hint = ("; free space on that disk, or write the output elsewhere"
            if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")
    return f"{where}{e.strerror}{hint}"


_PACKAGE = str(Path(__file__).resolve().parents[1]) + os.sep


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """reallod's own warnings (an expression cut to the text limit, letters no font has) are for the
    user: one line, ``warning: ...``, not Python's ``/path/file.py:113: UserWarning: ...`` with the
    source line. Other packages' warnings keep Python's form."""
    python_form = warnings.formatwarning

    def form(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        if str(filename).startswith(_PACKAGE):
            return f"warning: {message}\n"
        return python_form(message, category, filename, lineno, line)

    warnings.formatwarning = form
    try:
        yield
    finally:
        warnings.formatwarning = python_form


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM — a scheduler preempting the job, torchrun stopping the other workers when one fails,
    ``kill`` — stops a command as Ctrl-C does, so a long job keeps what it finished and says how to go
    on. Left alone where a SIGTERM handler is already set; where SIGINT is ignored (a background job of a
    script) SIGTERM keeps its default and ends the process."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _on_sigterm(signum: int, frame: object) -> None:
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)  # whatever Ctrl-C does here: asyncio's, training's, Python's own
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def _interrupt_behind(exit_: SystemExit) -> KeyboardInterrupt | None:
    """The Ctrl-C behind an exit: Typer turns a KeyboardInterrupt raised by a command into exit status
    130 (``Exit(130) from KeyboardInterrupt``) and prints nothing."""
    if exit_.code != 130:
        return None
    seen: BaseException | None = exit_
    for _ in range(4):
        seen = seen.__cause__ or seen.__context__ if seen is not None else None
        if isinstance(seen, KeyboardInterrupt):
            return seen
    return None


def _interrupted(e: KeyboardInterrupt) -> str:
    """``interrupted``, with the run's word on what is safe (a library's ``RunInterrupted`` message)."""
    said = str(e).strip()
    return f"interrupted: {said}" if said else "interrupted"


def _fail(message: str, code: int) -> None:
    typer.echo(message, err=True)
    sys.exit(code)
