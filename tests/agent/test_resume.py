"""Resume and exactly-once output: reruns skip finished tasks, changed setups are refused, a disk that
refuses writes or an output that cannot be written stops the run with the journal intact."""

from __future__ import annotations

import errno

import pytest

from reallod.agent.realign import RealignOptions, realign
from reallod.agent.trace import read_trace
from reallod.errors import ReallodError
from reallod.runs import journal as journal_mod
from reallod.runs.journal import read_journal
from reallod.runs.session import RunStopped
from tests.agent.io_helpers import EXAMPLES, read_jsonl
from tests.agent.scripted import answer, colour_judge, plan, reflect, rewrite, scripted_roles
from tests.cli_helpers import run_cli


def run(tmp_path, name="o", **kw):
    roles = scripted_roles(colour_judge, vlm=False)
    kw.setdefault("concurrency", 4)
    kw.setdefault("images", EXAMPLES / "images")
    opts = RealignOptions(input=kw.pop("input", EXAMPLES / "realdata.jsonl"), config="scripted",
                          out=tmp_path / f"{name}.jsonl", **kw)
    return realign(opts, roles=roles), roles


def trace_ids(path):
    return [e["task_id"] for e in read_trace(path)[1]]


def test_rerun_resumes_without_redoing_or_doubling(tmp_path):
    ref, _ = run(tmp_path, "ref")
    first, _ = run(tmp_path, limit=5)
    assert first.info["tasks_run"] == 5
    second, _ = run(tmp_path)
    assert second.info["tasks_resumed"] == 5 and second.info["tasks_run"] == ref.summary.tasks - 5
    third, roles3 = run(tmp_path)
    assert third.info["tasks_run"] == 0 and roles3.reflector.backend.calls == []  # nothing redone
    header, done = read_journal(tmp_path / "o.journal.jsonl")
    assert len(done) == ref.summary.tasks and header["meta"]["format"] == "records"
    ids = trace_ids(tmp_path / "o.trace.jsonl")
    assert len(ids) == len(set(ids)) == ref.summary.tasks
    assert read_jsonl(tmp_path / "o.jsonl") == read_jsonl(tmp_path / "ref.jsonl")
    assert third.summary.verdicts == ref.summary.verdicts


def test_changed_config_is_refused_unless_forced_and_another_input_always(tmp_path, capsys, monkeypatch):
    import reallod.agent.agent_config as agent_config

    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(colour_judge, vlm=False))
    src = tmp_path / "in.jsonl"
    src.write_bytes((EXAMPLES / "realdata.jsonl").read_bytes())
    out = tmp_path / "o.jsonl"
    args = ["realign", src, "--config", "offline", "--out", out, "--images", EXAMPLES / "images", "--limit", "3"]
    assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli([*args, "--max-cycles", "1"], capsys)
    assert code == 2 and "different max_cycles" in err and "--force-resume" in err and err.count("\n") == 1
    assert run_cli([*args, "--max-cycles", "1", "--force-resume"], capsys)[0] == 0  # a changed config: forced on
    before = out.read_bytes()

    # another input into the same --out (the docs' two examples once shared one): refused, forced or not
    other = ["realign", EXAMPLES / "tasks.json", "--config", "offline", "--out", out, "--images", EXAMPLES / "images"]
    src.write_bytes(src.read_bytes() + b"\n")  # or the same file with other content
    for command in (other, args):
        for force in ([], ["--force-resume"]):
            code, _, err = run_cli([*command, *force], capsys)
            assert code == 2 and err.count("\n") == 1, err
            assert "started on a different input" in err and f"the journal's: {src.resolve()}" in err
            assert "not even with --force-resume" in err and "another --out" in err and "delete the journal" in err
    assert out.read_bytes() == before  # nothing mixed in
    _, done = read_journal(tmp_path / "o.journal.jsonl")
    assert len(done) == 3


def test_disk_full_stops_cleanly_and_resume_finishes(tmp_path, monkeypatch):
    ref, _ = run(tmp_path, "ref")
    real = journal_mod._write_all
    calls = {"n": 0}

    def full_after_three(fd, data):
        calls["n"] += 1
        if calls["n"] > 3:  # the header and two batches fit; then the disk fills up mid-write
            real(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(journal_mod, "_write_all", full_after_three)
    with pytest.raises(RunStopped, match=r"No space left on device.*rerun to resume"):
        run(tmp_path, concurrency=1)
    monkeypatch.setattr(journal_mod, "_write_all", real)
    _, done = read_journal(tmp_path / "o.journal.jsonl")  # readable, whole lines only
    assert 1 <= len(done) < ref.summary.tasks
    assert not (tmp_path / "o.jsonl").exists()
    again, _ = run(tmp_path)
    assert again.info["tasks_resumed"] == len(done)
    assert read_jsonl(tmp_path / "o.jsonl") == read_jsonl(tmp_path / "ref.jsonl")
    ids = trace_ids(tmp_path / "o.trace.jsonl")
    assert sorted(ids) == sorted(set(ids)) and len(ids) == ref.summary.tasks


def test_unwritable_output_keeps_the_journal_and_a_rerun_writes_it(tmp_path, capsys, monkeypatch):
    import reallod.agent.agent_config as agent_config
    import reallod.agent.realign as realign_mod

    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(colour_judge, vlm=False))
    out = tmp_path / "o.jsonl"
    real_assemble = realign_mod.assemble

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(realign_mod, "assemble", full_disk)  # the disk fills up as the output is written
    args = ["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", out, "--images",
            EXAMPLES / "images"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"cannot write the output {out}" in err and "safe in" in err and "Traceback" not in err
    _, done = read_journal(tmp_path / "o.journal.jsonl")
    assert len(done) == 22
    monkeypatch.setattr(realign_mod, "assemble", real_assemble)
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "22 resumed from the journal, 0 run now" in stdout
    assert len(read_jsonl(out)) == 4


def test_journal_in_a_folder_that_cannot_be_made(tmp_path, capsys, monkeypatch):
    import reallod.agent.agent_config as agent_config

    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(colour_judge, vlm=False))
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(["realign", EXAMPLES / "realdata.jsonl", "--config", "offline",
                       "--out", tmp_path / "file" / "o.jsonl", "--images", EXAMPLES / "images"], capsys)
    assert code == 2 and f"{tmp_path / 'file'} is a file, not a folder" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_the_journal_is_the_runs_record_even_without_trace(tmp_path):
    run(tmp_path, limit=4)
    (tmp_path / "o.trace.jsonl").unlink()  # lost; the journal still knows the 4 tasks
    again, _ = run(tmp_path)
    ids = trace_ids(tmp_path / "o.trace.jsonl")
    assert len(ids) == len(set(ids)) == again.summary.tasks
    recovered = [e for e in read_trace(tmp_path / "o.trace.jsonl")[1] if e.get("recovered")]
    assert len(recovered) == 4 and all(e["result"]["verdict"] for e in recovered)


def test_bad_options(tmp_path):
    with pytest.raises(ReallodError, match="--concurrency"):
        run(tmp_path, concurrency=0)
    with pytest.raises(ReallodError, match="--shard"):
        run(tmp_path, shard="3/2")
    # outputs that could not be written at the end are refused before any task runs (and is paid for)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(ReallodError, match=r"--out .*folder\.jsonl is a folder"):
        run(tmp_path, "folder")
    with pytest.raises(ReallodError, match=r"--report .*a_file is a file, not a folder"):
        run(tmp_path, report=tmp_path / "a_file" / "run")
    # a report whose JSON would be the input: --report tasks next to tasks.json wrote over it
    tasks = tmp_path / "tasks.json"
    tasks.write_bytes((EXAMPLES / "tasks.json").read_bytes())
    with pytest.raises(ReallodError, match=r"--report .*tasks would overwrite the input"):
        run(tmp_path, input=tasks, report=tmp_path / "tasks")
    assert tasks.read_bytes() == (EXAMPLES / "tasks.json").read_bytes()
    assert not (tmp_path / "o.journal.jsonl").exists()


def test_a_rerun_does_again_the_tasks_that_failed(tmp_path):
    """A wrong --images root failed every task and a fixed rerun only reloaded those failures: the
    journal counted them done. Now they are run again, their new results replace the failed ones in the
    journal and the trace, and the output equals a run that never failed."""
    ref, _ = run(tmp_path, "ref")
    (tmp_path / "nowhere").mkdir()
    failed, _ = run(tmp_path, images=tmp_path / "nowhere")
    assert set(failed.summary.verdicts) == {"failed"}
    again, _ = run(tmp_path)
    assert again.info["tasks_retried"] == ref.summary.tasks and again.info["tasks_run"] == ref.summary.tasks
    assert again.summary.verdicts == ref.summary.verdicts
    assert read_jsonl(tmp_path / "o.jsonl") == read_jsonl(tmp_path / "ref.jsonl")
    ids = trace_ids(tmp_path / "o.trace.jsonl")
    assert len(ids) == len(set(ids)) == ref.summary.tasks
    assert all(e["result"]["verdict"] != "failed" for e in read_trace(tmp_path / "o.trace.jsonl")[1])
    assert len(read_journal(tmp_path / "o.journal.jsonl")[1]) == ref.summary.tasks
    third, _ = run(tmp_path)
    assert third.info["tasks_run"] == 0 and third.info["tasks_retried"] == 0


def test_a_crash_between_the_journal_and_the_trace_still_gives_each_task_once(tmp_path):
    """The journal drops the failed results first; a run killed before the trace followed finds stale
    trace lines for tasks the journal no longer holds: they go, the new ones take their place."""
    (tmp_path / "nowhere").mkdir()
    run(tmp_path, images=tmp_path / "nowhere", limit=3)
    header, _ = read_journal(tmp_path / "o.journal.jsonl")
    journal_mod.Journal.open(tmp_path / "o.journal.jsonl", header["fingerprint"],
                             retry=lambda r: r["verdict"] == "failed").close()  # the crash: the trace not yet done
    assert len(read_journal(tmp_path / "o.journal.jsonl")[1]) == 0 and len(trace_ids(tmp_path / "o.trace.jsonl")) == 3
    run(tmp_path, limit=2)  # journal: 2 done now; trace: 3 stale + 2 new until cleaned
    done = run(tmp_path)[0]
    ids = trace_ids(tmp_path / "o.trace.jsonl")
    assert len(ids) == len(set(ids)) == done.summary.tasks
    assert all(e["result"]["verdict"] != "failed" for e in read_trace(tmp_path / "o.trace.jsonl")[1])


def asks_the_vlm(role, messages):
    """Unsure until the VLM, shown the object, has answered: its view needs the image's pixels."""
    if role == "vlm":
        return answer("it is orange")
    asked = any("it is orange" in str(m["content"]) for m in messages)
    if role == "reflector":
        return reflect("correct" if asked else "uncertain")
    if role == "planner":
        return plan("correct") if asked else plan("uncertain", focus="object", question="What colour is it?")
    return rewrite("the fixed one")


def test_images_above_max_pixels_fail_their_tasks_and_a_rerun_with_a_larger_budget_does_them(tmp_path):
    """The agent decoded with Pillow's 89.5 M pixel budget and no option: tasks on larger (aerial) images
    could never run."""
    def go(**kw):
        opts = RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "o.jsonl",
                              images=EXAMPLES / "images", concurrency=4, limit=4, **kw)
        return realign(opts, roles=scripted_roles(asks_the_vlm))

    small = go(max_pixels=1000)
    assert set(small.summary.verdicts) == {"failed"}
    errors = [e["result"]["error"] for e in read_trace(tmp_path / "o.trace.jsonl")[1]]
    assert errors and all("above the limit of 1,000 (raise --max-pixels if it is genuine)" in e for e in errors)
    again = go()
    assert again.info["tasks_retried"] == 4 and "failed" not in again.summary.verdicts


def test_a_task_failed_by_an_unusable_reply_is_asked_again_not_replayed_from_the_cache(tmp_path):
    """A server giving empty replies (llama.cpp without a chat format) fails the tasks; once it is fixed,
    the rerun must reach it: the cache replayed the empty reply and every task failed again."""
    from reallod.llm.backends.base import Completion

    cache = tmp_path / "cache.sqlite"

    def broken(role, messages):
        return Completion("", 10, 0) if role == "reflector" else colour_judge(role, messages)

    opts = RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "o.jsonl",
                          images=EXAMPLES / "images", limit=3, concurrency=1, cache=cache)
    first = realign(opts, roles=scripted_roles(broken, vlm=False))
    assert first.summary.all_failed and first.summary.errors
    fixed = scripted_roles(colour_judge, vlm=False)
    second = realign(opts, roles=fixed)
    assert second.summary.tasks == 3 and not second.summary.errors, second.summary.errors
    asked = [c for c in fixed.reflector.backend.calls if c.role == "reflector"]
    assert asked, "the fixed server was not asked"
    # from the first attempt: the earlier run's rejected empty replies were not replayed before it
    assert all(m["role"] != "assistant" for c in asked for m in c.messages)


def test_a_smaller_limit_counts_only_the_tasks_it_selects(tmp_path):
    """After a run with --limit 20, a rerun with --limit 2 resumes its 2 tasks and counts only them: the
    18 others stay in the journal for a later, larger run, but are no part of this run's output,
    summary or report (they were all counted: 20 tasks said, 2 in the output)."""
    import json

    ref, _ = run(tmp_path, "ref", limit=2)
    run(tmp_path, limit=20)
    small, roles = run(tmp_path, limit=2, report=tmp_path / "rep")
    assert roles.reflector.backend.calls == []  # resumed: nothing run
    assert small.summary.tasks == sum(small.summary.verdicts.values()) == 2
    assert small.info["tasks_total"] == small.info["tasks_resumed"] == 2 and small.info["tasks_run"] == 0
    assert small.summary.verdicts == ref.summary.verdicts and small.summary.assembly == ref.summary.assembly
    assert read_jsonl(tmp_path / "o.jsonl") == read_jsonl(tmp_path / "ref.jsonl")
    assert json.loads((tmp_path / "rep.json").read_text())["tasks"] == 2
    assert len(read_journal(tmp_path / "o.journal.jsonl")[1]) == 20  # kept for a later run
    larger, roles = run(tmp_path, limit=20)
    assert larger.summary.tasks == 20 and larger.info["tasks_run"] == 0 and roles.reflector.backend.calls == []


def test_an_input_named_by_its_id_that_lost_records_counts_only_those_left(tmp_path):
    """An input fingerprinted by ``input_id`` (the data engine's generated file, which a smaller --limit
    rewrites shorter) may hold fewer tasks than the journal: only its own are counted and assembled."""
    src = tmp_path / "in.jsonl"
    lines = (EXAMPLES / "realdata.jsonl").read_text().splitlines(keepends=True)
    src.write_text("".join(lines))
    full, _ = run(tmp_path, input=src, input_id="generated")
    src.write_text(lines[0])
    ref, _ = run(tmp_path, "ref", input=src)
    again, roles = run(tmp_path, input=src, input_id="generated")
    assert roles.reflector.backend.calls == [] and again.info["tasks_run"] == 0
    assert again.summary.tasks == ref.summary.tasks < full.summary.tasks
    assert again.summary.verdicts == ref.summary.verdicts and again.info["tasks_resumed"] == ref.summary.tasks
    assert read_jsonl(tmp_path / "o.jsonl") == read_jsonl(tmp_path / "ref.jsonl")


def test_a_limit_rerun_retries_only_the_failed_tasks_it_selects_and_keeps_the_others(tmp_path):
    """A --limit rerun said "of which N had failed before" for failed tasks past its limit, which it did not
    run, and dropped their results from the journal: a later full run no longer knew they had failed."""
    ref, _ = run(tmp_path, "ref")
    (tmp_path / "nowhere").mkdir()
    run(tmp_path, images=tmp_path / "nowhere")
    failed = lambda: {t for t, r in read_journal(tmp_path / "o.journal.jsonl")[1].items() if r["verdict"] == "failed"}  # noqa: E731
    assert len(failed()) == ref.summary.tasks
    small, _ = run(tmp_path, limit=3)
    assert small.info["tasks_retried"] == small.info["tasks_run"] == 3 and "failed" not in small.summary.verdicts
    assert len(failed()) == ref.summary.tasks - 3  # kept for a later run
    assert len(read_journal(tmp_path / "o.journal.jsonl")[1]) == ref.summary.tasks
    same, _ = run(tmp_path, limit=3)
    assert same.info["tasks_retried"] == same.info["tasks_run"] == 0
    full, _ = run(tmp_path)
    assert full.info["tasks_retried"] == full.info["tasks_run"] == ref.summary.tasks - 3 and not failed()
    assert full.summary.verdicts == ref.summary.verdicts
    assert read_jsonl(tmp_path / "o.jsonl") == read_jsonl(tmp_path / "ref.jsonl")
    ids = trace_ids(tmp_path / "o.trace.jsonl")
    assert len(ids) == len(set(ids)) == ref.summary.tasks


def test_a_changed_config_is_refused_naming_what_changed_in_it(tmp_path):
    """It said only "this journal was started with a different config"."""
    from dataclasses import replace

    def with_rewriter(max_tokens: int, system_extra: str = ""):
        roles = scripted_roles(colour_judge, vlm=False)
        rewriter = roles.rewriter
        return replace(roles, rewriter=replace(rewriter, max_tokens=max_tokens, prompt=replace(
            rewriter.prompt, system=rewriter.prompt.system + system_extra)))

    opts = RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=tmp_path / "o.jsonl",
                          images=EXAMPLES / "images", limit=3)
    realign(opts, roles=with_rewriter(96))
    with pytest.raises(ReallodError) as e:
        realign(opts, roles=with_rewriter(97, " "))
    said = str(e.value)
    assert ("this journal was started with a different config (roles.rewriter.system, "
            "roles.rewriter.max_tokens (96 in the journal, 97 now))") in said, said
