"""A file that is not UTF-8 (a Latin-1 "café") is named with the byte, its line and its offset, whichever
reader met it: a --texts file, a YAML config, an agent prompt."""

import re

import pytest

from reallod.errors import ConfigError, DataError
from reallod.model.texts import parse_texts
from reallod.yaml_lines import read_yaml_lines


def said(offset: int) -> str:
    return rf"not UTF-8 text \(byte 0xe9 on line 2, at byte offset {offset}\): save the file as UTF-8"


def test_a_texts_file_that_is_not_utf8_names_byte_and_line(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"a red cup\ncaf\xe9 table\n")
    with pytest.raises(DataError, match=said(13)):
        parse_texts([str(path)])


def test_a_yaml_config_that_is_not_utf8_names_byte_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: one\nn: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"c\.yaml: {said(16)}"):
        read_yaml_lines(path)


def test_json_lines_that_are_not_utf8_name_the_byte_in_every_command(tmp_path, capsys):
    """The data commands said orjson's "invalid JSON: str is not valid UTF-8: surrogates not allowed: line
    1 column 1"; realign and agent-eval named no line nor reason; a NaN made realign say only "no line is
    valid JSON"."""
    from pathlib import Path

    from tests.cli_helpers import run_cli

    text = (Path(__file__).resolve().parents[1] / "examples" / "realdata.jsonl").read_text(encoding="utf-8")
    (tmp_path / "u16.jsonl").write_text(text, encoding="utf-16")
    (tmp_path / "lat.jsonl").write_bytes(text.replace("rocket", "r\u00f6cket").encode("latin-1"))
    (tmp_path / "nan.jsonl").write_text(text.splitlines()[0].replace("[", "[NaN, ", 1) + "\n")
    out = tmp_path / "o.jsonl"
    utf16 = r"u16\.jsonl:1: not UTF-8 text \(UTF-16, by its byte-order mark\); save the file as UTF-8"
    latin = r"lat\.jsonl:1: not UTF-8 text: byte 0xf6 at column \d+; save the file as UTF-8"
    for args, said in ((["data", "filter", tmp_path / "u16.jsonl", out], utf16),
                       (["data", "sample", tmp_path / "lat.jsonl", out, "-n", "1"], latin),
                       (["realign", tmp_path / "u16.jsonl", "--config", "offline", "--out", out],
                        r"u16\.jsonl:1: expected a JSON list of tasks or JSONL \(tasks or Real-Data records\): not "
                        r"UTF-8 text \(UTF-16"),
                       (["realign", tmp_path / "nan.jsonl", "--config", "offline", "--out", out],
                        r"nan\.jsonl: no line is valid JSON \(line 1: not strict JSON at column \d+ .*NaN, Infinity"),
                       (["data", "filter", tmp_path / "nan.jsonl", out],
                        r"nan\.jsonl:1: not strict JSON at column \d+ .*which only lenient parsers read")):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and re.search(said, err), (args, err)
    assert not out.exists()


@pytest.mark.parametrize("encoding,how", [("utf-16", "by its byte-order mark"),
                                          ("utf-16-le", "a NUL byte in every other place"),
                                          ("utf-16-be", "a NUL byte in every other place")])
def test_utf16_json_lines_are_named_once_by_validate_and_stats_and_in_every_command(tmp_path, capsys,
                                                                                    encoding, how):
    """`data validate` gave a UTF-16 file (PowerShell's `>`) a problem for each of its lines, and the
    strict commands read one without a byte-order mark as "invalid JSON at column 1"."""
    from pathlib import Path

    from tests.cli_helpers import run_cli

    text = (Path(__file__).resolve().parents[1] / "examples" / "realdata.jsonl").read_text(encoding="utf-8")
    src = tmp_path / "u16.jsonl"
    src.write_bytes(text.encode(encoding))
    for args in (["data", "validate", src], ["data", "stats", src]):
        code, out, err = run_cli(args, capsys)
        assert code == 2 and not out, (args, out)
        assert err.count("u16.jsonl") == 1 and re.search(rf"u16\.jsonl:1: UTF-16 text \({how}.*save the file as "
                                                         r"UTF-8", err), (args, err)
    code, _, err = run_cli(["data", "filter", src, tmp_path / "o.jsonl"], capsys)
    assert code == 2 and re.search(rf"u16\.jsonl:1: not UTF-8 text \(UTF-16, {how}", err), err
