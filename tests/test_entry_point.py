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


def test_run_is_the_cli():
    p = subprocess.run([sys.executable, "-m", "reallod", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == __import__("reallod").__version__
