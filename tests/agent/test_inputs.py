import gzip
import json

import pytest

from reallod.agent.inputs import (
    TaskProblem,
    detect_format,
    iter_tasks,
    load_captions,
    xywh_to_xyxy,
)
from reallod.agent.task import PairRef, Task
from reallod.errors import DataError
from tests.agent.io_helpers import EXAMPLES, pair, published, record, write_jsonl


def tasks_only(items):
    assert all(isinstance(i, Task) for i in items), [i for i in items if not isinstance(i, Task)]
    return items


def test_published_list_converts_xywh_and_dedupes_others(tmp_path):
    others = [{"id": 1, "category": "cup", "bbox": [1, 2, 3, 4]},
              {"id": 2, "category": "cup", "bbox": [1, 2, 3, 4]},  # the same object twice
              {"id": 3, "category": "square", "bbox": [10, 10, 20, 20]}]  # the chosen object itself
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([published("a.jpg", "the red square", [10, 10, 20, 20], others=others),
                                published("b.jpg", "the blue cup", [0.5, 1, 2, 3], "cup")]))
    assert detect_format(path) == "tasks"
    a, b = tasks_only(list(iter_tasks(path)))
    assert (a.task_id, b.task_id) == ("0", "1")
    assert a.chosen.bboxes == [[10, 10, 30, 30]]
    assert b.chosen.bboxes == [[0.5, 1, 2.5, 4]]
    assert [o.bboxes for o in a.others] == [[[1, 2, 4, 6]]]
    assert a.caption == "a red square on its own" and a.origin is None
    assert xywh_to_xyxy([1, 2, 3, 4]) == [1, 2, 4, 6]


@pytest.mark.parametrize("gz", [False, True])
def test_published_jsonl_and_gzip_give_the_same_tasks(tmp_path, gz):
    rows = [published("a.jpg", "the red square", [10, 10, 20, 20]),
            published("a.jpg", "the square at the top", [10, 10, 20, 20])]
    listed = tmp_path / "tasks.json"
    listed.write_text(json.dumps(rows))
    lines = tmp_path / ("tasks.jsonl.gz" if gz else "tasks.jsonl")
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    lines.write_bytes(gzip.compress(data) if gz else data)
    assert detect_format(lines) == "tasks"
    assert list(iter_tasks(lines)) == list(iter_tasks(listed))


def test_records_one_task_per_positive_with_other_objects_deduplicated(tmp_path):
    rec = record("img.jpg", {
        "vlm_short": [pair([[1, 1, 20, 20]], "cat", ["the cat", "the grey cat"]),
                      pair([[30, 5, 60, 40]], "dog", ["the dog"])],
        "llm": [pair([[1, 1, 20, 20]], "cat", ["a cat on the left"]),  # the chosen cat again
                pair([[30.001, 5, 60, 40]], "dog", ["the dog on the right"])],  # the dog again
    })
    path = write_jsonl(tmp_path / "data.jsonl", [rec])
    assert detect_format(path) == "records"
    tasks = tasks_only(list(iter_tasks(path)))
    assert [t.task_id for t in tasks] == ["0/vlm_short/0/0", "0/vlm_short/0/1", "0/vlm_short/1/0", "0/llm/0/0",
                                          "0/llm/1/0"]
    first = tasks[0]
    assert first.raw_expression == "the cat" and first.chosen.category == "cat"
    assert first.origin == PairRef(0, "vlm_short", 0, 0)
    assert [(o.category, o.bboxes) for o in first.others] == [("dog", [[30, 5, 60, 40]])]
    llm_cat = tasks[3]
    assert [o.category for o in llm_cat.others] == ["dog"]  # the vlm_short cat is the chosen object itself
    dog = tasks[2]
    assert [o.category for o in dog.others] == ["cat"]
    assert all(t.caption == "a red square on its own" for t in tasks)


def test_caption_from_captions_file_or_reported_missing(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [
        record("a.jpg", {"s": [pair([[1, 1, 5, 5]], "cat", ["the cat"])]}, caption=None),
        record("b.jpg", {"s": [pair([[1, 1, 5, 5]], "cat", ["the cat", "a cat"])]}, caption=None),
    ])
    (tmp_path / "caps.json").write_text(json.dumps({"a.jpg": "a cat sits on a mat"}))
    items = list(iter_tasks(path, captions=load_captions(tmp_path / "caps.json")))
    assert isinstance(items[0], Task) and items[0].caption == "a cat sits on a mat"
    missing = items[1:]
    assert [p.kind for p in missing] == ["missing_caption", "missing_caption"]  # each task reported
    assert all(isinstance(p, TaskProblem) and "b.jpg" in p.message and "--captions" in p.message for p in missing)
    assert missing[0].describe().startswith(f"{path}:2: caption: ")


def test_load_captions_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"x.jpg": "one", "y.jpg": "two"}))
    write_jsonl(tmp_path / "b.jsonl", [{"filename": "x.jpg", "caption": "one"}, {"image_path": "y.jpg", "caption": "two"},
                                      {"z.jpg": "three"}])
    write_jsonl(tmp_path / "c.jsonl", [{"filename": "x.jpg", "caption": "one"}])  # one line is still JSONL
    assert load_captions(tmp_path / "a.json") == {"x.jpg": "one", "y.jpg": "two"}
    assert load_captions(tmp_path / "b.jsonl") == {"x.jpg": "one", "y.jpg": "two", "z.jpg": "three"}
    assert load_captions(tmp_path / "c.jsonl") == {"x.jpg": "one"}
    write_jsonl(tmp_path / "bad.jsonl", [{"filename": "x.jpg", "caption": "one"}, {"filename": "y.jpg", "text": 3}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: "):
        load_captions(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "typo.jsonl", [{"filename": "x.jpg", "capton": "one"}])  # was taken as a map of 2 images
    with pytest.raises(DataError, match=r"typo\.jsonl:1: expected \{\"filename\""):
        load_captions(tmp_path / "typo.jsonl")


def test_record_problems_fail_only_their_tasks(tmp_path):
    good = record("a.jpg", {"s": [pair([[1, 1, 5, 5]], "cat", ["the cat", "  "]),  # one empty expression
                                  pair([[1, 1, 500, 5]], "dog", ["the dog"]),  # box outside the 64x48 image
                                  pair([[2, 2, 6, 6]], "", ["the thing"])]})  # no category
    path = write_jsonl(tmp_path / "data.jsonl", ["{not json", good, {"filename": "c.jpg", "pairs": {}}])
    items = list(iter_tasks(path))
    kinds = {i.task_id: (i.kind if isinstance(i, TaskProblem) else "task") for i in items}
    assert kinds == {"0": "bad_record", "1/s/0/0": "task", "1/s/0/1": "empty_expression",
                     "1/s/1/0": "box_outside_image", "1/s/2/0": "unknown_category", "2": "bad_record"}
    by_id = {i.task_id: i for i in items}
    assert by_id["0"].line == 1 and by_id["2"].line == 3  # the bad line does not shift later ids
    assert by_id["1/s/1/0"].field == "pairs.s[1].bboxes[0]" and by_id["1/s/1/0"].raw_expression == "the dog"
    assert "height" in by_id["2"].message or "missing" in by_id["2"].message


@pytest.mark.parametrize(("change", "kind", "field"), [
    ({"raw_expression": "  "}, "empty_expression", "raw_expression"),
    ({"raw_expression": None}, "empty_expression", "raw_expression"),
    ({"category": None}, "unknown_category", "object_locations.chosen_object.category"),
    ({"category": 7}, "unknown_category", "object_locations.chosen_object.category"),
    ({"bbox": [60, 40, 10, 10]}, "box_outside_image", "object_locations.chosen_object.bbox"),
    ({"bbox": [1, 2, 0, 3]}, "degenerate_box", "object_locations.chosen_object.bbox"),
    ({"bbox": [1, 2, "w", 3]}, "bad_box", "object_locations.chosen_object.bbox"),
    ({"global_caption": None}, "missing_caption", "global_caption"),
    ({"height": 0}, "bad_size", "height"),
])
def test_published_task_problems_are_reported_with_their_field(tmp_path, change, kind, field):
    t = published("a.jpg", "the red square", [10, 10, 20, 20])
    for key, value in change.items():
        if key in ("category", "bbox"):
            t["object_locations"]["chosen_object"][key] = value
        else:
            t[key] = value
    path = write_jsonl(tmp_path / "tasks.jsonl", [published("a.jpg", "fine", [1, 1, 5, 5]), t])
    ok, problem = list(iter_tasks(path))
    assert isinstance(ok, Task)
    assert isinstance(problem, TaskProblem) and problem.kind == kind and problem.field == field
    assert problem.line == 2 and problem.task_id == "1"
    result = problem.as_result()
    assert result.verdict == "failed" and result.error_kind == kind and str(path) in result.error


def test_published_json_list_problems_name_the_item(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([published("a.jpg", "x", [1, 1, 5, 5]), "not a task"]))
    _, problem = list(iter_tasks(path))
    assert problem.kind == "bad_task" and problem.field == "[1]" and problem.line is None


def test_subpixel_overshoot_is_clamped_but_real_overshoot_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [published("a.jpg", "x", [40.0, 30.0, 24.4, 18.3]),
                                             published("a.jpg", "y", [40.0, 30.0, 30.0, 18.0])])
    ok, bad = list(iter_tasks(path))
    assert ok.chosen.bboxes == [[40.0, 30.0, 64.0, 48.0]]
    assert bad.kind == "box_outside_image"


def test_detect_format_refuses_other_files(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:1: first line is neither"):
        detect_format(tmp_path / "x.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no tasks"):
        detect_format(tmp_path / "e.jsonl")
    with pytest.raises(DataError, match="no such file"):
        detect_format(tmp_path / "missing.jsonl")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (EXAMPLES / "realdata.jsonl").read_bytes())
    assert detect_format(tmp_path / "bom.jsonl") == "records"  # a byte-order mark is read past


def test_shipped_examples_hold_the_same_tasks_in_both_formats():
    from_records = tasks_only(list(iter_tasks(EXAMPLES / "realdata.jsonl")))
    from_list = tasks_only(list(iter_tasks(EXAMPLES / "tasks.json")))
    assert len(from_records) == len(from_list) >= 15
    for r, t in zip(from_records, from_list, strict=True):
        assert (r.image_path, r.raw_expression, r.chosen.category, r.chosen.bboxes, r.caption) == \
               (t.image_path, t.raw_expression, t.chosen.category, t.chosen.bboxes, t.caption)
        assert sorted(map(str, (o.bboxes for o in r.others))) == sorted(map(str, (o.bboxes for o in t.others)))


def test_a_line_that_is_not_json_says_why_as_the_data_readers_do(tmp_path):
    """NaN, a lone surrogate, a broken line: the failed task names file, line and the parser's reason."""
    good = json.dumps(record("a.jpg", {"s": [pair([[1, 1, 9, 9]], "cup", ["the cup"])]}))
    path = tmp_path / "in.jsonl"
    nan, surrogate = good.replace("[1, 1, 9, 9]", "[NaN, 1, 9, 9]"), good.replace("the cup", "the \\ud800 cup")
    path.write_text("\n".join([good, nan, surrogate, "{not json"]) + "\n")
    items = list(iter_tasks(path))
    assert isinstance(items[0], Task)
    errors = [item.describe() for item in items[1:]]
    at = surrogate.index("\\ud800")
    assert errors == [
        f"{path}:2: not strict JSON at column {nan.index('NaN') + 1} (unexpected character, expected a JSON "
        "value): NaN, Infinity, an out-of-range number or a lone surrogate, which only lenient parsers read",
        f"{path}:3: not strict JSON at column {at + 1} (no low surrogate in string): NaN, Infinity, an "
        "out-of-range number or a lone surrogate, which only lenient parsers read",
        f"{path}:4: invalid JSON at column 2: unexpected character, expected a string key"]
    assert all(item.kind == "bad_record" for item in items[1:])
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(published("a.jpg", "x", [1, 1, 5, 5])) + "\n{not json\n")
    _, problem = list(iter_tasks(tasks))
    assert problem.kind == "bad_task" and problem.as_result().error.startswith(
        f"{tasks}:2: invalid JSON at column 2: unexpected character, expected a string key")

