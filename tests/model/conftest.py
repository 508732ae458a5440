"""Fixtures of the model tests: quiet transformers, a photograph and a noise image.

The tiny random-initialised detector (``tiny_model_dir``, ``tiny_detector``) and ``bert_tokenizer`` (the
real bert-base-uncased vocabulary) are in ``tests/conftest.py``, shared with the demo and training tests;
nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reallod.cli.common import quiet_transformers


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    quiet_transformers()  # no weight-loading progress bars or advisory warnings in the test output


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A real photograph (scikit-image ships it offline), downsized so the tests stay fast."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((200, 150))


@pytest.fixture
def noise_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((90, 160, 3)) * 255).astype("uint8"))
