"""A ``.gz`` output's trace is gzipped, a sync point after each line: readers get every whole line of a
trace its writer never closed (a run going on, or killed at any byte), a resumed run mends it before it
appends, and gzip itself reads the result."""

from __future__ import annotations

import gzip
import random
import shutil

import pytest

from reallod.agent.merge import merge_shards
from reallod.agent.realign import RealignOptions, realign
from reallod.agent.trace import TraceWriter, keep_tasks, read_trace, trace_ids, trace_path_for
from tests.agent.io_helpers import EXAMPLES
from tests.agent.scripted import colour_judge, scripted_roles

PROMPT = "You check whether an expression names the object in the box. " * 20  # what repeats line to line


def entry(i: int) -> dict:
    return {"task_id": str(i), "task": None,
            "result": {"verdict": "correct", "steps": [{"messages": [{"role": "system", "content": PROMPT},
                                                                     {"role": "user", "content": f"task {i}"}]}]}}


def open_trace(path, n: int) -> None:
    """What a killed run leaves: ``n`` lines written and flushed, the writer never closed."""
    writer = TraceWriter(path, {"input": "in.jsonl"})
    for i in range(n):
        writer.write_entry(entry(i))
    snapshot = path.read_bytes()
    writer.close()
    path.write_bytes(snapshot)


def ids(path) -> list[str]:
    return [e["task_id"] for e in read_trace(path)[1]]


def test_a_gz_outputs_trace_is_gzip_and_a_plain_outputs_is_not(tmp_path):
    assert trace_path_for(tmp_path / "o.jsonl") == tmp_path / "o.trace.jsonl"
    assert trace_path_for(tmp_path / "o.jsonl.gz") == tmp_path / "o.trace.jsonl.gz"
    for name in ("a.jsonl", "b.jsonl.gz"):
        realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / name,
                               images=EXAMPLES / "images", concurrency=2, cache=tmp_path / "cache.sqlite"),
                roles=scripted_roles(colour_judge, vlm=False))
    plain, packed = tmp_path / "a.trace.jsonl", tmp_path / "b.trace.jsonl.gz"
    assert gzip.decompress(packed.read_bytes()).count(b"\n") == plain.read_bytes().count(b"\n") > 10
    assert sorted(ids(packed)) == sorted(ids(plain))
    assert packed.stat().st_size * 5 < plain.stat().st_size  # the prompts repeat: about a tenth here


def test_a_trace_its_writer_never_closed_is_read_line_by_line(tmp_path):
    path = tmp_path / "t.trace.jsonl.gz"
    open_trace(path, 5)
    with pytest.raises(EOFError):  # not a finished gzip file...
        gzip.decompress(path.read_bytes())
    assert ids(path) == ["0", "1", "2", "3", "4"]  # ...but every line is there
    assert trace_ids(path) == {"0", "1", "2", "3", "4"}


def test_a_cut_at_any_byte_loses_at_most_the_line_being_written(tmp_path):
    path = tmp_path / "t.trace.jsonl.gz"
    open_trace(path, 6)
    data = path.read_bytes()
    for cut in [0, *sorted(random.Random(3).sample(range(1, len(data)), 40))]:  # 0: killed before a flush
        path.write_bytes(data[:cut])
        got = ids(path) if cut > 40 else []  # the header itself may be cut short
        assert got == [str(i) for i in range(len(got))]
        complete = len(got)
        writer = TraceWriter(path, {"input": "in.jsonl"}, append=True)  # a resumed run mends, then appends
        writer.write_entry(entry(99))
        writer.close()
        text = gzip.decompress(path.read_bytes()).decode()  # gzip reads it: no unfinished member inside
        assert text.count("\n") == complete + 2 and ids(path) == [*got, "99"]


def test_keep_tasks_drops_what_the_journal_gave_back_and_mends_the_end(tmp_path):
    path = tmp_path / "t.trace.jsonl.gz"
    open_trace(path, 5)
    assert keep_tasks(path, {"0", "2", "4"}) == {"0", "2", "4"}
    assert ids(path) == ["0", "2", "4"]
    gzip.decompress(path.read_bytes())  # rewritten whole


def test_a_plain_trace_an_earlier_version_wrote_for_a_gz_output_is_kept(tmp_path):
    (tmp_path / "o.trace.jsonl").write_text('{"trace": 2}\n')
    assert trace_path_for(tmp_path / "o.jsonl.gz") == tmp_path / "o.trace.jsonl"


def test_shards_gz_traces_merge_into_one(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.jsonl.gz"
        realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=out, shard=f"{i + 1}/2",
                               images=EXAMPLES / "images", concurrency=2, cache=tmp_path / "cache.sqlite"),
                roles=scripted_roles(colour_judge, vlm=False))
        outs.append(out)
    killed = trace_path_for(outs[1])  # a shard's trace as a kill after its last line would leave it
    shutil.copy(killed, tmp_path / "whole.gz")
    killed.write_bytes(killed.read_bytes()[:-8])  # the member's trailer (CRC, size) never written
    merged = merge_shards(outs, tmp_path / "m.jsonl.gz")
    assert merged.trace == tmp_path / "m.trace.jsonl.gz"
    assert sorted(ids(merged.trace)) == sorted(ids(trace_path_for(outs[0])) + ids(tmp_path / "whole.gz"))


def test_the_ray_shards_of_a_gz_output_are_gzipped_with_their_traces(tmp_path):
    from reallod.agent.realign_ray import shard_options

    for out, name in ((tmp_path / "o.jsonl.gz", "shard-2-of-3.jsonl.gz"), (tmp_path / "o.jsonl", "shard-2-of-3.jsonl")):
        opts = shard_options(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=out), 2, 3)
        assert opts.out == tmp_path / f"{out.name.split('.')[0]}.shards" / name, opts.out
        assert trace_path_for(opts.out).name == name.replace(".jsonl", ".trace.jsonl")


def test_a_resumed_run_reads_its_gzip_trace_once(tmp_path, monkeypatch):
    """Mending and dropping given-back tasks are one pass: a million tasks' trace takes a minute to scan."""
    import reallod.agent.trace as trace_module

    def run(limit: int) -> None:
        realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "o.jsonl.gz",
                               images=EXAMPLES / "images", limit=limit, cache=tmp_path / "cache.sqlite"),
                roles=scripted_roles(colour_judge, vlm=False))

    run(3)
    scans, scan = [], trace_module.trace_ids
    monkeypatch.setattr(trace_module, "trace_ids", lambda *a, **k: scans.append(a) or scan(*a, **k))
    run(6)
    got = ids(tmp_path / "o.trace.jsonl.gz")
    assert len(scans) == 1 and len(got) == len(set(got)) == 6
