"""The ``reallod`` command's entry point."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Ctrl-C while the CLI is being imported, made certain: an import hook raises it at `import reallod.cli`.
_CTRL_C_WHILE_IMPORTING = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "reallod.cli":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
sys.argv = ["reallod", "--version"]
from reallod.__main__ import run
run()
"""


def test_the_command_is_the_entry_point_that_handles_ctrl_c_while_importing():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"reallod": "reallod.__main__:run"}


def test_ctrl_c_while_importing_ends_as_an_interrupt_without_a_traceback():
    p = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_IMPORTING], capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stderr) == (130, "interrupted\n")


# A command interrupted while an in-process model still generates in a worker thread (torch busy).
_INTERRUPTED_WHILE_GENERATING = """
import sys, threading, time
import torch
import reallod.cli
from reallod.llm.threads import THREAD_PREFIX

def generate():
    a = torch.randn(800, 800)
    while True:
        a = (a @ a).clamp(-1, 1)

def command():
    threading.Thread(target=generate, name=THREAD_PREFIX + ":generate", daemon=True).start()
    time.sleep(1)
    print("kept: 3 tasks", flush=True)
    sys.stderr.write("interrupted: 3 task(s) are in the journal\\n")
    sys.exit(130)

reallod.cli.main = command
from reallod.__main__ import run
run()
"""


def test_an_interrupt_while_a_model_generates_in_a_thread_exits_130_not_134():
    """The process aborted at its teardown ("terminate called without an active exception", 134), torch's
    threads still busy, after saying "interrupted"."""
    p = subprocess.run([sys.executable, "-c", _INTERRUPTED_WHILE_GENERATING], capture_output=True, text=True,
                       timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (130, "kept: 3 tasks\n", "interrupted: 3 task(s) are in the journal\n")


def test_run_is_the_cli():
    p = subprocess.run([sys.executable, "-m", "reallod", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == __import__("reallod").__version__


_WARN = """
import warnings
from reallod.cli import plain_warnings
import reallod.model.token_prompt as ours
with plain_warnings():
    warnings.warn_explicit("expression 0 was cut to 5 tokens", UserWarning, ours.__file__, 89)
    warnings.warn_explicit("a library's advice", FutureWarning, "/elsewhere/lib.py", 3)
warnings.warn_explicit("after the command", UserWarning, ours.__file__, 90)
"""


def test_reallods_own_warnings_are_one_plain_line_and_others_keep_pythons_form():
    p = subprocess.run([sys.executable, "-c", _WARN], capture_output=True, text=True, timeout=120)
    lines = p.stderr.splitlines()
    assert p.returncode == 0 and lines[0] == "warning: expression 0 was cut to 5 tokens", p.stderr
    assert lines[1] == "/elsewhere/lib.py:3: FutureWarning: a library's advice"
    assert any("token_prompt.py:90: UserWarning: after the command" in line for line in lines[2:])
