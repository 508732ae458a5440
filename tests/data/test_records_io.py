import gzip
import os
import zlib
from pathlib import Path

import pytest

from reallod.data import Record, read_records, write_records
from reallod.data.io import JsonlWriter, check_writable, iter_lines, same_file
from reallod.errors import ConfigError, DataError

VARIANT = {
    "filename": "a/b.jpg", "height": 480, "width": 640, "image_id": 7,
    "pairs": {
        "vlm_short": {"bboxes": [[1, 2, 30, 40]], "category": "dog", "relation": "single",
                      "postive_expressions": ["a brown dog"], "negative_expressions": ["a cat"],
                      "origin_postive_expressions": ["a black dog"]},
        "llm": [{"bboxes": [[1, 2, 30, 40], [50, 60, 70, 80]], "category": "dog", "relation": "multiple",
                 "positive_expressions": ["two dogs"], "negative_expressions": []}],
    },
}


def test_variants_read_and_written_canonical(tmp_path):
    rec = Record.from_dict(VARIANT)
    short = rec.pairs["vlm_short"][0]
    assert short.positive_expressions == ["a brown dog"]
    assert short.origin_positive_expressions == ["a black dog"]
    assert rec.pairs["llm"][0].relation == "multi"
    d = rec.to_dict()
    assert "postive_expressions" not in str(d)
    assert d["image_id"] == 7  # unknown keys survive
    assert list(d) == ["filename", "height", "width", "pairs", "image_id"]
    assert Record.from_dict(d) == rec


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_roundtrip_plain_and_gzip(tmp_path, name):
    path = tmp_path / name
    assert write_records(path, [VARIANT, Record.from_dict(VARIANT)]) == 2
    if name.endswith(".gz"):
        assert gzip.decompress(path.read_bytes()).count(b"\n") == 2
    recs = list(read_records(path))
    assert len(recs) == 2 and recs[0].pairs == recs[1].pairs


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), JsonlWriter(path) as w:
        w.write_record(VARIANT)
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_an_output_that_is_a_folder_or_under_a_file_is_named_before_anything_is_written(tmp_path):
    """Found only by the rename at the end, a folder left the whole output in a hidden temporary file
    and the error named that file."""
    (tmp_path / "adir").mkdir()
    with pytest.raises(DataError, match=r"adir: a folder, where a file is written; give a file name"):
        JsonlWriter(tmp_path / "adir")
    (tmp_path / "afile").write_text("x\n")
    with pytest.raises(DataError, match=r"afile/out\.jsonl: .*afile is a file, not a folder"):
        JsonlWriter(tmp_path / "afile" / "out.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_check_writable_names_the_option_or_the_path_and_what_is_in_the_way(tmp_path, monkeypatch):
    """The one check of realign, agent-eval, eval and the writers: the other kind at the path, a file above
    it (also one a ``..`` steps out of: the OS does not), a folder that cannot be written in."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"^--out .*adir: a folder, where a file is written; give a file name$"):
        check_writable(tmp_path / "adir", option="--out")
    with pytest.raises(ConfigError, match=r"^--show-dir .*afile: a file, where a folder is written; give a folder "
                                          r"name, or remove the file$"):
        check_writable(tmp_path / "afile", option="--show-dir", folder=True)
    with pytest.raises(ConfigError, match=r": a file, where a folder is written; use another$"):
        check_writable(tmp_path / "afile", option="--out", folder=True, hint="use another")
    for below in ("afile/new/out.json", "afile/../out.json"):
        with pytest.raises(DataError, match=rf"^{tmp_path / below}: {tmp_path / 'afile'} is a file, not a folder$"):
            check_writable(tmp_path / below)
    check_writable(tmp_path / "adir" / "new" / "out.json")  # folders that are not there yet are made
    check_writable(tmp_path / "adir" / "new", folder=True)
    check_writable(tmp_path / "adir", folder=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != tmp_path / "adir" and real_access(p, mode, **kw))
    with pytest.raises(ConfigError, match=rf"^--out .*: cannot write in {tmp_path / 'adir'} \(permission denied\)$"):
        check_writable(tmp_path / "adir" / "new" / "out.json", option="--out")
    check_writable(tmp_path / "adir" / "out.json", access=False)  # a writer leaves that to the OS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"] and not any((tmp_path / "adir").iterdir())


def test_same_file_through_a_link_or_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").write_text("x")
    os.link(tmp_path / "a", tmp_path / "hard")
    os.symlink(tmp_path / "a", tmp_path / "soft")
    assert same_file("a", tmp_path / "a") and same_file(tmp_path / "hard", "a") and same_file("soft", "hard")
    assert same_file("new", tmp_path / "new") and not same_file("a", "new") and not same_file("new", "other")


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.jsonl"
    w = JsonlWriter(path)
    w.write_record(VARIANT)
    path.mkdir()  # the target became a folder while it was written
    with pytest.raises(OSError):
        w.close()
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_permissions_the_umask_gives_and_the_umask_is_never_set(tmp_path, monkeypatch, umask, mode):
    """Reading the umask means setting it for a moment, and a file another thread creates then is
    world-writable: the writer creates its file with the umask applied by the system instead."""
    import os

    set_umask = os.umask
    old = set_umask(umask)
    try:
        monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("the writer changed the process umask"))
        with JsonlWriter(tmp_path / "out.jsonl") as w:
            w.write_record(VARIANT)
    finally:
        set_umask(old)  # the other tests' umask, whatever happened
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == mode


def test_a_writer_removes_what_a_killed_writer_of_the_same_output_left(tmp_path):
    """kill -9 during a write left the hidden temporary file, and each rerun over a large input one more."""
    import subprocess
    import sys

    from reallod.data import io as data_io

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = data_io._HOST
    orphan = tmp_path / f".o.jsonl.{host}.{gone.pid}.0a1b2c3d.tmp"
    running = tmp_path / f".o.jsonl.{host}.{os.getpid()}.0a1b2c3e.tmp"  # a writer still at work
    elsewhere = tmp_path / f".o.jsonl.another-host.{gone.pid}.0a1b2c3f.tmp"  # its process is not ours to see
    other_output = tmp_path / f".p.jsonl.{host}.{gone.pid}.0a1b2c40.tmp"  # another file's, killed too
    mine = tmp_path / ".notes.tmp"  # not a writer's name
    for f in (orphan, running, elsewhere, other_output, mine):
        f.write_bytes(b"half")
    with JsonlWriter(tmp_path / "o.jsonl") as w:
        w.write_record(VARIANT)
    assert not orphan.exists() and not other_output.exists()
    assert running.exists() and elsewhere.exists() and mine.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["o.jsonl"]


def test_a_folder_is_listed_for_orphans_once_per_process_not_once_per_file(tmp_path, monkeypatch):
    """Writing N files into one folder listed it N times: quadratic over a million detect outputs."""
    from reallod.data import io as data_io

    listed = []
    real = os.listdir
    monkeypatch.setattr(data_io.os, "listdir", lambda p: listed.append(p) or real(p))
    for i in range(50):
        with data_io.AtomicWriter(tmp_path / f"{i}.json") as w:
            w.write(b"{}")
    assert [str(p) for p in listed] == [str(tmp_path)] and len(list(tmp_path.iterdir())) == 50


def test_gz_that_is_not_gzip(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_text('{"a": 1}\n')
    with pytest.raises(DataError, match="not a gzip file"):
        list(iter_lines(path))


def test_truncated_gzip_keeps_earlier_lines(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    data = gzip.compress(b"".join(b'{"i": %d, "h": "%x"}\n' % (i, hash(str(i))) for i in range(300_000)))
    path.write_bytes(data[: len(data) // 2])
    seen = []
    with pytest.raises(DataError, match="truncated after line"):
        for lineno, _ in iter_lines(path):
            seen.append(lineno)
    assert seen and seen == list(range(1, len(seen) + 1))


@pytest.mark.parametrize("cut", [300, 1000, 5000, -9, -1])  # bytes kept (from the end when negative)
def test_truncated_gzip_yields_every_complete_line_and_names_the_last(tmp_path, cut):
    path = tmp_path / "x.jsonl.gz"
    body = b"".join(b'{"i": %d, "pad": "%s"}\n' % (i, b"%x" % hash(str(i)) * (i % 7)) for i in range(3000))
    data = gzip.compress(body)
    path.write_bytes(data[:cut])
    complete = zlib.decompressobj(wbits=31).decompress(data[:cut]).count(b"\n")
    assert complete  # every cut keeps whole lines: they must all come out
    seen = []
    with pytest.raises(DataError, match=f"truncated after line {complete} "):
        for _, line in iter_lines(path):
            seen.append(line)
    assert seen == body.split(b"\n")[:complete]


def test_gzip_members_and_zero_padding_read_whole(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(b"a\nb") + b"\0" * 70_000 + gzip.compress(b"c\n\nd\r\n") + b"\0\0")
    assert list(iter_lines(path)) == [(1, b"a"), (2, b"bc"), (4, b"d")]


def test_reader_names_file_line_and_field(tmp_path):
    path = tmp_path / "x.jsonl"
    bad = dict(VARIANT, height="tall")
    path.write_text('{"filename": "ok.jpg", "height": 1, "width": 1, "pairs": {}}\n\n' + str(bad).replace("'", '"') + "\n")
    with pytest.raises(DataError) as e:
        list(read_records(path))
    assert str(e.value).startswith(f"{path}:3: height: ")
    errors: list[DataError] = []
    assert len(list(read_records(path, on_error="skip", errors=errors))) == 1
    assert errors[0].line == 3


def test_the_flat_folder_write_benchmark_runs_and_reports_its_ratio(tmp_path, capsys):
    """benchmarks/atomic_writes.py at a small size (a script, not part of the package)."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("atomic_writes", root / "benchmarks" / "atomic_writes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--files", "200", "--json", str(tmp_path / "w.jsonl")])
    assert out["files"] == 200 and out["speedup"] > 0 and "files into one folder" in capsys.readouterr().out
    assert json.loads((tmp_path / "w.jsonl").read_text()) == out
