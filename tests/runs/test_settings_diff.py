"""The settings diff both resumes name changed options by (detect's and eval's journals)."""

from __future__ import annotations

from reallod.runs.settings_diff import Change, diff_settings


def test_changes_come_in_the_new_settings_order_then_those_only_the_old_had():
    old = {"b": 1, "gone": 0, "a": {"x": 1, "y": 2, "old": 3}, "c": 3}
    new = {"a": {"y": 5, "x": 1, "new": 4}, "b": 2, "c": 3}
    assert diff_settings(old, new) == [Change("a.y", 2, 5), Change("a.new", None, 4), Change("a.old", 3, None),
                                       Change("b", 1, 2), Change("gone", 0, None)]
    assert diff_settings(new, new) == []


def test_only_the_named_groups_are_compared_setting_by_setting():
    old = {"inference": {"topk": 1, "mode": "parallel"}, "size": {"h": 1}, "model": {"dtype": "fp32"}}
    new = {"inference": {"topk": 2, "mode": "parallel"}, "size": {"h": 2}, "model": {"dtype": "fp16"}}
    assert diff_settings(old, new, groups={"inference"}) == [
        Change("inference.topk", 1, 2), Change("size", {"h": 1}, {"h": 2}), Change("model", {"dtype": "fp32"},
                                                                                 {"dtype": "fp16"})]
    assert [c.key for c in diff_settings(old, new)] == ["inference.topk", "size.h", "model.dtype"]
    assert [c.key for c in diff_settings({"m": {"a": {"b": 1}}}, {"m": {"a": {"b": 2}}})] == ["m.a.b"]  # any depth


def test_a_group_that_is_no_dict_on_one_side_stands_under_its_own_key():
    assert diff_settings({"m": "x"}, {"m": {"a": 1}}) == [Change("m.a", None, 1), Change("m", "x", None)]
    assert diff_settings({"m": None}, {"m": {"a": 1}}) == [Change("m.a", None, 1)]  # None: no value there
    assert diff_settings({"m": {}}, {}) == [Change("m", {}, None)]  # an empty group is one value
    assert diff_settings({}, {"m": {}}) == [Change("m", None, {})]
