"""Language-based inference on a tiny random model: the parallel path must equal a naive loop."""

import numpy as np
import pytest
import torch

from reallod.errors import ConfigError
from reallod.model.detections import compare
from reallod.model.inference import InferenceOptions

EXPRESSIONS = [
    "a dog",
    "the astronaut in the orange suit on the left",
    "flag?",
    "Mr. Smith's helmet",
    "person",
    "the thing that is very far behind the person who is standing near the large window",
    "a red and white striped flag on a pole",
]


def _count_backbone_calls(detector):
    calls = []
    handle = detector.model.model.backbone.conv_encoder.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def _assert_same(a, b, atol=1e-4):
    """Scores rank by rank and boxes within atol; near-equal scores may swap places (float noise)."""
    assert a.expressions == b.expressions
    assert np.bincount(a.labels).tolist() == np.bincount(b.labels).tolist()
    agreement = compare(a, b, atol)
    assert agreement.within(atol), agreement


def test_parallel_equals_naive_loop_of_full_forward_passes(tiny_detector, photo):
    calls, handle = _count_backbone_calls(tiny_detector)
    try:
        naive = tiny_detector.detect(photo, EXPRESSIONS, InferenceOptions(reuse_backbone=False, batch_size=1))
        assert len(calls) == len(EXPRESSIONS)  # one full forward pass per expression
        calls.clear()
        fast = tiny_detector.detect(photo, EXPRESSIONS, InferenceOptions(batch_size=3))  # 3 + 3 + 1, padded
        assert len(calls) == 1  # the backbone ran once for the image
    finally:
        handle.remove()
    n_queries = tiny_detector.model.config.num_queries
    assert len(naive) == len(EXPRESSIONS) * n_queries  # top-300 per expression, capped by the query count
    _assert_same(naive, fast)
    assert np.ptp(fast.scores) > 1e-3  # the comparison is not between constants


def test_backbone_reuse_alone_is_bit_exact(tiny_detector, photo):
    naive = tiny_detector.detect(photo, EXPRESSIONS, InferenceOptions(reuse_backbone=False, batch_size=1))
    reused = tiny_detector.detect(photo, EXPRESSIONS, InferenceOptions(batch_size=1))
    assert np.array_equal(naive.scores, reused.scores) and np.array_equal(naive.xyxy, reused.xyxy)


def test_batched_text_equals_unbatched_text_with_reuse(tiny_detector, photo):
    one = tiny_detector.detect(photo, EXPRESSIONS, InferenceOptions(batch_size=1))
    many = tiny_detector.detect(photo, EXPRESSIONS, InferenceOptions(batch_size=len(EXPRESSIONS)))
    _assert_same(one, many)


def test_parallel_equals_naive_with_real_minilm_text_encoder(tmp_path_factory, photo):
    from reallod.model.loading import load_detector
    from reallod.model.tiny import save_tiny_detector

    folder = save_tiny_detector(tmp_path_factory.mktemp("minilm") / "m", text_backbone="minilm", seed=1)
    det = load_detector(folder, device="cpu")
    exprs = EXPRESSIONS[:4]
    naive = det.detect(photo, exprs, InferenceOptions(reuse_backbone=False, batch_size=1))
    fast = det.detect(photo, exprs, InferenceOptions(batch_size=4))
    _assert_same(naive, fast)


def test_boxes_are_pixels_inside_the_image(tiny_detector, photo):
    d = tiny_detector.detect(photo, ["a dog", "a flag"], topk=7)
    w, h = photo.size
    assert d.image_size == (h, w)
    assert len(d) == 14 and d.labels.tolist() == [0] * 7 + [1] * 7
    assert (d.xyxy[:, [0, 2]] >= 0).all() and (d.xyxy[:, [0, 2]] <= w).all()
    assert (d.xyxy[:, [1, 3]] >= 0).all() and (d.xyxy[:, [1, 3]] <= h).all()
    assert (d.xyxy[:, 2] >= d.xyxy[:, 0]).all() and (d.xyxy[:, 3] >= d.xyxy[:, 1]).all()
    assert d.xyxy.max() > 20  # pixels, not normalised coordinates
    assert np.all(np.diff(d.for_expression(0).scores) <= 0)  # best first


def test_threshold_and_nms_options(tiny_detector, photo):
    full = tiny_detector.detect(photo, ["a dog"])
    thr = float(np.median(full.scores))
    above = tiny_detector.detect(photo, ["a dog"], score_thr=thr)
    assert len(above) == int((full.scores >= thr).sum()) and above.scores.min() >= thr
    from reallod.model.nms import box_iou

    iou_all = box_iou(torch.from_numpy(full.xyxy), torch.from_numpy(full.xyxy)).fill_diagonal_(0)
    thr_iou = float(iou_all.max()) / 2  # some random boxes overlap more than this
    kept = tiny_detector.detect(photo, ["a dog"], nms_iou=thr_iou)
    assert 0 < len(kept) < len(full)
    iou = box_iou(torch.from_numpy(kept.xyxy), torch.from_numpy(kept.xyxy)).fill_diagonal_(0)
    assert iou.max() <= thr_iou + 1e-6
    # per expression: the same boxes under another expression do not suppress each other
    twice = tiny_detector.detect(photo, ["a dog", "a dog"], nms_iou=thr_iou)
    for e in (0, 1):
        np.testing.assert_allclose(twice.for_expression(e).xyxy, kept.xyxy, atol=1e-4)  # a batch of 2


def test_concat_mode_chunks_and_keeps_each_expression(tiny_model_dir, photo):
    from reallod.model.loading import load_detector

    det = load_detector(tiny_model_dir, device="cpu", max_text_len=24)
    d = det.detect(photo, EXPRESSIONS[:5], mode="concat", topk=5)
    assert sorted(set(d.labels.tolist())) == [0, 1, 2, 3, 4]
    assert d.meta["mode"] == "concat"
    # With one expression the concat prompt is the parallel prompt: same answer.
    single_c = det.detect(photo, ["a dog"], mode="concat")
    single_p = det.detect(photo, ["a dog"], mode="parallel")
    _assert_same(single_c, single_p, atol=1e-6)


def test_long_expression_is_reported_not_silently_cut(tiny_model_dir, photo):
    from reallod.model.loading import load_detector

    det = load_detector(tiny_model_dir, device="cpu", max_text_len=8)
    with pytest.warns(UserWarning, match="cut to 5"):
        d = det.detect(photo, ["a dog", EXPRESSIONS[5]])
    assert d.meta["truncated_expressions"] == [1]
    with pytest.raises(ConfigError, match="tokens"):
        det.detect(photo, [EXPRESSIONS[5]], on_long="error")


def test_compare_detects_a_real_difference_and_tolerates_near_ties():
    from reallod.model.detections import Detections

    a = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.5 - 1e-7], [0, 0], ["x"])
    swapped = Detections([[20, 20, 30, 30], [0, 0, 10, 10]], [0.5, 0.5 - 1e-7], [0, 0], ["x"])
    assert compare(a, swapped).within(1e-4)
    moved = Detections([[0, 0, 10, 10], [20, 20, 31, 30]], [0.5, 0.5 - 1e-7], [0, 0], ["x"])
    agreement = compare(a, moved)
    assert agreement.max_box_diff == 1.0 and not agreement.within(1e-4)
    assert (agreement.compared, agreement.differing) == (2, 1)
    rescored = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.4], [0, 0], ["x"])
    assert not compare(a, rescored).within(1e-4)


@pytest.mark.parametrize("kwargs", [{"mode": "both"}, {"batch_size": 0}, {"topk": 0}, {"score_thr": 2.0},
                                    {"nms_iou": 0.0}])
def test_bad_options(kwargs):
    with pytest.raises(ConfigError):
        InferenceOptions(**kwargs)


def test_bad_expressions(tiny_detector, photo):
    with pytest.raises(ConfigError, match="no expressions"):
        tiny_detector.detect(photo, [])
    with pytest.raises(ConfigError, match="empty"):
        tiny_detector.detect(photo, ["a dog", "   "])


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_is_mixed_precision_over_float32_weights(tiny_model_dir, photo, tiny_detector, dtype):
    """A model cast to bf16 whole gave its boxes in bf16: a grid of 2.6 px at 1333 px. Autocast runs the
    products in half precision and leaves the box arithmetic in float32."""
    from reallod.model.loading import load_detector

    det = load_detector(tiny_model_dir, device="cpu", dtype=dtype)
    assert det.model.dtype == torch.float32 and det.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    seen: dict[str, torch.dtype] = {}
    linear = next(m for m in det.model.modules() if isinstance(m, torch.nn.Linear))

    def note(name: str, dtype: torch.dtype) -> None:  # a forward hook that returns a value replaces the output
        seen.setdefault(name, dtype)

    hooks = [linear.register_forward_hook(lambda m, i, o: note("product", o.dtype)),
             det.model.register_forward_hook(lambda m, i, o: note("boxes", o.pred_boxes.dtype))]
    try:
        d = det.detect(photo, ["a dog"], topk=900)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"product": det.dtype, "boxes": torch.float32}
    ref = tiny_detector.detect(photo, ["a dog"], topk=900)
    assert len(d) == len(ref)
    assert abs(float(d.scores.mean()) - float(ref.scores.mean())) < 0.05


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_cuda_matches_cpu(tiny_model_dir, photo, tiny_detector):
    from reallod.model.loading import load_detector

    det = load_detector(tiny_model_dir, device="cuda")
    _assert_same(det.detect(photo, EXPRESSIONS[:3]), tiny_detector.detect(photo, EXPRESSIONS[:3]), atol=1e-3)
    half = load_detector(tiny_model_dir, device="cuda", dtype="fp16").detect(photo, EXPRESSIONS[:3])
    assert len(half) == len(EXPRESSIONS[:3]) * det.model.config.num_queries


# --- the published demos' scoring: max over every token of the prompt --------------------------------


def _independent_all_token_scores(detector, image, expression):
    """Per query, the max sigmoid over all tokens of MMDetection's demo prompt "EXPR. " ([CLS] expr . [SEP]),
    computed straight from the model's outputs, without reallod's prompt or selection code."""
    enc = detector.tokenizer(expression + ". ", return_tensors="pt")
    pix = detector.image_processor(images=[image.convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        out = detector.model(pixel_values=pix["pixel_values"], pixel_mask=pix["pixel_mask"],
                             input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             token_type_ids=torch.zeros_like(enc["input_ids"]))
    n = enc["input_ids"].shape[1]
    probs = out.logits[0, :, :n].float().sigmoid()
    expr_tokens = probs[:, 1:n - 2]  # without [CLS], "." and [SEP]
    return probs.amax(-1), expr_tokens.mean(-1)


def test_all_tokens_scoring_is_the_max_over_every_prompt_token(tiny_detector, photo):
    exprs = ["a dog", "the astronaut in the orange suit"]
    queries = tiny_detector.model.config.num_queries
    published = tiny_detector.detect(photo, exprs, InferenceOptions(score_over="all-tokens", topk=queries))
    default = tiny_detector.detect(photo, exprs, InferenceOptions(topk=queries))
    assert published.meta["score_over"] == "all-tokens" and "score_over" not in default.meta
    for label, expression in enumerate(exprs):
        all_tokens, expression_mean = _independent_all_token_scores(tiny_detector, photo, expression)
        got = np.sort(published.scores[published.labels == label])[::-1]
        np.testing.assert_allclose(got, np.sort(all_tokens.numpy())[::-1], atol=1e-5)
        unchanged = np.sort(default.scores[default.labels == label])[::-1]
        np.testing.assert_allclose(unchanged, np.sort(expression_mean.numpy())[::-1], atol=1e-5)
        assert not np.allclose(got, unchanged, atol=1e-3)  # the two rules really differ on this model


def test_all_tokens_scoring_needs_parallel_mode():
    with pytest.raises(ConfigError, match=r"^--score-over all-tokens .*needs parallel mode \(--mode parallel\)"):
        InferenceOptions(mode="concat", score_over="all-tokens")
    with pytest.raises(ConfigError, match=r"^--score-over \(InferenceOptions.score_over\) must be one of "
                       "expression-tokens, all-tokens"):
        InferenceOptions(score_over="every")  # type: ignore[arg-type]


@pytest.mark.parametrize("options, named", [
    ({"mode": "both"}, "--mode (InferenceOptions.mode)"), ({"batch_size": 0}, "--batch-size (InferenceOptions.batch_size)"),
    ({"topk": 0}, "--topk (InferenceOptions.topk)"), ({"nms_iou": 2.0}, "--nms-iou (InferenceOptions.nms_iou)")])
def test_bad_options_are_named_as_the_cli_and_the_library_set_them(options, named):
    """`detect --mode both` said "mode must be ...": neither the option a CLI user typed nor the field."""
    with pytest.raises(ConfigError) as err:
        InferenceOptions(**options)
    assert str(err.value).startswith(f"{named} must be")


def test_threads_sharing_a_detector_get_their_own_images_results(tiny_model_dir, photo, noise_image):
    """The demo runs requests in several threads (``--concurrency``) on one detector. Backbone reuse
    stands cached features in for the model's backbone while it runs; two calls at once once took each
    other's features, and the last to finish left the other image's features in place for good.
    The text encoder is slowed down here so that the calls overlap every time."""
    import threading
    import time

    from reallod.model.loading import load_detector

    det = load_detector(tiny_model_dir, device="cpu")  # its own: a failure must not spoil the shared one
    backbone, projections = det.model.model.backbone, det.model.model.input_proj_vision
    images = {"photo": photo, "noise": noise_image}
    options = [InferenceOptions(batch_size=2), InferenceOptions(reuse_backbone=False, batch_size=2)]
    expected = {(name, i): det.detect(image, EXPRESSIONS[:4], opts)
                for name, image in images.items() for i, opts in enumerate(options)}
    slow = det.model.model.text_backbone.register_forward_pre_hook(lambda *a: time.sleep(0.01))
    got: dict = {}
    errors: list[BaseException] = []

    def work(name: str, delay: float) -> None:
        time.sleep(delay)
        try:
            for round_ in range(3):
                i = round_ % 2
                got[(name, round_)] = ((name, i), det.detect(images[name], EXPRESSIONS[:4], options[i]))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(name, 0.005 * k)) for k, name in enumerate(images)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        slow.remove()
    assert not errors
    assert det.model.model.backbone is backbone and det.model.model.input_proj_vision is projections
    assert len(got) == 6
    for key, dets in got.values():
        _assert_same(expected[key], dets, atol=1e-6)
