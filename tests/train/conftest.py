"""Fixtures for the training tests: quiet transformers (``bert_tokenizer``, the real bert-base-uncased
vocabulary offline, is in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from reallod.cli.common import quiet_transformers


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    quiet_transformers()  # no weight-loading progress bars or advisory warnings in the test output
