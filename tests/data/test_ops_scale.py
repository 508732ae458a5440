"""merge and sample at scale: work linear in the records of an image, memory the size of the held lines.

An image split over k records took k² pair-key computations (the pair index was rebuilt over every pair
merged so far at each record), and every record that sample -n or merge held took 4 KB or more (the
buffer orjson.dumps leaves in its bytes), whatever its line's length. No timed test: the work is
counted in calls, the memory with tracemalloc.
"""

import functools
import tracemalloc

import orjson
import pytest

from reallod.data import Record, ops, read_records, write_records
from reallod.data.ops import merge_files, merge_records, sample_file
from reallod.errors import DataError
from tests.cli_helpers import run_cli


def pair(box, pos, neg=(), category="dog"):
    return {"bboxes": [list(box)], "category": category, "relation": "single",
            "positive_expressions": list(pos), "negative_expressions": list(neg)}


def image(name, pairs, h=1000, w=1000):
    return {"filename": name, "height": h, "width": w, "pairs": pairs}


def split_image(k, name="x.jpg"):
    """One image over k records: mostly a new box each, every 4th one more expression of the first box
    (combined into that pair), every 5th also a vlm_short pair."""
    records = []
    for i in range(k):
        box = (0, 0, 10, 10) if i % 4 == 0 else (i % 900, i // 900, i % 900 + 20, i // 900 + 20)
        pairs = {"llm": [pair(box, (f"dog {i}",), (f"cat {i}",))]}
        if i % 5 == 0:
            pairs["vlm_short"] = [pair((5, 5, 50, 50), (f"a dog {i % 3}",), category="Dog")]
        records.append(image(name, pairs))
    return records


def count_pair_keys(monkeypatch):
    calls = [0]
    original = ops._pair_key

    def counted(p):
        calls[0] += 1
        return original(p)

    monkeypatch.setattr(ops, "_pair_key", counted)
    return calls


@pytest.mark.parametrize("k", [40, 400])
def test_an_image_split_over_many_records_merges_in_linear_work(tmp_path, monkeypatch, k):
    records = split_image(k)
    # the straightforward merge: one record at a time, nothing kept between merges
    expected = functools.reduce(merge_records, [Record.from_dict(r) for r in records])
    half = k // 2
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "m.jsonl"
    write_records(a, [image("before.jpg", {"llm": [pair((1, 1, 2, 2), ("a cup",))]}), *records[:half]])
    write_records(b, [*records[half:], image("after.jpg", {"llm": [pair((1, 1, 2, 2), ("a cup",))]})])
    calls = count_pair_keys(monkeypatch)
    stats = merge_files([a, b], out)
    merged = list(read_records(out))
    assert [r.filename for r in merged] == ["before.jpg", "x.jpg", "after.jpg"]  # x at its last record
    x = merged[1]
    assert x.to_dict() == expected.to_dict()
    assert len(x.pairs["llm"]) == k - (k + 3) // 4 + 1  # every 4th record's pair combined into one
    assert len(x.pairs["llm"][0].positive_expressions) == (k + 3) // 4
    assert (stats.records_in, stats.records_out) == (k + 2, 3)
    # one key per pair read, plus the first record's own: k(k-1)/2 (80,000 for k = 400) when rebuilt
    pairs_read = sum(len(ps) for r in records for ps in r["pairs"].values())
    assert calls[0] <= 2 * pairs_read, f"{calls[0]} pair keys for {pairs_read} pairs"


def test_merge_writes_what_it_wrote_before_for_a_split_image(tmp_path):
    """The kept index gives the same file as a rebuilt one, byte for byte, duplicate keys in one record
    included (the last pair of a key is the one later pairs combine into)."""
    dup = image("x.jpg", {"llm": [pair((0, 0, 10, 10), ("one",)), pair((0, 0, 10, 10), ("two",))]})
    records = [dup, *split_image(30), dup]
    src, out = tmp_path / "in.jsonl", tmp_path / "m.jsonl"
    write_records(src, records)
    merge_files([src], out)
    expected = functools.reduce(merge_records, [Record.from_dict(r) for r in records])
    assert out.read_bytes() == orjson.dumps(expected.to_dict()) + b"\n"
    llm = expected.pairs["llm"]
    assert llm[0].positive_expressions == ["one"] and llm[1].positive_expressions[:2] == ["two", "dog 0"]


def test_a_conflict_after_many_records_names_the_first_places_and_counts_the_rest(tmp_path, capsys):
    """The message named every record merged before (k places for the k-th), and was rebuilt at each merge."""
    k = 400
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "m.jsonl"
    write_records(a, split_image(k))
    write_records(b, [image("x.jpg", {"llm": [pair((0, 0, 10, 10), ("cat 8",), ("dog 4",))]})])
    out.write_text("previous\n")
    with pytest.raises(DataError) as exc:
        merge_files([a, b], out)
    assert (exc.value.path, exc.value.line) == (str(b), 1)
    assert exc.value.field == "pairs.llm[0].negative_expressions[0]"
    assert f"at {a}:1, {a}:2, {a}:3 and {k - 3} more records of the image: merged" in exc.value.message
    assert f"{a}:4," not in exc.value.message and "(1 more such expressions)" in exc.value.message
    assert len(exc.value.message) < 600
    assert out.read_text() == "previous\n"
    code, _, err = run_cli(["data", "merge", a, b, "-o", out], capsys)
    assert code == 2 and err.startswith(f"error: {b}:1: pairs.llm[0].negative_expressions[0]: 'dog 4' is a negative")
    assert out.read_text() == "previous\n"


def test_a_size_conflict_after_many_records_names_the_first_places_and_counts_the_rest(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_records(a, split_image(10))
    write_records(b, [image("x.jpg", {"llm": [pair((0, 0, 1, 1), ("a dog",))]}, w=999)])
    with pytest.raises(DataError) as exc:
        merge_files([a, b], tmp_path / "m.jsonl")
    assert (exc.value.path, exc.value.line, exc.value.field) == (str(b), 1, "height/width")
    assert exc.value.message.endswith(f"but 1000x1000 at {a}:1, {a}:2, {a}:3 and 7 more records of the image")


def test_a_conflict_with_few_records_names_them_all(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_records(a, split_image(3))
    write_records(b, [image("x.jpg", {"llm": [pair((0, 0, 10, 10), ("a dog",), ("dog 0",))]})])
    with pytest.raises(DataError) as exc:
        merge_files([a, b], tmp_path / "m.jsonl")
    assert f"at {a}:1, {a}:2, {a}:3: merged" in exc.value.message and "more records" not in exc.value.message


# ---------------------------------------------------------------------------------------------- memory

N = 2000
HELD_LIMIT = 2048  # bytes per held record of a ~200-byte line: about 300 now, over 4,000 with orjson's bytes


def short_records(prefix, n=N):
    return [image(f"{prefix}{i:05d}.jpg", {"llm": [pair((0, 0, 10, 10), (f"dog {i}",))]}) for i in range(n)]


def as_written(src, tmp_path) -> bytes:
    """``src`` as a command writes it (read into records and written back: boxes as floats)."""
    again = tmp_path / "as_written.jsonl"
    write_records(again, read_records(src))
    return again.read_bytes()


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_sample_holds_each_sampled_line_at_its_size(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, short_records("img"))
    line = src.stat().st_size / N
    assert line < 250
    all_held = traced_peak(lambda: sample_file(src, tmp_path / "all.jsonl", n=N))
    one_held = traced_peak(lambda: sample_file(src, tmp_path / "one.jsonl", n=1))
    per_record = (all_held - one_held) / N
    assert per_record < HELD_LIMIT, f"{per_record:.0f} bytes held per sampled record of {line:.0f} bytes"
    assert (tmp_path / "all.jsonl").read_bytes() == as_written(src, tmp_path)  # every line, as before


def test_merge_holds_each_pending_record_at_its_size(tmp_path):
    """Every image of ``a`` occurs again in ``b``: all of ``a`` is held until ``b`` is read."""
    a, again, other = tmp_path / "a.jsonl", tmp_path / "again.jsonl", tmp_path / "other.jsonl"
    write_records(a, short_records("img"))
    write_records(again, short_records("img"))
    write_records(other, short_records("new"))
    held = traced_peak(lambda: merge_files([a, again], tmp_path / "held.jsonl"))
    none_held = traced_peak(lambda: merge_files([a, other], tmp_path / "none.jsonl"))
    per_record = (held - none_held) / N
    assert per_record < HELD_LIMIT, f"{per_record:.0f} bytes held per pending record"
    assert (tmp_path / "held.jsonl").read_bytes() == as_written(a, tmp_path)  # merged with itself: unchanged
