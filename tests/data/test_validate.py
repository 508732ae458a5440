"""``reallod data validate``: parallel ranges, --max-errors, --fix/--clamp, image checks, JSON output."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import random

import pytest
from PIL import Image

from reallod.cli import main
from reallod.data import read_records
from reallod.data.chunks import RangeLines, plan_ranges
from reallod.data.images import resolve_image
from reallod.data.validate import Issue, check_image, validate_file
from reallod.errors import ConfigError, DataError
from tests.cli_helpers import run_cli

from .image_files import png_claiming_size


def rec(i: int = 0, **over) -> dict:
    r = {"filename": f"img/{i}.png", "height": 30, "width": 40,
         "pairs": {"llm": [{"bboxes": [[1, 2, 20, 25]], "category": "dog", "relation": "single",
                            "positive_expressions": [f"dog number {i}"], "negative_expressions": ["a cat"]}]}}
    r.update(over)
    return r


def dump(obj) -> str:
    return json.dumps(obj) + "\n"


def mixed_file(path, n: int = 600, seed: int = 0) -> None:
    """Valid records mixed with bad lines, blank lines and CRLF endings, in a fixed random order."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        for i in range(n):
            r = rng.random()
            if r < 0.05:
                f.write("\n")
            elif r < 0.10:
                f.write('{"filename": "cut\n')
            elif r < 0.15:
                f.write(dump(rec(i, height=-1)))
            elif r < 0.20:
                f.write(dump(rec(i)).replace("\n", "\r\n"))
            elif r < 0.25:
                bad = rec(i)
                bad["pairs"]["llm"][0]["bboxes"] = [[1, 2, 90, 25]]
                f.write(dump(bad))
            else:
                f.write(dump(rec(i)))


def collect(path, **kw) -> tuple[list[Issue], object]:
    issues: list[Issue] = []
    report = validate_file(path, on_issue=issues.append, **kw)
    return issues, report


def test_plan_ranges_are_line_aligned_and_cover_the_file(tmp_path):
    path = tmp_path / "m.jsonl"
    mixed_file(path)
    data = path.read_bytes()
    ranges = plan_ranges(path, 7, min_bytes=1000)
    assert len(ranges) == 7
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (_, e1), (s2, _) in itertools.pairwise(ranges):
        assert e1 == s2 and data[s2 - 1:s2] == b"\n"
    total = 0
    for s, e in ranges:
        lines = RangeLines(path, s, e)
        list(lines)
        total += lines.lines
    assert total == data.count(b"\n")
    assert plan_ranges(path, 8) == [(0, len(data))]  # small file: one range
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    assert plan_ranges(empty, 4) == [(0, 0)]


def test_parallel_ranges_give_the_sequential_report(tmp_path):
    path = tmp_path / "m.jsonl"
    mixed_file(path)
    seq_issues, seq = collect(path, workers=1)
    par_issues, par = collect(path, workers=2, chunk_bytes=2000)
    assert seq.invalid > 50
    assert par_issues == seq_issues  # same problems, same line numbers, same order
    assert par.counts == seq.counts and par.records == seq.records and par.lines == seq.lines
    # line numbers point at the right physical line (blank lines and CRLF included)
    raw = path.read_bytes().split(b"\n")
    for issue in seq_issues:
        text = raw[issue.line - 1]
        if issue.kind == "bad_json":
            assert text == b'{"filename": "cut'
        elif issue.kind == "bad_size":
            assert b'"height": -1' in text
        else:
            assert b"90, 25" in text


def test_gzip_is_read_sequentially_with_the_same_result(tmp_path):
    path = tmp_path / "m.jsonl"
    mixed_file(path)
    gz = tmp_path / "m.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    plain_issues, plain = collect(path, workers=2, chunk_bytes=2000)
    gz_issues, gz_report = collect(gz, workers=2)
    assert [(i.line, i.kind, i.field) for i in gz_issues] == [(i.line, i.kind, i.field) for i in plain_issues]
    assert gz_report.counts == plain.counts


@pytest.mark.parametrize("workers", [1, 2])
def test_max_errors_caps_printing_not_counting(tmp_path, workers):
    path = tmp_path / "m.jsonl"
    mixed_file(path)
    all_issues, full = collect(path, workers=workers, chunk_bytes=2000)
    issues, report = collect(path, workers=workers, chunk_bytes=2000, max_errors=7)
    assert issues == all_issues[:7]
    assert report.counts == full.counts and report.shown == 7
    none, report0 = collect(path, workers=workers, chunk_bytes=2000, max_errors=0)
    assert none == [] and report0.counts == full.counts


@pytest.mark.parametrize("workers", [1, 2])
def test_fix_writes_valid_records_canonically_in_order(tmp_path, workers):
    path = tmp_path / "m.jsonl"
    mixed_file(path)
    out = tmp_path / "fixed.jsonl"
    _, report = collect(path, workers=workers, chunk_bytes=2000, fix=out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert report.written == len(lines) == report.valid
    assert report.dropped == report.records - report.written > 0
    numbers = [int(r["filename"].split("/")[1].split(".")[0]) for r in lines]
    assert numbers == sorted(numbers)
    assert all(r["pairs"]["llm"][0]["bboxes"] == [[1.0, 2.0, 20.0, 25.0]] for r in lines)
    _, again = collect(out)
    assert again.ok and again.records == len(lines)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("workers", [1, 2])
def test_clamp_keeps_records_whose_only_problem_was_boxes_outside(tmp_path, workers):
    path = tmp_path / "m.jsonl"
    mixed_file(path)
    out = tmp_path / "fixed.jsonl.gz"
    _, plain = collect(path, workers=workers, chunk_bytes=2000, fix=tmp_path / "plain.jsonl")
    _, report = collect(path, workers=workers, chunk_bytes=2000, fix=out, clamp=True)
    assert report.clamped == report.counts["box_outside_image"] > 0
    assert report.written == plain.written + report.clamped
    lines = [json.loads(x) for x in gzip.decompress(out.read_bytes()).splitlines()]
    assert len(lines) == report.written
    assert [[1.0, 2.0, 40.0, 25.0]] in [r["pairs"]["llm"][0]["bboxes"] for r in lines]


def test_clamp_drops_a_box_wholly_outside_and_fix_removes_a_bom(tmp_path):
    outside = rec(1)
    outside["pairs"]["llm"][0]["bboxes"] = [[50, 2, 60, 25]]  # past width 40: zero width once clamped
    negative = rec(2)
    negative["pairs"]["llm"][0]["bboxes"] = [[-5, -1, 20, 25]]
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + dump(rec(0)).encode() + dump(outside).encode() + dump(negative).encode())
    out = tmp_path / "out.jsonl"
    issues, report = collect(path, fix=out, clamp=True)
    assert [(i.line, i.kind) for i in issues] == [(1, "bom"), (2, "box_outside_image"), (3, "negative_box")]
    kept = [json.loads(x) for x in out.read_bytes().splitlines()]
    assert [r["filename"] for r in kept] == ["img/0.png", "img/2.png"]
    assert kept[1]["pairs"]["llm"][0]["bboxes"] == [[0.0, 0.0, 20.0, 25.0]]
    assert report.clamped == 1 and report.dropped == 1
    assert not out.read_bytes().startswith(b"\xef\xbb\xbf")


def test_fix_on_an_unreadable_input_leaves_the_output_alone(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file"):
        collect(tmp_path / "missing.jsonl", fix=out)
    assert out.read_text() == "precious\n"
    (tmp_path / "not.jsonl.gz").write_text(dump(rec()))
    issues, report = collect(tmp_path / "not.jsonl.gz", fix=out)
    assert [i.kind for i in issues] == ["read_error"]
    assert out.read_text() == "precious\n" and report.fix_path is None


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_fix_of_a_gzip_that_cannot_be_read_to_its_end(tmp_path, capsys, damage):
    """Fixed in place, a truncated or corrupt gzip was replaced by the records before the damage (half the
    file gone, "dropped 3" said) and the next validate said OK: now refused. Into another file the records
    before the damage are kept, and the summary says the rest is not there."""
    path = tmp_path / "d.jsonl.gz"
    whole = gzip.compress("".join(dump(rec(i)) for i in range(3000)).encode(), mtime=0)
    if damage == "truncated":
        data = whole[: len(whole) // 2]
    else:
        data = bytearray(whole)
        for i in range(len(data) // 2, len(data) // 2 + 16):
            data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = run_cli(["data", "validate", path, "--fix", path], capsys)
    assert code == 2 and "fixed in place, what follows the damage would be lost" in err, err
    assert path.read_bytes() == bytes(data)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    out = tmp_path / "salvaged.jsonl"
    code, text, _ = run_cli(["data", "validate", path, "--fix", out], capsys)
    assert code == 1 and "[read_error]" in text
    assert "the input could not be read to its end (read_error): the records after the damage are not in it" in \
        " ".join(text.split())
    salvaged = [json.loads(line)["filename"] for line in out.read_text().splitlines()]
    assert 1000 < len(salvaged) < 3000  # (a corrupt stream may decode a few altered lines before it fails)
    assert salvaged[:1000] == [rec(i)["filename"] for i in range(1000)]
    code, text, _ = run_cli(["data", "validate", path, "--fix", out, "--json"], capsys)
    assert json.loads(text)["summary"]["fix"]["input_read_to_its_end"] is False


def test_fix_in_place_is_atomic(tmp_path):
    path = tmp_path / "m.jsonl"
    mixed_file(path, n=200)
    _, report = collect(path, workers=2, chunk_bytes=1000, fix=path)
    _, again = collect(path)
    assert again.ok and again.records == report.written


# ------------------------------------------------------------------------------------- images


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "img" / "0.png")
    Image.new("RGB", (41, 30), "red").save(root / "img" / "1.png")
    (root / "img" / "2.png").write_bytes(b"not an image at all")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 30x40, shown 40x30
    Image.new("RGB", (30, 40), "blue").save(root / "img" / "4.jpg", exif=exif)
    (tmp_path / "secret.png").write_bytes(b"")
    return root


def test_image_checks(tmp_path, image_root):
    path = tmp_path / "i.jsonl"
    path.write_text("".join([
        dump(rec(0)),                                   # fine
        dump(rec(1)),                                   # 41 wide, record says 40
        dump(rec(2)),                                   # not an image
        dump(rec(3)),                                   # missing
        dump(rec(4, filename="img/4.jpg")),             # EXIF-rotated: the upright size, fine
        dump(rec(5, filename="../secret.png")),         # leaves the root
        dump(rec(6, filename=str(image_root / "img" / "0.png"))),  # absolute
        dump(rec(7, filename="img/../img/0.png")),      # normalises inside the root: fine
        dump(rec(8, filename="img/4.jpg", width=30, height=40)),  # the size the file stores, not upright
    ]))
    issues, report = collect(path, images=image_root)
    got = [(i.line, i.kind, i.field) for i in issues]
    assert got == [(2, "image_size_mismatch", "width"), (3, "unreadable_image", "filename"),
                   (4, "missing_image", "filename"), (6, "image_outside_root", "filename"),
                   (7, "image_outside_root", "filename"), (9, "image_size_mismatch", "height,width")]
    assert "image is 41x30 (width x height), record says 40x30" in issues[0].message
    assert issues[-1].message.startswith("image is 40x30 (width x height), record says 30x40 (the file stores it "
                                         "30x40 and its EXIF orientation 6 turns it upright")
    assert report.invalid == 6 and report.valid == 3
    par_issues, _ = collect(path, images=image_root, workers=2, chunk_bytes=100)
    assert par_issues == issues


def test_decode_finds_a_file_cut_after_its_header(tmp_path, image_root):
    """--images reads headers only: a JPEG cut after its header passed as valid ("decodes", said the help),
    and training met it later. --decode decodes each image, in the workers too."""
    full = io.BytesIO()
    Image.effect_noise((64, 48), 40).convert("RGB").save(full, "JPEG", quality=95)
    (image_root / "img" / "cut.jpg").write_bytes(full.getvalue()[:len(full.getvalue()) // 2])
    png_claiming_size(image_root / "img" / "huge.png", 30_000, 20_000)
    path = tmp_path / "d.jsonl"
    path.write_text(dump(rec(0)) + dump(rec(1, filename="img/cut.jpg", width=64, height=48))
                    + dump(rec(2, filename="img/huge.png", width=30_000, height=20_000)))
    assert collect(path, images=image_root)[1].ok  # the headers are whole
    issues, report = collect(path, images=image_root, decode=True)
    assert [(i.line, i.kind) for i in issues] == [(2, "unreadable_image"), (3, "unreadable_image")]
    assert report.valid == 1
    assert "cut.jpg: cannot decode" in issues[0].message and "truncated" in issues[0].message
    assert "30000x20000 pixels, above the 89,478,485 that training and detection decode" in issues[1].message
    assert collect(path, images=image_root, decode=True, workers=2, chunk_bytes=100)[0] == issues
    with pytest.raises(ConfigError, match="--decode decodes the images: give --images ROOT as well"):
        collect(path, decode=True)


def test_a_very_large_image_is_checked_by_its_header(tmp_path):
    """Validation decodes nothing, so Pillow's decompression-bomb limit does not apply: a genuine
    30,000 × 20,000 scan (600 M pixels, over twice Pillow's limit) was once reported unreadable, and
    every PNG was decoded whole to look for an EXIF orientation (these PNGs cannot be decoded at all)."""
    root = tmp_path / "images"
    (root / "img").mkdir(parents=True)
    for i in range(3):
        png_claiming_size(root / "img" / f"{i}.png", 30_000, 20_000)
    path = tmp_path / "big.jsonl"
    path.write_text(dump(rec(0, width=30_000, height=20_000)) + dump(rec(1))
                    + dump(rec(2, width=20_000, height=30_000)))  # swapped: the orientation is looked for
    issues, report = collect(path, images=root)
    assert [(i.line, i.kind, i.field) for i in issues] == [(2, "image_size_mismatch", "height,width"),
                                                           (3, "image_size_mismatch", "height,width")]
    assert "image is 30000x20000" in issues[0].message and report.valid == 1
    assert "EXIF" not in issues[1].message


def test_resolve_image_stays_inside_the_root():
    assert resolve_image("/data", "a/b.jpg") == os.path.join("/data", "a/b.jpg")
    assert resolve_image("/data", "a/../b.jpg") == os.path.join("/data", "b.jpg")
    for bad in ("../b.jpg", "a/../../b.jpg", "/etc/passwd", "..", "a\0.jpg"):
        assert resolve_image("/data", bad) is None
    assert check_image(["not", "a", "record"], "/data") == []


# ---------------------------------------------------------------------------------------- CLI


def test_cli_json_report_and_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(dump(rec(0)) + dump(rec(1)))
    with pytest.raises(SystemExit) as exc:
        main(["data", "validate", str(good), "--json"])
    assert exc.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["issues"] == [] and doc["summary"]["ok"] and doc["summary"]["records"] == 2

    bad = tmp_path / "bad.jsonl"
    mixed_file(bad, n=100)
    out = tmp_path / "fixed.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["data", "validate", str(bad), "--json", "--max-errors", "3", "--fix", str(out), "--clamp"])
    assert exc.value.code == 1
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["issues"]) == 3 and doc["summary"]["problems"] > 3
    assert doc["summary"]["fix"]["written"] == len(out.read_text().splitlines())

    with pytest.raises(SystemExit) as exc:
        main(["data", "validate", str(bad), "--fix", str(out)])
    text = capsys.readouterr().out
    assert exc.value.code == 1
    assert "Problems in" in text and "box_outside_image" in text and "--fix: wrote" in text
    numbers = [int(ln[len(str(bad)) + 1:].split(":")[0]) for ln in text.splitlines() if ln.startswith(f"{bad}:")]
    assert len(numbers) == doc["summary"]["problems"] and numbers == sorted(numbers)


def test_validate_and_stats_do_not_import_torch(tmp_path):
    """Both stream in constant memory; importing torch/transformers alone would cost hundreds of MB."""
    import subprocess
    import sys

    path = tmp_path / "m.jsonl"
    mixed_file(path, n=50)
    code = (
        "import sys\n"
        "from reallod.cli import main\n"
        "for cmd in (['data', 'validate', sys.argv[1], '--json'], ['data', 'stats', sys.argv[1], '--json']):\n"
        "    try:\n"
        "        main(cmd)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HEAVY []"


# ------------------------------------------------------------------------------------------- audit


def test_the_workers_folder_is_named_for_the_orphan_sweep_and_removed(tmp_path, monkeypatch):
    """A killed `validate --fix` left .reallod-validate-XXXX (181 MB of parts) beside OUT forever: the
    next write's sweep knew only the writers' .OUT.HOST.PID.*.tmp files."""
    from reallod.data import io as data_io
    from reallod.data import validate as validate_mod

    path = tmp_path / "in.jsonl"
    path.write_text("".join(dump(rec(i)) for i in range(40)))
    out = tmp_path / "fixed.jsonl"
    folders = set()
    real = validate_mod._validate_range

    def spy(job):
        folders.add(os.path.dirname(job[3]["part"]))
        return real(job)

    monkeypatch.setattr(validate_mod, "_validate_range", spy)
    _, report = collect(path, workers=1, chunk_bytes=500, fix=out)
    assert report.written == 40 and len(folders) == 1
    folder = folders.pop()
    name = os.path.basename(folder)
    assert os.path.dirname(folder) == str(tmp_path)
    assert name.startswith(f".fixed.jsonl.{data_io._HOST}.{os.getpid()}.") and name.endswith(".tmp"), name
    assert not os.path.exists(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.jsonl", "in.jsonl"]


def test_a_killed_runs_folder_is_removed_by_the_next_write_beside_it(tmp_path):
    import subprocess
    import sys

    from reallod.data import io as data_io

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = tmp_path / f".fixed.jsonl.{data_io._HOST}.{gone.pid}.0a1b2c3d.tmp"
    orphan.mkdir()
    (orphan / "0.part").write_text("half of a fixed file\n")
    running = tmp_path / f".fixed.jsonl.{data_io._HOST}.{os.getpid()}.0a1b2c3e.tmp"  # a run still at work
    running.mkdir()
    path = tmp_path / "in.jsonl"
    path.write_text(dump(rec(1)))
    _, report = collect(path, fix=tmp_path / "fixed.jsonl")
    assert report.written == 1
    assert not orphan.exists() and running.exists()


def test_invisible_expressions_are_a_problem(tmp_path):
    """An expression of only a zero-width space or of NUL passed validate (BERT gives it no token) and
    convert odvg wrote it."""
    from reallod.data.schema import check_record

    for text in ("\u200b", "\x00", "\u200b \ufeff\u2060", "\x01\t"):
        bad = rec(1)
        bad["pairs"]["llm"][0]["negative_expressions"] = [text]
        assert [(p.kind, p.field) for p in check_record(bad)] == [
            ("invisible_expression", "pairs.llm[0].negative_expressions[0]")], repr(text)
    for text in ("dog\u200b", "a \u00e9 dog", "👨\u200d👩\u200d👧 family", "红色的狗", "\u200bx"):
        good = rec(1)
        good["pairs"]["llm"][0]["positive_expressions"] = [text]
        assert check_record(good) == [], repr(text)
    path = tmp_path / "in.jsonl"
    bad = rec(1)
    bad["pairs"]["llm"][0]["positive_expressions"] = ["\u200b"]
    path.write_text(dump(bad))
    issues, report = collect(path)
    assert report.counts == {"invisible_expression": 1}
    assert "has only zero-width, format or control characters" in issues[0].message


def test_a_positive_and_a_negative_that_differ_only_in_unicode_form_or_spacing_conflict(tmp_path):
    """'café' typed as é (NFC) and as e + U+0301 (NFD) is the same expression to the eye and the model."""
    from reallod.data.schema import check_record

    for pos, neg in (("café dog", "cafe\u0301 dog"), ("brown dog", "Brown  dog")):
        r = rec(1)
        r["pairs"]["llm"][0].update(positive_expressions=[pos], negative_expressions=["a cat", neg])
        assert [(p.kind, p.field) for p in check_record(r)] == [
            ("positive_and_negative", "pairs.llm[0].negative_expressions[1]")], (pos, neg)


@pytest.mark.parametrize(("positive", "negative"), [
    ("brown dog", "Brown  dog"), ("brown dog", " brown\tdog "), ("brown  dog", "brown dog"), ("café", "cafe\u0301"),
    ("dog", "\x7f"), ("dog", "\u200b"), ("dog", "a\\b"), ("dog", "cat"), ("a  b", "a   b"), ("dog", "   "),
])
def test_the_fast_check_of_a_record_read_from_its_line_finds_what_the_full_check_finds(positive, negative):
    """check_record(obj, line) skips the per-expression Unicode work when the line shows only printable
    ASCII: it must name exactly the same problems as the check without the line."""
    import orjson

    from reallod.data.schema import check_record

    r = rec(1)
    r["pairs"]["llm"][0].update(positive_expressions=[positive], negative_expressions=["a cat", negative])
    line = orjson.dumps(r) + b"\n"
    assert check_record(orjson.loads(line), line) == check_record(orjson.loads(line))


@pytest.mark.parametrize("size", [True, 0, -3, "30"])
def test_a_bad_size_is_said_once_not_again_for_every_box(size):
    """``"height": true`` also gave 'extends past the image (40xTrue)' for every box (true was 1)."""
    from reallod.data.schema import check_record

    problems = check_record(rec(height=size, pairs={"llm": [{**rec()["pairs"]["llm"][0],
                                                            "relation": "multi", "bboxes": [[1, 2, 20, 25], [3, 4, 30, 28]]}]}))
    assert [p.field for p in problems] == ["height"]


def test_a_pair_with_both_spellings_of_its_positives_is_a_problem_unless_they_agree(tmp_path):
    """The canonical spelling silently won: a pair whose misspelt list (the one the published training
    code reads) held other expressions lost them in every command."""
    differ, agree = rec(0), rec(1)
    differ["pairs"]["llm"][0]["postive_expressions"] = ["another dog"]
    agree["pairs"]["llm"][0]["postive_expressions"] = ["dog number 1"]
    path = tmp_path / "both.jsonl"
    path.write_text(dump(differ) + dump(agree))
    issues, report = collect(path, fix=tmp_path / "fixed.jsonl")
    assert [(i.line, i.kind, i.field) for i in issues] == [(1, "two_spellings", "pairs.llm[0].postive_expressions")]
    assert report.written == 1
    kept = json.loads((tmp_path / "fixed.jsonl").read_text())
    assert "postive_expressions" not in kept["pairs"]["llm"][0]
    with pytest.raises(DataError, match=r"both\.jsonl:1: pairs\.llm\[0\]\.postive_expressions: both"):
        list(read_records(path))


def test_a_size_too_large_for_an_integer_is_said_to_be_too_large(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(dump(rec()).replace('"height": 30', '"height": 99999999999999999999'))
    issues, _ = collect(path)
    assert [(i.kind, i.field) for i in issues] == [("bad_size", "height")]
    assert "too large (at most 2147483647)" in issues[0].message


def test_a_filename_with_a_nul_is_named_as_such(tmp_path):
    """It was "absolute or leads out of the image root"."""
    path = tmp_path / "nul.jsonl"
    path.write_text(dump(rec(filename="a\u0000b.png")))
    (tmp_path / "images").mkdir()
    issues, _ = collect(path, images=tmp_path / "images")
    assert [(i.kind, i.field) for i in issues] == [("wrong_type", "filename")]
    assert "holds a NUL character" in issues[0].message


def test_an_image_with_more_than_one_record_is_found_across_ranges_and_in_gzip(tmp_path, capsys):
    lines = [dump(rec(i)) for i in range(400)]
    lines[150] = dump(rec(3))  # image 3 again, far from its first record: another range
    lines[390] = dump(rec(3))  # and a third time
    lines[391] = dump(rec(20, height=-1))  # a bad record of image 20: reported as bad, not as a repeat
    lines[399] = dump(rec(7))
    path = tmp_path / "d.jsonl"
    path.write_text("".join(lines))
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    reports = [collect(path, workers=2, chunk_bytes=2000), collect(path, workers=1), collect(gz)]
    for issues, report in reports:
        got = [(i.line, i.kind, i.field) for i in issues]
        assert got == [(392, "bad_size", "height"), (151, "duplicate_image", "filename"),
                       (400, "duplicate_image", "filename")], got
        assert issues[1].message.startswith("the image of line 4 again (3 records of it: lines 4, 151, 391): ")
        assert issues[2].message.startswith("the image of line 8 again: training and stats count each record")
        assert f"`reallod data merge {path if issues[1].path == str(path) else gz} -o OUT`" in issues[1].message
        assert report.counts["duplicate_image"] == 2 and not report.ok and report.invalid == 1
    code, out, _ = run_cli(["data", "validate", path, "--max-errors", "2"], capsys)
    assert code == 1
    assert out.count("[duplicate_image]") == 1 and "1 more problems not shown" in out
    assert "399 valid, 1 with problems, 2 images with more than one record (3 problems)" in out


def test_fix_keeps_each_record_of_a_repeated_image_and_says_so(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text(dump(rec(1)) + dump(rec(2)) + dump(rec(1)))
    out_file = tmp_path / "fixed.jsonl"
    code, out, _ = run_cli(["data", "validate", path, "--fix", out_file], capsys)
    assert code == 1 and len(out_file.read_text().splitlines()) == 3
    assert "an image's records are each kept (data merge combines them)" in out
    merged = tmp_path / "merged.jsonl"
    assert run_cli(["data", "merge", out_file, "-o", merged], capsys)[0] == 0
    assert run_cli(["data", "validate", merged], capsys)[0] == 0


def test_repeated_images_groups_lines_in_file_order_by_second_record():
    import numpy as np

    from reallod.data.validate import repeated_images

    names = np.array([5, 9, 5, 7, 9, 9, 1], dtype=np.uint64)
    lines = np.array([1, 2, 4, 5, 6, 10, 12], dtype=np.uint64)
    assert repeated_images(names, lines) == [[1, 4], [2, 6, 10]]
    assert repeated_images(names[:1], lines[:1]) == [] and repeated_images(names[[0, 1, 3]], lines[:3]) == []
