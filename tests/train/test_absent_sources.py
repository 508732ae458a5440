"""A text source given a probability that no record of the training data has is named in one warning line at
setup: each image draws among the sources it has, so ``source_probs={llm: 1}`` on data with vlm_short alone
trained on the category names only, without a word."""

from __future__ import annotations

import json

from reallod.train.loop import train
from reallod.train.sampling import absent_sources

from .helpers import tiny_config


def test_the_warning_names_each_absent_source_its_probability_and_the_files():
    assert absent_sources({"category": 0.5, "vlm_short": 0.5}, {"a.jsonl": {"vlm_short"}}) is None
    assert absent_sources({"llm": 0.0, "vlm_short": 1.0}, {"a.jsonl": {"vlm_short"}}) is None
    assert absent_sources({"llm": 1.0}, {"a.jsonl": {"vlm_short"}, "b.jsonl": set()}) == (
        "warning: data.source_probs gives llm 1, but no record of a.jsonl, b.jsonl has it: every image trains on "
        "its category names instead")
    assert absent_sources({"category": 0.5, "llm": 0.2, "vlm_long": 0.2, "vlm_short": 0.1},
                          {"a.jsonl": {"vlm_short"}}) == (
        "warning: data.source_probs gives llm 0.2, vlm_long 0.2, but no record of a.jsonl has them: their 40% of "
        "the draws go to category, vlm_short (to the category names for a record that has none of those)")
    assert absent_sources({"llm": 0.5, "vlm_short": 0.5}, {"a.jsonl": {"vlm_short"}}) == (
        "warning: data.source_probs gives llm 0.5, but no record of a.jsonl has it: its 50% of the draws go to "
        "vlm_short (to the category names for a record that has none of those)")


def test_training_on_data_without_a_configured_source_says_so(tmp_path, shapes):
    only = tmp_path / "vlm_short.jsonl"
    with open(shapes / "train.jsonl") as f, open(only, "w") as out:
        for line in f:
            record = json.loads(line)
            record["pairs"] = {"vlm_short": record["pairs"]["vlm_short"]}
            out.write(json.dumps(record) + "\n")
    messages: list[str] = []
    train(tiny_config(shapes, ["schedule.max_steps=1", "data.synthetic=null", "data.source_probs={llm: 1.0}",
                               f"data.train=[{{file: {only}, images: {shapes}}}]"]), tmp_path / "w",
          echo=messages.append)
    assert (f"warning: data.source_probs gives llm 1, but no record of {only} has it: every image trains on its "
            "category names instead") in messages
