"""Shared fixtures: tiny random-initialised detectors with the real bert-base-uncased vocabulary.

The tiny detector itself (``tiny_model_dir``, ``tiny_detector``) is in ``tests/conftest.py``, shared
with the demo tests; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reallod.model.tiny import load_vocab_tokenizer


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def bert_tokenizer():
    return load_vocab_tokenizer()


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A real photograph (scikit-image ships it offline), downsized so the tests stay fast."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((200, 150))


@pytest.fixture
def noise_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((90, 160, 3)) * 255).astype("uint8"))
