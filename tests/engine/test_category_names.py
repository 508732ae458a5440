"""How phrases name a dataset's categories: LVIS qualifiers (``glass (drink container)``), Objects365
alternatives (``Cabinet/shelf``) and plural names (``Gloves``), in the filters and in easy negatives."""

from collections import Counter

import pytest

from reallod.engine.negatives import easy_negatives, fits_image, keep_negatives, replace_category
from reallod.engine.text import (
    accept,
    category_display,
    category_hint,
    category_parts,
    check,
    drop_qualifiers,
    mentions,
    plural_display,
    singular,
)


@pytest.mark.parametrize(("text", "category"), [
    ("the glass next to the plate", "glass (drink container)"), ("two glasses of wine", "glass (drink container)"),
    ("the glass (drink container) on the left", "glass (drink container)"), ("the red car", "car (automobile)"),
    ("a blue cap", "cap (headwear)"), ("the buses", "bus (vehicle)"), ("the bow on the wall", "bow (weapon)"),
    ("the glass on the right", "glass_(drink_container)"), ("the open cabinet", "Cabinet/shelf"),
    ("the top shelf", "Cabinet/shelf"), ("the shelves", "Cabinet/shelf"), ("a leather satchel", "Handbag/Satchel"),
    ("the TV on the wall", "Monitor/TV"), ("the white basin", "Bowl/Basin"),
    ("the glove on the person's left hand", "Gloves"), ("a white sneaker", "Sneakers"),
    ("the street light on the left", "Street Lights"), ("the black shoe", "Other Shoes"),
    ("the other shoes", "Other Shoes"), ("the chopping board", "Cutting/chopping Board"),
    ("the cutting board", "Cutting/chopping Board"), ("the ruler", "Tape Measure/Ruler"),
    ("a french fry", "French Fries"), ("the person", "people"),
])
def test_a_category_is_named_as_phrases_name_it(text, category):
    assert mentions(text, category)


@pytest.mark.parametrize(("text", "category"), [
    ("a glass of water", "Glasses"),  # eyeglasses: "glass" is another thing
    ("the short man", "Shorts"), ("the drink", "glass (drink container)"), ("the cutting knife", "Cutting/chopping Board"),
    ("the board", "Cutting/chopping Board"), ("the bu", "bus (vehicle)"), ("the tenni", "Tennis"),
])
def test_no_name_is_made_up(text, category):
    assert not mentions(text, category)


def test_the_auditors_phrases_name_their_own_object():
    others = ["plate", "person", "cup"]
    assert check("the glass next to the plate", "glass (drink container)", others, max_words=12) is None
    assert check("the glass held by the person", "glass (drink container)", others, max_words=12) is None
    assert check("the glove on the person's left hand", "Gloves", ["Person"], max_words=12) is None
    assert check("the shelf above the bowl", "Cabinet/shelf", ["Bowl/Basin"], max_words=12) is None
    # naming only another object is still the wrong object, by any of that object's names
    assert check("the basin on the left", "Cabinet/shelf", ["Bowl/Basin"], max_words=12) == "wrong object"
    assert check("the glove of the man", "person", ["Gloves"], max_words=12) == "wrong object"
    assert check("the glass by the plate", "plate", ["glass (drink container)"], max_words=12) is None


def test_a_copied_qualifier_is_taken_out_of_a_phrase():
    counts: Counter[str] = Counter()
    got = accept(["the glass (drink container) on the left", "the Glass (Drink Container)", "the glass_(drink_container)",
                  "the bow (weapon) next to the glass (drink container)"], "bow (weapon)",
                 ["glass (drink container)"], max_words=12, seen=set(), counts=counts, step="llm")
    assert got == ["the bow next to the glass"] and counts == Counter({"llm: wrong object:dropped": 3})
    assert drop_qualifiers("the glass (drink container) on the left", ["glass (drink container)"]) \
        == "the glass on the left"
    assert drop_qualifiers("a bow (weapon)", ["bow (decorative ribbon)"]) == "a bow (weapon)"  # not its qualifier
    assert drop_qualifiers("the cabinet (left)", ["Cabinet/shelf"]) == "the cabinet (left)"


@pytest.mark.parametrize(("category", "names", "qualifier", "display", "hint"), [
    ("glass (drink container)", ("glass",), "drink container", "glass", 'By "glass" this dataset means drink container.'),
    ("bow_(weapon)", ("bow",), "weapon", "bow", 'By "bow" this dataset means weapon.'),
    ("Cabinet/shelf", ("Cabinet", "shelf"), "", "Cabinet", 'By "Cabinet" this dataset means Cabinet or shelf.'),
    ("Cutting/chopping Board", ("Cutting Board", "chopping Board"), "", "Cutting Board",
     'By "Cutting Board" this dataset means Cutting Board or chopping Board.'),
    ("Gloves", ("Gloves",), "", "Glove", ""), ("Street Lights", ("Street Lights",), "", "Street Light", ""),
    ("Other Shoes", ("Other Shoes",), "", "Shoe", ""), ("Glasses", ("Glasses",), "", "Glasses", ""),
    ("bus (vehicle)", ("bus",), "vehicle", "bus", 'By "bus" this dataset means vehicle.'),
    ("Tennis", ("Tennis",), "", "Tennis", ""), ("SUV", ("SUV",), "", "SUV", ""), ("猫", ("猫",), "", "猫", ""),
    (r"AC\DC adapter", (r"AC\DC adapter",), "", r"AC\DC adapter", ""),
])
def test_display_names_and_hints(category, names, qualifier, display, hint):
    assert category_parts(category) == (names, qualifier)
    assert category_display(category) == display and category_hint(category) == hint


def test_singular_and_plural_keep_words_that_only_look_plural():
    assert [singular(w) for w in ["gloves", "people", "lights", "bus", "lens", "tennis", "glasses", "data", "cactus"]] \
        == ["glove", "person", "light", "bus", "lens", "tennis", "glasses", "data", "cactus"]
    assert [plural_display(n) for n in ["Spoon", "street light", "person", "Glasses", "猫"]] \
        == ["Spoons", "street lights", "people", "Glasses", "猫"]


@pytest.mark.parametrize(("positive", "category", "other", "negative"), [
    ("both masts", "mast", "spoon", "both spoons"),
    ("the two glasses on the table", "glass (drink container)", "Gloves", "the two gloves on the table"),
    ("the glove on the person's left hand", "Gloves", "Bowl/Basin", "the bowl on the person's left hand"),
    ("the glass next to the plate", "glass (drink container)", "cat (animal)", "the cat next to the plate"),
    ("the glass (drink container) on the left", "glass (drink container)", "Bowl/Basin", "the bowl on the left"),
    ("the green Glove", "Gloves", "Street Lights", "the green Street Light"),
    ("the people", "person", "glass (drink container)", "the glasses"),
    ("the car on the left", "car (automobile)", "SUV", "the SUV on the left"),  # "SUV" is no title
])
def test_easy_negatives_name_the_absent_category_as_a_phrase_would(positive, category, other, negative):
    assert replace_category(positive, category, other) == negative
    assert easy_negatives([positive], category, [other], 1, key="k") == [negative]


def test_easy_negatives_take_the_positive_that_names_the_category():
    # before, no positive named "Gloves" and the bare absent category became the negative
    positives = ["a white object on the hand", "the glove on the person's left hand"]
    assert easy_negatives(positives, "Gloves", ["cat (animal)"], 1, key="k") == ["the cat on the person's left hand"]
    assert easy_negatives(["a white object"], "Gloves", ["Bowl/Basin"], 1, key="k") == ["Bowl"]


def test_a_negative_that_names_only_a_present_category_fits_the_image():
    present = ["glass (drink container)", "Cabinet/shelf", "Gloves"]
    assert fits_image("the glass", set(), present) and fits_image("shelves", set(), present)
    assert fits_image("a glove", set(), present) and fits_image("the glass (drink container)", set(), present)
    kept, dropped = keep_negatives(["the gloves", "the cat", "a bowl"], set(), present, set())
    assert kept == ["the cat", "a bowl"] and dropped == 1
