"""Errors a user can act on. The CLI prints these as one line, never as a traceback."""

from __future__ import annotations


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
