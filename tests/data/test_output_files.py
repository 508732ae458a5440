"""What writing an output does to the file it replaces and says of a place it cannot write: a replaced
file keeps its permissions, another user's read-only file is not replaced, a folder that cannot be
written in is named (not the hidden temporary file), and `-` is standard input and output."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from reallod.data.io import AtomicWriter, wants_gzip
from tests.cli_helpers import run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "realdata.jsonl"
NOBODY = 65534


def as_nobody(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``reallod ARGS`` as an unprivileged user (root may write anything: the checks would not show)."""
    if os.geteuid() != 0:
        cmd = [sys.executable, "-m", "reallod", *args]
    elif shutil.which("setpriv"):
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-m",
               "reallod", *args]
    else:
        pytest.skip("running as root without setpriv: no unprivileged user to run as")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "HOME": str(cwd)}
    probe = [*cmd[: cmd.index("-m")], "-c", "import reallod.data.io"]
    if subprocess.run(probe, cwd=cwd, capture_output=True, timeout=120, env=env).returncode != 0:
        pytest.skip("the unprivileged user cannot run this Python or read the checkout here")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_a_replaced_file_keeps_its_permissions(tmp_path, capsys):
    """A private file fixed in place became world-readable (the new file had the umask's mode)."""
    path = tmp_path / "private.jsonl"
    shutil.copy(EXAMPLE, path)
    path.chmod(0o600)
    code, _, err = run_cli(["data", "validate", path, "--fix", path], capsys)
    assert code == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with AtomicWriter(tmp_path / "new.jsonl") as w:  # a new file: the umask's mode, as any new file
        w.write(b"x\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == 0o666 & ~umask


@pytest.fixture
def open_folder():
    """A folder the unprivileged user can reach (pytest's own are private to their user)."""
    folder = Path(tempfile.mkdtemp(prefix="reallod-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_another_users_read_only_file_is_not_replaced_and_an_unwritable_folder_is_named(open_folder):
    work = open_folder
    (work / "shared").mkdir()
    (work / "locked").mkdir()
    shutil.copy(EXAMPLE, work / "in.jsonl")
    (work / "in.jsonl").chmod(0o644)
    target = work / "shared" / "theirs.jsonl"
    target.write_text("theirs\n")
    target.chmod(0o444)
    (work / "shared").chmod(0o777)
    (work / "locked").chmod(0o555)
    done = as_nobody(["data", "filter", "in.jsonl", "shared/theirs.jsonl", "-s", "llm"], work)
    assert done.returncode == 2, done.stderr
    assert "shared/theirs.jsonl: a read-only file: not replaced" in done.stderr
    assert target.read_text() == "theirs\n"
    done = as_nobody(["data", "filter", "in.jsonl", "locked/out.jsonl", "-s", "llm"], work)
    assert done.returncode == 2
    assert "error: locked/out.jsonl: cannot write in locked (Permission denied)" in done.stderr, done.stderr
    assert ".tmp" not in done.stderr


def test_dash_is_standard_input_and_output_in_the_data_commands(tmp_path):
    """`-` made a file named `-` (an output) or was "no such file" (an input)."""
    text = EXAMPLE.read_bytes()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "reallod", "data", *args], input=text, cwd=tmp_path,
                              capture_output=True, timeout=120)

    done = run("filter", "-", "-", "-s", "vlm_short")
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line) for line in done.stdout.splitlines()]
    assert kept and all(set(r["pairs"]) == {"vlm_short"} for r in kept)
    assert b"/dev/stdout" in done.stderr  # the report is not in the records
    done = run("validate", "-")
    assert done.returncode == 0 and b"OK:" in done.stdout, done.stderr
    done = run("stats", "-", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)
    done = run("convert", "coco", "-", "-")
    assert done.returncode == 0 and json.loads(done.stdout)["images"]
    assert not (tmp_path / "-").exists()


def test_an_upper_case_gz_name_is_compressed():
    assert wants_gzip("OUT.JSONL.GZ") and wants_gzip("a.jsonl.gz") and not wants_gzip("a.jsonl")
