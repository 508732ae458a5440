"""Fixtures more than one test suite uses: a tiny random-initialised detector (nothing downloaded)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A loadable tiny detector folder (config, safetensors, tokenizer, 128/224 preprocessor)."""
    from reallod.model.tiny import save_tiny_detector

    return save_tiny_detector(tmp_path_factory.mktemp("tiny-detector") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_detector(tiny_model_dir):
    from reallod.model.loading import load_detector

    return load_detector(tiny_model_dir, device="cpu")
