"""No silent empty results: a mistyped --source, an empty input or a run that keeps nothing is an error
(exit non-zero, one line), and an earlier output at the same path is left as it was."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from reallod.data import write_records
from tests.cli_helpers import run_cli

OLD = "an earlier output, not to be clobbered\n"


def _pair(category="dog", pos=("a dog",)):
    return {"bboxes": [[0, 0, 10, 10]], "category": category, "relation": "single",
            "positive_expressions": list(pos), "negative_expressions": ["a cat"]}


def _record(name="a.jpg", sources=("vlm_short", "llm")):
    return {"filename": name, "height": 20, "width": 20, "pairs": {s: [_pair()] for s in sources}}


@pytest.fixture
def files(tmp_path):
    data = tmp_path / "data.jsonl"
    write_records(data, [_record("a.jpg"), _record("b.jpg", ("llm", "my_source"))])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"filename": 3}\nnot json\n')
    out = tmp_path / "out.jsonl"
    out.write_text(OLD)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (20, 20)).save(images / name)
    return tmp_path


def test_a_mistyped_source_is_an_error_naming_the_real_one(files, capsys):
    code, _, err = run_cli(["data", "filter", files / "data.jsonl", files / "out.jsonl", "-s", "vlm-short"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--source vlm-short: no such source; did you mean vlm_short?" in err
    assert (files / "out.jsonl").read_text() == OLD


def test_a_source_no_record_has_lists_the_sources_seen(files, capsys):
    code, _, err = run_cli(["data", "filter", files / "data.jsonl", files / "out.jsonl", "-s", "my_sorce"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--source my_sorce: no record read has this source" in err
    assert "llm, my_source, vlm_short" in err and "did you mean my_sorce → my_source?" in err
    assert (files / "out.jsonl").read_text() == OLD
    # a source of the file's own is fine
    code, _, err = run_cli(["data", "filter", files / "data.jsonl", files / "out.jsonl", "-s", "my_source"], capsys)
    assert code == 0, err
    assert [json.loads(line)["filename"] for line in (files / "out.jsonl").read_text().splitlines()] == ["b.jpg"]
    # a standard source the file lacks is named as missing, not suggested as its own correction
    code, _, err = run_cli(["data", "filter", files / "data.jsonl", files / "out.jsonl", "-s", "vlm_long"], capsys)
    assert code == 2 and "--source vlm_long: no record read has this source" in err and "vlm_long →" not in err, err


@pytest.mark.parametrize("convert", ["odvg", "coco", "omnilabel"])
def test_convert_refuses_an_unknown_source(files, capsys, convert):
    code, _, err = run_cli(["data", "convert", convert, files / "data.jsonl", files / "out.jsonl", "-s", "vlm_shrt"],
                           capsys)
    assert code == 2 and "--source vlm_shrt: no record read has this source" in err
    assert "vlm_shrt → vlm_short?" in err
    assert (files / "out.jsonl").read_text() == OLD


def test_odvg_category_source_counts_as_present(files, capsys):
    code, _, err = run_cli(["data", "convert", "odvg", files / "data.jsonl", files / "out.jsonl", "-s", "llm", "-s",
                            "category", "--category-source"], capsys)
    assert code == 0, err
    assert {json.loads(line)["source"] for line in (files / "out.jsonl").read_text().splitlines()} == {"llm",
                                                                                                    "category"}


def test_filter_that_matches_nothing_is_an_error(files, capsys):
    code, _, err = run_cli(["data", "filter", files / "data.jsonl", files / "out.jsonl", "-c", "unicorn"], capsys)
    assert code == 2 and "none of the 2 records has a pair matching --category unicorn; nothing written" in err
    assert (files / "out.jsonl").read_text() == OLD


COMMANDS = {
    "convert odvg": lambda src, f: ["data", "convert", "odvg", src, f / "out.jsonl"],
    "convert coco": lambda src, f: ["data", "convert", "coco", src, f / "out.jsonl"],
    "convert omnilabel": lambda src, f: ["data", "convert", "omnilabel", src, f / "out.jsonl"],
    "filter": lambda src, f: ["data", "filter", src, f / "out.jsonl"],
    "sample -n": lambda src, f: ["data", "sample", src, f / "out.jsonl", "-n", "3"],
    "sample --fraction": lambda src, f: ["data", "sample", src, f / "out.jsonl", "--fraction", "0.5"],
    "split": lambda src, f: ["data", "split", src, "--train", f / "out.jsonl", "--val", f / "val.jsonl"],
    "merge": lambda src, f: ["data", "merge", src, "--out", f / "out.jsonl"],
    "show": lambda src, f: ["data", "show", src, "--images", f / "images", "--out", f / "pngs"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_an_empty_input_and_keeps_the_old_output(files, capsys, command):
    code, _, err = run_cli(COMMANDS[command](files / "empty.jsonl", files), capsys)
    assert code == 2, (command, err)
    assert err.count("\n") == 1 and "empty.jsonl: no Real-Data record in this file" in err
    assert (files / "out.jsonl").read_text() == OLD
    assert not (files / "val.jsonl").exists()
    assert not list((files / "pngs").glob("*.png")) if (files / "pngs").exists() else True


def test_convert_coco_on_an_empty_file_fails(files, capsys):
    code, _, err = run_cli(["data", "convert", "coco", files / "empty.jsonl", files / "out.jsonl"], capsys)
    assert code == 2 and "nothing written" in err
    assert (files / "out.jsonl").read_text() == OLD


def test_from_coco_with_no_images_or_no_kept_box_fails(files, capsys):
    coco = files / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    code, _, err = run_cli(["data", "convert", "from-coco", coco, files / "out.jsonl"], capsys)
    assert code == 2 and "no images in this COCO json" in err
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 9, "width": 9}],
                                "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    code, _, err = run_cli(["data", "convert", "from-coco", coco, files / "out.jsonl"], capsys)
    assert code == 2 and "none of its 1 images kept a box" in err and "--keep-empty" in err
    assert (files / "out.jsonl").read_text() == OLD
    code, _, err = run_cli(["data", "convert", "from-coco", coco, files / "out.jsonl", "--keep-empty"], capsys)
    assert code == 0, err


def test_stats_on_a_file_with_no_valid_record_warns_and_exits_1(files, capsys):
    code, out, err = run_cli(["data", "stats", files / "bad.jsonl", "--workers", "1"], capsys)
    assert code == 1 and "Real-Data" in out
    assert f"warning: {files / 'bad.jsonl'}: no valid Real-Data record (none of its 2 lines passes" in err
    code, out, err = run_cli(["data", "stats", files / "data.jsonl", files / "empty.jsonl", "--json", "--workers",
                              "1"], capsys)
    assert code == 1 and json.loads(out)["total"]["images"] == 2
    assert "empty.jsonl: no valid Real-Data record (the file is empty" in err
    code, _, err = run_cli(["data", "stats", files / "data.jsonl", "--workers", "1"], capsys)
    assert code == 0 and not err


def test_merge_notes_an_empty_input_among_others(files, capsys):
    code, out, err = run_cli(["data", "merge", files / "data.jsonl", files / "empty.jsonl", "--out",
                              files / "out.jsonl"], capsys)
    assert code == 0, err
    assert f"1 input file with no record: {files / 'empty.jsonl'}" in out


def test_show_that_draws_nothing_fails(files, capsys):
    code, _, err = run_cli(["data", "show", files / "data.jsonl", "--images", files / "images", "--out",
                            files / "pngs", "-s", "nothing_like_it"], capsys)
    assert code == 2 and "--source nothing_like_it: no record read has this source" in err
    assert "no PNG written" in err


@pytest.mark.parametrize("target", ["out.jsonl", "data.jsonl"])  # another file, or the input itself
def test_validate_fix_that_keeps_no_record_writes_nothing(files, capsys, target):
    (files / "wrongroot").mkdir()
    before = (files / target).read_bytes()
    code, out, err = run_cli(["data", "validate", files / "data.jsonl", "--images", files / "wrongroot", "--fix",
                              files / target, "--workers", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--fix: no record to write (2 read, all dropped)" in err
    assert "missing_image" in out  # the problems are still listed
    assert (files / target).read_bytes() == before
    code, out, err = run_cli(["data", "validate", files / "bad.jsonl", "--fix", files / target, "--json"], capsys)
    assert code == 2 and "nothing written" in err
    assert {i["line"] for i in json.loads(out)["issues"]} == {1, 2}  # --json output stays one JSON document
    assert (files / target).read_bytes() == before


def test_sample_that_keeps_no_record_writes_nothing(files, capsys):
    code, _, err = run_cli(["data", "sample", files / "data.jsonl", files / "out.jsonl", "--fraction", "0.0001"],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "keeps none of the 2 records; nothing written" in err
    assert (files / "out.jsonl").read_text() == OLD


@pytest.mark.parametrize("args", [["-n", "0"], ["--fraction", "0"]])
def test_sample_of_no_image_is_refused_as_an_argument(files, capsys, args):
    """-n 0 and --fraction 0 keep nothing whatever the file: refused before it is read, as their help shows."""
    code, _, err = run_cli(["data", "sample", files / "data.jsonl", files / "out.jsonl", *args], capsys)
    assert code == 2 and args[0] in err and any(s in err for s in ("greater than or equal to 1", "range x>=1", "0 excluded"))
    assert (files / "out.jsonl").read_text() == OLD


CONVERTS = ["odvg", "coco", "omnilabel", "from-coco"]


@pytest.mark.parametrize("convert", CONVERTS)
def test_convert_refuses_to_write_over_its_input(files, capsys, convert, monkeypatch):
    src = files / "data.jsonl"
    if convert == "from-coco":
        src = files / "coco.json"
        src.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 9, "width": 9}],
                                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
                                   "categories": [{"id": 1, "name": "dog"}]}))
    before = src.read_bytes()
    (files / "link.json").symlink_to(src)
    (files / "hard.json").hardlink_to(src)
    monkeypatch.chdir(files)
    for out in (src, f"./{src.name}", files / "images" / ".." / src.name, files / "link.json", files / "hard.json"):
        code, _, err = run_cli(["data", "convert", convert, src, out], capsys)
        assert code == 2 and err.count("\n") == 1 and "is the input file" in err, (out, err)
        assert src.read_bytes() == before
    code, _, err = run_cli(["data", "convert", convert, src, files / "out.json"], capsys)
    assert code == 0, err


SUBSETS = {"filter": ["{out}"], "sample": ["{out}", "-n", "1"],
           "split-train": ["--train", "{out}", "--val", "v.jsonl"], "split-val": ["--train", "t.jsonl", "--val", "{out}"]}


@pytest.mark.parametrize("command", SUBSETS)
def test_a_subset_refuses_to_write_over_its_input(files, capsys, command, monkeypatch):
    """filter / sample / split write a part of the input: written over it, the rest would be gone."""
    src = files / "data.jsonl"
    before = src.read_bytes()
    (files / "link.jsonl").symlink_to(src)
    monkeypatch.chdir(files)
    for out in (src, "./data.jsonl", "link.jsonl"):
        args = [a.format(out=out) for a in SUBSETS[command]]
        code, _, err = run_cli(["data", command.split("-")[0], src, *args], capsys)
        assert code == 2 and err.count("\n") == 1 and "is the input file" in err, (out, err)
        assert src.read_bytes() == before and not (files / "v.jsonl").exists() and not (files / "t.jsonl").exists()
