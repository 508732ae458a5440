"""--shard K/N, `reallod realign merge` (nothing missing or doubled), --ray on a local Ray instance,
and the request ordering that keeps an image's tasks together."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from reallod.agent.inputs import iter_tasks, shard_key
from reallod.agent.ordering import group_by_image
from reallod.cli.realign import looks_like_address as _looks_like_address
from tests.agent.fake_openai_server import FakeChatServer, chat_reply, valid_decision
from tests.agent.io_helpers import EXAMPLES, fake_server_config, many_tasks, read_jsonl
from tests.agent.scripted import colour_judge, scripted_roles
from tests.cli_helpers import run_cli


@pytest.fixture
def scripted(monkeypatch):
    import reallod.agent.agent_config as agent_config

    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(colour_judge, vlm=False))


def realign(capsys, src, out, *extra):
    code, stdout, err = run_cli(["realign", src, "--config", "offline", "--out", out,
                            "--images", EXAMPLES / "images", *extra], capsys)
    assert code == 0, err
    return stdout


@pytest.mark.parametrize("src", [EXAMPLES / "realdata.jsonl", EXAMPLES / "tasks.json"])
def test_three_shards_merge_into_what_one_run_writes(tmp_path, capsys, scripted, src):
    realign(capsys, src, tmp_path / "all.jsonl")
    outs = [tmp_path / f"s{k}.jsonl" for k in (1, 2, 3)]
    sizes = []
    for k, out in enumerate(outs, 1):
        stdout = realign(capsys, src, out, "--shard", f"{k}/3")
        sizes.append(int(stdout.split(" task(s)")[0].split()[-1]))
    assert sum(sizes) == 22  # a shard may be empty: 4 images only
    code, stdout, err = run_cli(["realign", "merge", *outs, "--out", tmp_path / "merged.jsonl"], capsys)
    assert code == 0, err
    assert "merged 3 shard(s)" in stdout and "22 task(s)" in stdout
    assert read_jsonl(tmp_path / "merged.jsonl") == read_jsonl(tmp_path / "all.jsonl")
    trace = (tmp_path / "merged.trace.jsonl").read_text().splitlines()
    ids = [json.loads(line)["task_id"] for line in trace[1:]]
    assert len(ids) == len(set(ids)) == 22


def test_merge_refuses_missing_doubled_incomplete_or_foreign_shards(tmp_path, capsys, scripted):
    src = EXAMPLES / "realdata.jsonl"
    s1, s2 = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"
    realign(capsys, src, s1, "--shard", "1/2")
    realign(capsys, src, s2, "--shard", "2/2", "--limit", "2")  # unfinished

    def merge(*shards):
        code, _, err = run_cli(["realign", "merge", *shards, "--out", tmp_path / "m.jsonl"], capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "shard(s) 2/2 missing" in merge(s1)
    assert "shard 1/2 given 2 times" in merge(s1, s1)
    err = merge(s1, s2)
    assert "missing task(s)" in err and "was not run" in err and "resumes" in err
    realign(capsys, src, tmp_path / "t3.jsonl", "--shard", "1/3")
    assert "is one of 2" in merge(s1, s2, tmp_path / "t3.jsonl") or "shares N" in merge(s1, tmp_path / "t3.jsonl")
    realign(capsys, src, tmp_path / "c2.jsonl", "--shard", "2/2", "--max-cycles", "1")
    assert "different max_cycles" in merge(s1, tmp_path / "c2.jsonl")
    realign(capsys, src, tmp_path / "whole.jsonl")
    assert "not a shard's output" in merge(tmp_path / "whole.jsonl")
    assert "nope.jsonl: no such file (nope.journal.jsonl not found)" in merge(tmp_path / "nope.jsonl")
    (tmp_path / "lone.jsonl").write_text("")
    assert "lone.jsonl: no journal next to it" in merge(tmp_path / "lone.jsonl")
    realign(capsys, src, s2, "--shard", "2/2")  # the unfinished shard resumes and completes
    code, _, err = run_cli(["realign", "merge", s1, s2, "--out", tmp_path / "m.jsonl"], capsys)
    assert code == 0, err
    assert read_jsonl(tmp_path / "m.jsonl") == read_jsonl(tmp_path / "whole.jsonl")


def test_merge_refuses_an_out_over_its_input_or_a_shards_files(tmp_path, capsys, scripted):
    """An out (or its trace) over the input or a shard's output, trace or journal would destroy what the
    merge reads; it is refused before anything is written."""
    src = tmp_path / "in.jsonl"
    src.write_bytes((EXAMPLES / "realdata.jsonl").read_bytes())
    s1, s2 = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"
    realign(capsys, src, s1, "--shard", "1/2")
    realign(capsys, src, s2, "--shard", "2/2")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    bad = [src, s1, tmp_path / "s2.trace.jsonl", tmp_path / "s1.journal.jsonl",
           tmp_path / "s2.jsonl.gz"]  # the last one's trace is s2.trace.jsonl
    for out in bad:
        code, _, err = run_cli(["realign", "merge", s1, s2, "--out", out], capsys)
        assert code == 2 and "would overwrite" in err and err.count("\n") == 1, (out, err)
        assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before, out
    code, _, err = run_cli(["realign", "merge", s1, s2, "--out", tmp_path / "m.jsonl"], capsys)
    assert code == 0, err


def test_shard_keys_keep_records_and_images_whole():
    assert shard_key("12/vlm_short/0/3", "a.jpg", "records") == shard_key("12", None, "records") == "12"
    assert shard_key("7", "a.jpg", "tasks") == shard_key("9", "a.jpg", "tasks") != shard_key("9", "b.jpg", "tasks")
    assert shard_key("9", None, "tasks") == "task:9"


def test_group_by_image_keeps_every_task_once_and_images_together(tmp_path):
    items = list(iter_tasks(many_tasks(tmp_path, 23, images=4)))
    grouped = list(group_by_image(items, window=10))
    assert sorted(i.task_id for i in grouped) == sorted(i.task_id for i in items)
    for start in range(0, 23, 10):  # within a window, an image's tasks are one run
        window = [i.image_path for i in grouped[start:start + 10]]
        runs = [p for n, p in enumerate(window) if n == 0 or window[n - 1] != p]
        assert len(runs) == len(set(runs))
    assert [i.image_path for i in group_by_image(items, window=100)][:6] == ["img0.png"] * 6


def test_ray_address_detection():
    assert _looks_like_address("auto") and _looks_like_address("ray://head:10001")
    assert _looks_like_address("10.0.0.5:6379") and _looks_like_address("localhost:6379")
    assert not _looks_like_address("data.jsonl") and not _looks_like_address("--ray-shards")


def deterministic(body):
    """Same request, same answer (whatever the process that asks): shards and one run must agree."""
    seed = hashlib.blake2b(json.dumps(body["messages"], sort_keys=True).encode(), digest_size=8).hexdigest()
    return chat_reply(valid_decision(body, random.Random(seed)))


def test_ray_runs_shards_on_a_local_instance_and_merges(tmp_path, capsys):
    pytest.importorskip("ray")
    with FakeChatServer(deterministic) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, concurrency=4)
        src = many_tasks(tmp_path / "in", 24)
        code, _, err = run_cli(["realign", src, "--config", cfg, "--out", tmp_path / "one.jsonl",
                           "--no-cache"], capsys)
        assert code == 0, err
        code, stdout, err = run_cli(["realign", src, "--config", cfg, "--out", tmp_path / "ray.jsonl",
                                "--no-cache", "--ray", "--ray-shards", "2"], capsys)
        assert code == 0, err
    assert "shard 1/2" in stdout and "shard 2/2" in stdout and "24 task(s)" in stdout
    assert read_jsonl(tmp_path / "ray.jsonl") == read_jsonl(tmp_path / "one.jsonl")
    assert sorted(p.name for p in (tmp_path / "ray.shards").glob("*.journal.jsonl")) == [
        "shard-1-of-2.journal.jsonl", "shard-2-of-2.journal.jsonl"]


def test_ray_with_a_bad_config_is_refused_before_ray_starts(tmp_path, capsys):
    """Every shard failed on its own with the config's error, after a Ray instance was started, and the
    message said 'the other shards are done' of a single shard."""
    ray = pytest.importorskip("ray")
    src = many_tasks(tmp_path / "in", 2)
    code, _, err = run_cli(["realign", src, "--config", tmp_path / "nope.yaml", "--out", tmp_path / "o.jsonl",
                            "--ray"], capsys)
    assert code == 2 and "nope.yaml" in err and "shard" not in err, err
    assert not ray.is_initialized()


def _forget_policy(out):
    """The shard's journal as written before the --unresolved policy was recorded in its header."""
    from reallod.runs.journal import journal_path_for

    journal = journal_path_for(out)
    header, rest = journal.read_bytes().split(b"\n", 1)
    old = json.loads(header)
    del old["meta"]["unresolved"]
    journal.write_bytes(json.dumps(old).encode() + b"\n" + rest)


def test_merge_assembles_as_the_shards_did_and_says_when_told_otherwise(tmp_path, capsys, scripted):
    """The shards' --unresolved is in their journals: merge assembles with it (it assembled with keep,
    whatever the shards ran with); one given to merge wins and is said; shards that disagree are refused
    without one; journals from before the policy was recorded merge with the default or the given one."""
    src, one = EXAMPLES / "realdata.jsonl", ("--max-cycles", "1")  # 4 expressions stay wrong: the policy counts
    for policy in ("negative", "drop", "keep"):
        realign(capsys, src, tmp_path / f"{policy}.jsonl", *one, "--unresolved", policy)
    s1, s2, m = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl", tmp_path / "m.jsonl"
    realign(capsys, src, s1, *one, "--shard", "1/2", "--unresolved", "negative")
    realign(capsys, src, s2, *one, "--shard", "2/2", "--unresolved", "negative")

    def merge(*extra):
        return run_cli(["realign", "merge", s1, s2, "--out", m, *extra], capsys)

    code, stdout, err = merge()
    assert code == 0, err
    assert "with --unresolved negative (the shards' own)" in stdout
    assert read_jsonl(m) == read_jsonl(tmp_path / "negative.jsonl") != read_jsonl(tmp_path / "keep.jsonl")
    code, stdout, err = merge("--unresolved", "drop")
    assert code == 0, err
    assert "with --unresolved drop (given in place of the shards' negative)" in stdout
    assert read_jsonl(m) == read_jsonl(tmp_path / "drop.jsonl")
    realign(capsys, src, s2, *one, "--shard", "2/2", "--unresolved", "drop")  # only re-assembles; recorded
    code, _, err = merge()
    assert code == 2 and err.count("\n") == 1
    assert "different --unresolved (shard 1/2 negative, shard 2/2 drop): give merge the --unresolved" in err
    code, _, err = merge("--unresolved", "negative")
    assert code == 0 and read_jsonl(m) == read_jsonl(tmp_path / "negative.jsonl")
    for shard in (s1, s2):
        _forget_policy(shard)
    code, stdout, err = merge()
    assert code == 0 and "with --unresolved keep (the default" in stdout
    assert read_jsonl(m) == read_jsonl(tmp_path / "keep.jsonl")
    code, stdout, err = merge("--unresolved", "negative")
    assert code == 0 and read_jsonl(m) == read_jsonl(tmp_path / "negative.jsonl")


def test_merge_names_a_shard_still_running(tmp_path, capsys, scripted):
    """A shard whose run still holds its journal's lock is named as running, with its pid, instead of
    being called incomplete; the merge holds the shards' locks while it reads and leaves none behind."""
    import os

    from reallod.runs.journal import journal_path_for, lock_journal, lock_path_for

    src = EXAMPLES / "realdata.jsonl"
    s1, s2, m = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl", tmp_path / "m.jsonl"
    realign(capsys, src, s1, "--shard", "1/2")
    realign(capsys, src, s2, "--shard", "2/2", "--limit", "1")  # unfinished, and still running:
    running = lock_journal(journal_path_for(s2))  # its run holds the lock, as it does till its output is written
    try:
        code, _, err = run_cli(["realign", "merge", s1, s2, "--out", m], capsys)
    finally:
        running.release()
    assert code == 2 and err.count("\n") == 1, err
    assert f"shard 2/2 ({s2}) is still running (pid {os.getpid()}): merge once it has finished" in err
    assert not m.exists() and not lock_path_for(journal_path_for(s1)).exists()
    realign(capsys, src, s2, "--shard", "2/2")  # it finishes
    code, _, err = run_cli(["realign", "merge", s1, s2, "--out", m], capsys)
    assert code == 0, err
    assert not any(lock_path_for(journal_path_for(s)).exists() for s in (s1, s2))


def test_merge_assembles_under_the_source_the_shards_ran_with(tmp_path, capsys, scripted):
    """A published task list's pairs go under --source: merge takes the shards' (it wrote "realigned",
    unlike the one run the help says it equals); one given to merge wins and is said."""
    src = EXAMPLES / "tasks.json"
    realign(capsys, src, tmp_path / "whole.jsonl", "--source", "mysrc")
    s1, s2, m = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl", tmp_path / "m.jsonl"
    realign(capsys, src, s1, "--shard", "1/2", "--source", "mysrc")
    realign(capsys, src, s2, "--shard", "2/2", "--source", "mysrc")
    code, stdout, err = run_cli(["realign", "merge", s1, s2, "--out", m], capsys)
    assert code == 0, err
    assert "and --source mysrc (the shards' own)" in stdout
    assert read_jsonl(m) == read_jsonl(tmp_path / "whole.jsonl")
    code, stdout, err = run_cli(["realign", "merge", s1, s2, "--out", m, "--source", "other"], capsys)
    assert code == 0 and "and --source other (given in place of the shards' mysrc)" in stdout, err
    assert {s for r in read_jsonl(m) for s in r["pairs"]} == {"other"}


def test_merge_of_shards_whose_every_task_failed_exits_1(tmp_path, capsys, scripted):
    src = EXAMPLES / "realdata.jsonl"
    (tmp_path / "empty").mkdir()
    outs = [tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"]
    for k, out in enumerate(outs, 1):
        code, _, _ = run_cli(["realign", src, "--config", "offline", "--out", out, "--images", tmp_path / "empty",
                              "--shard", f"{k}/2"], capsys)
        assert code == 1  # no image there: every task failed
    code, stdout, err = run_cli(["realign", "merge", *outs, "--out", tmp_path / "m.jsonl"], capsys)
    assert code == 1 and "EVERY TASK FAILED" in stdout, (stdout, err)


def test_another_shard_on_a_shards_output_is_refused_even_forced_and_merge_counts_tasks_once(tmp_path, capsys,
                                                                                             scripted):
    """Resuming shard 1's output as shard 2 put both slices in one output under a header naming one;
    merge then counted each doubled task twice and advised resuming."""
    src = EXAMPLES / "realdata.jsonl"
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    realign(capsys, src, a, "--shard", "1/2")
    code, _, err = run_cli(["realign", src, "--config", "offline", "--out", a, "--images", EXAMPLES / "images",
                            "--shard", "2/2", "--force-resume"], capsys)
    assert code == 2 and "started on a different shard" in err and "not even with --force-resume" in err, err
    realign(capsys, src, b, "--shard", "2/2")
    from reallod.agent.merge import MergeError, merge_shards

    # a's journal, edited to claim shard 2/2's tasks are its own too (what the forced resume had written)
    journal_b = (tmp_path / "b.journal.jsonl").read_text().splitlines()[1:]
    with open(tmp_path / "a.journal.jsonl", "a") as f:
        f.write("\n".join(journal_b) + "\n")
    with pytest.raises(MergeError) as e:
        merge_shards([a, b], tmp_path / "m.jsonl")
    doubled = len([line for line in journal_b if line.strip()])
    assert f"{doubled} doubled task(s)" in str(e.value) and "resumes" not in str(e.value)
    assert "rerun that shard into a fresh --out" in str(e.value)


def test_a_missing_shard_trace_is_said_and_an_earlier_merged_trace_removed(tmp_path, capsys, scripted):
    src = EXAMPLES / "realdata.jsonl"
    s1, s2, m = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl", tmp_path / "m.jsonl"
    realign(capsys, src, s1, "--shard", "1/2")
    realign(capsys, src, s2, "--shard", "2/2")
    assert run_cli(["realign", "merge", s1, s2, "--out", m], capsys)[0] == 0
    assert (tmp_path / "m.trace.jsonl").is_file()
    (tmp_path / "s2.trace.jsonl").unlink()
    code, _, err = run_cli(["realign", "merge", s1, s2, "--out", m], capsys)
    assert code == 0, err
    assert f"no trace written: 1 shard trace(s) missing, e.g. {tmp_path / 's2.trace.jsonl'}" in err
    assert "was removed (it was not this output's)" in err and not (tmp_path / "m.trace.jsonl").exists()


def test_a_damaged_or_cut_shard_trace_is_said_and_no_trace_written(tmp_path, capsys, scripted):
    """A shard trace overwritten with garbage, or cut, was merged silently: the merged trace lacked that
    shard's tasks (it trains the agent's successor)."""
    src = EXAMPLES / "realdata.jsonl"
    s1, s2, m = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl", tmp_path / "m.jsonl"
    realign(capsys, src, s1, "--shard", "1/2")
    realign(capsys, src, s2, "--shard", "2/2")
    trace = tmp_path / "s1.trace.jsonl"
    whole = trace.read_bytes()
    trace.write_bytes(os.urandom(300))
    code, _, err = run_cli(["realign", "merge", s1, s2, "--out", m], capsys)
    assert code == 0, err
    assert f"no trace written: the shard trace {trace} is damaged (its first line is no trace header)" in err
    assert not (tmp_path / "m.trace.jsonl").exists()
    lines = whole.splitlines(keepends=True)
    trace.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])  # its last entry cut short
    code, _, err = run_cli(["realign", "merge", s1, s2, "--out", m], capsys)
    assert code == 0 and f"the shard trace {trace} holds {len(lines) - 2} of its {len(lines) - 1} task(s)" in err
    assert not (tmp_path / "m.trace.jsonl").exists()
    trace.write_bytes(whole)
    assert run_cli(["realign", "merge", s1, s2, "--out", m], capsys)[0] == 0
    assert len((tmp_path / "m.trace.jsonl").read_bytes().splitlines()) == len(lines) + len(
        (tmp_path / "s2.trace.jsonl").read_bytes().splitlines()) - 1  # one header
