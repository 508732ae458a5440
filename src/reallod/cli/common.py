"""What the sections of the CLI share: command order in help, the console, ``--image-size``, quiet
transformers, the progress bar (or lines, in a log), a few options that read the same everywhere, and
:func:`with_options` for commands that share a block of options.

Nothing heavy is imported here: rich, transformers and the agent are imported inside the helpers.
"""

from __future__ import annotations

import inspect
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

import typer
import typer.core

from reallod.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from rich.console import Console

    from reallod.runs.progress import RunMonitor

F = TypeVar("F", bound="Callable[..., Any]")


class OrderedGroup(typer.core.TyperGroup):
    """A command group whose help lists its commands in ``order`` (the order data flows), not
    alphabetically nor Typer's commands-before-sub-groups; commands missing from ``order`` come last,
    as registered. Make one with :func:`ordered_group`."""

    order: ClassVar[tuple[str, ...]] = ()

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(self.commands, key=lambda name: rank.get(name, len(rank)))


def _flags_show_no_type() -> None:
    """Typer's rich help (0.2x) shows a type for every option, flags included: ``--show <bool>`` reads as
    if the flag took a value, and ``--show true`` is an error. Flags show none, as click's own help does.
    Left alone where Typer has no such method (other versions render types their own way)."""
    option = typer.core.TyperOption
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "flags_show_no_type", False):
        return

    def display_type_rich(self: typer.core.TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag and not self.count else shown(self, ctx)

    display_type_rich.flags_show_no_type = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()


def ordered_group(*names: str) -> type[OrderedGroup]:
    """An :class:`OrderedGroup` class listing ``names`` in this order (pass it as ``typer.Typer(cls=...)``)."""
    return type("OrderedGroup", (OrderedGroup,), {"order": names})


def console(stderr: bool = False) -> Console:
    """Rich console on stdout (or stderr); wide when piped, so tables are not squeezed to 80 columns. No
    markup: what it prints holds the user's paths, file names and errors, in which Rich took ``[x]`` for a
    tag and dropped it (``out-[x].jsonl`` shown as ``out-.jsonl``); styles are given as ``Text`` styles."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(width=None if stream.isatty() else 160, highlight=False, markup=False, stderr=stderr)


def reports_to_stderr(*outputs: str | os.PathLike | None) -> bool:
    """Whether a command's report goes to stderr: when one of its data outputs is a pipe or a device
    (``/dev/stdout``, a FIFO), which the report would otherwise be mixed into."""
    from reallod.data.io import writes_through

    return any(out is not None and writes_through(out) for out in outputs)


def parse_image_size(value: str | None) -> tuple[int, int] | None:
    """``--image-size SHORT,LONG`` as (short, long); None stays None (the model's preprocessor decides)."""
    if value is None:
        return None
    try:
        short, long = (int(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter("expected SHORT,LONG, e.g. 800,1333", param_hint="--image-size") from None
    return short, long


def quiet_transformers() -> None:
    """No per-tensor progress bars or advisory warnings from transformers in the CLI's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


PROGRESS_INTERVAL_ENV = "REALLOD_PROGRESS_INTERVAL"


def progress_monitor(progress: bool | None, *, description: str = "re-aligning",
                     labels: Sequence[str] | None = None) -> RunMonitor | None:
    """A progress bar on stderr when ``--progress`` says so (None: when stderr is a terminal), else None.

    On a stderr that is no terminal (``--progress 2> job.log``) a live bar draws nothing until the run
    ends, so it is a plain line every ``$REALLOD_PROGRESS_INTERVAL`` seconds (default 30) instead."""
    from rich.console import Console

    err = Console(stderr=True)
    if not (progress if progress is not None else err.is_terminal):
        return None
    from reallod.runs.progress import LineMonitor, RichMonitor

    if err.is_terminal:
        return RichMonitor(err, description=description, labels=labels)
    return LineMonitor(sys.stderr, description=description, labels=labels, interval=progress_interval())


def progress_interval() -> float:
    """Seconds between the progress lines of a log: ``$REALLOD_PROGRESS_INTERVAL`` (a number > 0), else 30."""
    from reallod.runs.progress import DEFAULT_LINE_INTERVAL_S

    raw = os.environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_LINE_INTERVAL_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds < float("inf")):
        raise ConfigError(f"{PROGRESS_INTERVAL_ENV}={raw!r}: expected seconds between progress lines, a number > 0 "
                          f"(default {DEFAULT_LINE_INTERVAL_S:g})")
    return seconds


@contextmanager
def data_progress(progress: bool | None, command: str, inputs: Sequence[str | os.PathLike], *,
                  passes: int = 1) -> Iterator[None]:
    """How far a data command has read ``inputs`` (``passes`` times each), shown while the block runs: a
    bar on stderr when ``--progress`` says so (None: when stderr is a terminal); into a log, a plain line
    every ``$REALLOD_PROGRESS_INTERVAL`` seconds. The total is unknown when an input is a pipe."""
    from rich.console import Console

    err = Console(stderr=True, markup=False, highlight=False)  # a command's lines put above the bar stay as written
    if not (progress if progress is not None else err.is_terminal):
        yield
        return
    from reallod.data.io import is_stream
    from reallod.data.meter import metered
    from reallod.runs.meter_display import LineMeter, RichMeter

    meter = (RichMeter(err, command, stdout_too=sys.stdout.isatty()) if err.is_terminal
             else LineMeter(sys.stderr, command, interval=progress_interval()))
    try:
        total: int | None = None if any(is_stream(p) for p in inputs) else passes * sum(
            os.path.getsize(p) for p in inputs)
    except OSError:  # missing, unreadable: the command's reading names it
        total = None
    names = [os.path.basename(os.fspath(p)) for p in inputs]
    with metered(meter):
        meter.phase(f"reading {names[0]}" if len(names) == 1 else f"reading {len(names)} files", total)
        yield


# --- options that read the same in several commands ---------------------------------------------


def with_options(shared: Callable[..., Any], *, own_first: bool = False) -> Callable[[F], F]:
    """Give a command the options that ``shared``'s signature declares, so that commands sharing a block
    of options declare each of them once; the command takes their values as ``**kwargs`` (and usually
    hands them on to ``shared``).

    The command's options are ``shared``'s followed by its own (its own first with ``own_first``); an own
    parameter named like one of ``shared``'s takes that one's place, with its own default or help text.
    """

    def decorate(command: F) -> F:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.kind is not p.VAR_KEYWORD]
        replacing = {p.name: p for p in own}
        block = [replacing.pop(p.name, p) for p in inspect.signature(shared, eval_str=True).parameters.values()]
        rest = [p for p in own if p.name in replacing]
        params = [*rest, *block] if own_first else [*block, *rest]
        # keyword-only: Typer passes keywords, and a required option may then follow one with a default
        command.__signature__ = inspect.Signature([p.replace(kind=p.KEYWORD_ONLY) for p in params])  # type: ignore[attr-defined]
        return command

    return decorate


def shipped_config_dir(kind: str) -> Path:
    """``configs/KIND`` (``agent``, ``train``) of the checkout (editable install) or, from a wheel,
    ``<prefix>/share/reallod/configs/KIND``: where :mod:`reallod.agent.agent_config` looks, found without
    importing the agent (the help lists the shipped names)."""
    checkout = Path(__file__).resolve().parents[3] / "configs" / kind
    installed = Path(sys.prefix) / "share" / "reallod" / "configs" / kind
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


def shipped_configs(kind: str) -> list[str]:
    """The names (file stems) of the shipped configs of ``kind``."""
    folder = shipped_config_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


SHIPPED_AGENT_CONFIGS = ", ".join(shipped_configs("agent"))
AGENT_CONFIG_HELP = f"Agent config: a YAML file or a shipped name ({SHIPPED_AGENT_CONFIGS})."
BASE_URL_HELP = "Point every openai-backend role at this server (also REALLOD_BASE_URL)."


def config_file_value(value: str | None) -> str | None:
    """A folder given as an agent ``--config`` is refused as the option's value, before the command's work."""
    if value is not None and Path(value).expanduser().is_dir():
        from reallod.agent.agent_config import resolve_config_path

        try:
            resolve_config_path(value)
        except ConfigError as e:
            raise typer.BadParameter(str(e), param_hint="--config") from None
    return value


ReadProgress = Annotated[bool | None, typer.Option(
    "--progress/--no-progress", help="Bar of the bytes read, speed and time left, on stderr; into a log (stderr no "
    "terminal), a plain line every 30 s ($REALLOD_PROGRESS_INTERVAL) (default: on a terminal only).",
    show_default=False)]
AgentConfig = Annotated[str, typer.Option("--config", help=AGENT_CONFIG_HELP, callback=config_file_value)]
ResponseCache = Annotated[Path | None, typer.Option("--cache", help=(
    "Response cache, an SQLite file (default: responses.sqlite in the folder $REALLOD_CACHE, else in "
    "$XDG_CACHE_HOME/reallod or ~/.cache/reallod)."))]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the response cache.")]
BaseUrl = Annotated[str | None, typer.Option("--base-url", help=BASE_URL_HELP)]
LlmBaseUrl = Annotated[str | None, typer.Option("--llm-base-url", help="... only the LLM roles.")]
VlmBaseUrl = Annotated[str | None, typer.Option("--vlm-base-url", help="... only the VLM role.")]
ModelArg = Annotated[str, typer.Argument(help="Detector: a Hugging Face folder (see convert-checkpoint) or hub id.",
                                         show_default=False)]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")]
MaxPixels = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Largest image decoded, in pixels (width × height); a larger one is skipped, or "
    "its task fails (a decompression-bomb guard: raise it for genuine large images).")]
MAX_PIXELS = 89_478_485  # Pillow's own threshold, as reallod.data.images.DEFAULT_MAX_PIXELS (not imported: it loads PIL)
