import json
from collections import Counter

import pytest

from reallod.agent.assemble import assemble, decide, realign_pair
from reallod.data.schema import check_record
from tests.agent.io_helpers import pair, published, read_jsonl, record, write_jsonl


def res(verdict, expression=None, cycles=2, error_kind=None):
    return {"verdict": verdict, "expression": expression, "cycles": cycles, "error_kind": error_kind}


IDS = ["a", "b", "c", "d", "e"]
PAIR = pair([[1, 1, 9, 9]], "cup", ["the red cup", "the blue cup", "the cup on a table", "the cup", "a mug"],
            ["the plate"])
RESULTS = {"a": res("correct"), "b": res("rewritten", "the white cup"), "c": res("unresolved"),
           "d": res("wrong", "the plate"), "e": res("failed", error_kind="agent_error", cycles=0)}


def test_decide_table():
    assert [decide(v, "drop") for v in ("correct", "rewritten", "wrong", "unresolved", "failed", "not_run")] == \
           ["kept", "replaced", "dropped", "dropped", "dropped", "kept"]
    assert decide("wrong", "keep") == "kept" and decide("failed", "negative") == "negative"


@pytest.mark.parametrize(("policy", "positives", "negatives"), [
    ("keep", ["the red cup", "the white cup", "the cup on a table", "the cup", "a mug"], ["the plate"]),
    ("drop", ["the red cup", "the white cup"], ["the plate"]),
    ("negative", ["the red cup", "the white cup"], ["the plate", "the cup on a table", "the cup", "a mug"]),
])
def test_policies(policy, positives, negatives):
    counts = Counter()
    out = realign_pair(PAIR, IDS, RESULTS, policy, counts, agent="offline")
    assert out["positive_expressions"] == positives
    assert out["negative_expressions"] == negatives
    assert out["origin_positive_expressions"] == PAIR["positive_expressions"]
    assert [p["task_id"] for p in out["provenance"]] == [i for i, _ in zip(IDS, positives, strict=False)]
    assert out["provenance"][1] == {"task_id": "b", "verdict": "rewritten", "cycles": 2, "raw": "the blue cup",
                                    "agent": "offline"}
    assert sum(n for k, n in counts.items() if k.split(":")[0] in RESULTS_VERDICTS) == 5  # every expression counted
    assert not check_record({"filename": "x.jpg", "height": 10, "width": 10, "pairs": {"s": [out]}})


RESULTS_VERDICTS = {"correct", "rewritten", "wrong", "unresolved", "failed", "not_run"}


def test_counts_name_verdict_and_action():
    counts = Counter()
    realign_pair(PAIR, IDS, RESULTS, "negative", counts)
    assert counts["correct:kept"] == 1 and counts["rewritten:replaced"] == 1
    assert counts["unresolved:negative"] == 1 and counts["wrong:negative"] == 1 and counts["failed:negative"] == 1


def test_missing_results_are_kept_as_not_run():
    counts = Counter()
    out = realign_pair(PAIR, IDS, {"a": res("correct")}, "drop", counts)
    assert out["positive_expressions"] == PAIR["positive_expressions"]
    assert [p["verdict"] for p in out["provenance"]] == ["correct"] + ["not_run"] * 4
    assert counts["not_run:kept"] == 4


def test_duplicates_conflicts_and_invalid_expressions_are_counted():
    p = pair([[1, 1, 9, 9]], "cup", ["the cup", "the mug", "", "the bowl"], ["The Cup", "a fork"])
    results = {"1": res("correct"), "2": res("rewritten", "the  CUP"), "3": res("failed"), "4": res("wrong")}
    counts = Counter()
    out = realign_pair(p, ["1", "2", "3", "4"], results, "negative", counts)
    assert out["positive_expressions"] == ["the cup"]  # the rewrite equals it: merged
    assert out["negative_expressions"] == ["a fork", "the bowl"]  # "The Cup" conflicted with a positive
    assert counts["duplicate positive:merged"] == 1
    assert counts["negative equal to a positive:removed"] == 1
    assert counts["invalid expression:dropped"] == 1


def test_pair_without_positives_is_dropped_and_counted():
    counts = Counter()
    p = pair([[1, 1, 9, 9]], "cup", ["the mug"])
    assert realign_pair(p, ["x"], {"x": res("wrong")}, "drop", counts) is None
    assert counts["pair without positives:dropped"] == 1 and counts["wrong:dropped"] == 1


def test_the_negatives_of_a_dropped_pair_are_counted_with_it():
    """They went without a word: the summary said ``wrong:negative 1`` of an expression no output held."""
    counts = Counter()
    p = pair([[1, 1, 9, 9]], "cup", ["the mug"], ["the red car", "the dog"])
    assert realign_pair(p, ["x"], {"x": res("wrong")}, "negative", counts) is None
    assert counts["pair without positives:dropped"] == 1 and counts["negative of a dropped pair:dropped"] == 3


def test_existing_origin_is_kept():
    p = pair([[1, 1, 9, 9]], "cup", ["the cup"], origin_positive_expressions=["a cupp"])
    out = realign_pair(p, ["x"], {"x": res("rewritten", "the white cup")}, "keep", Counter())
    assert out["origin_positive_expressions"] == ["a cupp"]
    assert out["provenance"][0]["raw"] == "the cup"


def test_assemble_records_streams_valid_real_data(tmp_path):
    rows = [record("a.jpg", {"vlm_short": [pair([[1, 1, 9, 9]], "cup", ["the red cup", "the blue cup"])],
                             "llm": [pair([[20, 20, 30, 30]], "fork", ["the fork"])]}, caption="c"),
            "{broken",
            record("b.jpg", {"vlm_short": [pair([[1, 1, 9, 9]], "cat", ["the cat"])]})]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    results = {"0/vlm_short/0/0": res("correct"), "0/vlm_short/0/1": res("wrong"), "0/llm/0/0": res("wrong"),
               "2/vlm_short/0/0": res("rewritten", "the grey cat")}
    counts = assemble("records", src, results, tmp_path / "out.jsonl", policy="drop", agent="t")
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["filename"] for r in out] == ["a.jpg", "b.jpg"]
    assert out[0]["pairs"] == {"vlm_short": [{
        "bboxes": [[1, 1, 9, 9]], "category": "cup", "relation": "single", "positive_expressions": ["the red cup"],
        "negative_expressions": [], "origin_positive_expressions": ["the red cup", "the blue cup"],
        "provenance": [{"task_id": "0/vlm_short/0/0", "verdict": "correct", "cycles": 2, "agent": "t"}]}]}
    assert out[0]["caption"] == "c"
    assert out[1]["pairs"]["vlm_short"][0]["positive_expressions"] == ["the grey cat"]
    assert all(not check_record(r) for r in out)
    assert counts["bad record:not written"] == 1 and counts["record:written"] == 2
    assert counts["pair without positives:dropped"] == 1


def test_assemble_records_with_limit_writes_only_reached_records(tmp_path):
    rows = [record(f"{i}.jpg", {"s": [pair([[1, 1, 9, 9]], "cup", ["a", "b"])]}) for i in range(3)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    counts = assemble("records", src, {"0/s/0/0": res("correct"), "0/s/0/1": res("correct"),
                                       "1/s/0/0": res("correct")}, tmp_path / "out.jsonl", limit=3)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["filename"] for r in out] == ["0.jpg", "1.jpg"]
    assert [p["verdict"] for p in out[1]["pairs"]["s"][0]["provenance"]] == ["correct", "not_run"]
    assert counts["record past --limit:not written"] == 1


def test_assemble_published_tasks_groups_by_image_and_object(tmp_path):
    src = tmp_path / "tasks.json"
    src.write_text(json.dumps([
        published("a.jpg", "the red square", [1, 1, 10, 10]),
        published("a.jpg", "the square top left", [1, 1, 10, 10]),
        published("a.jpg", "the blue circle", [20, 20, 10, 10], "circle"),
        published("b.jpg", "the cat", [0, 0, 5, 5], "cat"),
        published("c.jpg", "", [0, 0, 5, 5], "cat"),  # input problem: cannot be written
    ]))
    results = {"0": res("correct"), "1": res("rewritten", "the square in the top left corner"), "2": res("wrong"),
               "3": res("unresolved"), "4": res("failed", error_kind="empty_expression")}
    counts = assemble("tasks", src, results, tmp_path / "out.jsonl", policy="keep", source="fixed")
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["filename"] for r in out] == ["a.jpg", "b.jpg"]
    a = out[0]
    assert (a["height"], a["width"], a["caption"]) == (48, 64, "a red square on its own")
    square, circle = a["pairs"]["fixed"]
    assert square["bboxes"] == [[1, 1, 11, 11]]
    assert square["positive_expressions"] == ["the red square", "the square in the top left corner"]
    assert circle["positive_expressions"] == ["the blue circle"] and circle["provenance"][0]["verdict"] == "wrong"
    assert all(not check_record(r) for r in out)
    assert counts["input problem:not written"] == 1


def test_failed_write_keeps_the_previous_output(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [record("a.jpg", {"s": [pair([[1, 1, 9, 9]], "cup", ["a"])]})])
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")

    class Boom(dict):
        def get(self, key, default=None):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        assemble("records", src, Boom(), out)
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
