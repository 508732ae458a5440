"""Per-image text sampling: source draw, positives/negatives within the budget, phrase labels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from reallod.errors import ConfigError
from reallod.model import token_prompt as P
from reallod.train.sampling import (
    Target,
    TextOptions,
    build_text_sample,
    category_phrases,
    source_probabilities,
)


def _tok(bert_tokenizer):
    return lambda s: bert_tokenizer(s, add_special_tokens=False)["input_ids"]


def _targets():
    dog = np.array([[10.0, 10, 50, 50]])
    cat = np.array([[60.0, 10, 90, 40]])
    cat2 = np.array([[5.0, 60, 30, 90]])
    return [
        Target("vlm_short", dog, "dog", "single", ["a brown dog", "the dog"], ["a white dog", "a cat", "a horse"]),
        Target("vlm_short", cat, "cat", "single", ["a grey cat"], ["a black cat"]),
        Target("llm", dog, "dog", "single", ["the dog left of the cat"], ["the dog right of the cat"]),
        Target("vlm_short", np.concatenate([cat, cat2]), "cat", "multi", ["two cats"], ["three cats"]),
        Target("vlm_long", cat2, "cat", "single", [], []),
    ]


def test_source_probabilities_renormalise_missing_sources():
    probs = source_probabilities(_targets(), TextOptions())
    # vlm_long has no positive expression: only category, vlm_short and llm are left.
    assert probs == pytest.approx({"category": 0.5 / 0.9, "llm": 0.2 / 0.9, "vlm_short": 0.2 / 0.9})
    single_only = source_probabilities([t for t in _targets() if t.relation == "multi"],
                                       TextOptions(relations=("single",)))
    assert single_only == {}


def test_sources_are_drawn_with_the_configured_frequencies(bert_tokenizer):
    opts = TextOptions(max_negatives=0)
    counts = Counter(build_text_sample(_targets(), np.random.default_rng(i), _tok(bert_tokenizer), opts).source
                     for i in range(900))
    assert counts["category"] / 900 == pytest.approx(0.5 / 0.9, abs=0.06)
    assert counts["llm"] / 900 == pytest.approx(0.2 / 0.9, abs=0.05)
    assert counts["vlm_short"] / 900 == pytest.approx(0.2 / 0.9, abs=0.05)


def test_labels_point_at_the_phrase_that_names_each_box(bert_tokenizer):
    opts = TextOptions(source_probs={"vlm_short": 1.0}, max_negatives=10, max_text_len=128)
    for seed in range(20):
        s = build_text_sample(_targets(), np.random.default_rng(seed), _tok(bert_tokenizer), opts)
        assert s.source == "vlm_short"
        named = {s.phrases[k] for k in s.class_labels}
        assert "two cats" in named and "a grey cat" in named
        assert named & {"a brown dog", "the dog"}
        assert sum(s.positive) == 3  # one positive per pair: dog, cat, the multi group
        for k in np.unique(s.class_labels):
            boxes = s.boxes[s.class_labels == k]
            want = {"two cats": 2}.get(s.phrases[k], 1)
            assert len(boxes) == want
        # Spans cover each phrase's tokens, and the ids are the [CLS] p . p . [SEP] layout.
        assert s.input_ids[0] == P.CLS_ID and s.input_ids[-1] == P.SEP_ID
        for (a, b), phrase in zip(s.spans, s.phrases, strict=True):
            assert s.input_ids[b] == P.DOT_ID
            assert bert_tokenizer.decode(s.input_ids[a:b]) == phrase.lower()


def test_negatives_stop_at_max_and_at_the_token_budget(bert_tokenizer):
    many = [Target("vlm_short", np.array([[0.0, 0, 10, 10]]), "dog", "single", ["a dog"],
                   [f"a dog number {i} with a long and winding description" for i in range(200)])]
    capped = build_text_sample(many, np.random.default_rng(0), _tok(bert_tokenizer),
                               TextOptions(source_probs={"vlm_short": 1.0}, max_negatives=5, max_text_len=512))
    assert sum(not p for p in capped.positive) == 5
    tight = build_text_sample(many, np.random.default_rng(0), _tok(bert_tokenizer),
                              TextOptions(source_probs={"vlm_short": 1.0}, max_negatives=50, max_text_len=40))
    assert len(tight.input_ids) <= 40
    assert "a dog" in tight.phrases  # positives go in first


def test_positives_that_do_not_fit_are_dropped_with_their_boxes(bert_tokenizer):
    long = " ".join(["very"] * 30)
    targets = [Target("vlm_short", np.array([[float(i), 0, i + 5, 5]]), "x", "single", [f"{long} thing {i}"], [])
               for i in range(5)]
    s = build_text_sample(targets, np.random.default_rng(0), _tok(bert_tokenizer),
                          TextOptions(source_probs={"vlm_short": 1.0}, max_text_len=70))
    assert len(s.input_ids) <= 70
    assert 1 <= len(s.phrases) < 5 and len(s.boxes) == len(s.phrases)


def test_category_source_uses_every_box_and_vocabulary_negatives(bert_tokenizer):
    phrases = dict(category_phrases(_targets()))
    assert set(phrases) == {"dog", "cat"}
    assert len(phrases["cat"]) == 2  # the same cat box from two sources counts once
    s = build_text_sample(_targets(), np.random.default_rng(1), _tok(bert_tokenizer),
                          TextOptions(source_probs={"category": 1.0}, max_negatives=3),
                          vocabulary=["dog", "cat", "horse", "zebra", "car", "bus"])
    negatives = {p for p, pos in zip(s.phrases, s.positive, strict=True) if not pos}
    assert len(negatives) == 3 and negatives <= {"horse", "zebra", "car", "bus"}
    assert sorted(len(s.boxes[s.class_labels == k]) for k in np.unique(s.class_labels)) == [1, 2]


def test_a_negative_equal_to_a_positive_anywhere_is_left_out(bert_tokenizer):
    targets = [Target("vlm_short", np.array([[0.0, 0, 9, 9]]), "dog", "single", ["a dog"], ["a cat", "a bird"]),
               Target("llm", np.array([[20.0, 0, 29, 9]]), "cat", "single", ["a cat"], [])]
    for seed in range(10):
        s = build_text_sample(targets, np.random.default_rng(seed), _tok(bert_tokenizer),
                              TextOptions(source_probs={"vlm_short": 1.0}))
        assert "a cat" not in s.phrases and "a bird" in s.phrases


def test_phrase_order_is_shuffled_and_reproducible(bert_tokenizer):
    opts = TextOptions(source_probs={"vlm_short": 1.0}, max_negatives=10, max_text_len=128)
    first = [build_text_sample(_targets(), np.random.default_rng(seed), _tok(bert_tokenizer), opts).phrases
             for seed in range(8)]
    again = [build_text_sample(_targets(), np.random.default_rng(seed), _tok(bert_tokenizer), opts).phrases
             for seed in range(8)]
    assert first == again
    assert len({tuple(p) for p in first}) > 1
    assert any(p[0] not in {"a brown dog", "the dog", "a grey cat", "two cats"} for p in first)  # negatives mix in


def test_expressions_with_phrase_delimiters_are_sanitised(bert_tokenizer):
    targets = [Target("vlm_short", np.array([[0.0, 0, 9, 9]]), "dog", "single", ["is it a dog? yes. a dog"], [])]
    s = build_text_sample(targets, np.random.default_rng(0), _tok(bert_tokenizer),
                          TextOptions(source_probs={"vlm_short": 1.0}))
    assert s.phrases == ["is it a dog yes a dog"]
    assert s.input_ids.count(P.DOT_ID) == 1 and P.QUESTION_ID not in s.input_ids


def test_no_usable_text_gives_no_boxes(bert_tokenizer):
    s = build_text_sample([], np.random.default_rng(0), _tok(bert_tokenizer), TextOptions(), vocabulary=["a", "b"])
    assert len(s.boxes) == 0 and all(not p for p in s.positive)


@pytest.mark.parametrize("kwargs", [dict(source_probs={"llm": -1}), dict(source_probs={"llm": 0}),
                                    dict(positives_per_instance=0), dict(max_text_len=600),
                                    dict(relations=("several",))])
def test_bad_options_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        TextOptions(**kwargs)
