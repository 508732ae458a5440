"""Malformed Real-Data inputs: each names the exact problem ``reallod data validate`` must report.

Every case runs the real CLI in-process (``tests.cli_helpers.run_cli``) and checks the exit code, the
(kind, field, line) of every problem in the ``--json`` report, the human-readable
``FILE:LINE: field: message`` line, and that no traceback escapes. One case runs the installed
console script in a subprocess.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli


def rec(**over) -> dict:
    """A valid record; keyword arguments replace top-level fields."""
    r = {"filename": "img/1.jpg", "height": 100, "width": 200,
         "pairs": {"llm": [{"bboxes": [[10, 10, 50, 60]], "category": "dog", "relation": "single",
                            "positive_expressions": ["a brown dog"], "negative_expressions": ["a cat"]}]}}
    r.update(over)
    return r


def pair(**over) -> dict:
    p = {"bboxes": [[10, 10, 50, 60]], "category": "dog", "relation": "single",
         "positive_expressions": ["a brown dog"], "negative_expressions": ["a cat"]}
    p.update(over)
    return p


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


GOOD = line(rec())
F = "pairs.llm[0]"

# name → (file content, file name, expected problems as (kind, field, line)); line None = whole file
CASES: dict[str, tuple[bytes, str, list[tuple[str, str, int | None]]]] = {
    "truncated_line": (GOOD + GOOD[:40] + b"\n", "x.jsonl", [("bad_json", "", 2)]),
    "truncated_last_line_no_newline": (GOOD + GOOD[:-30], "x.jsonl", [("bad_json", "", 2)]),
    "height_is_a_string": (GOOD + line(rec(height="100")), "x.jsonl", [("bad_size", "height", 2)]),
    "height_zero": (line(rec(height=0)), "x.jsonl", [("bad_size", "height", 1)]),
    "bboxes_is_a_string": (line(rec(pairs={"llm": [pair(bboxes="10,10,50,60")]})), "x.jsonl",
                           [("wrong_type", f"{F}.bboxes", 1)]),
    "box_with_a_boolean": (line(rec(pairs={"llm": [pair(bboxes=[[10, 10, True, 60]])]})), "x.jsonl",
                           [("bad_box", f"{F}.bboxes[0]", 1)]),
    "expressions_null": (line(rec(pairs={"llm": [pair(negative_expressions=None)]})), "x.jsonl",
                         [("wrong_type", f"{F}.negative_expressions", 1)]),
    "expression_is_a_number": (line(rec(pairs={"llm": [pair(positive_expressions=["a dog", 7])]})), "x.jsonl",
                               [("wrong_type", f"{F}.positive_expressions[1]", 1)]),
    "missing_category": (line(rec(pairs={"llm": [{k: v for k, v in pair().items() if k != "category"}]})),
                         "x.jsonl", [("missing_field", f"{F}.category", 1)]),
    "missing_pairs": (line({"filename": "a.jpg", "height": 1, "width": 1}), "x.jsonl",
                      [("missing_field", "pairs", 1)]),
    "unicode_ideographic_space_expression": (
        line(rec(pairs={"llm": [pair(positive_expressions=["一只棕色的狗", "\u3000"])]})), "x.jsonl",
        [("empty_expression", f"{F}.positive_expressions[1]", 1)]),
    "unicode_lone_surrogate_escape": (
        b'{"filename": "a.jpg", "height": 100, "width": 200, "caption": "\\ud800", "pairs": {}}\n',
        "x.jsonl", [("bad_json", "", 1)]),
    "invalid_utf8_byte": (GOOD + line(rec(filename="PLACEHOLDER")).replace(b"PLACEHOLDER", b"caf\xe9.jpg"),
                          "x.jsonl", [("bad_utf8", "", 2)]),
    "huge_float_1e400_in_box": (line(rec()).replace(b"[10, 10, 50, 60]", b"[10, 10, 1e400, 60]"), "x.jsonl",
                                [("nan_box", f"{F}.bboxes[0]", 1)]),
    "huge_int_width_10e30": (line(rec(width=10**30)), "x.jsonl", [("bad_size", "width", 1)]),
    "width_past_int32": (line(rec(width=2**40)), "x.jsonl", [("bad_size", "width", 1)]),
    "nan_literal_in_box": (line(rec()).replace(b"[10, 10, 50, 60]", b"[NaN, 10, 50, 60]"), "x.jsonl",
                           [("nan_box", f"{F}.bboxes[0]", 1)]),
    "nan_literal_elsewhere": (line(rec()).replace(b'"width": 200', b'"width": 200, "score": NaN'), "x.jsonl",
                              [("bad_json", "", 1)]),
    "empty_file": (b"", "x.jsonl", [("empty_file", "", None)]),
    "only_blank_lines": (b"\n  \n\r\n", "x.jsonl", [("empty_file", "", None)]),
    "gz_that_is_not_gzip": (GOOD, "x.jsonl.gz", [("read_error", "", None)]),
    "truncated_gzip": (gzip.compress(b"".join(line(rec(filename=f"{i}.jpg")) for i in range(400)))[:-200],
                       "x.jsonl.gz", [("read_error", "", None)]),
    "blank_lines_keep_numbering": (GOOD + b"\n\n" + line(rec(height=-1)), "x.jsonl", [("bad_size", "height", 4)]),
    "json_array_instead_of_object": (GOOD + b"[1, 2, 3]\n", "x.jsonl", [("not_object", "", 2)]),
    "json_string_line": (b'"filename"\n', "x.jsonl", [("not_object", "", 1)]),
    "duplicated_key_last_wins": (line(rec()).replace(b'"height": 100', b'"height": 100, "height": -5'),
                                 "x.jsonl", [("bad_size", "height", 1)]),
    "box_outside_image": (line(rec(pairs={"llm": [pair(bboxes=[[10, 10, 250, 60]])]})), "x.jsonl",
                          [("box_outside_image", f"{F}.bboxes[0]", 1)]),
    "negative_box": (line(rec(pairs={"llm": [pair(bboxes=[[-3, 10, 50, 60]])]})), "x.jsonl",
                     [("negative_box", f"{F}.bboxes[0]", 1)]),
    "degenerate_box": (line(rec(pairs={"llm": [pair(bboxes=[[50, 10, 50, 60]])]})), "x.jsonl",
                       [("degenerate_box", f"{F}.bboxes[0]", 1)]),
    "empty_expression": (line(rec(pairs={"llm": [pair(negative_expressions=["a cat", ""])]})), "x.jsonl",
                         [("empty_expression", f"{F}.negative_expressions[1]", 1)]),
    "positive_equals_negative": (
        line(rec(pairs={"llm": [pair(negative_expressions=["a cat", "A Brown Dog "])]})), "x.jsonl",
        [("positive_and_negative", f"{F}.negative_expressions[1]", 1)]),
    "unknown_relation": (line(rec(pairs={"llm": [pair(relation="several")]})), "x.jsonl",
                         [("unknown_relation", f"{F}.relation", 1)]),
    "wrong_nesting_pairs_is_a_list": (line(rec(pairs=[pair()])), "x.jsonl", [("wrong_type", "pairs", 1)]),
    "wrong_nesting_box_too_deep": (line(rec(pairs={"llm": [pair(bboxes=[[[10, 10, 50, 60]]])]})), "x.jsonl",
                                   [("bad_box", f"{F}.bboxes[0]", 1)]),
    "deeply_nested_array": (b"[" * 100_000 + b"]" * 100_000 + b"\n", "x.jsonl", [("bad_json", "", 1)]),
    "byte_order_mark": (b"\xef\xbb\xbf" + GOOD + GOOD, "x.jsonl", [("bom", "", 1)]),
    "byte_order_mark_gzip": (gzip.compress(b"\xef\xbb\xbf" + GOOD + GOOD), "x.jsonl.gz", [("bom", "", 1)]),
    "byte_order_mark_inside": (GOOD + b"\xef\xbb\xbf" + GOOD, "x.jsonl", [("bom", "", 2)]),
    "crlf_line_endings_are_fine": ((GOOD + line(rec(filename="2.jpg")) + line(rec(width=-2))).replace(b"\n", b"\r\n"),
                                   "x.jsonl", [("bad_size", "width", 3)]),
    "an_image_with_two_records": (GOOD + line(rec(filename="2.jpg")) + line(rec(height=-1)) + GOOD, "x.jsonl",
                                  [("bad_size", "height", 3), ("duplicate_image", "filename", 4)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_reported_exactly(name, tmp_path, capsys):
    content, fname, expected = CASES[name]
    path = tmp_path / fname
    path.write_bytes(content)

    code, out, err = run_cli(["data", "validate", str(path), "--json"], capsys)
    assert "Traceback" not in out + err
    assert code == 1, (out, err)
    doc = json.loads(out)
    got = [(i["kind"], i["field"], i["line"]) for i in doc["issues"]]
    assert got == expected
    assert doc["summary"]["ok"] is False
    assert sum(doc["summary"]["counts"].values()) == len(expected)

    code, out, err = run_cli(["data", "validate", str(path)], capsys)
    assert code == 1 and "Traceback" not in out + err
    kind, fld, lineno = expected[0]
    where = f"{path}:{lineno}: " if lineno is not None else f"{path}: "
    first = out.splitlines()[0]
    assert first.startswith(where + (f"{fld}: " if fld else "")) and first.endswith(f"[{kind}]")


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


def test_valid_file_with_variants_passes(tmp_path, capsys):
    variant = rec(filename="img/2.jpg", pairs={"vlm_short": {"bboxes": [10, 10, 50, 60], "category": "dog", "relation": "single",
                                       "postive_expressions": ["a dog"], "negative_expressions": []},
                         "llm": [pair(bboxes=[[10, 10, 50, 60], [60, 10, 90, 60]], relation="multiple")]})
    path = tmp_path / "ok.jsonl"
    path.write_bytes(GOOD + b"\n" + line(variant))
    code, out, _ = run_cli(["data", "validate", str(path)], capsys)
    assert code == 0, out
    assert "OK: 2 records checked, 2 valid" in out


def test_truncated_gzip_keeps_lines_read_before(tmp_path, capsys):
    lines = b"".join(line(rec(filename=f"img/{i}.jpg")) for i in range(20_000))  # ~5 MB: several buffers
    content = gzip.compress(lines)
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(content[: len(content) // 2])
    code, out, _ = run_cli(["data", "validate", str(path), "--json"], capsys)
    doc = json.loads(out)
    assert code == 1
    assert doc["issues"][0]["message"].startswith("gzip stream is corrupt or truncated after line")
    assert doc["summary"]["records"] > 0 and doc["summary"]["invalid"] == 0


def test_unusable_arguments_exit_2(tmp_path, capsys):
    path = tmp_path / "ok.jsonl"
    path.write_bytes(GOOD)
    code, _, err = run_cli(["data", "validate", str(path), "--images", str(tmp_path / "nope")], capsys)
    assert code == 2 and "image root" in err and "Traceback" not in err
    code, _, err = run_cli(["data", "validate", str(path), "--clamp"], capsys)
    assert code == 2 and "--fix" in err
    code, _, err = run_cli(["data", "validate", str(path), "--max-errors", "-1"], capsys)
    assert code == 2
    code, _, err = run_cli(["data", "validate", str(path), "--workers", "0"], capsys)
    assert code == 2


def test_missing_and_directory_inputs(tmp_path, capsys):
    """A path that cannot be opened is an unusable argument (exit 2, one line), as in every data command:
    validate said it as a problem of the file, with exit code 1."""
    code, out, err = run_cli(["data", "validate", str(tmp_path / "missing.jsonl")], capsys)
    assert (code, out, err) == (2, "", f"error: {tmp_path / 'missing.jsonl'}: no such file\n")
    code, out, err = run_cli(["data", "validate", str(tmp_path)], capsys)
    assert (code, out, err) == (2, "", f"error: {tmp_path}: is a directory, expected a file\n")
    code, _, err = run_cli(["data", "stats", str(tmp_path / "missing.jsonl")], capsys)
    assert code == 2 and "no such file" in err and "Traceback" not in err


def test_console_script_in_a_subprocess(tmp_path):
    script = Path(sys.executable).with_name("reallod")
    assert script.exists(), f"console script not installed at {script}"
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD + b"\n" + b"[1, 2]\n" + b'{"filename": "a.jpg", "height": 10\n')
    proc = subprocess.run([str(script), "data", "validate", str(path), "--max-errors", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{path}:3: expected a JSON object, got array [not_object]"
    assert not any(f"{path}:4:" in ln for ln in lines)  # capped by --max-errors 1 ...
    assert "1 more problems not shown" in proc.stdout  # ... but still counted
    assert "bad_json" in proc.stdout and "not_object" in proc.stdout
