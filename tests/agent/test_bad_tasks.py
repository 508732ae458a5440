"""Bad input never stops a run: each bad task is a failed result with a clear reason, the rest runs."""

import json

import pytest

from reallod.agent.realign import RealignOptions, realign
from reallod.agent.trace import read_trace
from reallod.data.schema import check_record
from tests.agent.io_helpers import pair, published, read_jsonl, record, write_image, write_jsonl
from tests.agent.scripted import answer, plan, reflect, scripted_roles

EXPECTED = {
    "missing_image": "gone.png",
    "box_outside_image": "extends past the image (64x48)",
    "empty_expression": "empty",
    "unknown_category": "category",
    "unreadable_image": "text.png",
}


def script(role, messages):
    return {"reflector": reflect("correct"), "planner": plan("correct"), "vlm": answer("red")}[role]


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    write_image(root / "good.png")
    (root / "text.png").write_text("I am text, not a picture")
    return root


def run(tmp_path, src, root):
    return realign(RealignOptions(input=src, config="scripted", out=tmp_path / "out.jsonl", images=root,
                                  unresolved="drop"), roles=scripted_roles(script))


def check(run_result, n_good):
    summary = run_result.summary
    assert summary.verdicts["correct"] == n_good
    assert summary.verdicts["failed"] == len(EXPECTED)
    assert {k: summary.errors[k] for k in EXPECTED} == dict.fromkeys(EXPECTED, 1)
    _, entries = read_trace(run_result.trace)
    failed = {e["result"]["error_kind"]: e["result"]["error"] for e in entries if e["result"]["verdict"] == "failed"}
    for kind, words in EXPECTED.items():
        assert words in failed[kind], (kind, failed[kind])
    assert len(summary.error_examples) == len(EXPECTED)


def test_bad_records_each_fail_alone(tmp_path, image_root):
    rows = [
        record("good.png", {"s": [pair([[1, 1, 20, 20]], "square", ["the red square", "   "]),  # empty expression
                                  pair([[10, 10, 90, 20]], "bar", ["the bar"]),  # outside the 64x48 image
                                  pair([[2, 2, 8, 8]], "", ["the dot"])]}),  # no category
        record("gone.png", {"s": [pair([[1, 1, 20, 20]], "square", ["the square"])]}),
        record("text.png", {"s": [pair([[1, 1, 20, 20]], "square", ["the square"])]}),
        record("good.png", {"s": [pair([[30, 5, 60, 40]], "square", ["another square"])]}),
    ]
    result = run(tmp_path, write_jsonl(tmp_path / "in.jsonl", rows), image_root)
    check(result, n_good=2)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["filename"] for r in out] == ["good.png", "gone.png", "text.png", "good.png"]
    assert out[0]["pairs"]["s"][0]["positive_expressions"] == ["the red square"]
    assert out[1]["pairs"] == {} and out[3]["pairs"]["s"][0]["positive_expressions"] == ["another square"]
    assert result.summary.assembly["failed:dropped"] == 5
    assert not check_record(out[0]) and not check_record(out[1])


def test_bad_published_tasks_each_fail_alone(tmp_path, image_root):
    tasks = [published("good.png", "the red square", [1, 1, 20, 20]),
             published("good.png", "", [1, 1, 20, 20]),
             published("good.png", "the bar", [10, 10, 80, 10]),
             published("good.png", "the dot", [2, 2, 6, 6], category=""),
             published("gone.png", "the square", [1, 1, 20, 20]),
             published("text.png", "the square", [1, 1, 20, 20]),
             published("good.png", "another square", [30, 5, 30, 35])]
    src = tmp_path / "tasks.json"
    src.write_text(json.dumps(tasks))
    result = run(tmp_path, src, image_root)
    check(result, n_good=2)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["filename"] for r in out] == ["good.png", "gone.png", "text.png"]
    assert [p["positive_expressions"] for p in out[0]["pairs"]["realigned"]] == [["the red square"], ["another square"]]
    assert result.summary.assembly["input problem:not written"] == 3


def test_an_image_path_leaving_the_root_is_a_task_error(tmp_path, image_root):
    write_image(tmp_path / "secret.png")
    src = write_jsonl(tmp_path / "in.jsonl", [record("../secret.png", {"s": [pair([[1, 1, 9, 9]], "cup", ["a cup"])]})])
    result = run(tmp_path, src, image_root)
    assert result.summary.errors == {"unsafe_path": 1}


def test_explain_shows_why_a_task_failed(tmp_path, image_root):
    from reallod.agent.explain import explain

    src = write_jsonl(tmp_path / "in.jsonl", [record("good.png", {"s": [pair([[1, 1, 9, 9]], "cup", [" "])]}),
                                              record("gone.png", {"s": [pair([[1, 1, 9, 9]], "cup", ["a cup"])]})])
    result = run(tmp_path, src, image_root)
    text = explain(result.trace, "0/s/0/0")
    assert "problem    empty_expression:" in text and "pairs.s[0].positive_expressions[0]" in text
    assert "verdict    failed after 0 cycle(s)" in text
    text = explain(result.trace, "1/s/0/0")
    assert "error      [missing_image]" in text and "gone.png: image not found" in text
