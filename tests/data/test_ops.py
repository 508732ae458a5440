import orjson
import pytest

from reallod.data import Record, read_records, write_records
from reallod.data.convert_common import ConvertStats
from reallod.data.io import read_numbered_records
from reallod.data.ops import (
    _combine,
    filter_file,
    filter_record,
    merge_files,
    merge_records,
    sample_file,
    split_file,
    unit_hash,
)
from reallod.errors import ConfigError, DataError
from tests.cli_helpers import run_cli


def pair(category="dog", box=(0, 0, 10, 10), pos=("a dog",), neg=(), relation=None, boxes=None):
    bboxes = [list(b) for b in boxes] if boxes else [list(box)]
    return {"bboxes": bboxes, "category": category, "relation": relation or ("multi" if len(bboxes) > 1 else "single"),
            "positive_expressions": list(pos), "negative_expressions": list(neg)}


def image(name, pairs, h=100, w=100):
    return {"filename": name, "height": h, "width": w, "pairs": pairs}


MIXED = image("a.jpg", {
    "vlm_short": [pair("dog"), pair("cat", pos=("two cats",), boxes=[(0, 0, 5, 5), (5, 5, 9, 9)])],
    "llm": [pair("Dog", pos=("the dog",))],
})


def many(n, prefix="img"):
    return [image(f"{prefix}{i:04d}.jpg", {"llm": [pair(pos=(f"dog {i}",))]}) for i in range(n)]


def names(path):
    return [r.filename for r in read_records(path)]


# ---------------------------------------------------------------------------------------------- filter


def test_filter_record_by_source_relation_category():
    rec = Record.from_dict(MIXED)
    only_llm = filter_record(rec, sources=["llm"])
    assert list(only_llm.pairs) == ["llm"]
    multi = filter_record(rec, relation="multi")
    assert list(multi.pairs) == ["vlm_short"] and multi.pairs["vlm_short"][0].category == "cat"
    dogs = filter_record(rec, categories=["DOG"])  # case-insensitive
    assert {s: [p.category for p in ps] for s, ps in dogs.pairs.items()} == {"vlm_short": ["dog"], "llm": ["Dog"]}
    assert filter_record(rec, sources=["vlm_short"], relation="single", categories=["cat"]) is None
    with pytest.raises(ConfigError, match="--relation"):
        filter_record(rec, relation="many")


def test_filter_file_drops_empty_images(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, [MIXED, image("b.jpg", {"vlm_long": [pair("cup", pos=("a cup",))]})])
    out = tmp_path / "out.jsonl.gz"
    stats = filter_file(src, out, sources=["vlm_long"])
    assert names(out) == ["b.jpg"] and stats.skipped == {"images with no matching pair": 1}


# ---------------------------------------------------------------------------------------------- sample


def test_sample_n_is_exact_deterministic_and_in_order(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, many(50))
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    sample_file(src, a, n=10, seed=1)
    sample_file(src, b, n=10, seed=1)
    sample_file(src, c, n=10, seed=2)
    assert names(a) == names(b) and len(names(a)) == 10
    assert names(a) != names(c)
    assert names(a) == sorted(names(a))  # input order kept
    sample_file(src, a, n=80, seed=1)
    assert len(names(a)) == 50


def test_sample_n_is_uniform(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, many(10))
    hits = dict.fromkeys(names(src), 0)
    for seed in range(400):
        out = tmp_path / "s.jsonl"
        sample_file(src, out, n=3, seed=seed)
        for name in names(out):
            hits[name] += 1
    # each image is expected 120 times; a biased reservoir (e.g. always the first 3) fails this
    assert all(80 < v < 160 for v in hits.values()), hits


def test_sample_fraction_and_argument_errors(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, many(400))
    out = tmp_path / "s.jsonl"
    sample_file(src, out, fraction=0.25, seed=3)
    kept = names(out)
    assert 60 < len(kept) < 140
    assert kept == [n for n in names(src) if unit_hash(n, 3, "sample") < 0.25]
    with pytest.raises(ConfigError, match="exactly one"):
        sample_file(src, out, n=3, fraction=0.1)
    with pytest.raises(ConfigError, match="exactly one"):
        sample_file(src, out)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        sample_file(src, out, fraction=1.5)


# ---------------------------------------------------------------------------------------------- split


def test_split_is_image_level_deterministic_and_complete(tmp_path):
    src = tmp_path / "in.jsonl"
    recs = many(300)
    recs.insert(10, image("img0005.jpg", {"vlm_short": [pair("cat", pos=("a cat",))]}))  # same image twice
    write_records(src, recs)
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl.gz"
    stats = split_file(src, train, val, val_fraction=0.2, seed=11)
    t, v = names(train), names(val)
    assert sorted(t + v) == sorted(r["filename"] for r in recs)
    assert not set(t) & set(v)  # both records of img0005 are on one side
    assert 30 < len(v) < 90 and stats.items_out == {"train": len(t), "val": len(v)}
    split_file(src, tmp_path / "t2.jsonl", tmp_path / "v2.jsonl", val_fraction=0.2, seed=11)
    assert names(tmp_path / "v2.jsonl") == v
    split_file(src, tmp_path / "t3.jsonl", tmp_path / "v3.jsonl", val_fraction=0.2, seed=12)
    assert names(tmp_path / "v3.jsonl") != v
    with pytest.raises(ConfigError, match="both excluded"):  # an empty --val, which every command refuses
        split_file(src, tmp_path / "t4.jsonl", tmp_path / "v4.jsonl", val_fraction=0.0)
    assert not (tmp_path / "v4.jsonl").exists()
    with pytest.raises(ConfigError, match="are one file"):
        split_file(src, train, train, val_fraction=0.5)


def test_sample_and_split_with_the_same_seed_draw_independently(tmp_path):
    src = tmp_path / "in.jsonl"
    write_records(src, many(1000))
    sample_file(src, tmp_path / "s.jsonl", fraction=0.2, seed=0)
    split_file(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", val_fraction=0.2, seed=0)
    sample, val = set(names(tmp_path / "s.jsonl")), set(names(tmp_path / "v.jsonl"))
    assert 140 < len(sample) < 260 and 140 < len(val) < 260
    assert 15 < len(sample & val) < 70  # about 0.2 x 0.2 x 1000, not the whole sample
    # sample, then split the sample: about a fifth goes to val, not all of it
    split_file(tmp_path / "s.jsonl", tmp_path / "t2.jsonl", tmp_path / "v2.jsonl", val_fraction=0.2, seed=0)
    assert 0.1 < len(names(tmp_path / "v2.jsonl")) / len(sample) < 0.3


def test_split_bad_line_writes_neither_output(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in many(3)) + b'{"filename": "x.jpg"\n')
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("previous\n")
    with pytest.raises(DataError) as exc:
        split_file(src, train, val, val_fraction=0.5)
    assert exc.value.line == 4 and "invalid JSON" in exc.value.message
    assert train.read_text() == "previous\n" and not val.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "train.jsonl"]


# ---------------------------------------------------------------------------------------------- merge


def test_merge_combines_records_of_one_image(tmp_path):
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", tmp_path / "m.jsonl"
    write_records(a, [image("x.jpg", {"llm": [pair(pos=("a dog",), neg=("a cat",))]}), *many(3, "a")])
    write_records(b, [*many(2, "b"), image("x.jpg", {
        "llm": [pair(pos=("a dog", "the brown dog"), neg=("a horse",)), pair("cup", (1, 1, 4, 4), ("a cup",))],
        "vlm_short": [pair(pos=("dog",))]}, )])
    stats = merge_files([a, b], out)
    recs = list(read_records(out))
    assert [r.filename for r in recs] == ["a0000.jpg", "a0001.jpg", "a0002.jpg", "b0000.jpg", "b0001.jpg", "x.jpg"]
    x = recs[-1]
    assert list(x.pairs) == ["llm", "vlm_short"]
    dog, cup = x.pairs["llm"]
    assert dog.positive_expressions == ["a dog", "the brown dog"]
    assert dog.negative_expressions == ["a cat", "a horse"]
    assert cup.category == "cup"
    assert (stats.records_in, stats.records_out) == (7, 6)


def test_merge_size_conflict_names_both_files(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_records(a, [*many(1), image("x.jpg", {"llm": [pair()]}, h=100, w=100)])
    write_records(b, [image("x.jpg", {"llm": [pair()]}, h=100, w=120)])
    out = tmp_path / "m.jsonl"
    with pytest.raises(DataError) as exc:
        merge_files([a, b], out)
    assert (exc.value.path, exc.value.line, exc.value.field) == (str(b), 1, "height/width")
    assert f"{a}:2" in exc.value.message and "120x100" in exc.value.message
    assert not out.exists()
    code, _, err = run_cli(["data", "merge", a, b, "--out", out], capsys)
    assert code == 2 and err.startswith(f"error: {b}:1: height/width: image 'x.jpg'")


def test_merge_keeps_apart_names_that_share_a_hash():
    x1 = Record.from_dict(image("x.jpg", {"llm": [pair()]}))
    y = Record.from_dict(image("y.jpg", {"llm": [pair("cat")]}))
    x2 = Record.from_dict(image("x.jpg", {"vlm_short": [pair()]}))
    stats = ConvertStats()
    group = [(orjson.dumps(r.to_dict()), where, line) for r, where, line in [(x1, "a", 1), (y, "a", 2), (x2, "b", 1)]]
    out = _combine(group, stats)
    assert [(r.filename, list(r.pairs)) for r in out] == [("x.jpg", ["llm", "vlm_short"]), ("y.jpg", ["llm"])]


def test_merge_records_unites_provenance_and_origin():
    a = Record.from_dict(image("x.jpg", {"llm": [{**pair(), "provenance": [{"step": 1}]}]}))
    b = Record.from_dict(image("x.jpg", {"llm": [{**pair(), "origin_positive_expressions": ["a dgo"],
                                                   "provenance": [{"step": 2}]}]}))
    merged = merge_records(a, b).pairs["llm"][0]
    assert merged.provenance == [{"step": 1}]  # one positive ("a dog"), one entry: its first occurrence's
    assert merged.origin_positive_expressions == ["a dgo"]


def test_read_numbered_records_locates_schema_problems(tmp_path):
    src = tmp_path / "in.jsonl"
    bad = image("z.jpg", {"llm": [pair(box=(5, 5, 2, 2))]})
    src.write_bytes(b"\n".join(orjson.dumps(r) for r in [*many(2), bad]) + b"\n")
    with pytest.raises(DataError) as exc:
        list(read_numbered_records(src))
    assert (exc.value.line, exc.value.field) == (3, "pairs.llm[0].bboxes[0]")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_ops(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_records(src, [MIXED, *many(20)])
    code, out, _ = run_cli(["data", "filter", src, tmp_path / "f.jsonl", "--relation", "multi"], capsys)
    assert code == 0 and "21 records read, 1 written" in out
    code, out, _ = run_cli(["data", "sample", src, tmp_path / "s.jsonl", "-n", "5", "--seed", "4"], capsys)
    assert code == 0 and "5 written" in out
    code, out, _ = run_cli(["data", "split", src, "--train", tmp_path / "t.jsonl", "--val", tmp_path / "v.jsonl",
                            "--val-fraction", "0.5", "--seed", "1"], capsys)
    assert code == 0 and "21 written" in out
    code, out, _ = run_cli(["data", "merge", tmp_path / "t.jsonl", tmp_path / "v.jsonl", src,
                            "-o", tmp_path / "m.jsonl"], capsys)
    assert code == 0 and "42 records read, 21 written" in out
    code, _, err = run_cli(["data", "sample", src, tmp_path / "s.jsonl"], capsys)
    assert code == 2 and err.strip() == "error: give exactly one of -n/--n and --fraction"
    code, _, err = run_cli(["data", "filter", tmp_path / "nope.jsonl", tmp_path / "f.jsonl"], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file"


# ------------------------------------------------------------------------------ audit: merge and split


def test_merge_refuses_an_expression_positive_in_one_file_and_negative_in_another(tmp_path, capsys):
    """merge wrote A ∪ B with 'brown dog' both positive and negative: validate then reported
    positive_and_negative and convert odvg stopped, on a file merge had said was fine."""
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "ab.jsonl"
    write_records(a, [*many(2), image("x.jpg", {"llm": [pair(pos=("brown dog",), neg=("white cat",))]})])
    write_records(b, [image("x.jpg", {"llm": [pair(pos=("White cat",), neg=("brown  dog",))]})])
    out.write_text("previous\n")
    with pytest.raises(DataError) as exc:
        merge_files([a, b], out)
    assert (exc.value.path, exc.value.line, exc.value.field) == (str(b), 1, "pairs.llm[0].negative_expressions[0]")
    assert f"at {a}:3" in exc.value.message and "'brown  dog' is a negative expression here" in exc.value.message
    assert out.read_text() == "previous\n"
    code, _, err = run_cli(["data", "merge", a, b, "-o", out], capsys)
    assert code == 2 and err.startswith(f"error: {b}:1: pairs.llm[0].negative_expressions[0]: ")
    assert out.read_text() == "previous\n"


def test_a_merge_conflict_names_every_record_merged_before(tmp_path):
    """The negative was merged in from the second file: the third's clash is with that one, not the first."""
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_records(a, [image("x.jpg", {"llm": [pair(pos=("a dog",))]})])
    write_records(b, [image("x.jpg", {"llm": [pair(pos=("a dog",), neg=("a café",))]})])
    write_records(c, [image("x.jpg", {"llm": [pair(pos=("A CAFE\u0301",))]})])  # the same words, NFD
    with pytest.raises(DataError) as exc:
        merge_files([a, b, c], tmp_path / "m.jsonl")
    assert exc.value.path == str(c) and exc.value.field == "pairs.llm[0].positive_expressions[0]"
    assert f"at {a}:1, {b}:1" in exc.value.message


def test_merge_keeps_provenance_parallel_to_the_positives(tmp_path):
    """(a, b) + (b, c) gave 3 positives and 4 provenance entries, 'c' credited to b's second task;
    merging a file with itself doubled the provenance each time."""
    def prov(*tasks):
        return [{"task_id": t, "verdict": "correct"} for t in tasks]

    pa = image("x.jpg", {"llm": [{**pair(pos=("a", "b")), "provenance": prov("t-a", "t-b")}]})
    pb = image("x.jpg", {"llm": [{**pair(pos=("B", "c")), "provenance": prov("t-b2", "t-c")}]})
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "m.jsonl"
    write_records(a, [pa])
    write_records(b, [pb])
    merge_files([a, b], out)
    merged = next(iter(read_records(out))).pairs["llm"][0]
    assert merged.positive_expressions == ["a", "b", "c"]
    assert [p["task_id"] for p in merged.provenance] == ["t-a", "t-b", "t-c"]
    merge_files([a, a, a], out)
    merged = next(iter(read_records(out))).pairs["llm"][0]
    assert [p["task_id"] for p in merged.provenance] == ["t-a", "t-b"]
    # a side without provenance: its positives get null, the list stays parallel
    plain = tmp_path / "plain.jsonl"
    write_records(plain, [image("x.jpg", {"llm": [pair(pos=("z", "a"))]})])
    merge_files([plain, a], out)
    merged = next(iter(read_records(out))).pairs["llm"][0]
    assert merged.positive_expressions == ["z", "a", "b"]
    assert merged.provenance == [None, None, {"task_id": "t-b", "verdict": "correct"}]


@pytest.mark.parametrize("failing_call", [1, 2])
def test_split_on_a_full_disk_keeps_the_earlier_pair(tmp_path, monkeypatch, capsys, failing_call):
    """ENOSPC at the last flush of one output: the other was already renamed into place, leaving a new
    val beside an old train. Both are finished before either is renamed."""
    import errno

    from reallod.data import io as data_io

    src = tmp_path / "in.jsonl"
    write_records(src, many(40))
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("old train\n")
    val.write_text("old val\n")
    calls = []
    real_fsync = data_io.os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == failing_call:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(data_io.os, "fsync", fsync)
    code, _, err = run_cli(["data", "split", src, "--train", train, "--val", val, "--val-fraction", "0.3"], capsys)
    assert train.read_text() == "old train\n" and val.read_text() == "old val\n"
    assert code == 2 and "unexpected" not in err
    assert err.startswith(f"error: {train if failing_call == 1 else val}: No space left on device; free space"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "train.jsonl", "val.jsonl"]
