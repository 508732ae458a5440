"""Fixtures for the training tests: quiet transformers, and ``shapes``, the generated shapes dataset of
the tiny config, made once per module by a one-step run (``bert_tokenizer``, the real bert-base-uncased
vocabulary offline, is in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from reallod.cli.common import quiet_transformers


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    quiet_transformers()  # no weight-loading progress bars or advisory warnings in the test output


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from reallod.train.loop import train

    from .helpers import quiet, tiny_config

    data = tmp_path_factory.mktemp("shapes") / "data"
    train(tiny_config(data, ["schedule.max_steps=1"]), tmp_path_factory.mktemp("gen"), echo=quiet)  # generates it
    return data
