"""The runner's pieces without a model: sharding, detections → prediction rows, errors across processes."""

from __future__ import annotations

import numpy as np
import pytest

from reallod.errors import ReallodError
from reallod.eval.common import EvalImage
from reallod.eval.predict import Dist, RunOptions, predict, shard, to_predictions
from reallod.model.detections import Detections


def test_shards_cover_every_image_once():
    seen = sorted(i for r in range(3) for i in shard(10, Dist(rank=r, world_size=3)))
    assert seen == list(range(10))
    assert list(shard(10, Dist(rank=1, world_size=3))) == [1, 4, 7]


def test_detections_become_rows_under_the_benchmark_ids():
    img = EvalImage(42, "a.jpg", ["a dog", "a cat"], [7, 9], part=1)
    dets = Detections(np.array([[10, 10, 30, 50], [0, 0, 5, 5], [1, 2, 3, 4]], float),
                      np.array([0.9, 0.123456789, 0.5]), np.array([1, 0, 1]), ["a dog", "a cat"])
    rows = to_predictions(img, dets)
    assert rows.image_id.tolist() == [42, 42, 42] and rows.label.tolist() == [9, 7, 9]
    assert rows.bbox.tolist()[0] == [10, 10, 20, 40]  # xyxy → xywh
    assert rows.score.tolist()[1] == 0.123457  # rounded as written
    assert rows.part.tolist() == [1, 1, 1]
    best_two = to_predictions(img, dets, max_per_image=2)
    assert best_two.score.tolist() == [0.9, 0.5]  # the best two, in their original order


class _TwoProcesses(Dist):
    """A stand-in for rank 0 of two processes whose other process failed (no process group needed)."""

    def gather(self, obj):
        return [obj, ("rank 1: images/x.jpg: image not found", [])]


def test_an_error_on_another_process_stops_rank_zero_with_its_message():
    images = [EvalImage(1, "x.jpg", [], []), EvalImage(2, "y.jpg", [], [])]  # nothing to prompt: no model call
    with pytest.raises(ReallodError, match=r"rank 1: images/x\.jpg: image not found"):
        predict(images, detector=None, image_root=".", options=RunOptions(progress=False),
                dist=_TwoProcesses(rank=0, world_size=2))


def test_an_image_outside_the_root_is_refused_before_it_is_opened(tmp_path, tiny_detector):
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "secret.jpg")  # a real image, one folder up
    for name in ("../secret.jpg", str(tmp_path / "secret.jpg")):
        with pytest.raises(ReallodError, match=r"leads out of the image root .*refusing to open it") as exc:
            predict([EvalImage(1, name, ["a dog"], [1])], tiny_detector, root, RunOptions(progress=False))
        assert exc.value.path == name


def test_an_image_too_thin_to_resize_is_named(tmp_path, tiny_detector):
    from PIL import Image

    Image.new("RGB", (5000, 3)).save(tmp_path / "strip.png")
    with pytest.raises(ReallodError, match="image is 5000×3: too thin to resize") as exc:
        predict([EvalImage(1, "strip.png", ["a dog"], [1])], tiny_detector, tmp_path, RunOptions(progress=False))
    assert exc.value.path == str(tmp_path / "strip.png")


@pytest.mark.parametrize(("scores", "xyxy", "first"), [
    ([0.9, float("nan")], [[0, 0, 5, 5], [1, 1, 6, 6]], "score nan, box [1.0, 1.0, 6.0, 6.0] for 'a cat'"),
    ([0.9, 0.5], [[0, 0, float("inf"), 5], [1, 1, 6, 6]], "score 0.9"),
])
def test_a_model_score_or_box_that_is_not_finite_is_refused(scores, xyxy, first):
    """A NaN score (a lower precision overflowing) sorts anywhere and breaks every ranking; it was scored
    silently and written as null, a predictions file no evaluator reads back."""
    img = EvalImage(42, "dir/a.jpg", ["a dog", "a cat"], [7, 9])
    dets = Detections(np.array(xyxy, float), np.array(scores), np.array([0, 1]), ["a dog", "a cat"])
    with pytest.raises(ReallodError) as err:
        to_predictions(img, dets)
    said = str(err.value)
    assert said.startswith("dir/a.jpg: the model gave 1 of its 2 boxes a score or box that is not a finite number "
                           f"(first: {first}") and "image_id 42" in said and "--dtype fp32" in said, said
