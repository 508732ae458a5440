"""The Real-Model page's scoring option and its model argument, without serving the page."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from reallod.demo.examples import EXAMPLES_DIR
from reallod.demo.limits import DemoInputError, DemoLimits
from reallod.demo.model_app import ModelPage
from reallod.model.detections import Detections
from reallod.model.inference import InferenceOptions
from tests.cli_helpers import run_cli

COFFEE = EXAMPLES_DIR / "coffee.jpg"
REQUEST = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"))


def test_the_page_can_score_over_all_tokens_as_the_published_demos(tiny_detector):
    from reallod.data.images import open_image

    page = ModelPage(tiny_detector, DemoLimits(), score_over="all-tokens")
    try:
        *_, shown = page.detect(str(COFFEE), "the red cup", "parallel", 0.0, REQUEST)
        want = tiny_detector.detect(open_image(COFFEE), ["the red cup"],
                                    InferenceOptions(topk=100, score_over="all-tokens"))
        default = tiny_detector.detect(open_image(COFFEE), ["the red cup"], InferenceOptions(topk=100))
        got = shown.detections
        assert isinstance(got, Detections) and got.meta["score_over"] == "all-tokens"
        np.testing.assert_allclose(np.sort(got.scores), np.sort(want.scores), atol=1e-5)
        assert not np.allclose(np.sort(got.scores), np.sort(default.scores), atol=1e-3)
        with pytest.raises(DemoInputError, match="needs parallel mode"):
            page.detect(str(COFFEE), "the red cup", "concat", 0.0, REQUEST)
    finally:
        page.close()


def test_demo_model_refuses_a_missing_model_folder_at_once(capsys, tmp_path):
    start = time.perf_counter()
    code, _, err = run_cli(["demo", "model", str(tmp_path / "no" / "such" / "model")], capsys)
    assert time.perf_counter() - start < 1.0
    assert code == 2 and "model folder not found" in err and len(err.strip().splitlines()) == 1


def test_demo_model_refuses_an_unknown_scoring_rule(capsys, tiny_model_dir):
    code, _, err = run_cli(["demo", "model", str(tiny_model_dir), "--score-over", "everything"], capsys)
    assert code == 2 and "expression-tokens, all-tokens" in err
