"""``reallod data stats``: the published columns, sources, relations, lengths; parallel == sequential."""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from reallod.cli import main
from reallod.data.stats import Stats, file_stats, length_summary, percentile, stats_files
from reallod.data.validate import validate_file

BOX1, BOX2 = [10, 10, 50, 60], [60, 10, 90, 60]


def p(boxes, pos=(), neg=(), relation="single", **extra):
    return {"bboxes": boxes, "category": "dog", "relation": relation,
            "positive_expressions": list(pos), "negative_expressions": list(neg), **extra}


RECORD_A = {"filename": "a.jpg", "height": 100, "width": 100, "pairs": {
    "vlm_short": [p([BOX1], ["a dog"], ["a cat", "the red bus"])],
    "vlm_long": [p([BOX1], ["a brown dog lying on the grass in the sun"], ["a black cat"])],
    "llm": [p([BOX2], ["dog", "the second dog"]),
            p([BOX1, BOX2], ["two dogs"], relation="multiple")],
}}
# spelling variants found in the wild: a lone pair dict, a flat box, the misspelt key
RECORD_B = {"filename": "b.jpg", "height": 10, "width": 10, "pairs": {
    "vlm_short": {"bboxes": [0, 0, 5, 5], "category": "cup", "relation": "single",
                  "postive_expressions": ["cup"], "negative_expressions": ["a blue mug"]},
}}
# the same box written as ints in one source and floats in another is one instance
RECORD_C = {"filename": "c.jpg", "height": 10, "width": 10, "pairs": {
    "vlm_short": [p([[1, 2, 3, 4]], ["x"])], "llm": [p([[1.0, 2.0, 3.0, 4.0]], ["y"])], "category": [],
}}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(x + "\n" for x in lines))
    return path


def sample(tmp_path: Path) -> Path:
    return write(tmp_path / "s.jsonl", [json.dumps(RECORD_A), "", '{"filename": ', json.dumps(RECORD_B),
                                        "[1, 2]", json.dumps(RECORD_C), '{"pairs": {"llm": [{"bboxes": 5}]}}'])


def test_counts_of_a_handmade_file(tmp_path):
    s = file_stats(sample(tmp_path), workers=1)
    assert (s.images, s.instances, s.pairs, s.positives, s.negatives) == (3, 4, 7, 8, 4)
    assert s.expressions == 12
    assert (s.bad_lines, s.first_bad_lines) == (3, [3, 5, 7])
    assert s.sources == {
        # images, instances, pairs, positives, negatives
        "vlm_short": [3, 3, 3, 3, 3],
        "vlm_long": [1, 1, 1, 1, 1],
        "llm": [2, 3, 3, 4, 0],
    }
    assert s.relations == Counter({"single": 6, "multi": 1})


def test_expression_lengths_and_percentiles(tmp_path):
    s = file_stats(sample(tmp_path), workers=1)
    # positives: "a dog" 2, "a brown dog lying on the grass in the sun" 10, "dog" 1, "the second dog" 3,
    # "two dogs" 2, "cup" 1, "x" 1, "y" 1
    assert s.positive_lengths == Counter({1: 4, 2: 2, 3: 1, 10: 1})
    # negatives: "a cat" 2, "the red bus" 3, "a black cat" 3, "a blue mug" 3
    assert s.negative_lengths == Counter({2: 1, 3: 3})
    d = s.to_dict()["expression_words"]
    assert d["positive"]["p50"] == 1 and d["positive"]["p90"] == 10 and d["positive"]["max"] == 10
    assert d["positive"]["groups"] == {"S (<=3 words)": 7, "M (4-8)": 0, "L (>=9)": 1}
    assert d["all"]["count"] == 12 and d["all"]["mean"] == round((4 + 4 + 3 + 10 + 2 + 9) / 12, 3)


def test_percentile_is_nearest_rank():
    h = Counter({1: 1, 2: 1, 3: 1, 4: 1})
    assert [percentile(h, q) for q in (25, 50, 75, 90, 100)] == [1, 2, 3, 4, 4]
    assert percentile(Counter(), 50) is None
    assert length_summary(Counter()) == {"count": 0}


def test_a_malformed_record_counts_nothing():
    s = Stats()
    half_bad = {"pairs": {"llm": [p([BOX1], ["a dog"])], "vlm_short": [p([BOX2], ["ok", 5])]}}
    assert s.add(half_bad) is False
    assert s == Stats()
    assert s.add({"pairs": {"llm": [p([BOX1], ["a dog"], relation=["single"])]}}) is False
    assert s.add({"pairs": {"llm": [{**p([BOX1]), "positive_expressions": "a dog"}]}}) is False
    assert s == Stats()


def test_parallel_ranges_equal_sequential_and_gzip(tmp_path):
    lines = []
    for i in range(400):
        r = json.loads(json.dumps(RECORD_A))
        r["pairs"]["llm"][0]["positive_expressions"].append("word " * (i % 17))
        lines.append(json.dumps(r))
        if i % 37 == 0:
            lines += ["", "not json", json.dumps(RECORD_B)]
    path = write(tmp_path / "big.jsonl", lines)
    seq = file_stats(path, workers=1)
    par = file_stats(path, workers=2, chunk_bytes=3000)
    assert par.to_dict() == seq.to_dict()
    assert seq.first_bad_lines[:2] == [3, 3 + 40]
    assert seq.repeated_images() == 2 and seq.images == 400 + 11  # a.jpg and b.jpg: each record counted
    gz = tmp_path / "big.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert file_stats(gz, workers=2).to_dict() == seq.to_dict()


def test_total_over_files(tmp_path):
    a = write(tmp_path / "a.jsonl", [json.dumps(RECORD_A)])
    b = write(tmp_path / "b.jsonl", [json.dumps(RECORD_B), json.dumps(RECORD_C)])
    per_file, total = stats_files([a, b], workers=1)
    assert [s.images for _, s in per_file] == [1, 2]
    assert (total.images, total.instances, total.expressions) == (3, 4, 12)


def test_cli_json_and_table(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", [json.dumps(RECORD_A)])
    b = sample(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["data", "stats", str(a), str(b), "--json"])
    assert exc.value.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert [f["path"] for f in doc["files"]] == [str(a), str(b)]
    assert doc["files"][1]["first_bad_lines"] == [3, 5, 7]
    assert doc["total"]["images"] == 4 and doc["total"]["instances"] == 6 and doc["total"]["expressions"] == 20
    assert doc["total"]["sources"]["llm"] == {"images": 3, "instances": 5, "pairs": 5, "positives": 7,
                                              "negatives": 0}
    assert doc["total"]["relations"] == {"multi": 2, "single": 9}

    with pytest.raises(SystemExit) as exc:
        main(["data", "stats", str(a), str(b)])
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    assert "By source" in out and "Expression length (words)" in out and "Relations" in out
    total_row = next(ln for ln in out.splitlines() if "total" in ln and "lines" not in ln)
    assert [c.strip() for c in total_row.split("│")[2:5]] == ["4", "6", "20"]


def _load_benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "realdata.py"
    spec = importlib.util.spec_from_file_location("realdata_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_data_is_valid_and_shaped_like_o365(tmp_path):
    bench = _load_benchmark()
    path = tmp_path / "gen.jsonl"
    bench.generate(path, size_mb=1, seed=3)
    assert 1 << 20 <= path.stat().st_size < (1 << 20) + 100_000
    report = validate_file(path, workers=1)
    assert report.ok, report.counts
    d = file_stats(path, workers=1).to_dict()
    assert 5 <= d["instances_per_image"] <= 7
    assert 28 <= d["expressions_per_instance"] <= 36
    assert set(d["sources"]) == {"vlm_short", "vlm_long", "llm"}
    assert d["expression_words"]["all"]["p50"] >= 5


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_whose_lines_all_fail_the_record_check_warns_and_exits_1(tmp_path, capsys, workers):
    """Lines stats can count ({"pairs": {}}) but that are no valid record: exit 0 and no warning, where
    the docs promise a warning and exit 1 for a file with no valid record."""
    lines = ['{"pairs": {}}', '{"pairs": {"llm": [{"bboxes": [[1, 2, 3, 4]], "positive_expressions": ["x"]}]}}'] * 30
    path = write(tmp_path / "nofields.jsonl", lines)
    assert not file_stats(path, workers=workers, chunk_bytes=200).has_valid
    with pytest.raises(SystemExit) as exc:
        main(["data", "stats", str(path), "--workers", str(workers)])
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert err.strip() == (f"warning: {path}: no valid Real-Data record (none of its 60 lines passes the record "
                           f"check; `reallod data validate {path}` says why)")
    # one valid record anywhere, in any range, is enough
    good = write(tmp_path / "one.jsonl", [*lines, json.dumps(RECORD_A)])
    assert file_stats(good, workers=workers, chunk_bytes=200).has_valid
    with pytest.raises(SystemExit) as exc:
        main(["data", "stats", str(good), "--workers", str(workers)])
    assert exc.value.code in (0, None) and not capsys.readouterr().err


def test_images_with_more_than_one_record_are_counted_and_said(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", [json.dumps(RECORD_A), json.dumps(RECORD_B), json.dumps(RECORD_A)])
    b = write(tmp_path / "b.jsonl", [json.dumps(RECORD_C), json.dumps(RECORD_B)])
    per_file, total = stats_files([a, b], workers=1)
    assert [s.repeated_images() for _, s in per_file] == [1, 0] and total.repeated_images() == 2
    with pytest.raises(SystemExit) as exc:
        main(["data", "stats", str(a), str(b), "--json"])
    assert exc.value.code in (0, None)
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert [f["repeated_images"] for f in doc["files"]] == [1, 0] and doc["total"]["repeated_images"] == 2
    assert captured.err.splitlines() == [
        f"warning: {a}: 1 image has more than one record, each record counted as an image (`reallod data "
        f"validate {a}` names their lines; `reallod data merge` combines them)",
        "warning: 2 images have more than one record across the 2 files (1 within one file), each record counted "
        "as an image in the total (`reallod data merge` combines them)"]
    with pytest.raises(SystemExit) as exc:
        main(["data", "stats", str(b)])
    assert exc.value.code in (0, None) and capsys.readouterr().err == ""
