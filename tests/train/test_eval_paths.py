"""A data.synthetic config took eval.file or eval.images alone: eval.images alone was silently replaced by the
synthetic shapes, and eval.file alone failed with an empty path blamed on data.train[].images. Either alone is
refused, naming the one missing; both given are used as given."""

from __future__ import annotations

import pytest

from reallod.errors import ConfigError, DataError
from reallod.train.evaluate import load_eval_records
from reallod.train.loop import train

from .helpers import quiet, tiny_config


@pytest.mark.parametrize(("option", "message"), [
    ("eval.file=shapes/val.jsonl", "--cfg-options eval.file=shapes/val.jsonl: eval.file: eval.images is not set"),
    ("eval.images=/nonexistent", "--cfg-options eval.images=/nonexistent: eval.images: eval.file is not set"),
])
def test_eval_file_or_images_alone_is_refused(tmp_path, option, message):
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, [option])
    assert str(e.value) == (f"{message}: set both eval.file and eval.images (the root of the file's image "
                            "filenames), or neither (data.synthetic then evaluates on its held-out shapes)")


def test_an_empty_eval_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.images: is empty: give a path, or null"):
        tiny_config(tmp_path, ["eval.file=val.jsonl", "eval.images=''"])


def test_the_given_eval_images_are_used_not_the_synthetic_ones(tmp_path, shapes):
    cfg = tiny_config(shapes, ["schedule.max_steps=1", "eval.every_epochs=1", f"eval.file={shapes / 'val.jsonl'}",
                               f"eval.images={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"eval\.images: .*nowhere: image root not found"):
        train(cfg, tmp_path / "w", echo=quiet)


def test_an_empty_image_root_is_not_the_current_folder(shapes):
    with pytest.raises(DataError, match=r"image root not found \(eval\.images\)"):
        load_eval_records(shapes / "val.jsonl", "")


def test_eval_lines_left_out_are_said_with_their_lines(tmp_path, shapes):
    """A held-out line that does not parse, or a record with a wrong type, was dropped without a word:
    the scores were over fewer images than the file holds."""
    lines = (shapes / "val.jsonl").read_text().splitlines()
    bad = tmp_path / "val.jsonl"
    bad.write_text("\n".join([*lines, "{oops"]) + "\n")
    said: list[str] = []
    records = load_eval_records(bad, shapes, say=said.append)
    assert len(records) == len(lines)
    assert said == [f"eval: {bad}: {len(lines)} records, skipped 1 bad_json (line {len(lines) + 1}); "
                    f"`reallod data validate {bad}` says why"]
    load_eval_records(shapes / "val.jsonl", shapes, say=said.append)
    assert len(said) == 1  # a whole file: nothing to say


def test_a_held_out_set_with_no_positive_expression_or_an_unknown_source_is_refused(tmp_path, shapes):
    """Negatives alone gave ap=nan at every evaluation and never a best/; a typo in eval.sources was said
    only as "no evaluation queries", after the model was built."""
    import json

    records = [json.loads(line) for line in (shapes / "val.jsonl").read_text().splitlines()]
    for r in records:
        for pairs in r["pairs"].values():
            for p in pairs:
                p["positive_expressions"] = []
    negatives = tmp_path / "negatives.jsonl"
    negatives.write_text("".join(json.dumps(r) + "\n" for r in records))
    base = ["schedule.max_steps=1", "eval.every_epochs=1", f"eval.images={shapes}"]
    with pytest.raises(ConfigError, match=r"negatives\.jsonl: no evaluation queries \(no positive expressions"):
        train(tiny_config(shapes, [*base, f"eval.file={negatives}"]), tmp_path / "w", echo=quiet)
    with pytest.raises(ConfigError, match=r"eval\.sources: unknown source vlm-short; the sources of .*val\.jsonl "
                                          r"are llm, vlm_long, vlm_short"):
        train(tiny_config(shapes, [*base, f"eval.file={shapes / 'val.jsonl'}", "eval.sources=[vlm-short]"]),
              tmp_path / "w2", echo=quiet)
