"""``reallod agent sft-data`` on harder inputs: one photo named two ways, a dataset folder that holds
something else, recorded values that lack a placeholder, repeated views, and per-split task counts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from reallod.agent.task import ObjectRef
from reallod.agent.trace import read_trace
from reallod.errors import ConfigError, DataError
from reallod.finetune import sft_data
from reallod.finetune.sft_data import build_sft_data
from tests.finetune.teacher import EXAMPLES

ROLES = ("reflector", "planner", "rewriter", "vlm")


def rows(data: Path, role: str, split: str) -> list[dict]:
    path = data / role / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def rewrite_trace(src: Path, dst: Path, header: Callable[[dict], None] = lambda h: None,
                  entry: Callable[[dict], None] = lambda e: None) -> Path:
    """A copy of a trace with its header and entries changed in place by the callbacks."""
    head, entries = read_trace(src)
    header(head)
    lines = [orjson.dumps(head)]
    for e in entries:
        entry(e)
        lines.append(orjson.dumps(e))
    dst.write_bytes(b"\n".join(lines) + b"\n")
    return dst


def steps(e: dict) -> list[dict[str, Any]]:
    return e["result"]["steps"]


def test_one_photo_named_two_ways_lands_on_one_side(teacher_run, tmp_path) -> None:
    """A second run names the photos images/NAME under examples/ (the first NAME under examples/images)
    and words the expressions differently: each photo is still one unit of the split."""
    def other_names(e: dict) -> None:
        e["task"]["image_path"] = f"images/{e['task']['image_path']}"
        for step in steps(e):
            step.get("values", {})["expression"] = f"{step.get('values', {}).get('expression')} again"

    trace = teacher_run / "teacher.trace.jsonl"
    second = rewrite_trace(trace, tmp_path / "second.trace.jsonl",
                           header=lambda h: h.update(images=str(EXAMPLES)), entry=other_names)
    out = tmp_path / "sft"
    rep = build_sft_data([trace, second], out, val_fraction=0.25)
    assert rep.images == {"train": 3, "val": 1}
    sides = {s: {Path(r["image"]).name for role in ROLES for r in rows(out, role, s)} for s in ("train", "val")}
    assert len(sides["train"]) == 3 and len(sides["val"]) == 1 and not sides["train"] & sides["val"]
    views = {s: {r["images"][0] for r in rows(out, "vlm", s)} for s in ("train", "val")}
    assert views["train"] and views["val"] and not views["train"] & views["val"]
    manifest = json.loads((out / "manifest.json").read_text())
    (photo,) = sides["val"]
    assert manifest["val_images"] == [photo, f"images/{photo}"]  # as the traces name it
    assert not (out / ".spool").exists()


def test_overwrite_refuses_a_dataset_that_holds_something_else(teacher_run, tmp_path) -> None:
    trace, out = teacher_run / "teacher.trace.jsonl", tmp_path / "sft"
    build_sft_data([trace], out)
    student = out / "students" / "reflector" / "adapter_config.json"
    student.parent.mkdir(parents=True)
    student.write_text("{}")
    with pytest.raises(ConfigError, match=r"--overwrite would delete .*sft/students, which sft-data did not write"):
        build_sft_data([trace], out, overwrite=True)
    assert student.is_file()
    student.rename(tmp_path / "adapter_config.json")
    student.parent.rmdir()
    student.parent.parent.rmdir()
    notes = out / "reflector" / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(ConfigError, match=r"--overwrite would delete .*sft/reflector/notes.txt"):
        build_sft_data([trace], out, overwrite=True)
    assert notes.read_text() == "mine"
    notes.unlink()
    build_sft_data([trace], out, overwrite=True, val_fraction=0.5)  # only its own files: replaced
    assert json.loads((out / "manifest.json").read_text())["val_fraction"] == 0.5


def test_a_recorded_value_the_template_needs_is_missing(teacher_run, tmp_path) -> None:
    """A reflector step without ``caption`` in its values (its task has one) is an error naming the
    trace, the task and the field; a task without a caption (the trace leaves None values out) renders it
    empty, as the run did, never as the literal ``$caption``."""
    first: list[str] = []

    def drop_caption(e: dict) -> None:
        if not first:
            first.append(e["task_id"])
            for step in steps(e):
                if step["role"] == "reflector":
                    step["values"].pop("caption")

    bad = rewrite_trace(teacher_run / "teacher.trace.jsonl", tmp_path / "novalue.trace.jsonl", entry=drop_caption)
    with pytest.raises(DataError, match=rf"novalue.trace.jsonl:2: result.steps\[\d+\].values: task {first[0]}: a "
                                        r"reflector call whose recorded values lack caption, which the template "
                                        r"reflector.txt uses"):
        build_sft_data([bad], tmp_path / "sft")
    assert not (tmp_path / "sft").exists()

    def no_caption(e: dict) -> None:
        e["task"]["caption"] = None
        for step in steps(e):
            step.get("values", {}).pop("caption", None)

    plain = rewrite_trace(teacher_run / "teacher.trace.jsonl", tmp_path / "plain.trace.jsonl", entry=no_caption)
    build_sft_data([plain], tmp_path / "sft")
    text = "".join((tmp_path / "sft" / role / f"{s}.jsonl").read_text() for role in ("reflector", "rewriter")
                   for s in ("train", "val"))
    assert "$caption" not in text and "Caption of the image:" in text


def test_a_call_without_values_or_with_another_crop_names_its_line(teacher_run, tmp_path) -> None:
    """A call the trace recorded without values, or a VLM view whose crop box the image no longer gives,
    is an error naming the line and step of the task (the first task that asked the VLM)."""
    def tamper(change: Callable[[dict], None]) -> Callable[[dict], None]:
        lines.clear()
        seen: list[dict] = []

        def entry(e: dict) -> None:
            seen.append(e)
            vlm = [s for s in steps(e) if s["role"] == "vlm"]
            if vlm and not lines:
                lines.append(len(seen) + 1)  # the header is line 1
                change(vlm[0])
        return entry

    lines: list[int] = []

    trace = teacher_run / "teacher.trace.jsonl"
    no_values = rewrite_trace(trace, tmp_path / "novalues.trace.jsonl", entry=tamper(lambda s: s.pop("values")))
    with pytest.raises(DataError, match=rf"novalues.trace.jsonl:{lines[0]}: result.steps\[\d+\].values: task \d+: "
                                        r"a vlm call without the values its prompt was rendered with"):
        build_sft_data([no_values], tmp_path / "sft")
    moved = rewrite_trace(trace, tmp_path / "moved.trace.jsonl",
                          entry=tamper(lambda s: s["view"].update(crop_box=[0, 0, 10, 10])))
    with pytest.raises(DataError, match=rf"moved.trace.jsonl:{lines[0]}: task \d+: the re-rendered \w+ view has crop "
                                        r"box .*\[0, 0, 10, 10\]: the image .* is not the one the run saw"):
        build_sft_data([moved], tmp_path / "sft")
    assert not (tmp_path / "sft").exists()


def test_each_distinct_view_is_rendered_once(teacher_run, tmp_path, monkeypatch) -> None:
    encoded: list[Any] = []
    png = sft_data._png_bytes
    monkeypatch.setattr(sft_data, "_png_bytes", lambda img: encoded.append(img) or png(img))
    _, entries = read_trace(teacher_run / "teacher.trace.jsonl")
    calls = [(e["task"]["image_path"], tuple(ObjectRef(**e["task"]["chosen"]).union_box()), s["view"]["name"])
             for e in entries for s in steps(e) if s["role"] == "vlm" and s.get("decision")]
    build_sft_data([teacher_run / "teacher.trace.jsonl"], tmp_path / "sft", val_fraction=0.25)
    assert len(calls) > len(set(calls)) == len(encoded) == len(list((tmp_path / "sft" / "images").iterdir()))
    # a cache too small for them renders some views again and writes the same dataset
    views = sft_data._Views
    monkeypatch.setattr(sft_data, "_Views", lambda out: views(out, cache_size=1))
    build_sft_data([teacher_run / "teacher.trace.jsonl"], tmp_path / "small", val_fraction=0.25)
    for role in ROLES:
        for s in ("train", "val"):
            assert rows(tmp_path / "small", role, s) == rows(tmp_path / "sft", role, s)


def test_verdicts_per_split_count_every_used_task(teacher_run, tmp_path) -> None:
    """Tasks whose examples were all dropped as duplicates (here: every task of the copy) still count."""
    trace = teacher_run / "teacher.trace.jsonl"
    copy = rewrite_trace(trace, tmp_path / "again.trace.jsonl")
    rep = build_sft_data([trace, copy], tmp_path / "sft", val_fraction=0.25)
    assert rep.tasks_used == 110
    assert sum(sum(c.values()) for c in rep.task_verdicts.values()) == 110
    manifest = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    assert sum(sum(c.values()) for c in manifest["task_verdicts"].values()) == 110


def test_two_traces_joined_into_one_file_are_refused_at_the_second_header(teacher_run, tmp_path) -> None:
    """``cat a.trace.jsonl b.trace.jsonl`` would have b's tasks read with a's header (its image root, its
    config): named at b's header line, nothing written. Each trace as its own argument is the way."""
    data = (teacher_run / "teacher.trace.jsonl").read_bytes()
    joined = tmp_path / "joined.trace.jsonl"
    joined.write_bytes(data + data)
    second = data.count(b"\n") + 1
    with pytest.raises(DataError, match=rf"joined.trace.jsonl:{second}: a second trace header: two traces were joined"):
        build_sft_data([joined], tmp_path / "sft")
    assert not (tmp_path / "sft").exists()
