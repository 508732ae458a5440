"""A COCO json (one JSON document) given where Real-Data JSON Lines are read, and JSON Lines given where a
COCO json is read, are named as what they are, with the command that takes them. Before, the first said
"invalid JSON: unexpected end of data" on line 1 (or, in realign, "first line is neither ..." on line 40,
the first line that parsed alone), the second "unexpected content after document: line 2 column 1"."""

from __future__ import annotations

import json

import pytest

from reallod.agent.inputs import detect_format
from reallod.data.convert_coco import coco_to_realdata
from reallod.data.io import iter_json, read_records
from reallod.engine.annotations import read_annotations
from reallod.errors import DataError
from tests.cli_helpers import run_cli

COCO = {"info": {"description": "a tiny set"},
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "dog"}]}
RECORD = {"filename": "a.jpg", "height": 40, "width": 60,
          "pairs": {"category": [{"bboxes": [[1, 2, 11, 12]], "category": "dog", "relation": "single",
                                  "positive_expressions": ["dog"]}]}}


@pytest.fixture
def pretty_coco(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(COCO, indent=1))  # line 6 (`"id": 1,`) holds no JSON alone; a later `1` does
    return path


@pytest.fixture
def realdata(tmp_path):
    path = tmp_path / "realdata.jsonl"
    path.write_text("".join(json.dumps(RECORD) + "\n" for _ in range(2)))
    return path


def test_a_pretty_printed_coco_json_read_as_real_data_is_named_one_document(pretty_coco, tmp_path, capsys):
    for read in (lambda p: list(read_records(p)), lambda p: list(iter_json(p))):
        with pytest.raises(DataError) as err:
            read(pretty_coco)
        assert str(err.value).startswith(f"{pretty_coco}:1: not JSON Lines: its first line opens a JSON value it "
                                         "does not close, so the file is one JSON document over many lines")
        assert str(err.value).endswith("a COCO json converts to Real-Data records with `reallod data convert "
                                       "from-coco`")
    code, _, err = run_cli(["data", "convert", "coco", pretty_coco, tmp_path / "out.json"], capsys)
    assert code == 2 and "data convert from-coco" in err and "unexpected end of data" not in err


def test_a_coco_json_on_one_line_read_as_real_data_is_named_a_coco_json(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(COCO))  # the official COCO files are one line
    with pytest.raises(DataError, match=r"instances\.json:1: a COCO json \(it has images and annotations\), not "
                       "JSON Lines of Real-Data records; convert it to Real-Data records with `reallod data convert "
                       "from-coco`$"):
        list(read_records(path))


def test_a_json_lines_file_with_a_bad_first_line_is_still_a_bad_line(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"filename": "a.jpg", "hei\n' + json.dumps(RECORD) + "\n")  # cut where no pretty-printer breaks
    with pytest.raises(DataError, match=r"cut\.jsonl:1: invalid JSON: the line ends inside a JSON value "
                                        r"\(unexpected end of data\); truncated\?"):
        list(read_records(path))


def test_realign_names_a_coco_json_on_its_first_line(pretty_coco, tmp_path):
    with pytest.raises(DataError) as err:
        detect_format(pretty_coco)
    assert str(err.value).startswith(f"{pretty_coco}:1: not JSON Lines") and "data convert from-coco" in str(err.value)
    one_line = tmp_path / "one.json"
    one_line.write_text(json.dumps(COCO))
    with pytest.raises(DataError, match=r"one\.json:1: a COCO json"):
        detect_format(one_line)


def test_json_lines_given_as_a_coco_json_is_named_json_lines(realdata, tmp_path, capsys):
    said = f"{realdata}: looks like JSON Lines (one JSON value a line: Real-Data records?), not one JSON document"
    with pytest.raises(DataError) as err:
        coco_to_realdata(realdata, tmp_path / "out.jsonl")
    assert str(err.value).startswith(said) and "realign and the data commands read them as they are" in str(err.value)
    with pytest.raises(DataError) as err:
        read_annotations(realdata, tmp_path)
    assert str(err.value).startswith(said) and "re-aligned with `reallod realign`" in str(err.value)
    code, _, err = run_cli(["data", "convert", "from-coco", realdata, tmp_path / "out.jsonl"], capsys)
    assert code == 2 and "looks like JSON Lines" in err and not (tmp_path / "out.jsonl").exists()


def test_a_broken_coco_json_is_still_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(COCO, indent=1)[:-3])
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON: unexpected end of data"):
        coco_to_realdata(path, tmp_path / "out.jsonl")
