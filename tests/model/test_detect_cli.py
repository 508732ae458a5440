"""`reallod detect` and `reallod convert-checkpoint` through the real CLI entry point."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from reallod.data.images import open_image
from reallod.errors import DataError
from reallod.model.detect import find_images, load_predictions
from reallod.model.draw import PALETTES, draw_detections, palette
from reallod.model.tiny import minilm_dir, tiny_config
from tests.cli_helpers import run_cli
from tests.data.image_files import png_claiming_size

from .mmdet_layout import to_mmdet_layout


@pytest.fixture
def image_dir(tmp_path, photo):
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    photo.save(d / "astronaut.jpg")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / "sub" / "flipped.png")
    (d / "broken.jpg").write_bytes(b"this is not a jpeg")
    (d / "notes.md").write_text("ignored: not an image suffix")
    return d


def test_detect_folder_writes_json_and_pictures(capsys, image_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["detect", str(image_dir), str(tiny_model_dir), "--texts",
                                    "an astronaut . a flag .", "--texts", "the helmet", "--out-dir", str(out),
                                    "--device", "cpu", "--topk", "10"], capsys)
    assert code == 0, stderr
    assert "skipped" in stderr and "broken.jpg" in stderr
    assert "2 images, 3 expressions" in stdout and "1 skipped" in stdout
    pred = json.loads((out / "preds" / "astronaut.json").read_text())
    assert pred["expressions"] == ["an astronaut", "a flag", "the helmet"]
    assert len(pred["bboxes"]) == len(pred["scores"]) == len(pred["labels"]) == 30
    assert (pred["height"], pred["width"]) == (150, 200)
    assert (out / "preds" / "sub" / "flipped.json").is_file()
    vis = Image.open(out / "vis" / "astronaut.jpg")
    assert vis.size == (200, 150)
    assert load_predictions(out / "preds" / "sub" / "flipped.json").expressions[2] == "the helmet"


def test_detect_print_result_and_no_save(capsys, image_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["detect", str(image_dir / "astronaut.jpg"), str(tiny_model_dir), "--texts",
                               "$: coco", "--out-dir", str(out), "--device", "cpu", "--no-save-vis", "--no-save-pred",
                               "--print-result", "--topk", "1", "--mode", "concat", "--batch-size", "2"], capsys)
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert len(result["expressions"]) == 80 and len(result["labels"]) == 80
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--texts", "  "], "no expressions"),
    ([], "at least one --texts"),
    (["--texts", "dog", "--palette", "rainbow"], "--palette"),
    (["--texts", "dog", "--mode", "both"], "--mode (InferenceOptions.mode) must be"),
    (["--texts", "dog", "--dtype", "int4"], "unknown dtype"),
])
def test_detect_bad_arguments(capsys, image_dir, tiny_model_dir, args, message):
    code, _, stderr = run_cli(["detect", str(image_dir), str(tiny_model_dir), "--device", "cpu", *args], capsys)
    assert code == 2 and message in stderr
    assert "Traceback" not in stderr


def test_detect_with_a_model_that_is_not_a_detector(capsys, image_dir):
    code, _, stderr = run_cli(["detect", str(image_dir), str(minilm_dir()), "--texts", "dog"], capsys)
    assert code == 2 and "is not a Grounding-DINO detector" in stderr and len(stderr.strip().splitlines()) == 1


def test_detect_when_no_image_can_be_read(capsys, tmp_path, tiny_model_dir):
    (tmp_path / "a.jpg").write_bytes(b"nope")
    code, _, stderr = run_cli(["detect", str(tmp_path), str(tiny_model_dir), "--texts", "dog",
                               "--device", "cpu", "--out-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "none of the 1 images could be read" in stderr


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_others_go_on(tmp_path, capsys, tiny_model_dir, photo):
    """Linux keeps file names as bytes: a Latin-1 name (café in a scraped dataset) once ended the whole
    run at its image with a TypeError from the JSON writer, and again at each rerun."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    try:
        photo.save(os.fsencode(imgs) + b"/caf\xe9.jpg", format="JPEG")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    photo.save(imgs / "ok.jpg")
    args = ["detect", str(imgs), str(tiny_model_dir), "--texts", "dog", "--device", "cpu", "--out-dir",
            str(tmp_path / "o"), "--no-save-vis"]
    code, _, stderr = run_cli(args, capsys)
    assert code == 0 and "caf\\xe9.jpg: the file name is not valid UTF-8" in stderr and "Traceback" not in stderr
    assert [p.name for p in (tmp_path / "o" / "preds").iterdir()] == ["ok.json"]
    code, _, stderr = run_cli(args, capsys)  # the rerun keeps ok.jpg and skips the other again
    assert code == 0 and "not valid UTF-8" in stderr


def test_an_image_too_thin_to_resize_is_skipped_and_the_others_go_on(tmp_path, capsys, tiny_model_dir, photo):
    """transformers' processor raised a bare ValueError for an image whose short side would resize to
    nothing (a 5000 × 3 strip at this model's 224-pixel limit), which ended the whole run."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (5000, 3)).save(imgs / "a_strip.png")
    photo.save(imgs / "b.jpg")
    code, _, stderr = run_cli(["detect", str(imgs), str(tiny_model_dir), "--texts", "dog", "--device", "cpu",
                               "--out-dir", str(tmp_path / "o"), "--no-save-vis"], capsys)
    assert code == 0 and "Traceback" not in stderr
    assert "a_strip.png: image is 5000×3: too thin to resize to the model's input" in stderr
    assert [p.name for p in (tmp_path / "o" / "preds").iterdir()] == ["b.json"]


def test_a_named_pipe_among_the_images_is_skipped_not_waited_on(tmp_path, capsys, tiny_model_dir, photo):
    """Opening a FIFO named like an image waits for a writer: the run stopped there for good. Given as
    the input itself, it was "no images in the folder"."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    photo.save(imgs / "a.jpg")
    os.mkfifo(imgs / "b.jpg")
    code, _, stderr = run_cli(["detect", str(imgs), str(tiny_model_dir), "--texts", "dog", "--device", "cpu",
                               "--out-dir", str(tmp_path / "o"), "--no-save-vis"], capsys)
    assert code == 0 and "b.jpg: not a regular file (a named pipe, a device or a socket)" in stderr, stderr
    assert [p.name for p in (tmp_path / "o" / "preds").iterdir()] == ["a.json"]
    with pytest.raises(DataError, match="neither an image file nor a folder"):
        find_images(imgs / "b.jpg")
    with pytest.raises(DataError, match=r"b\.jpg: not a regular file"):
        open_image(imgs / "b.jpg")


def test_decompression_bomb_is_skipped_before_decoding(tmp_path, capsys, tiny_model_dir, photo):
    bomb = tmp_path / "imgs" / "bomb.png"
    bomb.parent.mkdir()
    png_claiming_size(bomb, 60_000, 60_000)
    with pytest.raises(DataError, match="3,600,000,000 pixels"):
        open_image(bomb)
    photo.save(tmp_path / "imgs" / "ok.jpg")
    code, _, stderr = run_cli(["detect", str(tmp_path / "imgs"), str(tiny_model_dir), "--texts", "dog",
                               "--device", "cpu", "--out-dir", str(tmp_path / "o")], capsys)
    assert code == 0 and "bomb.png" in stderr and "above the limit" in stderr
    with pytest.raises(DataError, match="above the limit of 100"):
        open_image(tmp_path / "imgs" / "ok.jpg", max_pixels=100)


def test_find_images_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        find_images(tmp_path / "missing")
    with pytest.raises(DataError, match="no images"):
        find_images(tmp_path)


def test_find_images_passes_over_hidden_files_links_to_folders_and_the_output(tmp_path, photo):
    d = tmp_path / "photos"
    (d / "a" / "b").mkdir(parents=True)
    (d / ".cache").mkdir()
    (d / "outputs" / "vis").mkdir(parents=True)
    for name in ("z.jpg", "a/b/y.png", "a/x.JPG", ".hidden.jpg", ".cache/w.jpg", "outputs/vis/z.jpg"):
        photo.save(d / name)
    (d / "elsewhere").symlink_to(d / "a", target_is_directory=True)
    (d / "outputs" / "detect.journal.jsonl").write_text("")  # written by a run killed before it noted z.jpg
    assert find_images(d, d / "outputs") == (d, ["a/b/y.png", "a/x.JPG", "z.jpg"])
    assert find_images(d) == (d, ["a/b/y.png", "a/x.JPG", "z.jpg"])  # an earlier run's outputs, wherever
    assert find_images(d / "z.jpg") == (d, ["z.jpg"])


def test_find_images_lists_folder_by_folder_as_paths_sort(tmp_path, photo):
    names = ["a.b/y.jpg", "a/x.jpg", "a-c.jpg", "a/b/c.jpg", "a/b.c.jpg", "b.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(tmp_path / name)
    assert find_images(tmp_path)[1] == [str(p) for p in sorted(Path(n) for n in names)]


def test_a_run_inside_its_own_input_does_not_take_its_pictures_for_images(capsys, image_dir, tiny_model_dir,
                                                                           monkeypatch):
    """``cd photos && reallod detect . MODEL`` writes into photos/outputs: a rerun finds the same images."""
    monkeypatch.chdir(image_dir)
    args = ["detect", ".", str(tiny_model_dir), "--texts", "an astronaut", "--device", "cpu", "--topk", "3"]
    assert run_cli(args, capsys)[0] == 0
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "2 images (2 done by an earlier run)" in stdout
    assert sorted(str(p.relative_to(image_dir)) for p in (image_dir / "outputs").rglob("*.json")) == [
        "outputs/preds/astronaut.json", "outputs/preds/sub/flipped.json"]


def test_images_that_differ_only_in_suffix_keep_their_own_outputs(capsys, tiny_model_dir, tmp_path, photo):
    """photo.jpg and photo.png once wrote one preds/photo.json, the second over the first, and a rerun
    redid them for ever; now such images are named whole, every other as MMDetection names it."""
    d = tmp_path / "images"
    d.mkdir()
    for name in ("p.jpg", "p.png", "q.tif", "q.png", "r.gif"):
        photo.save(d / name)
    out = tmp_path / "out"
    args = ["detect", str(d), str(tiny_model_dir), "--texts", "an astronaut", "--device", "cpu", "--topk", "3",
            "--out-dir", str(out)]
    assert run_cli(args, capsys)[0] == 0
    assert sorted(p.name for p in (out / "preds").iterdir()) == [
        "p.jpg.json", "p.png.json", "q.png.json", "q.tif.json", "r.json"]
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["p.jpg", "p.png", "q.png", "q.tif.png", "r.png"]
    assert "5 images (5 done by an earlier run)" in run_cli(args, capsys)[1]


def test_palettes_and_drawing(tiny_detector, photo):
    for name in PALETTES:
        colors = palette(name, 25)
        assert len(colors) == 25 and all(len(c) == 3 for c in colors)
    assert len(set(palette("coco", 80))) == 80 and len(set(palette("voc", 20))) == 20
    assert palette("voc", 3) == [(128, 0, 0), (0, 128, 0), (128, 128, 0)]
    dets = tiny_detector.detect(photo, ["a dog", "a cat"], topk=3)
    drawn = draw_detections(photo, dets, score_thr=0.0)
    assert drawn.size == photo.size and drawn.tobytes() != photo.tobytes()
    assert draw_detections(photo, dets, score_thr=1.01).tobytes() == photo.convert("RGB").tobytes()


def test_labels_go_above_then_inside_top_then_below_then_inside_bottom():
    """Each spot taken in turn by an earlier label sends the next label of the same box to the next
    spot; with all four taken, the least-hiding one (here inside the bottom, half hidden)."""
    import numpy as np

    from reallod.model.draw import _place_label

    box, size, canvas = (10.0, 50.0, 60.0, 100.0), (30.0, 10.0), (200, 200)
    taken, spots = np.empty((0, 4)), []
    for _ in range(4):
        spots.append(_place_label(box, size, canvas, taken))
        taken = np.vstack([taken, spots[-1]])
    assert spots == [(10.0, 40.0, 40.0, 50.0), (10.0, 50.0, 40.0, 60.0), (10.0, 100.0, 40.0, 110.0),
                     (10.0, 90.0, 40.0, 100.0)]
    half = np.array([*spots[:3], (10.0, 95.0, 40.0, 105.0)])  # three spots covered whole, the last half
    assert _place_label(box, size, canvas, half) == (10.0, 90.0, 40.0, 100.0)
    # above a box at the top edge is off the picture: the label is kept inside it
    assert _place_label((0.0, 0.0, 20.0, 20.0), size, (25, 25), np.empty((0, 4))) == (0.0, 0.0, 30.0, 10.0)


def test_convert_checkpoint_cli(capsys, tmp_path, tiny_model_dir):
    config = tiny_config()
    cfg_file = tmp_path / "tiny.json"
    config.to_json_file(str(cfg_file))
    mm = to_mmdet_layout(load_file(str(tiny_model_dir / "model.safetensors")), config)
    src = tmp_path / "ckpt.pth"
    torch.save({"state_dict": mm}, src)
    out = tmp_path / "hf"
    code, stdout, stderr = run_cli(["convert-checkpoint", str(src), str(out), "--config", str(cfg_file),
                                    "--tokenizer", str(minilm_dir())], capsys)
    assert code == 0, stderr
    assert "no missing or unexpected keys" in stdout and (out / "model.safetensors").is_file()
    code, _, stderr = run_cli(["convert-checkpoint", str(src), str(out), "--config", str(cfg_file),
                               "--tokenizer", str(minilm_dir())], capsys)
    assert code == 2 and "not empty" in stderr
    code, _, stderr = run_cli(["convert-checkpoint", str(src), str(tmp_path / "x"), "--variant", "base",
                               "--tokenizer", str(minilm_dir())], capsys)
    assert code == 2 and "does not fit --variant base" in stderr


def test_detect_scores_over_all_tokens_on_request(capsys, image_dir, tiny_model_dir, tiny_detector, tmp_path):
    from reallod.model.inference import InferenceOptions

    args = ["detect", str(image_dir / "astronaut.jpg"), str(tiny_model_dir), "--texts", "the helmet", "--device",
            "cpu", "--no-save-vis", "--no-save-pred", "--print-result", "--topk", "5"]
    code, stdout, err = run_cli([*args, "--score-over", "all-tokens"], capsys)
    assert code == 0, err
    got = json.loads(stdout.strip().splitlines()[-1])
    want = tiny_detector.detect(open_image(image_dir / "astronaut.jpg"), ["the helmet"],
                                InferenceOptions(topk=5, score_over="all-tokens"))
    assert got["scores"] == pytest.approx(sorted(want.scores.tolist(), reverse=True), abs=1e-4)
    code, stdout, _ = run_cli(args, capsys)
    assert json.loads(stdout.strip().splitlines()[-1])["scores"] != pytest.approx(got["scores"], abs=1e-3)
    code, _, err = run_cli([*args, "--score-over", "all-tokens", "--mode", "concat"], capsys)
    assert code == 2 and "needs parallel mode" in err


def test_detect_with_a_missing_model_folder_fails_at_once(capsys, image_dir, tmp_path, monkeypatch):
    import time

    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    code, _, err = run_cli(["detect", str(image_dir), "./no/such/model", "--texts", "a dog"], capsys)
    assert time.perf_counter() - start < 5  # no hub look-up (that would retry for ~26 s)
    assert code == 2 and err.strip() == "error: ./no/such/model: model folder not found (a local path; hub ids " \
        "look like ORG/NAME)"


def test_weights_that_do_not_fit_name_the_users_file_and_a_few_keys(capsys, image_dir, tiny_model_dir, tmp_path):
    fake = tmp_path / "fake.pth"
    torch.save({"a.weight": torch.zeros(2), "b.bias": torch.zeros(3)}, fake)
    code, _, err = run_cli(["detect", str(image_dir), str(tiny_model_dir), "--texts", "a dog", "--device", "cpu",
                            "--weights", str(fake)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {fake}: weights do not match the mm-grounding-dino config; ")
    assert "reallod-weights" not in err  # not the temporary folder the file was written into
    assert re.search(r"\d+ missing keys, e\.g\. [^,;]+, [^,;]+, [^,;]+; … and \d+ more; "
                     r"2 unexpected keys: a\.weight, b\.bias$", err.strip()), err
    assert len(err) < 400


def test_a_text_file_is_not_a_checkpoint(capsys, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello world\n")
    code, _, err = run_cli(["convert-checkpoint", str(text), str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.strip() == (f"error: {text}: cannot load it: not a PyTorch checkpoint or safetensors file "
                           "(it is text, starting 'hello world')")
    assert "101" not in err and not (tmp_path / "out").exists()


def test_safetensors_content_loads_whatever_the_name(tmp_path):
    from safetensors.torch import save_file

    from reallod.model.convert_checkpoint import load_state_file

    path = tmp_path / "weights.pth"
    save_file({"x": torch.ones(2)}, str(path))
    assert load_state_file(path)["x"].tolist() == [1.0, 1.0]


def test_a_tokenizer_that_cannot_be_found_is_named_as_the_option(capsys, image_dir, tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    """Offline, `detect --tokenizer bert-base-uncased` said "bert-base-uncased: cannot reach the hub", naming
    neither the option nor that no such folder is here; it is refused before the model loads."""
    from huggingface_hub import constants

    import reallod.model.loading as loading

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def not_yet(*args, **kwargs):
        raise AssertionError("the model was loaded first")

    monkeypatch.setattr(loading, "load_detector", not_yet)
    for tokenizer, said in (("bert-base-uncased", "--tokenizer bert-base-uncased: no such tokenizer folder here, "
                                                  "and as a hub id it cannot be fetched"),
                            ("./no-such-vocab", "--tokenizer ./no-such-vocab: tokenizer folder not found")):
        code, _, err = run_cli(["detect", image_dir, tiny_model_dir, "--texts", "dog", "--device", "cpu",
                                "--out-dir", tmp_path / "out", "--tokenizer", tokenizer], capsys)
        assert code == 2 and said in " ".join(err.split()), err
    assert not (tmp_path / "out").exists()
