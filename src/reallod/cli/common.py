"""What the sections of the CLI share: command order in help, the console, ``--image-size``, quiet
transformers, the progress bar, and a few options that read the same everywhere.

Nothing heavy is imported here: rich, transformers and the agent are imported inside the helpers.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, ClassVar

import typer
import typer.core

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from reallod.runs.progress import RichMonitor


class OrderedGroup(typer.core.TyperGroup):
    """A command group whose help lists its commands in ``order`` (the order data flows), not
    alphabetically nor Typer's commands-before-sub-groups; commands missing from ``order`` come last,
    as registered. Make one with :func:`ordered_group`."""

    order: ClassVar[tuple[str, ...]] = ()

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(self.commands, key=lambda name: rank.get(name, len(rank)))


def ordered_group(*names: str) -> type[OrderedGroup]:
    """An :class:`OrderedGroup` class listing ``names`` in this order (pass it as ``typer.Typer(cls=...)``)."""
    return type("OrderedGroup", (OrderedGroup,), {"order": names})


def console() -> Console:
    """Rich console on stdout; wide when piped, so tables are not squeezed to 80 columns."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


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


def progress_monitor(progress: bool | None, *, description: str = "re-aligning",
                     labels: Sequence[str] | None = None) -> RichMonitor | None:
    """A progress bar on stderr when ``--progress`` says so (None: when stderr is a terminal), else None."""
    from rich.console import Console

    err = Console(stderr=True)
    if not (progress if progress is not None else err.is_terminal):
        return None
    from reallod.runs.progress import RichMonitor

    return RichMonitor(err, description=description, labels=labels)


# --- options that read the same in several commands ---------------------------------------------

AGENT_CONFIG_HELP = "Agent config: a YAML file or a shipped name (offline, vllm, published, vllm-student)."
BASE_URL_HELP = "Point every openai-backend role at this server (also REALLOD_BASE_URL)."

LlmBaseUrl = Annotated[str | None, typer.Option("--llm-base-url", help="... only the LLM roles.")]
VlmBaseUrl = Annotated[str | None, typer.Option("--vlm-base-url", help="... only the VLM role.")]
ModelArg = Annotated[str, typer.Argument(help="Detector: a Hugging Face folder (see convert-checkpoint) or hub id.",
                                         show_default=False)]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")]
