"""Running the ``reallod`` command in-process, the way every CLI test does."""

from __future__ import annotations

import os
from collections.abc import Iterable

from reallod.cli import main


def run_cli(args: Iterable[str | os.PathLike], capsys) -> tuple[int, str, str]:
    """Run ``reallod ARGS...`` (paths and numbers are turned into words) through :func:`reallod.cli.main`,
    as the console script does; returns (exit code, stdout, stderr), the code 0 when it just returned."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    out, err = capsys.readouterr()
    return code, out, err
