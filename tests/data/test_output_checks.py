"""Outputs no other command could read, refused before anything is written: split's --train and --val
as one file, a split side left empty, from-coco's sizes over Real-Data's limit; and what convert odvg
--category-source and --max-negatives promise."""

import json

import pytest

from reallod.data import Record, read_records, write_records
from reallod.data.convert import coco_to_realdata, realdata_to_odvg
from reallod.data.convert_common import EmptyRunError
from reallod.data.convert_odvg import record_to_odvg
from reallod.data.ops import split_file
from reallod.data.schema import MAX_SIDE
from reallod.errors import ConfigError, DataError
from tests.cli_helpers import run_cli


def pair(category="dog", pos=("a dog",), neg=(), box=(0, 0, 10, 10)):
    return {"bboxes": [list(box)], "category": category, "relation": "single",
            "positive_expressions": list(pos), "negative_expressions": list(neg)}


def many(n):
    return [{"filename": f"img{i:04d}.jpg", "height": 100, "width": 100, "pairs": {"llm": [pair(pos=(f"dog {i}",))]}}
            for i in range(n)]


# ---------------------------------------------------------------------------------------------- split


def test_split_refuses_train_and_val_that_are_one_file_under_two_names(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, many(20))
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to("d")
    for train, val in ((tmp_path / "d" / "t.jsonl", tmp_path / "link" / "t.jsonl"),  # through a symlinked folder
                       (tmp_path / "d" / "t.jsonl", tmp_path / "d" / ".." / "d" / "t.jsonl"),
                       (tmp_path / "d" / "t.jsonl", tmp_path / "link" / "T.jsonl")):  # one file where case is ignored
        with pytest.raises(ConfigError, match=f"--train {train} and --val {val} are one file"):
            split_file(src, train, val, val_fraction=0.3)
    with pytest.raises(ConfigError, match=r"one file \(names that differ only in case, one file where the file "
                                          r"system ignores case"):  # not said to be one file where it is not
        split_file(src, tmp_path / "d" / "t.jsonl", tmp_path / "d" / "T.jsonl", val_fraction=0.3)
    (tmp_path / "d" / "t.jsonl").write_text("previous\n")
    (tmp_path / "d" / "hard.jsonl").hardlink_to(tmp_path / "d" / "t.jsonl")
    with pytest.raises(ConfigError, match="are one file"):
        split_file(src, tmp_path / "d" / "t.jsonl", tmp_path / "d" / "hard.jsonl", val_fraction=0.3)
    assert (tmp_path / "d" / "t.jsonl").read_text() == "previous\n"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["hard.jsonl", "t.jsonl"]


def test_split_refuses_a_side_left_empty_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_records(src, many(40))
    train, val = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    train.write_text("old train\n")
    with pytest.raises(EmptyRunError, match=rf"--val-fraction 0.001 \(seed 0\) puts none of the 40 records in "
                                            rf"--val {val}; nothing written: .* raise --val-fraction"):
        split_file(src, train, val, val_fraction=0.001)
    with pytest.raises(EmptyRunError, match=f"in --train {train}; nothing written: .* lower --val-fraction"):
        split_file(src, train, val, val_fraction=0.999)
    for fraction in (0.0, 1.0):  # known empty before reading
        with pytest.raises(ConfigError, match="--val-fraction must be between 0 and 1 \\(both excluded"):
            split_file(src, train, val, val_fraction=fraction)
    assert train.read_text() == "old train\n" and not val.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "t.jsonl"]  # no partial output either
    code, _, err = run_cli(["data", "split", src, "--train", train, "--val", val, "--val-fraction", "0.001"], capsys)
    assert code == 2 and "puts none of the 40 records in --val" in err, err
    stats = split_file(src, train, val, val_fraction=0.3)
    assert stats.items_out["train"] > 0 and stats.items_out["val"] > 0


# ---------------------------------------------------------------------------------------------- convert


def test_category_source_gives_every_image_its_category_line(tmp_path):
    """With -s llm, an image whose record has its own 'category' source (excluded by -s) gets its
    category line too, from that source; an image without one gets one built from its llm pairs."""
    llm = [pair("dog", pos=("the brown dog",)), pair("cat", pos=("a cat",), box=(20, 20, 30, 30))]
    own = [pair("hound", pos=("hound",))]
    has = Record.from_dict({"filename": "has.jpg", "height": 100, "width": 100, "pairs": {"llm": llm, "category": own}})
    hasnt = Record.from_dict({"filename": "hasnt.jpg", "height": 100, "width": 100, "pairs": {"llm": llm}})
    for record, phrases in ((has, ["hound"]), (hasnt, ["dog", "cat"])):
        lines = record_to_odvg(record, sources=["llm"], category_source=True)
        assert [line["source"] for line in lines] == ["llm", "category"], record.filename
        assert [r["phrase"] for r in lines[1]["grounding"]["regions"]] == phrases
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [has, hasnt])
    realdata_to_odvg(src, out, sources=["llm"], category_source=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(d["filename"], d["source"]) for d in lines] == [
        ("has.jpg", "llm"), ("has.jpg", "category"), ("hasnt.jpg", "llm"), ("hasnt.jpg", "category")]


def test_max_negatives_under_minus_one_is_refused(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, many(2))
    with pytest.raises(ConfigError, match="--max-negatives must be -1 \\(all\\) or more, got -5"):
        realdata_to_odvg(src, out, max_negatives=-5)
    code, _, err = run_cli(["data", "convert", "odvg", src, out, "--max-negatives", "-5"], capsys)
    assert code == 2 and "--max-negatives" in err and not out.exists()
    realdata_to_odvg(src, out, max_negatives=-1)
    assert len(list(read_records(src))) == 2 and out.exists()


def test_from_coco_refuses_a_size_over_the_real_data_limit(tmp_path):
    for key in ("height", "width"):
        ann = tmp_path / "ann.json"
        image = {"id": 1, "file_name": "a.jpg", "height": 10, "width": 10, key: MAX_SIDE + 1}
        ann.write_text(json.dumps({"images": [image], "categories": [{"id": 1, "name": "dog"}],
                                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]}))
        with pytest.raises(DataError, match=rf"ann\.json: images\[0\]\.{key}: {MAX_SIDE + 1} is too large"):
            coco_to_realdata(ann, tmp_path / "out.jsonl")
        assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("where", ["name", "synonyms"])
def test_from_coco_refuses_a_category_text_no_tokenizer_reads(tmp_path, where):
    """A name (or, with --synonyms, a synonym) of zero-width characters passed from-coco, and every other
    command then refused the file it wrote (invisible_expression)."""
    cat = {"id": 1, "name": "dog", "synonyms": ["hound"]}
    cat[where] = "\u200b" if where == "name" else ["hound", "\u200b\u2060"]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
                               "categories": [cat],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]}))
    with pytest.raises(DataError, match=rf"ann\.json: categories\[0\]\.{where}: .* only zero-width"):
        coco_to_realdata(ann, tmp_path / "out.jsonl", synonyms=True)
    assert not (tmp_path / "out.jsonl").exists()
    if where == "synonyms":  # without --synonyms they are not read
        coco_to_realdata(ann, tmp_path / "out.jsonl")
        (record,) = read_records(tmp_path / "out.jsonl")
        assert record.pairs["category"][0].positive_expressions == ["dog"]


@pytest.mark.parametrize("fmt", ["coco", "omnilabel"])
def test_convert_refuses_an_image_given_by_two_records_and_names_the_merge(tmp_path, capsys, fmt):
    """Each record became an image entry of its own: one file name twice in the json, each with part of
    the image's boxes (the other part unannotated background)."""
    src, out = tmp_path / "dup.jsonl", tmp_path / "out.json"
    records = many(4)
    write_records(src, [*map(Record.from_dict, records), Record.from_dict(records[1])])
    code, _, err = run_cli(["data", "convert", fmt, src, out], capsys)
    assert code == 2 and "dup.jsonl:5: 'img0001.jpg' is also the image of line 2" in err, err
    assert f"reallod data merge {src} -o merged.jsonl" in err and not out.exists()
    merged = tmp_path / "merged.jsonl"
    assert run_cli(["data", "merge", src, "-o", merged], capsys)[0] == 0
    assert run_cli(["data", "convert", fmt, merged, out], capsys)[0] == 0
    assert len(json.loads(out.read_text())["images"]) == 4
