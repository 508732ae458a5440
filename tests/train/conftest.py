"""Fixtures for the training tests: the real bert-base-uncased vocabulary (offline), quiet transformers."""

from __future__ import annotations

import pytest

from reallod.model.tiny import load_vocab_tokenizer


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def bert_tokenizer():
    return load_vocab_tokenizer()
