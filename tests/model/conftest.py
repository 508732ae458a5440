"""Fixtures of the model tests: quiet transformers, a photograph, a noise image, a folder of five photos
and a record of the detector's calls.

The tiny random-initialised detector (``tiny_model_dir``, ``tiny_detector``) and ``bert_tokenizer`` (the
real bert-base-uncased vocabulary) are in ``tests/conftest.py``, shared with the demo and training tests;
nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reallod.cli.common import quiet_transformers
from reallod.model.inference import Detector


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


@pytest.fixture
def five_images(tmp_path, photo):
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    for k in range(4):
        photo.rotate(90 * k, expand=True).save(d / f"p{k}.jpg")
    photo.save(d / "sub" / "p4.png")
    return d


@pytest.fixture
def calls(monkeypatch):
    """The detector's calls; Ctrl-C (or ``calls.stop_with``) at call ``calls.stop_at`` (a test double
    around the real detect)."""
    real = Detector.detect

    class Calls(list):
        stop_at: int | None = None
        stop_with: BaseException | type[BaseException] = KeyboardInterrupt

    seen = Calls()

    def detect(self, image, *args, **kwargs):
        seen.append(image.size)
        if len(seen) == seen.stop_at:
            raise seen.stop_with
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(Detector, "detect", detect)
    return seen
