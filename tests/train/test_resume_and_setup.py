"""Resume keeps what an uninterrupted run would have (evaluations, logs, the config's optimizer settings)
and names a damaged checkpoint file; setup refuses what would fail or do nothing later."""

from __future__ import annotations

import csv
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from reallod.errors import ConfigError, DataError
from reallod.train import checkpoint as C
from reallod.train import evaluate
from reallod.train.loop import TrainInterrupted, train

from .helpers import interrupt_at, quiet, tiny_config


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_an_evaluation_cut_short_is_done_on_resume(tmp_path, shapes, monkeypatch):
    # 2 epochs of 6 steps, an evaluation at each epoch end (6, 12), each written after its checkpoint.
    opts = ["schedule.epochs=2", "eval.every_epochs=1"]
    full = tmp_path / "full"
    train(tiny_config(shapes, opts), full, echo=quiet)
    detect = evaluate.detect_queries
    run = tmp_path / "run"
    monkeypatch.setattr(evaluate, "detect_queries", interrupt_at(detect, 1))  # Ctrl-C during the evaluation at step 6
    with pytest.raises(TrainInterrupted):
        train(tiny_config(shapes, opts), run, echo=quiet)
    monkeypatch.setattr(evaluate, "detect_queries", interrupt_at(detect, 2))  # the redone one at 6, the last at 12
    with pytest.raises(TrainInterrupted):
        train(tiny_config(shapes, opts), run, resume=True, echo=quiet)
    monkeypatch.setattr(evaluate, "detect_queries", detect)
    train(tiny_config(shapes, opts), run, resume=True, echo=quiet)
    want, got = _rows(full / "eval.csv"), _rows(run / "eval.csv")
    assert [r["step"] for r in got] == ["6", "12"]
    for a, b in zip(want, got, strict=True):
        assert {k: v for k, v in a.items() if k != "eval_s"} == {k: v for k, v in b.items() if k != "eval_s"}
    assert (run / "best" / "best.json").read_text() == (full / "best" / "best.json").read_text()


def test_resume_drops_the_log_rows_it_redoes(tmp_path, shapes):
    cfg = tiny_config(shapes, ["schedule.max_steps=3", "checkpoint.every_steps=2"])
    train(cfg, tmp_path, echo=quiet)
    shutil.rmtree(tmp_path / "checkpoints" / C.checkpoint_name(3))  # as if killed after step 3's log row
    train(tiny_config(shapes, ["schedule.max_steps=4"]), tmp_path, resume=True, echo=quiet)
    assert [r["step"] for r in _rows(tmp_path / "log.csv")] == ["1", "2", "3", "4"]


def test_resume_takes_the_configs_optimizer_settings(tmp_path, shapes):
    train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, echo=quiet)
    messages: list[str] = []
    train(tiny_config(shapes, ["schedule.max_steps=2", "optim.lr=5e-4", "optim.weight_decay=0.01",
                               "optim.betas=[0.8,0.99]"]), tmp_path, resume=True, echo=messages.append)
    # step 2 is in the warm-up: factor 0.5 + 0.5 × 1/2 of the new base rate
    assert float(_rows(tmp_path / "log.csv")[-1]["lr"]) == pytest.approx(5e-4 * 0.75)
    assert any("optimizer settings replace the checkpoint's: lr 0.001 → 0.0005, weight_decay 0.0001 → 0.01, "
               "betas (0.9, 0.999) → (0.8, 0.99)" in m for m in messages)
    ckpt = tmp_path / "checkpoints" / C.checkpoint_name(2)
    groups = C.load_torch(ckpt / "optimizer.pt")["param_groups"]
    assert {g["weight_decay"] for g in groups} == {0.0, 0.01} and {tuple(g["betas"]) for g in groups} == {(0.8, 0.99)}
    assert C.load_torch(ckpt / "scheduler.pt")["base_lrs"][0] == pytest.approx(5e-4)


def test_a_rerun_without_resume_does_not_write_over_a_run(tmp_path, shapes):
    """It started over in place: its checkpoints replaced the old run's of the same steps (and rotation
    deleted the others), its rows were appended to the old logs."""
    train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, echo=quiet)
    before = (tmp_path / "log.csv").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a training run \(latest checkpoint ckpt-0+1\).*--resume"):
        train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, echo=quiet)
    assert (tmp_path / "log.csv").read_bytes() == before


def test_a_folder_with_a_config_yaml_of_no_run_is_refused_and_a_killed_runs_is_replaced(tmp_path, shapes):
    """`--work-dir "$WORK"` with WORK unset trains in the current folder, and replaced a project's own
    config.yaml by the run's resolved config."""
    (tmp_path / "config.yaml").write_text("my: precious settings\n")
    with pytest.raises(ConfigError, match=r"its config\.yaml is not one a training run wrote"):
        train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, echo=quiet)
    assert (tmp_path / "config.yaml").read_text() == "my: precious settings\n"
    assert not (tmp_path / "checkpoints").exists()
    run = tmp_path / "run"  # a run killed before its first checkpoint left its own: the rerun replaces it
    train(tiny_config(shapes, ["schedule.max_steps=1"]), run, echo=quiet)
    shutil.rmtree(run / "checkpoints")
    train(tiny_config(shapes, ["schedule.max_steps=1"]), run, echo=quiet)
    assert C.list_checkpoints(run)


def test_a_resume_that_freezes_a_part_says_why_it_cannot_go_on(tmp_path, shapes):
    """A multiplier set to 0 drops the part's parameter groups: PyTorch's bare ValueError said only that
    the groups differ."""
    train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, echo=quiet)
    with pytest.raises(ConfigError, match=r"optimizer\.pt: the checkpoint's optimizer does not fit this config .*"
                                          r"multiplier set to or from 0 .*model\.init="):
        train(tiny_config(shapes, ["schedule.max_steps=2", "optim.text_lr_mult=0"]), tmp_path, resume=True,
              echo=quiet)


def test_a_damaged_checkpoint_file_is_named_with_what_to_do(tmp_path, shapes):
    train(tiny_config(shapes, ["schedule.max_steps=2", "checkpoint.every_steps=1"]), tmp_path, echo=quiet)
    older, ckpt = tmp_path / "checkpoints" / C.checkpoint_name(1), tmp_path / "checkpoints" / C.checkpoint_name(2)
    (ckpt / "optimizer.pt").write_text("not a checkpoint\n")
    with pytest.raises(ConfigError) as e:
        train(tiny_config(shapes, ["schedule.max_steps=3"]), tmp_path, resume=True, echo=quiet)
    assert str(ckpt / "optimizer.pt") in str(e.value) and f"--resume {older}" in str(e.value)
    (ckpt / "optimizer.pt").write_bytes(pickle.dumps({"state": object}))  # no tensors: refused, never run
    with pytest.raises(ConfigError) as e:
        train(tiny_config(shapes, ["schedule.max_steps=3"]), tmp_path, resume=True, echo=quiet)
    assert "(UnpicklingError: " in str(e.value) and "weights_only" not in str(e.value)  # torch's advice to load it
    assert f"--resume {older}" in str(e.value)  # unsafely (with weights_only=False) is not passed on
    weights = ckpt / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConfigError) as e:
        train(tiny_config(shapes, ["schedule.max_steps=3"]), tmp_path, resume=True, echo=quiet)
    assert str(weights) in str(e.value) and "damaged" in str(e.value) and f"--resume {older}" in str(e.value)


@pytest.mark.parametrize("problem", ["truncated", "wrong root"])
def test_a_bad_held_out_image_fails_at_setup(tmp_path, shapes, problem):
    images = tmp_path / "eval"
    if problem == "truncated":
        shutil.copytree(shapes / "images", images / "images")
        bad = images / "images" / "val_00001.png"
        bad.write_bytes(bad.read_bytes()[:200])  # the header is whole: only the pixels are cut
    else:
        images.mkdir()
        bad = images / "images" / "val_00000.png"
    cfg = tiny_config(shapes, ["schedule.max_steps=1", "eval.every_epochs=1", f"eval.file={shapes / 'val.jsonl'}",
                               f"eval.images={images}"])
    with pytest.raises(DataError, match=re.escape(str(bad))):
        train(cfg, tmp_path / "run", echo=quiet)
    assert C.latest_checkpoint(tmp_path / "run") is None  # found before any training
    if problem == "wrong root":  # a root that is not there at all is named as eval.images
        cfg = tiny_config(shapes, ["schedule.max_steps=1", f"eval.file={shapes / 'val.jsonl'}",
                                   f"eval.images={tmp_path / 'nowhere'}"])
        with pytest.raises(ConfigError, match=r"eval\.images: .*nowhere: image root not found"):
            train(cfg, tmp_path / "other-run", echo=quiet)
        assert not (tmp_path / "other-run").exists()


@pytest.mark.parametrize(("file", "images", "field"), [("{}/missing.jsonl", "{s}", "data.train.0.file"),
                                                       ("{s}/train.jsonl", "{}/missing", "data.train.0.images")])
def test_data_that_is_not_there_is_named_before_the_work_dir_is_made(tmp_path, shapes, file, images, field):
    """Only the CLI checked the data paths first: ``train()`` from Python made the work dir and its
    TensorBoard files, then failed while indexing, the field unnamed."""
    file, images = file.format(tmp_path, s=shapes), images.format(tmp_path, s=shapes)
    cfg = tiny_config(shapes, ["schedule.max_steps=1", f"data.train=[{{file: {file}, images: {images}, ratio: 1}}]"])
    with pytest.raises(ConfigError, match=rf"{re.escape(field)}: .*missing"):
        train(cfg, tmp_path / "run", echo=quiet)
    assert not (tmp_path / "run").exists()


def test_nothing_to_train_is_an_error(tmp_path, shapes):
    cfg = tiny_config(shapes, [f"data.train=[{{file: {shapes / 'train.jsonl'}, images: {shapes}, ratio: 0}}]"])
    with pytest.raises(ConfigError, match=r"nothing to train.*12 usable records × ratio 0"):
        train(cfg, tmp_path, echo=quiet)


def test_a_misspelt_text_source_is_refused(tmp_path, shapes):
    cfg = tiny_config(shapes, ["data.source_probs={category: 0.5, vlm-short: 0.5}"])
    with pytest.raises(ConfigError, match="unknown source vlm-short; the known sources are category, llm, "
                                          "vlm_long, vlm_short"):
        train(cfg, tmp_path, echo=quiet)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a_held_out_image_cut_after_its_header_is_found_at_setup(tmp_path, fmt):
    """Pillow's verify() checks a PNG to its end but reads little more than a JPEG's header: a JPEG cut
    short passed the setup check and ended the run at its first evaluation."""
    from PIL import Image

    from reallod.data.records import Record

    rng = np.random.default_rng(0)
    good, cut = tmp_path / "good.img", tmp_path / "cut.img"
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(good, fmt, quality=95)
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    record = Record.from_dict({"filename": "x", "height": 96, "width": 128, "pairs": {}})
    evaluate.check_images([(record, str(good))])
    with pytest.raises(DataError, match=re.escape(str(cut)) + ".*held-out image cannot be read"):
        evaluate.check_images([(record, str(cut))])


def test_a_resized_held_out_copy_is_evaluated_in_its_records_frame(tmp_path, tiny_detector):
    """Training reads a copy resized keeping the aspect ratio, its boxes scaled; the evaluation refused one
    at setup. Its detections are scaled back to the record's size, where the held-out boxes are."""
    from PIL import Image

    from reallod.data.records import Record

    rng = np.random.default_rng(0)
    original, copy, swapped = tmp_path / "a.png", tmp_path / "a2.png", tmp_path / "a_rot.png"
    picture = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    picture.save(original)
    picture.resize((256, 192), Image.NEAREST).save(copy)
    picture.transpose(Image.Transpose.ROTATE_90).save(swapped)
    record = Record.from_dict({"filename": "x", "height": 96, "width": 128, "pairs": {}})
    evaluate.check_images([(record, str(original)), (record, str(copy))])
    with pytest.raises(DataError, match=r"a_rot\.png: held-out image is 96×128, its record says 128×96 \(not a resized"):
        evaluate.check_images([(record, str(swapped))])
    # the same pixels as the copy of a record of half the size: the boxes are those of the record's frame
    half = tmp_path / "half.png"
    half.write_bytes(original.read_bytes())
    queries = [evaluate.EvalQuery(str(original), "a square", np.array([[10.0, 10.0, 60.0, 50.0]]), (128, 96)),
               evaluate.EvalQuery(str(half), "a square", np.array([[5.0, 5.0, 30.0, 25.0]]), (64, 48))]
    a, b = evaluate.detect_queries(tiny_detector, queries)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(b.xyxy, a.xyxy / 2, atol=1e-4)


def test_amp_and_auto_scale_lr_are_in_the_resolved_config_and_a_resume_without_them_says_so(tmp_path, shapes):
    """config.yaml said mixed_precision 'no' of a run trained with --amp, and a resume that forgot --amp
    went on in fp32 without a word."""
    import yaml
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # one process, one precision: this test's own
    try:
        train(tiny_config(shapes, ["schedule.max_steps=1"]), tmp_path, amp=True, auto_scale_lr=True, echo=quiet)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["train"]["mixed_precision"] == "bf16" and written["optim"]["auto_scale_lr"] is True
    messages: list[str] = []
    train(tiny_config(shapes, ["schedule.max_steps=2"]), tmp_path, resume=True, echo=messages.append)
    said = next(m for m in messages if "the config differs from the checkpoint's" in m)
    assert "train.mixed_precision bf16 → no" in said and "optim.auto_scale_lr True → False" in said, said


def test_a_tokenizer_folder_without_a_vocabulary_is_refused_naming_the_key(tmp_path, shapes):
    """The tiny model's tokenizer from a folder with no vocab.txt was one of 5 special tokens: every word
    [UNK], trained on without a word; a missing path was "unexpected OSError: Repo id must use..."."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty: no tokenizer vocabulary .* set model\.tokenizer to a folder"):
        train(tiny_config(shapes, ["schedule.max_steps=1", f"model.tokenizer={tmp_path / 'empty'}"]),
              tmp_path / "run", echo=quiet)
    with pytest.raises(ConfigError, match=r"nonesuch: tokenizer folder not found"):
        train(tiny_config(shapes, ["schedule.max_steps=1", f"model.tokenizer={tmp_path / 'nonesuch'}"]),
              tmp_path / "run2", echo=quiet)
