"""``reallod agent sft-data``: prompts from the agent's own templates, selection, dedupe, split by image,
VLM views, and a clear error for each kind of bad input."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import orjson
import pytest
from PIL import Image

from reallod.agent.decisions import SPECS
from reallod.agent.roles import load_prompt, make_role
from reallod.agent.trace import read_trace
from reallod.errors import ConfigError, DataError
from reallod.finetune.sft_data import build_sft_data, role_files
from tests.agent.scripted import ScriptedBackend
from tests.cli_helpers import run_cli
from tests.finetune.teacher import EXAMPLES, keyword_verdict


def rows(data: Path, role: str, split: str) -> list[dict]:
    path = data / role / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def all_rows(data: Path) -> list[dict]:
    return [r for role in ("reflector", "planner", "rewriter", "vlm") for s in ("train", "val") for r in rows(data, role, s)]


def text_only(messages: list[dict]) -> list[dict]:
    """Messages with image parts reduced to their type (the trace keeps no pixels)."""
    out = []
    for m in messages:
        c = m["content"]
        if isinstance(c, list):
            c = [{"type": "image"} if p.get("type") == "image" else {"type": "text", "text": p["text"]} for p in c]
        out.append({"role": m["role"], "content": c})
    return out


def test_prompts_are_what_role_messages_renders_and_what_the_run_sent(teacher_run, teacher_data) -> None:
    """The SFT prompt of every example equals Role.messages(values) with the packaged template (the code
    the workflow runs) and the prompt recorded in the trace during the run; the reply is the decision."""
    _, entries = read_trace(teacher_run / "teacher.trace.jsonl")
    rendered: dict[str, set[str]] = {r: set() for r in SPECS}
    checked = 0
    for entry in entries:
        for step in entry["result"]["steps"]:
            if not step.get("decision"):
                continue
            role = make_role(step["role"], ScriptedBackend({}))
            image = [Image.new("RGB", tuple(step["messages"][-1]["content"][0]["size"]))] if step["role"] == "vlm" else None
            prompt = role.messages(step["values"], image)
            assert text_only(prompt) == text_only(step["messages"][:len(prompt)])  # what the run sent
            reply = SPECS[step["role"]].reply(step["decision"])
            rendered[step["role"]].add(orjson.dumps(text_only([*prompt, {"role": "assistant", "content": reply}])).decode())
            checked += 1
    assert checked > 100
    examples = all_rows(teacher_data)
    assert len(examples) > 100
    for ex in examples:
        messages = ex["messages"]
        if ex["role"] == "vlm":  # stored as parts; the template renders system/user text as strings
            messages = [{"role": m["role"], "content": m["content"][0]["text"]}
                        if all(p["type"] == "text" for p in m["content"]) else m for m in messages]
        assert orjson.dumps(text_only(messages)).decode() in rendered[ex["role"]], ex["task_id"]


def test_a_config_with_its_own_template_renders_the_students_prompts(teacher_run, tmp_path) -> None:
    short = tmp_path / "reflector.txt"
    short.write_text('[user]\nCategory: $category\nExpression: "$expression"\nYour verdict?\n')
    cfg = tmp_path / "student.yaml"
    cfg.write_text(f"roles:\n  reflector: {{backend: openai, model: m, prompt: {short.name}}}\n"
                   "  planner: {backend: openai, model: m}\n  rewriter: {backend: openai, model: m}\n")
    rep = build_sft_data([teacher_run / "teacher.trace.jsonl"], tmp_path / "sft", config=cfg)
    examples = rows(tmp_path / "sft", "reflector", "train") + rows(tmp_path / "sft", "reflector", "val")
    template = load_prompt("reflector", short)
    for ex in examples:
        (user,) = ex["messages"][:-1]
        category, expression = user["content"].split("\n")[0][len("Category: "):], user["content"].split('"')[1]
        values = {"category": category, "expression": expression, "caption": "-", "evidence": "-"}
        assert [user] == make_role("reflector", ScriptedBackend({}), prompt=template).messages(values)
    assert rep.prompts_changed > 0  # the run used the packaged template; the data uses the student's
    # the short template leaves caption and evidence out, so repeated judgements of one expression
    # collapse: one example per distinct expression (11 objects × 5; a rewrite "the X" is the plain one)
    assert len(examples) == 55


def test_teacher_selection_split_by_image_and_counts(teacher_run, teacher_data) -> None:
    manifest = json.loads((teacher_data / "manifest.json").read_text())
    assert manifest["source"] == "teacher" and manifest["tasks_used"] == manifest["tasks_read"] == 55
    assert manifest["images"] == {"train": 3, "val": 1}
    val_images = set(manifest["val_images"])
    for role in ("reflector", "planner", "rewriter", "vlm"):
        train, val = rows(teacher_data, role, "train"), rows(teacher_data, role, "val")
        assert train and val, role
        assert {r["image"] for r in val} <= val_images and not {r["image"] for r in train} & val_images
        assert manifest["examples"][role] == {"train": len(train), "val": len(val)}
    # the reflector's verdicts follow the teacher's rule
    for r in rows(teacher_data, "reflector", "train"):
        expression = r["messages"][1]["content"].rsplit("Expression to judge:", 1)[1].split('"')[1]
        assert json.loads(r["messages"][-1]["content"])["verdict"] == keyword_verdict(expression)[0]
    assert manifest["labels"]["reflector"]["train"].keys() == {"correct", "uncertain", "wrong"}


def test_identical_examples_are_kept_once(teacher_run, teacher_data, tmp_path) -> None:
    trace = teacher_run / "teacher.trace.jsonl"
    copy = tmp_path / "again.trace.jsonl"
    shutil.copy(trace, copy)
    once = json.loads((teacher_data / "manifest.json").read_text())
    rep = build_sft_data([trace, copy], tmp_path / "sft", val_fraction=0.25)
    assert rep.examples == once["examples"]
    # every example of the copy is a duplicate, of the kept ones or of the ones dropped the first time
    assert rep.duplicates == 2 * once["duplicates"] + sum(sum(s.values()) for s in once["examples"].values())


def test_a_gzip_trace_its_run_never_closed_gives_the_same_data(teacher_run, teacher_data, tmp_path) -> None:
    packer = zlib.compressobj(wbits=31)  # gzip, ended by a sync point, not by the member's end: a killed run's
    packed = tmp_path / "teacher.trace.jsonl.gz"
    packed.write_bytes(packer.compress((teacher_run / "teacher.trace.jsonl").read_bytes())
                       + packer.flush(zlib.Z_SYNC_FLUSH))
    rep = build_sft_data([packed], tmp_path / "sft", val_fraction=0.25)
    assert rep.examples == json.loads((teacher_data / "manifest.json").read_text())["examples"]


def test_a_trace_whose_last_line_is_cut_counts_it_left_out(teacher_run, tmp_path) -> None:
    """A run killed mid-write (or still running) leaves its last line torn: it was left out silently."""
    whole = (teacher_run / "teacher.trace.jsonl").read_bytes()
    cut = tmp_path / "cut.trace.jsonl"
    cut.write_bytes(whole[:whole.rindex(b"\n", 0, len(whole) - 1) + 40])
    rep = build_sft_data([cut], tmp_path / "sft", val_fraction=0.25)
    entries = len(whole.splitlines()) - 1
    assert rep.tasks_read == entries - 1
    assert rep.skipped["tasks whose trace line is cut short (its run killed while writing it, or still running)"] == 1


def test_a_trace_given_twice_or_a_folder_for_a_trace_is_refused(teacher_run, tmp_path) -> None:
    trace = teacher_run / "teacher.trace.jsonl"
    with pytest.raises(ConfigError, match=r"teacher\.trace\.jsonl is given twice: give each trace once"):
        build_sft_data([trace, trace], tmp_path / "sft")  # its tasks were read, and counted, twice
    with pytest.raises(ConfigError, match=r"is given twice \(also as"):
        build_sft_data([trace, teacher_run / ".." / teacher_run.name / trace.name], tmp_path / "sft")
    with pytest.raises(DataError, match=r": a folder, not a trace file"):  # it said "no such trace file"
        build_sft_data([teacher_run], tmp_path / "sft")
    assert not (tmp_path / "sft").exists()


def test_vlm_examples_carry_their_re_rendered_views(teacher_data) -> None:
    ex = rows(teacher_data, "vlm", "train")[0]
    assert [p["type"] for p in ex["messages"][1]["content"]] == ["image", "text"]
    assert len(ex["images"]) == 1 and (teacher_data / ex["images"][0]).is_file()
    with Image.open(teacher_data / ex["images"][0]) as im, Image.open(EXAMPLES / "images" / ex["image"]) as photo:
        assert im.size == photo.size  # the teacher's planner asks about position: the highlight view
    assert ex["messages"][-1] == {"role": "assistant",
                                  "content": [{"type": "text", "text": '{"answer": "It is in the picture."}'}]}


def names_its_line(error: DataError, trace: Path) -> None:
    """The error names the trace line of the task it names (a million-task trace is not searched by eye)."""
    assert error.path == str(trace) and error.line is not None
    task = error.message.split(":")[0].split()[1]
    assert str(orjson.loads(trace.read_bytes().splitlines()[error.line - 1])["task_id"]) == task


def write_labelled(teacher_run: Path, path: Path, fixes: int = 3) -> None:
    """The teacher's tasks with gold labels; the first ``fixes`` colour tasks name "the CATEGORY" as the
    right expression (what the teacher's rewriter writes), the others name none."""
    tasks = json.loads((teacher_run / "tasks.json").read_text())
    given = 0
    for t in tasks:
        if keyword_verdict(t["raw_expression"])[0] == "wrong" and given < fixes:
            t["gold"]["expression"] = f"the {t['object_locations']['chosen_object']['category']}"
            given += 1
    path.write_text("\n".join(json.dumps(t) for t in tasks) + "\n")


def test_gold_selection_keeps_agreeing_tasks_and_matching_rewrites(teacher_run, tmp_path) -> None:
    labelled = tmp_path / "labelled.jsonl"
    write_labelled(teacher_run, labelled)
    rep = build_sft_data([teacher_run / "teacher.trace.jsonl"], tmp_path / "sft", source="gold", labelled=labelled)
    # 11 plain (gold correct, kept) + 22 position (gold wrong, unresolved: not kept as they were) + 3 colour
    # tasks whose rewrite matches the gold expression; 19 colour rewrites match nothing
    assert rep.tasks_used == 36
    assert rep.skipped["tasks: rewrite matches no gold expression"] == 19
    rewrites = [r for s in ("train", "val") for r in rows(tmp_path / "sft", "rewriter", s)]
    assert 1 <= len(rewrites) <= 3
    tasks = json.loads((teacher_run / "tasks.json").read_text())
    assert all(keyword_verdict(tasks[int(r["task_id"])]["raw_expression"])[0] == "wrong" for r in rewrites)


def test_gold_from_another_input_is_refused(teacher_run, tmp_path) -> None:
    labelled = tmp_path / "labelled.jsonl"
    tasks = json.loads((teacher_run / "tasks.json").read_text())
    tasks[0]["raw_expression"] = "something else"
    labelled.write_text("\n".join(json.dumps(t) for t in tasks) + "\n")
    trace = teacher_run / "teacher.trace.jsonl"
    with pytest.raises(DataError, match=r"teacher.trace.jsonl:\d+: task 0: raw expression 'the person'.*another in"
                                        r"put") as raised:
        build_sft_data([trace], tmp_path / "sft", source="gold", labelled=labelled)
    names_its_line(raised.value, trace)
    tasks = json.loads((teacher_run / "tasks.json").read_text())
    labelled.write_text("\n".join(json.dumps(t) for t in tasks[:3]) + "\n")
    with pytest.raises(DataError, match=r"teacher.trace.jsonl:\d+: task \d+ has no gold label in .*labelled.jsonl") \
            as raised:
        build_sft_data([trace], tmp_path / "sft", source="gold", labelled=labelled)
    names_its_line(raised.value, trace)


def test_an_older_trace_format_is_refused_naming_the_file(teacher_run, tmp_path) -> None:
    old = tmp_path / "old.trace.jsonl"
    lines = (teacher_run / "teacher.trace.jsonl").read_bytes().splitlines()
    header = orjson.loads(lines[0])
    header["trace"] = 1
    old.write_bytes(b"\n".join([orjson.dumps(header), *lines[1:]]) + b"\n")
    with pytest.raises(DataError, match=r"old.trace.jsonl: trace format 1 was written before reallod recorded"):
        build_sft_data([old], tmp_path / "sft")
    with pytest.raises(DataError, match=r"missing.trace.jsonl: no such trace file"):
        build_sft_data([tmp_path / "missing.trace.jsonl"], tmp_path / "sft2")


def test_missing_images_are_a_clear_error(teacher_run, tmp_path) -> None:
    empty = tmp_path / "moved"
    empty.mkdir()
    trace = teacher_run / "teacher.trace.jsonl"
    with pytest.raises(DataError, match=r"teacher.trace.jsonl:\d+: task \d+: cannot re-render the highlight view "
                                        r".* (not found|no such|does not exist).*--images") as raised:
        build_sft_data([trace], tmp_path / "sft", images=empty)
    names_its_line(raised.value, trace)
    assert not (tmp_path / "sft").exists() and not list(tmp_path.glob(".sft*"))  # nothing half-written


def test_an_empty_selection_and_a_role_without_examples(teacher_run, tmp_path) -> None:
    labelled = tmp_path / "labelled.jsonl"
    tasks = json.loads((teacher_run / "tasks.json").read_text())
    for t in tasks:
        t["gold"] = {"correct": keyword_verdict(t["raw_expression"])[0] != "correct"}  # the teacher is always wrong
    labelled.write_text("\n".join(json.dumps(t) for t in tasks) + "\n")
    with pytest.raises(DataError, match=r"no examples selected \(55 task\(s\) read; left out: \d+ tasks: disagrees"):
        build_sft_data([teacher_run / "teacher.trace.jsonl"], tmp_path / "sft", source="gold", labelled=labelled)
    write_labelled(teacher_run, labelled, fixes=0)
    build_sft_data([teacher_run / "teacher.trace.jsonl"], tmp_path / "sft", source="gold", labelled=labelled)
    with pytest.raises(DataError, match=r"sft: no training examples for the rewriter role \(the data has: reflector"):
        role_files(tmp_path / "sft", "rewriter")


def test_an_existing_dataset_is_not_overwritten_silently(teacher_run, teacher_data, tmp_path) -> None:
    with pytest.raises(ConfigError, match="already exists and is not empty; pass --overwrite"):
        build_sft_data([teacher_run / "teacher.trace.jsonl"], teacher_data)
    # --overwrite replaces a dataset, never another folder: the teacher run itself was deleted
    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(DataError, match="not an sft-data folder"):
        build_sft_data([teacher_run / "teacher.trace.jsonl"], run, overwrite=True)
    (run / "manifest.json").write_text(json.dumps({"sft_format": 1}))  # a dataset folder that holds the trace
    with pytest.raises(ConfigError, match="holds the trace"):
        build_sft_data([run / "teacher.trace.jsonl"], run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, "manifest.json"])
    with pytest.raises(ConfigError, match="is a file"):
        build_sft_data([teacher_run / "teacher.trace.jsonl"], run / "teacher.trace.jsonl", overwrite=True)


def test_cli_prints_counts_per_role_verdict_and_split(teacher_run, tmp_path, capsys) -> None:
    labelled = tmp_path / "labelled.jsonl"
    write_labelled(teacher_run, labelled)
    code, out, err = run_cli(["agent", "sft-data", teacher_run / "teacher.trace.jsonl", "--from", "gold", labelled,
                              "--out", tmp_path / "sft", "--val-fraction", "0.25"], capsys)
    assert code == 0, err
    assert "reflector" in out and "planner" in out and "correct" in out and "uncertain" in out
    assert "train: 3 image(s)" in out and "val: 1 image(s)" in out
    assert "left out: 19 tasks: rewrite matches no gold expression" in out
    code, out, err = run_cli(["agent", "sft-data", teacher_run / "teacher.trace.jsonl", "--from", "gold",
                              "--out", tmp_path / "sft2"], capsys)
    assert code == 2 and "--from gold needs the labelled file" in err


def test_progress_is_of_the_traces_bytes_the_gold_labels_read_apart(teacher_run, tmp_path, capsys,
                                                                    monkeypatch) -> None:
    from reallod.data.meter import metered
    from tests.data.test_meter import RecordingMeter

    labelled = tmp_path / "labelled.jsonl"
    write_labelled(teacher_run, labelled)
    trace = teacher_run / "teacher.trace.jsonl"
    with metered(RecordingMeter()) as meter:
        build_sft_data([trace], tmp_path / "sft", source="gold", labelled=labelled)
    assert sum(meter.steps) == trace.stat().st_size  # the bar's total: the labels would run it past the end
    monkeypatch.setenv("REALLOD_PROGRESS_INTERVAL", "0.000001")
    code, out, err = run_cli(["agent", "sft-data", trace, "--out", tmp_path / "sft2", "--progress"], capsys)
    assert code == 0, err
    assert err.startswith("sft-data: reading teacher.trace.jsonl ") and "(100.0%)" in err, err
    assert "example(s) in" in out  # the counts, on stdout as without --progress
