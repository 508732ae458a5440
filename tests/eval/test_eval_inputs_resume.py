"""`reallod eval --model ... --out` resumed after its inputs changed: the model folder's settings files (refused,
naming what changed, before the model loads) or an image of --images (predicted again)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from tests.cli_helpers import CUDA_OOM_SAID, cuda_out_of_memory, run_cli
from tests.eval import synthetic as syn


@pytest.fixture
def run(tmp_path, tiny_model_dir, monkeypatch):
    """An OmniLabel model run over four images with a copy of the tiny model; ``run(stop_at=N)`` presses Ctrl-C
    (or raises ``stop_with``) at the detector's N-th call. Returns (exit code, stderr, the images the detector was called on)."""
    import torch

    from reallod.model.inference import Detector

    gt = syn.omnilabel_gt(1, n_images=4)
    syn.write_images(tmp_path / "images", gt["images"])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    real, seen, stop = Detector.detect, [], [None, KeyboardInterrupt]

    def detect(self, picture, *a, **k):
        seen.append(picture.size)
        if len(seen) == stop[0]:
            raise stop[1]
        return real(self, picture, *a, **k)

    monkeypatch.setattr(Detector, "detect", detect)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def go(capsys, *extra, stop_at: int | None = None, stop_with: BaseException | type = KeyboardInterrupt,
           out: str = "preds.json") -> tuple[int, str, list]:
        seen.clear()
        stop[:] = stop_at, stop_with
        code, _, err = run_cli(["eval", "omnilabel", "--annotations", tmp_path / "gt.json", "--images",
                                tmp_path / "images", "--model", tmp_path / "model", "--device", "cpu",
                                "--out", tmp_path / out, *extra], capsys)
        return code, err, list(seen)

    yield go
    torch.set_num_threads(threads)


def _edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(("edit", "said"), [
    (lambda m: _edit_json(m / "preprocessor_config.json", size={"shortest_edge": 64, "longest_edge": 96}),
     ["the image size (--image-size, or the model's preprocessor_config.json) (was '128,224', now '64,96')",
      "model/preprocessor_config.json (its content)"]),
    (lambda m: _edit_json(m / "config.json", max_text_len=128),
     ["the text limit (--max-text-len, or the model's config.json) (was 256, now 128)",
      "model/config.json (its content)"]),
    (lambda m: (m / "vocab.txt").write_text((m / "vocab.txt").read_text() + "newword\n"),
     ["model/vocab.txt (its content)"]),
], ids=["preprocessor", "config", "tokenizer"])
def test_a_model_folder_edited_since_is_refused_before_the_model_loads(run, tmp_path, capsys, monkeypatch, edit,
                                                                       said):
    """Editing preprocessor_config.json's size kept every journaled image's predictions made at the old size:
    the settings compared are those the model loads with, and its settings files' content."""
    from reallod.eval import jobs

    code, err, _ = run(capsys, stop_at=3)
    assert code == 130, err
    journal = tmp_path / "preds.journal.jsonl"
    before = journal.read_bytes()
    edit(tmp_path / "model")

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(jobs, "load_model", refuse)
    code, err, seen = run(capsys)
    assert code != 0 and not seen and "AssertionError" not in err, err
    text = " ".join(err.split())
    assert "preds.journal.jsonl: left by an interrupted run with other settings: " in text, text
    for words in said:
        assert words in text, text
    assert "delete the journal to start over" in text
    assert journal.read_bytes() == before


def test_out_of_gpu_memory_keeps_the_predictions_made_and_names_the_batch_size(run, tmp_path, capsys):
    """Resuming at a smaller batch is what the journal allows (the batch size is not among its settings):
    the one-line error (exit 2) says so, and the rerun predicts only the images left."""
    code, err, _ = run(capsys, stop_at=3, stop_with=cuda_out_of_memory())
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {CUDA_OOM_SAID} (predicting ") and "with --batch-size 8); 2 of 4 images are kept in " \
        f"{tmp_path / 'preds.journal.jsonl'}: rerun the same command with a smaller --batch-size to go on" in last, last
    assert "PYTORCH_CUDA_ALLOC_CONF" not in err
    code, err, seen = run(capsys, "--batch-size", "2")
    assert code == 0 and len(seen) == 2, err


def test_out_of_gpu_memory_without_a_journal_says_nothing_is_kept(run, tmp_path, capsys, monkeypatch):
    from reallod.errors import OutOfMemory
    from reallod.eval.omnilabel import load_gt
    from reallod.eval.predict import RunOptions, predict
    from reallod.model.inference import Detector
    from reallod.model.loading import load_detector

    run(capsys)  # the images and the model folder
    real, calls = Detector.detect, []

    def detect(self, *args, **kwargs):  # a GPU that fills up at the second image
        calls.append(1)
        if len(calls) == 2:
            raise cuda_out_of_memory()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "detect", detect)
    images = load_gt(tmp_path / "gt.json").eval_images()
    with pytest.raises(OutOfMemory, match=r"the predictions made \(1 of 4 images\) are not kept \(give --out to make "
                                          r"a model run resumable\): rerun with a smaller --batch-size"):
        predict(images, load_detector(tmp_path / "model", device="cpu"), tmp_path / "images", RunOptions(progress=False))


def test_a_typed_max_text_len_counts_as_what_it_changes(run, capsys):
    code, err, _ = run(capsys, stop_at=3)
    assert code == 130, err
    code, err, _ = run(capsys, "--max-text-len", "128")
    assert "the text limit (--max-text-len, or the model's config.json) (was 256, now 128)" in " ".join(err.split())
    code, err, seen = run(capsys, "--max-text-len", "256", "--image-size", "128,224")  # what the folder says
    assert code == 0 and len(seen) == 2, err


def test_an_image_replaced_since_is_predicted_again(run, tmp_path, capsys):
    """Rotating an image done before the interrupt kept its old predictions: it is predicted again, and the
    predictions are byte for byte those of an uninterrupted run over the images as they are now."""
    code, err, done = run(capsys, stop_at=3)
    assert code == 130 and len(done) == 3, err
    path = tmp_path / "images" / "img_0.png"
    Image.open(path).rotate(90, expand=True).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # whatever the clock's grain
    code, err, seen = run(capsys)
    assert code == 0, err
    assert seen[0] == Image.open(path).size and len(seen) == 3  # img_0 again, then the two never done
    code, err, _ = run(capsys, out="fresh.json")
    assert code == 0, err
    assert (tmp_path / "preds.json").read_bytes() == (tmp_path / "fresh.json").read_bytes()
