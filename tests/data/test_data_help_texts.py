"""What ``reallod data ... --help`` says matches what the commands do: the ranges shown are those the checks
accept, ``--category-source`` says which images get a 'category' source, ``from-coco`` names val2017 too."""

from __future__ import annotations

import json

import pytest

from reallod.data.ops import sample_file, split_file
from reallod.errors import ConfigError
from tests.cli_helpers import run_cli

from .test_wrong_json_kind import RECORD


def _help(args: list[str], capsys, monkeypatch) -> list[str]:
    """The help's lines, one per option (a wide terminal), without the frame and repeated spaces."""
    monkeypatch.setenv("COLUMNS", "1000")
    code, out, _ = run_cli([*args, "--help"], capsys)
    assert code == 0
    return [" ".join(line.replace("│", " ").split()) for line in out.splitlines()]


def _option_row(lines: list[str], option: str) -> str:
    return next(line for line in lines if line.startswith(f"{option} "))


@pytest.fixture
def realdata(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({**RECORD, "filename": f"{i}.jpg"}) + "\n" for i in range(20)))
    return path


def test_sample_n_shows_the_range_it_accepts(realdata, tmp_path, capsys, monkeypatch):
    """-n showed [x>=0], though 0 was refused (an empty sample)."""
    assert "[x>=1]" in _option_row(_help(["data", "sample"], capsys, monkeypatch), "--n")
    code, _, err = run_cli(["data", "sample", realdata, tmp_path / "s.jsonl", "-n", "0"], capsys)
    # Typer's own words since 0.29, click's before: either names the range
    assert code == 2 and "'-n' / '--n'" in err and ("greater than or equal to 1" in err or "range x>=1" in err)
    with pytest.raises(ConfigError, match="-n must be at least 1, got 0"):
        sample_file(realdata, tmp_path / "s.jsonl", n=0)
    assert not (tmp_path / "s.jsonl").exists()


def test_sample_fraction_shows_the_range_it_accepts(realdata, tmp_path, capsys, monkeypatch):
    """--fraction showed [0.0<=x<=1.0], though 0 keeps no image and was refused after reading the file."""
    row = _option_row(_help(["data", "sample"], capsys, monkeypatch), "--fraction")
    assert "0.0<=x" not in row and "above 0 and at most 1" in row
    for bad in ("0", "-0.5", "1.5", "nan"):
        code, _, err = run_cli(["data", "sample", realdata, tmp_path / "s.jsonl", "--fraction", bad], capsys)
        said = "error: --fraction must be between 0 and 1 (0 excluded: it keeps no image), got "
        assert code == 2 and err.startswith(said), bad
    code, _, _ = run_cli(["data", "sample", realdata, tmp_path / "s.jsonl", "--fraction", "1"], capsys)
    assert code == 0


def test_split_val_fraction_shows_the_open_range_it_accepts(realdata, tmp_path, capsys, monkeypatch):
    """--val-fraction showed [0.0<=x<=1.0], though 0 and 1 are refused (one side would be empty)."""
    row = _option_row(_help(["data", "split"], capsys, monkeypatch), "--val-fraction")
    assert "<=x<=" not in row and "strictly between 0 and 1" in row and "[default: 0.1]" in row
    for bad in ("0", "1", "1.5", "-1"):
        code, _, err = run_cli(["data", "split", realdata, "--train", tmp_path / "t.jsonl", "--val",
                                tmp_path / "v.jsonl", "--val-fraction", bad], capsys)
        assert code == 2 and err.startswith("error: --val-fraction must be between 0 and 1 (both excluded"), bad
    with pytest.raises(ConfigError, match="both excluded"):
        split_file(realdata, tmp_path / "t.jsonl", tmp_path / "v.jsonl", val_fraction=1.0)
    assert not (tmp_path / "t.jsonl").exists() and not (tmp_path / "v.jsonl").exists()


def test_category_source_help_says_which_images_get_one(tmp_path, capsys, monkeypatch):
    """The help said "every image", but an image with no category pair of its own and no pair of the chosen
    sources gets none (there is nothing to name its categories from)."""
    row = _option_row(_help(["data", "convert", "odvg"], capsys, monkeypatch), "--category-source")
    assert "every image" not in row and "an image with neither gets none" in row
    src, out = tmp_path / "r.jsonl", tmp_path / "o.jsonl"
    cat_only = {**RECORD, "filename": "cat.jpg", "pairs": {"vlm_short": RECORD["pairs"]["category"]}}
    llm = {**RECORD, "filename": "llm.jpg", "pairs": {"llm": RECORD["pairs"]["category"]}}
    src.write_text("".join(json.dumps(r) + "\n" for r in (llm, cat_only)))
    code, said, _ = run_cli(["data", "convert", "odvg", src, out, "-s", "llm", "--category-source"], capsys)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert code == 0 and [(x["filename"], x["source"]) for x in lines] == [("llm.jpg", "llm"), ("llm.jpg", "category")]
    assert "skipped: 1 images with no pair of the chosen sources" in said


def test_from_coco_help_names_val2017_as_well(capsys, monkeypatch):
    """LVIS val images come from coco_url as val2017/NAME.jpg; the help named train2017 only."""
    text = " ".join(_help(["data", "convert", "from-coco"], capsys, monkeypatch))
    assert "'train2017/NAME.jpg', 'val2017/NAME.jpg'" in text
    from reallod.data.convert_coco import image_filename

    url = "http://images.cocodataset.org/{}/000000000139.jpg"
    assert [image_filename({"coco_url": url.format(s)}) for s in ("train2017", "val2017")] == [
        "train2017/000000000139.jpg", "val2017/000000000139.jpg"]
