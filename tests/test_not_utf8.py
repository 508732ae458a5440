"""A file that is not UTF-8 (a Latin-1 "café") is named with the byte, its line and its offset, whichever
reader met it: a --texts file, a YAML config, an agent prompt."""

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
