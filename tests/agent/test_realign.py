import asyncio
from pathlib import Path

import pytest

from reallod.agent import realign as runner
from reallod.agent.inputs import iter_tasks
from reallod.agent.realign import RealignOptions, realign, run_tasks
from reallod.agent.roles import Roles, make_role
from reallod.agent.task import ObjectRef, Task, TaskResult
from reallod.agent.trace import read_trace
from reallod.data.schema import check_record
from reallod.errors import DataError, ReallodError
from reallod.llm.policy import RetryPolicy
from reallod.runs.image_root import ImageLoader
from tests.agent.io_helpers import EXAMPLES, pair, read_jsonl, record, write_image, write_jsonl
from tests.agent.scripted import ScriptedBackend, plan, reflect, rewrite, scripted_roles


def _user_text(messages) -> str:
    return str(messages[-1]["content"])


def judge_by_colour(role, messages):
    """Reflector: an expression naming blue is wrong, others correct; the planner follows the verdict;
    rewrites say red."""
    text = _user_text(messages)
    if role == "reflector":
        return reflect("wrong" if "blue" in text.rsplit("Expression to judge:", 1)[-1] else "correct")
    if role == "planner":
        return plan("wrong" if "Reviewer's verdict: wrong" in text else "correct")
    if role == "rewriter":
        return rewrite("the red square")
    raise AssertionError(role)


def make_task(i: int, path: str = "a.png", raw: str = "the red square") -> Task:
    return Task(f"t{i}", path, 48, 64, raw, ObjectRef("square", [[1, 1, 30, 30]]), caption="a red square")


def collect():
    got: list[tuple[str, TaskResult]] = []
    return got, lambda item, result: got.append((item.task_id, result))


def test_results_are_streamed_as_tasks_finish(tmp_path):
    write_image(tmp_path / "a.png")
    log: list[str] = []

    def answers(role, messages):
        log.append(f"call {role}")
        return reflect("correct") if role == "reflector" else plan("correct")

    roles = scripted_roles(answers, vlm=False)
    got, sink = collect()

    def sink_and_log(item, result):
        log.append(f"done {item.task_id}")
        sink(item, result)

    n = asyncio.run(run_tasks([make_task(i) for i in range(3)], roles, ImageLoader(tmp_path), sink_and_log))
    assert n == 3 and [tid for tid, _ in got] == ["t0", "t1", "t2"]
    assert all(r.verdict == "correct" and r.cycles == 2 for _, r in got)
    # each task is written as soon as it is done, before the next one makes its first call
    assert log == [entry for i in range(3) for entry in ("call reflector", "call planner", f"done t{i}")]


class SlowBackend(ScriptedBackend):
    """A scripted backend that takes a while to answer, and counts how many tasks call it at once."""

    async def complete(self, messages, **kwargs):
        state = self.answers
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.01)
        state["now"] -= 1
        return await ScriptedBackend.complete(
            ScriptedBackend(lambda role, m: reflect("correct") if role == "reflector" else plan("correct"),
                            self.role), messages, **kwargs)


def test_concurrency_is_bounded_and_finish_order_is_kept(tmp_path):
    write_image(tmp_path / "a.png")
    state = {"now": 0, "peak": 0}
    roles = Roles(**{n: make_role(n, SlowBackend(state, n)) for n in ("reflector", "planner", "rewriter")},
                  retry=RetryPolicy(max_attempts=1, base_delay_s=0.0))
    got, sink = collect()
    asyncio.run(run_tasks((make_task(i) for i in range(7)), roles, ImageLoader(tmp_path), sink, concurrency=3))
    assert sorted(tid for tid, _ in got) == [f"t{i}" for i in range(7)]
    assert state["peak"] == 3


def test_input_problems_and_broken_images_fail_without_model_calls(tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    rec = record("bad.png", {"s": [pair([[1, 1, 9, 9]], "cup", ["the cup", ""])]})
    items = list(iter_tasks(write_jsonl(tmp_path / "in.jsonl", [rec])))
    roles = scripted_roles({}, vlm=False)  # any call would raise ScriptExhausted
    got, sink = collect()
    asyncio.run(run_tasks(items, roles, ImageLoader(tmp_path), sink))
    results = dict(got)
    assert results["0/s/0/0"].error_kind == "unreadable_image" and "bad.png" in results["0/s/0/0"].error
    assert results["0/s/0/1"].error_kind == "empty_expression"
    assert all(r.verdict == "failed" for r in results.values())
    assert roles.reflector.backend.calls == []


def test_an_unexpected_error_fails_one_task_and_the_run_goes_on(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png")
    real = runner.workflow.run_task

    async def flaky(task, roles, **kw):
        if task.task_id == "t1":
            raise KeyError("boom")
        return await real(task, roles, **kw)

    monkeypatch.setattr(runner.workflow, "run_task", flaky)
    roles = scripted_roles(lambda role, m: reflect("correct") if role == "reflector" else plan("correct"), vlm=False)
    got, sink = collect()
    asyncio.run(run_tasks([make_task(i) for i in range(3)], roles, ImageLoader(tmp_path), sink))
    results = dict(got)
    assert results["t1"].verdict == "failed" and results["t1"].error_kind == "agent_error"
    assert "KeyError" in results["t1"].error
    assert results["t0"].verdict == results["t2"].verdict == "correct"


def test_realign_on_the_example_writes_output_trace_and_summary(tmp_path):
    roles = scripted_roles(judge_by_colour, vlm=False)
    out = tmp_path / "out" / "realigned.jsonl"
    run = realign(RealignOptions(input=EXAMPLES / "realdata.jsonl", config="scripted", out=out,
                                 images=EXAMPLES / "images", unresolved="negative"), roles=roles)
    assert run.trace == tmp_path / "out" / "realigned.trace.jsonl"
    header, entries = read_trace(run.trace)
    entries = list(entries)
    assert header["input"].endswith("realdata.jsonl") and header["format"] == "records"
    n_tasks = sum(1 for _ in iter_tasks(EXAMPLES / "realdata.jsonl"))
    assert len(entries) == run.summary.tasks == n_tasks
    assert sum(run.summary.verdicts.values()) == n_tasks
    by_raw = {e["result"]["raw_expression"]: e["result"] for e in entries}
    assert by_raw["the astronaut in a blue spacesuit"]["verdict"] == "rewritten"
    assert by_raw["the astronaut in a blue spacesuit"]["expression"] == "the red square"
    assert by_raw["the red espresso cup"]["verdict"] == "correct"
    assert run.summary.roles["reflector"].calls > 0 and run.summary.roles["reflector"].prompt_tokens > 0
    records = read_jsonl(out)
    assert len(records) == 4 and all(not check_record(r) for r in records)
    cup = records[1]["pairs"]["vlm_short"][0]
    assert cup["origin_positive_expressions"] == ["the red espresso cup", "the blue coffee mug"]
    assert cup["positive_expressions"] == ["the red espresso cup", "the red square"]
    assert [p["verdict"] for p in cup["provenance"]] == ["correct", "rewritten"]
    assert run.summary.assembly["rewritten:replaced"] == run.summary.verdicts["rewritten"]


def test_realign_limit_and_max_cycles(tmp_path):
    roles = scripted_roles(judge_by_colour, vlm=False)
    out = tmp_path / "o.jsonl"
    run = realign(RealignOptions(input=EXAMPLES / "tasks.json", config="scripted", out=out, images=EXAMPLES / "images",
                                 limit=2, max_cycles=1), roles=roles)
    assert run.summary.tasks == 2 and set(run.summary.cycles) == {1}
    records = read_jsonl(out)
    assert [r["filename"] for r in records] == ["astronaut.jpg"]
    assert records[0]["pairs"]["realigned"][0]["positive_expressions"] == [
        "the smiling astronaut in an orange spacesuit", "the astronaut in a blue spacesuit"]  # keep: as they are
    assert run.summary.assembly["task past --limit:not written"] > 0


def test_out_may_not_overwrite_the_input(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [record("a.png", {"s": [pair([[1, 1, 9, 9]], "cup", ["x"])]})])
    with pytest.raises(Exception, match="would overwrite"):
        realign(RealignOptions(input=src, config="x", out=Path(src)), roles=scripted_roles({}, vlm=False))


def test_trace_reader_skips_a_torn_last_line_only(tmp_path):
    good = '{"trace": 1}\n{"task_id": "a", "result": {}}\n'
    (tmp_path / "t.jsonl").write_text(good + '{"task_id": "b", "res')
    assert [e["task_id"] for e in read_trace(tmp_path / "t.jsonl")[1]] == ["a"]
    (tmp_path / "u.jsonl").write_text(good + '{"task_id": "b", "res\n{"task_id": "c", "result": {}}\n')
    with pytest.raises(DataError, match=r"u\.jsonl:3: invalid JSON"):
        list(read_trace(tmp_path / "u.jsonl")[1])
    (tmp_path / "v.jsonl").write_text('{"task_id": "a"}\n')
    with pytest.raises(ReallodError, match="not a reallod trace"):
        read_trace(tmp_path / "v.jsonl")


def test_a_truncated_gzip_input_stops_the_run_before_any_model_call(tmp_path):
    """Its readable part ran first (81 tasks paid for), then the run stopped with exit 2 and no output."""
    import gzip

    data = gzip.compress((EXAMPLES / "realdata.jsonl").read_bytes() * 20)
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(data[: len(data) - 40])  # the stream ends early: its last lines are lost
    roles = scripted_roles(judge_by_colour, vlm=False)
    with pytest.raises(DataError, match=r"in\.jsonl\.gz: gzip stream is corrupt or truncated .*nothing was run"):
        realign(RealignOptions(input=src, config="scripted", out=tmp_path / "o.jsonl", images=EXAMPLES / "images"),
                roles=roles)
    assert not roles.reflector.backend.calls and not (tmp_path / "o.journal.jsonl").exists()
    src.write_bytes(data)  # whole: it runs
    run = realign(RealignOptions(input=src, config="scripted", out=tmp_path / "o.jsonl", images=EXAMPLES / "images",
                                 limit=2), roles=roles)
    assert run.summary.tasks == 2
