"""Cleaning generations and building negatives and groups (pure)."""

from collections import Counter

import pytest

from reallod.engine.annotations import AnnObject
from reallod.engine.groups import group_candidates, kept_groups
from reallod.engine.negatives import (
    absent_categories,
    easy_negatives,
    fits_image,
    keep_negatives,
    replace_category,
)
from reallod.engine.phrases import clean
from reallod.engine.text import accept, check, mentions


def test_clean_strips_list_marks_quotes_and_full_stop():
    assert clean('1. "The red cup."\nmore text') == "The red cup"
    assert clean("- expression 2: the cat on the sofa") == "the cat on the sofa"
    assert clean("   ") == ""


def test_mentions_allows_plurals_and_multiword_categories():
    assert mentions("two cats on a bed", "cat")
    assert mentions("the big Space Shuttle", "space shuttle")
    assert not mentions("a category of things", "cat")


@pytest.mark.parametrize(("text", "category"), [
    ("two knives", "knife"), ("the people", "person"), ("three persons", "person"), ("mice", "mouse"),
    ("the geese", "goose"), ("the children", "child"), ("two men", "man"), ("the women", "woman"),
    ("bare feet", "foot"), ("white teeth", "tooth"), ("dry leaves", "leaf"), ("the buses", "bus"),
    ("two boxes", "box"), ("the glasses", "glass"), ("the glasses", "glasses"), ("wooden benches", "bench"),
    ("a pair of skis", "ski"), ("the sheep", "sheep"), ("tall grasses", "grass"), ("the cacti", "cactus"),
    ("two wine glasses", "wine glass"), ("deux cafés", "café"),
])
def test_mentions_knows_irregular_plurals(text, category):
    assert mentions(text, category)


@pytest.mark.parametrize(("text", "category"), [
    ("the cones", "con"), ("blue skies", "ski"), ("two tapes", "tap"), ("a glass of water", "glasses"),
    ("the grass", "glasses"), ("a woman", "man"), ("the wine", "wine glass"),
])
def test_mentions_does_not_strip_an_s_blindly(text, category):
    assert not mentions(text, category)


def test_irregular_plurals_of_other_objects_and_negatives_are_caught():
    assert check("the people behind the dog", "dog", ["person"], max_words=12) is None  # names its own object
    assert check("the people on the bench", "dog", ["person"], max_words=12) == "wrong object"
    assert check("two knives on a plate", "fork", ["knife", "plate"], max_words=12) == "wrong object"
    assert replace_category("two knives on the table", "knife", "fork") == "two forks on the table"
    assert replace_category("the geese by the pond", "goose", "zebra") == "the zebras by the pond"
    assert fits_image("the people", set(), ["person"]) and fits_image("Mice", set(), ["mouse"])
    assert fits_image("an apple", set(), ["apple"]) and not fits_image("the people", set(), ["dog"])
    kept, dropped = keep_negatives(["the people", "the children", "a zebra"], set(), ["person", "child"], set())
    assert kept == ["a zebra"] and dropped == 2


def test_malformed_generations_are_dropped_with_a_reason():
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    got = accept(["", "the cat " + "very " * 30, "the remote on the sofa", "the grey cat", "The grey cat.",
                  "the cat next to the remote", "a small animal"], "cat", ["remote"], max_words=12, seen=seen,
                 counts=counts, step="llm")
    assert got == ["the grey cat", "the cat next to the remote", "a small animal"]
    assert counts == Counter({"llm: empty:dropped": 1, "llm: overlong:dropped": 1, "llm: wrong object:dropped": 1,
                              "llm: duplicate:dropped": 1})
    assert check("the remote", "cat", ["cat"], max_words=5) is None
    assert check("cat at [0.06, 0.03, 0.72, 1.00]", "cat", [], max_words=12) == "copies the prompt"
    assert check("1, 2", "cat", [], max_words=12) == "copies the prompt"
    assert check("the cat at (0.00, 0.00, 0.93, 1.00)", "cat", [], max_words=12) == "copies the prompt"
    assert check("the cat (1, 2)", "cat", [], max_words=12) is None  # two numbers are no box
    assert check("the cat [left]", "cat", [], max_words=12) is None  # its own category is not "another object"


def test_accept_keeps_at_most_limit():
    counts: Counter[str] = Counter()
    assert accept(["a cat", "the cat", "one cat"], "cat", [], max_words=5, seen=set(), counts=counts, step="s",
                  limit=2) == ["a cat", "the cat"]
    assert counts["s: over the count:dropped"] == 1


def test_easy_negatives_name_absent_categories_deterministically():
    absent = absent_categories(["cat", "dog", "zebra", "Cat", "kite"], ["cat"])
    assert absent == ["dog", "zebra", "kite"]
    a = easy_negatives(["the cat on the left", "a cute animal"], "cat", absent, 2, key="x/0")
    assert a == easy_negatives(["the cat on the left", "a cute animal"], "cat", absent, 2, key="x/0")
    assert len(a) == 2 and all(n.startswith("the ") and n.endswith(" on the left") for n in a)
    assert not any("cat" in n for n in a)
    assert easy_negatives(["x"], "cat", [], 3, key="k") == []
    assert replace_category("two cats here", "cat", "dog") == "two dogs here"  # a plural stays plural
    assert replace_category("nothing", "cat", "dog") == "dog"


def test_a_negative_that_fits_the_image_is_dropped():
    positives = {"the grey cat"}
    assert fits_image("The grey cat", positives, ["cat"])
    assert fits_image("remote", positives, ["cat", "remote"])
    assert not fits_image("the black cat", positives, ["cat"])
    kept, dropped = keep_negatives(["the grey cat", "the black cat", "the black cat", "a remote"], positives,
                                   ["cat", "remote"], set())
    assert kept == ["the black cat"] and dropped == 2


def test_groups_are_categories_with_several_instances():
    objs = [AnnObject("mast", [50, 0, 60, 10]), AnnObject("rocket", [0, 0, 5, 5]), AnnObject("mast", [10, 0, 20, 10])]
    assert group_candidates(objs) == [("mast", [[10, 0, 20, 10], [50, 0, 60, 10]])]


def test_a_group_with_an_instance_over_max_objects_is_left_out():
    masts = [AnnObject("mast", [50, 0, 60, 10]), AnnObject("mast", [10, 0, 20, 10])]
    people = [AnnObject("person", [0, 0, 5, 5]), AnnObject("person", [70, 0, 80, 10])]
    objs = [*masts, *people]
    assert kept_groups(objs, objs) == (group_candidates(objs), 0)
    # one mast is dropped: "the two masts" would cover a box the record does not keep
    assert kept_groups(objs, [masts[0], *people]) == ([("person", [[0, 0, 5, 5], [70, 0, 80, 10]])], 1)
    assert kept_groups(objs, [masts[0]]) == ([], 2)
