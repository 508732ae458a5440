"""Errors a user can act on. The CLI prints these as one line, never as a traceback."""

from __future__ import annotations

from collections.abc import Sequence


class ReallodError(Exception):
    """Base class: the message says what is wrong and where."""


class DataError(ReallodError):
    """Bad input data, located by file, line and field where known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path, self.line, self.field, self.message = path, line, field, message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        if field:
            where += f"{field}: "
        super().__init__(where + message)


class ConfigError(ReallodError):
    """A config file or option that cannot be used."""


class Interrupted(ReallodError):
    """Ctrl-C stopped a run; the message says where it stopped and what is safe (what was saved, how to
    continue). The CLI prints it as one line and exits with ``exit_code``."""

    exit_code = 130


class OutOfMemory(ReallodError):
    """The GPU (or another accelerator) ran out of memory: the message says where, which option to
    lower, and what the run kept. An environment's limit, not a bug of reallod (exit status 2)."""


def out_of_memory(error: BaseException) -> str | None:
    """What ran out, in the words of an accelerator's out-of-memory error ("CUDA out of memory. Tried to
    allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.25 GiB is free"), or None for
    any other error. Torch's advice that follows (allocator settings) is left out: the run's own options
    are what to change first."""
    import sys

    torch = sys.modules.get("torch")  # not imported here: an error raised without torch loaded is no OOM
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    text = str(error)
    if not ((oom is not None and isinstance(error, oom))
            or (isinstance(error, RuntimeError) and "out of memory" in text.lower())):
        return None
    kept = []
    for sentence in text.replace("\n", " ").split(". "):
        if not sentence.strip() or "PYTORCH_" in sentence or sentence.startswith(("Including", "Of the", "If ")):
            break
        kept.append(sentence.strip().rstrip("."))
        if len(kept) == 3:
            break
    return ". ".join(kept) or "out of memory"


def release_after_oom(error: BaseException) -> None:
    """Free what an out-of-memory error keeps alive, for a process that goes on after it (the demo, the
    agent's in-process model): its traceback's ended frames hold the failed call's tensors (activations,
    a key-value cache), as long as the error (or an error raised from it) is referenced. Their locals are
    cleared, and the accelerator's cached blocks given back, so the next, smaller request fits."""
    import gc
    import sys
    import traceback

    traceback.clear_frames(error.__traceback__)  # a frame still running (the caller's) is left as it is
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def smaller_batches(batch_size: int, grad_accum: int) -> tuple[int, int] | None:
    """The batch size and accumulation that give the same examples per step in less memory (the batch
    divided by its smallest factor, the least change that frees memory); None for a batch of one."""
    factor = next((k for k in range(2, batch_size + 1) if batch_size % k == 0), None)
    return None if factor is None else (batch_size // factor, grad_accum * factor)


def not_utf8(error: UnicodeDecodeError) -> str:
    """Where a file is not UTF-8, for a message: the byte, its line and its offset."""
    data = error.object
    line = data.count(b"\n", 0, error.start) + 1
    return (f"not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}, at byte offset {error.start}): "
            "save the file as UTF-8")


def json_kind(value: object) -> str:
    """What a JSON (or YAML) value is, in the file's words, for "expected ..., got ..." messages: ``null``,
    not Python's ``NoneType``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def first_few(items: Sequence[str], shown: int, *, sep: str = ", ", rest: str = "more") -> str:
    """The first ``shown`` items and how many more (``"a, b, c and 7 more"``): a message names enough to
    find the problems and counts them all, whatever their number."""
    more = len(items) - shown
    return sep.join(items[:shown]) + (f" and {more} {rest}" if more > 0 else "")
