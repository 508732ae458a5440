"""What stops, refuses or resumes a generation: an image that cannot be decoded fails alone, outputs over
inputs are refused before any work, the image filters are never resumed across, only the models generation
calls are fingerprinted, a smaller --limit counts its own images, and errors name what is wrong."""

import dataclasses
import json
import shutil
from pathlib import Path

import orjson
import pytest

import reallod.engine.pipeline as pl
from reallod.agent.run_roles import roles_fingerprint
from reallod.engine.annotations import read_annotations
from reallod.engine.generate import GenerateSettings
from reallod.engine.pipeline import (
    GenerateOptions,
    GenerationFailed,
    PipelineOptions,
    check_generated,
    generate,
    pipeline,
)
from reallod.errors import ConfigError, DataError
from reallod.runs.journal import JournalMismatch
from tests.agent.scripted import scripted_roles
from tests.cli_helpers import run_cli
from tests.engine.scripted_models import generation_answers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def options(out: Path, annotations: Path = EXAMPLES / "annotations.json", images: Path = EXAMPLES / "images",
            **kw) -> GenerateOptions:
    return GenerateOptions(annotations, images, "offline", out, **kw)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def copied_images(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLES / "images", tmp_path / "images"))


def annotations_with(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    data = json.loads((EXAMPLES / "annotations.json").read_text())
    change(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


# --- 1. an image that cannot be decoded fails alone ------------------------------------------------------


def test_a_truncated_image_fails_alone_is_named_and_a_rerun_retries_only_it(tmp_path, monkeypatch, capsys):
    """Its header reads (the startup check passes); decoding it fails: that image is counted and named, the
    others are generated, re-aligned and written, and each rerun tries it again until it is fixed."""
    images = copied_images(tmp_path)
    good = (images / "coffee.jpg").read_bytes()
    (images / "coffee.jpg").write_bytes(good[:-3000])
    out = tmp_path / "o.jsonl"
    log: list[str] = []
    run = pipeline(PipelineOptions(options(out, images=images, concurrency=1), max_cycles=1),
                   roles=scripted_roles(generation_answers(log=log)))
    g = run.generated
    assert g.failed == 1 and g.failed_images == ["coffee.jpg"] and g.failures["image_error"][0] == 1
    assert log.count("caption") == 3  # no model call for the image that cannot be shown
    assert [r["filename"] for r in records(out)] == ["astronaut.jpg", "chelsea.jpg", "rocket.jpg"]
    with pytest.raises(GenerationFailed, match=r"1 image\(s\) not generated \(coffee\.jpg\): their image cannot "
                                               r"be decoded \(image_error 1 image\(s\), e\.g\. .*coffee\.jpg"):
        check_generated(g, pipeline=True)
    monkeypatch.setattr(pl, "build_roles_for",
                        lambda o: (scripted_roles(generation_answers(log=log)), "offline", 1, 1))
    argv = ["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images", images, "--out", out,
            "--no-progress"]
    log.clear()
    code, stdout, err = run_cli(argv, capsys)  # the rerun tries it again, and only it
    assert code == 1 and "coffee.jpg" in err and "cannot be decoded" in err, stdout + err
    assert "generate: 4 image(s) (0 now, 3 resumed, 1 failed)" in stdout and log == []
    (images / "coffee.jpg").write_bytes(good)  # fixed
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, stdout + err
    assert log.count("caption") == 1 and len(records(out)) == 4


def test_an_image_over_max_pixels_fails_alone(tmp_path):
    """``--max-pixels`` is checked when an image is decoded: an image over it fails, the run goes on."""
    run = generate(options(tmp_path / "g.jsonl", max_pixels=265_000), roles=scripted_roles(generation_answers()))
    assert run.failed_images == ["rocket.jpg"] and run.ran == 3  # 640x427: the only one over 265,000 pixels
    assert "above the limit" in run.failures["image_error"][1]


# --- 2. --report is checked before any work -------------------------------------------------------------


def test_a_report_over_an_input_or_unwritable_is_refused_before_any_work(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_bytes((EXAMPLES / "annotations.json").read_bytes())
    images = copied_images(tmp_path)
    (tmp_path / "afile").write_text("")
    log: list[str] = []
    roles = scripted_roles(generation_answers(log=log))
    out = tmp_path / "o.jsonl"
    (tmp_path / "adir.json").mkdir()
    for report, words in ((ann, "would overwrite the annotations"),
                          (tmp_path / "afile" / "rep", "afile is a file, not a folder"),
                          (tmp_path / "adir", "a folder, where a file is written")):
        with pytest.raises(ConfigError, match=f"--report .*{words}"):
            pipeline(PipelineOptions(options(out, ann, images), report=report), roles=roles)
    for out, words in ((tmp_path / "adir.json", "a folder, where a file is written"),  # written last, too
                       (images / "coffee.jpg", "would overwrite an image of the image root")):
        with pytest.raises(ConfigError, match=f"--out .*{words}"):
            pipeline(PipelineOptions(options(out, ann, images)), roles=roles)
    assert log == [] and ann.read_bytes() == (EXAMPLES / "annotations.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.json", "afile", "ann.json", "images"]  # nothing new


# --- 3. the image filters choose the images: never resumed across ---------------------------------------


def test_changing_the_image_filters_is_refused_even_with_force_resume(tmp_path):
    """The journal holds images by position among those the filters keep: resuming across another
    --keep-crowd duplicated some images in the output and dropped others."""
    ann = annotations_with(tmp_path, lambda d: [a.update(iscrowd=1) for a in d["annotations"] if a["image_id"] == 1])
    out = tmp_path / "g.jsonl"
    roles = scripted_roles(generation_answers())
    generate(options(out, ann), roles=roles)
    assert [r["filename"] for r in records(out)] == ["coffee.jpg", "chelsea.jpg", "rocket.jpg"]
    for change, words in (({"skip_crowd": False}, r"--keep-crowd \(was False, now True\)"),
                          ({"min_area": 5000.0}, r"--min-box-area \(was 0\.0, now 5000\.0\)")):
        for force in (False, True):
            with pytest.raises(JournalMismatch, match=f"{words}.*not even with --force-resume"):
                generate(options(out, ann, force_resume=force, **change), roles=roles)
    assert [r["filename"] for r in records(out)] == ["coffee.jpg", "chelsea.jpg", "rocket.jpg"]


def test_a_journal_without_a_generated_image_starts_over_with_other_options(tmp_path):
    """A first run whose every image failed (no server yet) left a journal that refused the next try
    with other options, though it held nothing to keep."""
    from reallod.llm.backends.base import BackendError

    out = tmp_path / "g.jsonl"
    def down(role, messages):
        return BackendError("the server answers nothing", kind="server")

    assert generate(options(out, limit=1), roles=scripted_roles(down)).failed == 1
    run = generate(options(out, limit=1, skip_crowd=False, settings=GenerateSettings(llm_expressions=1)),
                   roles=scripted_roles(generation_answers()))
    assert run.ran == 1 and run.resumed == 0


def test_a_settings_change_names_the_options_and_force_resume_continues(tmp_path):
    out = tmp_path / "g.jsonl"
    roles = scripted_roles(generation_answers())
    generate(options(out, limit=1), roles=roles)
    few = GenerateSettings(llm_expressions=1, easy_negatives=0)
    with pytest.raises(JournalMismatch, match=r"other --llm-expressions \(was 3, now 1\), --easy-negatives "
                                              r"\(was 2, now 0\); .*pass --force-resume"):
        generate(options(out, limit=1, settings=few), roles=roles)
    run = generate(options(out, limit=2, settings=few, force_resume=True), roles=roles)
    assert run.resumed == 1 and run.ran == 1


def test_a_journal_of_an_older_reallod_resumes_or_is_refused_clearly(tmp_path):
    """Older journals fingerprinted every role and kept the settings as a hash only."""
    out = tmp_path / "g.jsonl"
    roles = scripted_roles(generation_answers())
    generate(options(out, limit=1), roles=roles)
    journal = tmp_path / "g.journal.jsonl"
    header, *lines = journal.read_bytes().splitlines(keepends=True)
    old = orjson.loads(header)
    old["fingerprint"]["config"] = roles_fingerprint(roles)
    del old["meta"]["settings"]
    journal.write_bytes(orjson.dumps(old) + b"\n" + b"".join(lines))
    log: list[str] = []
    run = generate(options(out, limit=1), roles=scripted_roles(generation_answers(log=log)))
    assert run.resumed == 1 and log == []
    with pytest.raises(JournalMismatch, match=r"does not say which.*not even with --force-resume"):
        generate(options(out, limit=1, settings=GenerateSettings(llm_expressions=1), force_resume=True), roles=roles)


# --- 4. group phrases cover every box of their category -------------------------------------------------


def test_no_group_phrase_for_a_category_with_a_skipped_box(tmp_path):
    """Two masts and a crowd of masts: "both masts" would be told of two boxes where there are more."""
    def crowd_of_masts(d: dict) -> None:
        d["annotations"].append({"id": 99, "image_id": 4, "category_id": 11, "bbox": [10, 10, 50, 50],
                                 "area": 2500, "iscrowd": 1})

    ann = annotations_with(tmp_path, crowd_of_masts)
    assert read_annotations(ann, EXAMPLES / "images").images[3].partial == ["mast"]
    log: list[str] = []
    run = generate(options(tmp_path / "g.jsonl", ann, settings=GenerateSettings(hard_negatives=0)),
                   roles=scripted_roles(generation_answers(log=log), vlm=False))
    rocket = records(tmp_path / "g.jsonl")[3]
    assert rocket["filename"] == "rocket.jpg" and "multi" not in [p["relation"] for p in rocket["pairs"]["llm"]]
    assert run.counts["groups with a skipped box:skipped"] == 1 and "group" not in log
    kept = generate(options(tmp_path / "k.jsonl", ann, skip_crowd=False, settings=GenerateSettings(hard_negatives=0)),
                    roles=scripted_roles(generation_answers(), vlm=False))
    group = [p for p in records(tmp_path / "k.jsonl")[3]["pairs"]["llm"] if p["relation"] == "multi"]
    assert kept.counts["group:kept"] == 2 and len(group[0]["bboxes"]) == 3  # --keep-crowd: all three


def test_openimages_records_the_categories_of_skipped_boxes(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (400, 300)).save(tmp_path / "img" / "i1.jpg")
    boxes = tmp_path / "b.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf\n"
                     "i1,x,/m/01,1,0.1,0.2,0.1,0.2,0,0,0\ni1,x,/m/01,1,0.3,0.4,0.1,0.2,0,0,0\n"
                     "i1,x,/m/01,1,0.5,0.9,0.1,0.9,0,0,1\ni1,x,/m/02,1,0.1,0.2,0.5,0.6,0,0,0\n")
    (tmp_path / "c.csv").write_text("/m/01,Dog\n/m/02,Person\n")
    img = read_annotations(boxes, tmp_path / "img", classes=tmp_path / "c.csv").images[0]
    assert img.partial == ["Dog"] and img.present == ["Dog", "Person"]


# --- 5. only the models generation calls are its config -------------------------------------------------


def test_changing_only_the_agent_roles_resumes_generation(tmp_path):
    out = tmp_path / "g.jsonl"
    roles = scripted_roles(generation_answers())
    generate(options(out, limit=2), roles=roles)
    log: list[str] = []
    other = scripted_roles(generation_answers(log=log))
    other = dataclasses.replace(other, reflector=dataclasses.replace(other.reflector, temperature=0.7),
                                planner=dataclasses.replace(other.planner, max_tokens=12))
    run = generate(options(out, limit=2), roles=other)
    assert run.resumed == 2 and run.ran == 0 and log == []
    with pytest.raises(JournalMismatch, match="config"):  # the VLM is generation's
        generate(options(out, limit=2), roles=dataclasses.replace(other, vlm=None))


# --- 6. a smaller --limit counts its own images ---------------------------------------------------------


def test_a_smaller_limit_counts_only_its_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pl, "build_roles_for", lambda o: (scripted_roles(generation_answers()), "s", 1, 1))
    argv = ["generate", "--annotations", EXAMPLES / "annotations.json", "--images", EXAMPLES / "images",
            "--out", tmp_path / "g.jsonl", "--no-progress", "--limit"]
    assert run_cli([*argv, "3"], capsys)[0] == 0
    code, stdout, err = run_cli([*argv, "1"], capsys)
    assert code == 0 and "generated 1 image(s) (0 now, 1 resumed)" in stdout, stdout + err


# --- 10. errors that say what is wrong -------------------------------------------------------------------


def test_annotations_that_are_a_json_list_are_named(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[{"id": 1}]')
    with pytest.raises(DataError, match=r"expected a COCO-format JSON object .*got a list"):
        read_annotations(path, EXAMPLES / "images")


def test_annotations_without_boxes_say_so(tmp_path, monkeypatch, capsys):
    ann = annotations_with(tmp_path, lambda d: d.update(annotations=[]))
    monkeypatch.setattr(pl, "build_roles_for", lambda o: (scripted_roles(generation_answers()), "s", 1, 1))
    code, stdout, err = run_cli(["generate", "--annotations", ann, "--images", EXAMPLES / "images", "--out",
                                 tmp_path / "g.jsonl", "--no-progress"], capsys)
    assert code == 0, stdout + err
    assert "no record written: the annotations hold no box (for any of their 4 image(s))" in stdout
    assert "(;" not in stdout
