"""``python -m reallod ...`` and the ``reallod`` command.

Launchers that start Python modules need the first: ``torchrun --nproc-per-node 2 -m reallod train
CONFIG``, ``accelerate launch -m reallod train CONFIG``.
"""

import sys


def run() -> None:
    """The CLI, with a Ctrl-C that lands while it is still importing (typer, the CLI's sections) ending
    it as one inside a command does: "interrupted", status 130, no traceback."""
    try:
        from reallod.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
