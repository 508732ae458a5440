"""``reallod agent sft-data`` on malformed trace entries (an error naming the trace, the line, the field and
the task), on decisions whose reply would need a made-up label (left out and counted), and its train/val
split: stable as the data grows, a side each for small sets, and never without training examples."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from reallod.agent.trace import read_trace
from reallod.errors import ConfigError, DataError
from reallod.finetune import sft_data
from reallod.finetune.sft_data import build_sft_data, split_files, split_images
from tests.cli_helpers import run_cli


def entries(teacher_run: Path) -> tuple[dict, list[dict]]:
    header, it = read_trace(teacher_run / "teacher.trace.jsonl")
    return header, list(it)


def write_trace(path: Path, header: dict, *lines: dict | None) -> Path:
    """A trace of ``lines`` (None: a blank line, which still counts in line numbers)."""
    path.write_bytes(b"\n".join(orjson.dumps(x) if x is not None else b"" for x in [header, *lines]) + b"\n")
    return path


def _vlm_step(e: dict) -> dict:
    return next(s for s in e["result"]["steps"] if s["role"] == "vlm")


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """Set the field at ``path`` (dots; a number indexes a list) of an entry."""
    def change(e: dict) -> None:
        *parents, last = path.split(".")
        target: Any = e
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
    return change


MALFORMED = [  # (change, whether the entry must have a VLM call, the field named, what the error says)
    (_set("result.steps.0.cycle", "x"), False, r"result\.steps\[0\]\.cycle", "expected an integer, got 'x'"),
    (_set("result", [1]), False, r"result", r"expected an object or null, got \[1\]"),
    (lambda e: e["result"]["steps"].insert(0, "oops"), False, r"result\.steps\[0\]",
     "expected an object .one role call., got 'oops'"),
    (_set("result.steps", {"0": {}}), False, r"result\.steps", "expected a list of steps"),
    (_set("result.steps.0.values.caption", {"nested": [1, 2]}), False, r"result\.steps\[0\]\.values\.caption",
     "expected a string or a number"),
    (_set("result.steps.0.messages", "a prompt"), False, r"result\.steps\[0\]\.messages",
     "expected a list of messages"),
    (_set("result.steps.0.messages.1", ["not", "a", "message"]), False, r"result\.steps\[0\]\.messages\[1\]",
     "expected a message with a text or a list of parts"),
    (_set("task.chosen", {"category": "x"}), True, r"task\.chosen\.bboxes", "expected a list of .* boxes, got None"),
    (_set("task.chosen.bboxes", [[1, 2, 3]]), True, r"task\.chosen\.bboxes", r"expected .*, got \[\[1, 2, 3\]\]"),
    (lambda e: _vlm_step(e).update(view=None), True, r"result\.steps\[\d+\]\.view",
     "expected the view the VLM was shown"),
    (lambda e: e["task"].pop("image_path"), False, r"task\.image_path", "expected the path of the task's image"),
    (_set("task_id", None), False, r"task_id", "expected a string or an integer, got None"),
    (_set("result.verdict", ["wrong"]), False, r"result\.verdict", "expected a string"),
]


@pytest.mark.parametrize(("change", "vlm", "field", "said"), MALFORMED)
def test_a_malformed_entry_is_named_by_file_line_field_and_task(teacher_run, tmp_path, change, vlm, field,
                                                                said) -> None:
    """Was 'error: unexpected ValueError: invalid literal for int()' (or AttributeError, TypeError), naming no
    file, line or task; or a prompt rendered from a dict, a task id 'None', an image path ''."""
    header, all_entries = entries(teacher_run)
    bad = copy.deepcopy(next(e for e in all_entries if not vlm or any(s["role"] == "vlm"
                                                                      for s in e["result"]["steps"])))
    tid = bad["task_id"]
    change(bad)
    good = next(e for e in all_entries if e["task_id"] != tid)
    trace = write_trace(tmp_path / "odd.trace.jsonl", header, good, None, bad)
    shown = "None" if bad["task_id"] is None else tid
    with pytest.raises(DataError, match=rf"^{trace}:4: {field}: task {shown}: {said}.*: not a trace entry as the "
                                        r"agent writes it; fix the line or run the agent again"):
        build_sft_data([trace], tmp_path / "sft")
    assert not (tmp_path / "sft").exists()


def test_a_long_value_is_shown_cut_short(teacher_run, tmp_path) -> None:
    header, all_entries = entries(teacher_run)
    bad = copy.deepcopy(all_entries[0])
    bad["result"]["steps"][0]["cycle"] = "x" * 100_000
    with pytest.raises(DataError) as e:
        build_sft_data([write_trace(tmp_path / "odd.trace.jsonl", header, bad)], tmp_path / "sft")
    assert len(str(e.value)) < 400 and "xxx..." in str(e.value)


def test_a_decision_without_a_valid_label_is_left_out_and_counted(teacher_run, tmp_path, capsys) -> None:
    """A reflector decision without a verdict became an example whose reply said "verdict": "correct"."""
    header, all_entries = entries(teacher_run)
    roles = ["reflector", "planner", "rewriter", "reflector", "planner"]  # a task rewritten once
    e = copy.deepcopy(next(e for e in all_entries if [s["role"] for s in e["result"]["steps"]] == roles))
    steps = e["result"]["steps"]
    steps[0]["decision"] = {"missing": "", "feedback": "no verdict at all"}
    steps[1]["decision"] = {"state": "Wrong", "focus": "none", "question": "", "reason": "a state to normalise"}
    steps[3]["decision"] = {"verdict": "maybe", "missing": "", "feedback": "a verdict of no kind"}
    trace = write_trace(tmp_path / "odd.trace.jsonl", header, e)
    code, out, err = run_cli(["agent", "sft-data", trace, "--out", tmp_path / "sft", "--val-fraction", "0"], capsys)
    assert code == 0, err
    files = [p for role in ("reflector", "planner", "rewriter") if (p := tmp_path / "sft" / role / "train.jsonl").is_file()]
    replies = [json.loads(line)["messages"][-1]["content"] for p in files for line in p.read_text().splitlines()]
    assert not any(why in r for r in replies for why in ("no verdict", "to normalise", "of no kind"))
    assert len(replies) == 2  # the rewriter's and the second planner's
    manifest = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    assert manifest["skipped"] == {sft_data.UNPARSED_DECISION: 3}
    assert f"left out: 3 {sft_data.UNPARSED_DECISION}" in " ".join(out.split())


def test_the_split_keeps_each_image_on_its_side_as_the_data_grows() -> None:
    """The split ranked the images by hash and held out a share of them: a photo of dataset A's training side
    moved to dataset B's validation side when B added photos."""
    names = [f"photo_{i:04d}.jpg" for i in range(400)]
    for fraction in (0.1, 0.25, 0.5):
        small, large = split_images(set(names[:100]), fraction), split_images(set(names), fraction)
        assert large & set(names[:100]) == small
        assert 0.6 * fraction * 400 < len(large) < 1.4 * fraction * 400
    # and whatever folders the later images are in
    first = {f"/data/a/{n}" for n in names[:100]}
    later = first | {f"/data/b/c/{n}" for n in names[100:]}
    assert split_files(later, 0.25) & first == split_files(first, 0.25)
    assert split_files({f"/moved/{n}" for n in names}, 0.25) == {f"/moved/{Path(f).name}"
                                                                 for f in split_files(later, 0.25)}


def test_small_sets_keep_an_image_on_each_side() -> None:
    for n in (2, 3, 5):
        images = {f"p{i}.jpg" for i in range(n)}
        for fraction in (0.01, 0.5, 0.95):
            for seed in range(30):
                val = split_images(images, fraction, seed)
                assert val and val != images, (n, fraction, seed)
        assert split_images(images, 0.0) == set()
    with pytest.raises(ConfigError, match="--val-fraction must be at least 0 and below 1"):
        split_images({"a.jpg"}, 1.0)


def test_a_split_without_training_examples_is_refused_before_writing(teacher_run, tmp_path, capsys) -> None:
    """One photo and --val-fraction 0.9: 0 training examples written, exit 0; finetune failed later."""
    header, all_entries = entries(teacher_run)
    trace = write_trace(tmp_path / "one.trace.jsonl", header,
                        *[e for e in all_entries if e["task"]["image_path"] == "rocket.jpg"])
    assert split_images({"rocket.jpg"}, 0.9) == {"rocket.jpg"}  # held out by the hash rule
    out = tmp_path / "sft"
    build_sft_data([trace], out, val_fraction=0.0)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run_cli(["agent", "sft-data", trace, "--out", out, "--val-fraction", "0.9", "--overwrite"], capsys)
    assert code == 2 and "--val-fraction 0.9 (--seed 0) holds out every image that has examples (1: rocket.jpg)" \
        in " ".join(err.split()), err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match="no training example"):
        build_sft_data([trace], tmp_path / "new", val_fraction=0.9)
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))
