"""``python -m reallod ...`` and the ``reallod`` command.

Launchers that start Python modules need the first: ``torchrun --nproc-per-node 2 -m reallod train
CONFIG``, ``accelerate launch -m reallod train CONFIG``.
"""

import contextlib
import os
import sys


def run() -> None:
    """The CLI, with a Ctrl-C that lands while it is still importing (typer, the CLI's sections) ending
    it as one inside a command does: "interrupted", status 130, no traceback."""
    try:
        from reallod.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    try:
        main()
    except SystemExit as e:
        _exit_now_if_busy(e.code)
        raise
    _exit_now_if_busy(0)


def _exit_now_if_busy(code: object) -> None:
    """Exit at once, the streams flushed, while an in-process model still generates in a worker thread
    (:mod:`reallod.llm.threads`: an interrupted run does not wait for it): torch's threads busy at the
    interpreter's teardown abort it ("terminate called without an active exception", status 134 where
    130 was said). Everything the run keeps was closed before the command returned."""
    import threading

    from reallod.llm.threads import THREAD_PREFIX

    if not any(t.name.startswith(THREAD_PREFIX) and t.is_alive() for t in threading.enumerate()):
        return
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        sys.stderr.write(f"{code}\n")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said
            stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    run()
