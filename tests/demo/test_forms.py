"""The demo pages' form fields: expressions, boxes, other objects, table rows, legend."""

from __future__ import annotations

import numpy as np
import pytest

from reallod.demo.forms import (
    TABLE_HEADERS,
    box_from_clicks,
    check_text,
    detection_rows,
    format_box,
    format_others,
    legend_html,
    parse_box,
    parse_expressions,
    parse_others,
)
from reallod.demo.limits import DemoInputError, DemoLimits
from reallod.model.detections import Detections

LIMITS = DemoLimits(max_expressions=3, max_expression_chars=20)


def test_expressions_one_per_line_deduplicated_and_dot_separated():
    text = "the dog\n\n  the red cup  \nthe dog\na cat . a hat .\n"
    assert parse_expressions(text, DemoLimits()) == ["the dog", "the red cup", "a cat", "a hat"]


def test_a_line_naming_a_file_stays_an_expression():
    # reallod detect --texts reads .txt files; the page must never read a server path.
    assert parse_expressions("/etc/hostname.txt", DemoLimits()) == ["/etc/hostname.txt"]


@pytest.mark.parametrize("text, message", [
    ("", "at least one expression"),
    ("  \n\t\n", "at least one expression"),
    ("a\nb\nc\nd", "at most 3"),
    ("x" * 21, "21 characters"),
    ("? ?", "no words"),
    ("...", "no words"),
])
def test_bad_expressions_are_explained(text, message):
    with pytest.raises(DemoInputError, match=message):
        parse_expressions(text, LIMITS)


def test_box_accepts_brackets_and_clips_to_the_image():
    assert parse_box("[10, 20.5, 30, 40]", 100, 50) == [10.0, 20.5, 30.0, 40.0]
    assert parse_box("-5 0 120 60", 100, 50) == [0.0, 0.0, 100.0, 50.0]


@pytest.mark.parametrize("text, message", [
    ("1, 2, 3", "four numbers"),
    ("", "four numbers"),
    ("30, 10, 20, 40", "x2 must be above x1"),
    ("200, 10, 300, 40", "outside the 100×50 image"),
    ("1, 1, 1.5, 1.5", "under a pixel wide or high inside the 100×50 image"),
    ("1e999, 1, 2e999, 3", "finite"),
])
def test_bad_boxes_are_explained(text, message):
    with pytest.raises(DemoInputError, match=message):
        parse_box(text, 100, 50)


def test_two_clicks_make_a_box_whatever_their_order():
    assert box_from_clicks([90, 10], [20, 40]) == [20.0, 10.0, 90.0, 40.0]
    assert format_box([20.0, 10.25, 90.0, 40.0]) == "20, 10.2, 90, 40"


def test_other_objects_round_trip_and_errors_name_the_line():
    others = [("helmet", [1.0, 2.0, 30.0, 40.0]), ("space shuttle: model", [5.0, 5.0, 9.0, 9.0])]
    assert parse_others(format_others(others), 100, 100) == others
    assert parse_others("\n  \n", 100, 100) == []
    with pytest.raises(DemoInputError, match="line 2: write it as"):
        parse_others("a: 1,2,3,4\n1, 2, 3, 4", 100, 100)
    with pytest.raises(DemoInputError, match=r"line 1: .*outside"):
        parse_others("cup: 500, 500, 600, 600", 100, 100)


def test_other_objects_are_bounded_before_they_are_parsed(monkeypatch):
    """A 3 MB category reached the agent's prompts: only the number of objects was bounded, after every
    line had been parsed."""
    from reallod.demo import forms

    with pytest.raises(DemoInputError, match=r"other objects, line 2: the category is 101 characters long; the "
                                             r"limit is 100"):
        parse_others("cup: 1, 2, 30, 40\n" + "x" * 101 + ": 1, 2, 50, 60", 100, 100)
    assert parse_others("x" * 100 + ": 1, 2, 50, 60", 100, 100)[0][0] == "x" * 100
    parsed = []
    monkeypatch.setattr(forms, "parse_box", lambda *a: parsed.append(a) or [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(DemoInputError, match=r"the other objects are 3000011 characters long; the limit is 9000"):
        parse_others("x" * 3_000_000 + ": 1,2,50,60", 100, 100)
    with pytest.raises(DemoInputError, match="51 other objects: this demo takes at most 50"):
        parse_others("cup: 1, 2, 3, 4\n" * 51, 100, 100)
    assert parsed == []  # refused before any line was parsed


def test_check_text_strips_and_limits():
    assert check_text("  person ", "category", 10) == "person"
    with pytest.raises(DemoInputError, match="enter the category"):
        check_text(" ", "category", 10)
    with pytest.raises(DemoInputError, match="11 characters"):
        check_text("x" * 11, "category", 10)


def test_rows_keep_boxes_at_or_above_the_threshold_best_first_per_expression():
    dets = Detections(np.array([[0, 0, 10, 10], [1, 1, 5, 5], [2, 2, 8, 8], [3, 3, 4, 4]]),
                      np.array([0.5, 0.9, 0.3, 0.7]), np.array([0, 0, 1, 1]), ["dog", "cat"])
    rows = detection_rows(dets, 0.5)
    assert len(TABLE_HEADERS) == len(rows[0])
    assert rows == [["dog", 0.9, 1.0, 1.0, 5.0, 5.0], ["dog", 0.5, 0.0, 0.0, 10.0, 10.0],
                    ["cat", 0.7, 3.0, 3.0, 4.0, 4.0]]
    assert detection_rows(dets, 0.95) == []


def test_legend_escapes_what_the_user_typed():
    html = legend_html(["<script>x</script>", "cup"], [(1, 2, 3), (4, 5, 6)], [2, 0])
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "rgb(1,2,3)" in html and "rgb(4,5,6)" in html and "<b>2</b>" in html
