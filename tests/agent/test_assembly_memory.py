"""The end of a large run holds little per task: `reallod realign` and `reallod realign merge` assemble
the output from compact results (:class:`Results`) and gather a published task list by image on disk
(:class:`TasksByImage`), writing byte for byte what holding everything in memory wrote."""

from __future__ import annotations

import random
import tracemalloc
from collections import Counter
from pathlib import Path

import orjson
import pytest

from reallod.agent import assemble as assemble_mod
from reallod.agent import realign as realign_mod
from reallod.agent.assemble import Results, assemble, realign_pair
from reallod.agent.inputs import box_key, iter_tasks, shard_key
from reallod.agent.merge import merge_shards
from reallod.agent.realign import RealignOptions, realign
from reallod.agent.task import Task
from reallod.runs.journal import fingerprint_file, journal_path_for
from reallod.runs.shard import shard_of
from tests.agent.io_helpers import published, read_jsonl, write_jsonl
from tests.agent.scripted import scripted_roles

MAX_BYTES_PER_TASK = 600  # holding every result and every task in memory took 1,600-1,800
SIZES = (2000, 8000)  # tasks: the memory held per task is the growth between them


def entry(tid: str, raw: str, verdict: str) -> dict:
    """A journal entry as a run writes it (steps and all)."""
    step = {"cycle": 1, "role": "reflector", "attempts": 1, "repaired": False, "prompt_tokens": 800,
            "completion_tokens": 40, "latency_s": 0.9, "decision": {"verdict": "wrong", "missing": "",
                                                                     "feedback": "the box holds something else"},
            "view": None}
    return {"task_id": tid, "verdict": verdict, "expression": f"{raw}, rewritten" if verdict == "rewritten" else raw,
            "raw_expression": raw, "cycles": 1, "error": None, "error_kind": None, "notes": [], "elapsed_s": 1.5,
            "steps": [step, {**step, "role": "planner"}]}


def big_task_list(folder: Path, n: int) -> tuple[Path, list[tuple[str, str, str]]]:
    """``n`` published tasks, 4 per image, 2 objects per image; (task id, image, raw expression) each."""
    rows = [published(f"img/{i // 4:06d}.jpg", f"the cup number {i} on the left", [1 + 30 * (i % 2), 1, 20, 20],
                      "cup", caption=f"two cups on a table, picture {i // 4}") for i in range(n)]
    src = write_jsonl(folder / "tasks.jsonl", rows)
    return src, [(str(i), row["image_path"], row["raw_expression"]) for i, row in enumerate(rows)]


def write_journal(path: Path, fp: dict, meta: dict, tasks: list[tuple[str, str, str]]) -> None:
    verdicts = ("correct", "rewritten", "wrong", "correct")
    with open(path, "wb") as f:
        f.write(orjson.dumps({"journal": 1, "fingerprint": fp, "meta": meta}) + b"\n")
        for i, (tid, _, raw) in enumerate(tasks):
            f.write(orjson.dumps({"task_id": tid, "result": entry(tid, raw, verdicts[i % 4])}) + b"\n")


def traced_peak(fn) -> int:
    """The most memory Python held while ``fn`` ran, above what it held before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def bytes_per_task(tmp_path: Path, prepare) -> float:
    """How the peak grows per task: the run ``prepare(folder, n)`` returns, at two sizes (buffers and
    the like do not grow with the input)."""
    peaks = []
    for n in SIZES:
        (tmp_path / str(n)).mkdir()
        peaks.append(traced_peak(prepare(tmp_path / str(n), n)))
    return (peaks[1] - peaks[0]) / (SIZES[1] - SIZES[0])


def test_results_keep_only_what_assembly_reads_and_share_it():
    results = Results()
    results.add("a", entry("a", "the cup", "correct"))
    results.add("b", entry("b", "the mug", "correct"))
    results.add("c", entry("c", "the plate", "rewritten"))
    results.add("d", {**entry("d", "a fork", "failed"), "error": "boom", "error_kind": "agent_error", "cycles": 0})
    results.add("e", entry("e", "a knife", "wrong"), shard=2)
    assert results["a"] is results["b"]  # one dict for every result without a rewrite
    assert dict(results["a"]) == {"verdict": "correct", "expression": None, "cycles": 1, "error_kind": None}
    assert dict(results["c"]) == {"verdict": "rewritten", "expression": "the plate, rewritten", "cycles": 1,
                                  "error_kind": None}
    assert results["d"]["error_kind"] == "agent_error" and results["d"]["cycles"] == 0
    assert results["e"]["shard"] == 2 and results["e"] is not results.get("a")
    pair = {"bboxes": [[1, 1, 9, 9]], "category": "cup", "relation": "single",
            "positive_expressions": ["the cup", "the plate", "a fork"], "negative_expressions": []}
    out = realign_pair(pair, ["a", "c", "d"], results, "negative", Counter(), agent="t")
    full = {tid: e for tid, e in (("a", entry("a", "the cup", "correct")), ("c", entry("c", "the plate", "rewritten")),
                                  ("d", {**entry("d", "a fork", "failed"), "error_kind": "agent_error", "cycles": 0}))}
    assert out == realign_pair(pair, ["a", "c", "d"], full, "negative", Counter(), agent="t")


def old_assemble_tasks(src: Path, results: dict, policy: str, limit: int | None, select) -> list[dict]:
    """The records as they were written when every image's tasks were gathered in memory."""
    images: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    items = iter_tasks(src, fmt="tasks")
    if select is not None:
        items = (item for item in items if select(item.task_id, item.image_path))
    for n, item in enumerate(items):
        if (limit is not None and n >= limit) or not isinstance(item, Task):
            continue
        images.setdefault(item.image_path, {"filename": item.image_path, "height": item.height,
                                            "width": item.width, "caption": item.caption})
        pair, ids = groups.setdefault(item.image_path, {}).setdefault(
            (item.chosen.category, box_key(item.chosen.bboxes)),
            ({"bboxes": item.chosen.bboxes, "category": item.chosen.category,
              "relation": "multi" if len(item.chosen.bboxes) > 1 else "single",
              "positive_expressions": [], "negative_expressions": []}, []))
        pair["positive_expressions"].append(item.raw_expression)
        ids.append(item.task_id)
    out = []
    for path, record in images.items():
        pairs = [p for pair, ids in groups[path].values()
                 if (p := realign_pair(pair, ids, results, policy, Counter(), agent="t")) is not None]
        out.append({**record, "pairs": {"realigned": pairs} if pairs else {}})
    return out


@pytest.mark.parametrize(("limit", "sharded"), [(None, False), (150, False), (None, True)])
def test_tasks_gathered_on_disk_are_written_as_in_memory(tmp_path, monkeypatch, limit, sharded):
    """Images scattered over the list (more than are remembered), boxes equal once rounded, groups of
    boxes, bad tasks, --limit and a shard: the same records, pairs and expressions, in the same order."""
    monkeypatch.setattr(assemble_mod.TasksByImage, "RECENT", 3)
    monkeypatch.setattr(assemble_mod.TasksByImage, "BATCH", 7)
    rng = random.Random(5)
    rows: list = []
    for i in range(300):
        image = f"im{rng.randrange(40)}.jpg"
        box = rng.choice([[1, 1, 10, 10], [1.001, 1.002, 10, 10], [20, 20, 10, 10], [[1, 1, 5, 5], [30, 30, 5, 5]]])
        rows.append(published(image, f"thing {i}" if i % 17 else "", box, rng.choice(["cup", "mug"]),
                              caption=f"caption {i}", size=(64 + i % 3, 48)))
        if i % 50 == 7:
            rows.append("{not json")
    src = write_jsonl(tmp_path / "tasks.jsonl", rows)
    verdicts = ("correct", "rewritten", "wrong", "failed", "unresolved")
    results = Results()
    for k in range(0, 320, 2):
        results.add(str(k), {**entry(str(k), f"thing {k}", verdicts[k % 5]), "cycles": k % 3})
    select = (lambda tid, image: image is not None and image < "im2") if sharded else None
    out = tmp_path / "out.jsonl"
    counts = assemble("tasks", src, results, out, policy="negative", agent="t", limit=limit, select=select)
    assert read_jsonl(out) == old_assemble_tasks(src, results, "negative", limit, select)
    assert counts["record:written"] == len(read_jsonl(out)) > 5


def test_realign_end_of_run_holds_little_per_task(tmp_path, monkeypatch):
    """A finished run of thousands of tasks, rerun: it resumes, runs nothing and writes the output,
    holding a few hundred bytes a task from the end of its tasks on (holding every result and task
    took about 1.7 KB). (Before, the tasks' loop holds a window of 4,096 tasks regrouped by image.)"""

    def then_measure(*args, **kwargs):
        ran = run_tasks(*args, **kwargs)
        tracemalloc.reset_peak()
        return ran

    run_tasks = realign_mod._run
    monkeypatch.setattr(realign_mod, "_run", then_measure)

    def no_model(role, messages):
        raise AssertionError("every task is done: no model call expected")

    def prepare(folder: Path, n: int):
        src, tasks = big_task_list(folder, n)
        fp = {"config": "test", "input": fingerprint_file(src), "captions": None, "max_cycles": 3,
              "format": "tasks", "shard": None}
        write_journal(journal_path_for(folder / "o.jsonl"), fp, {"input": str(src), "format": "tasks"}, tasks)
        opts = RealignOptions(input=src, config="test", out=folder / "o.jsonl", images=folder, force_resume=True,
                              no_cache=True)
        roles = scripted_roles(no_model, vlm=False)

        def run() -> None:
            done = realign(opts, roles=roles)
            assert done.info["tasks_run"] == 0 and done.summary.tasks == n
            assert done.summary.assembly["rewritten:replaced"] == done.summary.assembly["record:written"] == n // 4

        return run

    per_task = bytes_per_task(tmp_path, prepare)
    assert per_task < MAX_BYTES_PER_TASK, f"{per_task:.0f} bytes a task"


def test_merge_holds_little_per_task(tmp_path):
    def prepare(folder: Path, n: int):
        src, tasks = big_task_list(folder, n)
        fp = {"config": "test", "input": fingerprint_file(src), "captions": None, "max_cycles": 3, "format": "tasks"}
        outs = []
        for k in (1, 2):
            out = folder / f"s{k}.jsonl"
            mine = [t for t in tasks if shard_of(shard_key(t[0], t[1], "tasks"), 2) == k]
            write_journal(journal_path_for(out), {**fp, "shard": f"{k}/2"},
                          {"input": str(src), "format": "tasks", "agent": "test", "captions": None}, mine)
            outs.append(out)

        def run() -> None:
            merged = merge_shards(outs, folder / "merged.jsonl")
            assert merged.summary.tasks == n and merged.summary.assembly["rewritten:replaced"] == n // 4
            assert merged.summary.assembly["record:written"] == n // 4

        return run

    per_task = bytes_per_task(tmp_path, prepare)
    assert per_task < MAX_BYTES_PER_TASK, f"{per_task:.0f} bytes a task"
