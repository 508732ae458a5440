"""The temporary files writers go through: never a name longer than the file system allows."""

from __future__ import annotations

import os
import subprocess
import sys

from reallod.data import io as data_io
from reallod.data.io import AtomicWriter, file_name_max


def test_a_long_output_name_gets_a_temporary_name_within_the_limit(tmp_path):
    """`.NAME.HOST.PID.HEX.tmp` of a 245-byte output name was over 255 bytes: 'File name too long', naming
    the temporary file, stopped a whole detect run at that image, and every rerun at the same one."""
    limit = file_name_max(tmp_path)
    for name in ("x" * (limit - 10) + ".json", "写真" * 40 + ".jpg.json", "y" * limit):
        assert len(os.fsencode(name)) <= limit
        tmp = data_io._temp_name(tmp_path / name)
        assert len(os.fsencode(tmp.name)) <= limit, len(os.fsencode(tmp.name))
        assert tmp.name.startswith(".") and tmp.name.endswith(".tmp") and tmp.parent == tmp_path
        with AtomicWriter(tmp_path / name) as w:
            w.write(b"{}")
        assert (tmp_path / name).read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    cut = data_io._temp_name(tmp_path / ("写真" * 60 + ".json")).name
    assert cut.startswith(".写真") and "~" in cut  # recognisably that file's: a prefix of it and a hash
    assert cut.encode().decode() == cut  # not cut inside a character
    a, b = (data_io._temp_name(tmp_path / (("z" * 300)[:limit - 6] + s)).name for s in (".a.jsn", ".b.jsn"))
    assert a.split("~")[1].split(".")[0] != b.split("~")[1].split(".")[0]  # two long names: two hashes
    short = data_io._temp_name(tmp_path / "o.jsonl").name
    assert short.startswith(f".o.jsonl.{data_io._HOST}.{os.getpid()}.")  # short names are as before


def test_a_killed_writers_long_temporary_file_is_removed(tmp_path, monkeypatch):
    """The sweep of killed writers' files reads the host and process from the end of the name, which a
    shortened name keeps."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    name = "q" * 250 + ".json"
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: gone.pid)
        orphan = data_io._temp_name(tmp_path / name)
    orphan.write_bytes(b"half")
    data_io._SWEPT.discard(os.path.abspath(tmp_path))
    with AtomicWriter(tmp_path / name) as w:
        w.write(b"{}")
    assert not orphan.exists() and [p.name for p in tmp_path.iterdir()] == [name]
