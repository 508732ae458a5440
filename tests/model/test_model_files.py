"""A model folder's small files and the image size: a broken or missing one is named before the weights
load, never taken for defaults or blamed on every image."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from reallod.errors import ConfigError, DataError
from reallod.model.convert_checkpoint import variant_config
from reallod.model.hf_folder import load_tokenizer
from reallod.model.inference import input_problem, prepare_pixels
from reallod.model.loading import load_detector, load_image_processor, loaded_settings
from tests.cli_helpers import run_cli


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    return out


@pytest.fixture
def no_weights(monkeypatch):
    """The weights must not be loaded: the command is refused before."""
    monkeypatch.setattr("reallod.model.loading.load_model_checked",
                        lambda *a, **k: pytest.fail("the weights were loaded"))


def _edit_processor(folder, **changes):
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_broken_preprocessor_config_is_refused_not_replaced_by_defaults(model_copy, no_weights):
    """Damaged JSON was ignored: the run went on at 800,1333 instead of the model's 128,224."""
    (model_copy / "preprocessor_config.json").write_text("{bad json")
    with pytest.raises(ConfigError, match=r"model/preprocessor_config.json: not a usable image processor config"):
        load_detector(model_copy, device="cpu")
    with pytest.raises(ConfigError, match=r"preprocessor_config.json: not a usable"):
        loaded_settings(model_copy)  # what a resume compares before the model loads
    (model_copy / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"preprocessor_config.json: not a usable"):
        load_image_processor(model_copy)
    (model_copy / "preprocessor_config.json").unlink()  # absent: the published defaults
    assert dict(load_image_processor(model_copy).size)["shortest_edge"] == 800


def test_processor_settings_it_fails_on_are_named_once_not_blamed_on_every_image(model_copy, tiny_detector, photo,
                                                                                capsys, tmp_path):
    """An image_mean of two values skipped every image as 'too thin to resize'."""
    _edit_processor(model_copy, image_mean=[0.5, 0.5])
    with pytest.raises(ConfigError, match=r"model/preprocessor_config.json: the image processor fails on an image "
                                          r"\(mean must have 3 elements"):
        load_image_processor(model_copy)
    photo.save(tmp_path / "a.jpg")
    code, _, err = run_cli(["detect", str(tmp_path / "a.jpg"), str(model_copy), "--texts", "a dog", "--device", "cpu",
                            "--out-dir", str(tmp_path / "out")], capsys)
    assert code != 0 and "preprocessor_config.json: the image processor fails" in err and "too thin" not in err, err
    # a detector built around such a processor: its first image stops the run with the file named
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    proc = GroundingDinoImageProcessorPil(**{**tiny_detector.image_processor.to_dict(), "image_mean": [0.5, 0.5]})
    broken = type(tiny_detector)(tiny_detector.model, tiny_detector.tokenizer, proc, tiny_detector.device,
                                 tiny_detector.dtype, source=str(model_copy))
    with pytest.raises(ConfigError, match=r"model/preprocessor_config.json: the image processor fails on a 200×150"):
        prepare_pixels(broken, photo)


def test_an_image_too_thin_for_the_models_queries_is_skipped_not_a_crash(tiny_detector, tiny_model_dir, capsys,
                                                                         tmp_path, photo):
    """A strip that resizes to a few feature positions gave torch's 'selected index k out of range' (fewer
    positions than queries for the encoder's top-k), which ended the run; Real-Model's 900 queries at
    800,1333 meet it at a 2000 × 10 strip."""
    real = variant_config("tiny")
    assert input_problem(real, 7, 1333) == "it gives 314 image positions, fewer than the model's 900 queries"
    assert input_problem(real, 800, 1066) is None
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (2000, 100)).save(imgs / "a_strip.png")  # at 65,65: 3 × 65 pixels, 19 positions for 30 queries
    photo.save(imgs / "b.jpg")
    code, stdout, err = run_cli(["detect", str(imgs), str(tiny_model_dir), "--texts", "dog", "--device", "cpu",
                                 "--out-dir", str(tmp_path / "o"), "--image-size", "65,65"], capsys)
    assert code == 0 and "Traceback" not in err and "1 skipped" in stdout, err
    assert ("a_strip.png: image is 2000×100: too thin to resize to the model's input: resized to 65×3, it gives 19 "
            "image positions, fewer than the model's 30 queries") in err
    with pytest.raises(DataError, match="image is 5000×3: too thin to resize to the model's input \\(a side would be "
                                        "under one pixel\\)"):
        prepare_pixels(tiny_detector, Image.new("RGB", (5000, 3)))


@pytest.mark.parametrize(("size", "said"), [
    ("8,8", "--image-size 8,8: too small for this model: a square image is resized to 8×8, where its 64-pixel "
            "feature map would be a single value, too little for the model's group norm; this model needs a SHORT "
            "of at least 65"),
    ("64,1333", "this model needs a SHORT of at least 65"),
    ("100000,100000", "--image-size 100000,100000: an image resized to it may have 10,000,000,000 pixels, more than "
                      "the 89,478,485"),
    ("300,200", "--image-size 300,200: must be SHORT,LONG with 0 < SHORT <= LONG"),
])
def test_image_sizes_out_of_bounds_are_refused_before_loading(size, said, tiny_model_dir, tmp_path, photo, capsys,
                                                             no_weights):
    """8,8 crashed in the group norm of a 1 × 1 map ('Expected more than 1 value per channel'), and
    100000,100000 ran out of memory."""
    photo.save(tmp_path / "a.jpg")
    code, _, err = run_cli(["detect", str(tmp_path / "a.jpg"), str(tiny_model_dir), "--texts", "a dog", "--device",
                            "cpu", "--out-dir", str(tmp_path / "out"), "--image-size", size], capsys)
    assert code != 0 and said in err and "unexpected" not in err, err


def test_the_smallest_image_size_is_what_the_backbone_allows(tiny_model_dir, photo):
    """65 is the least SHORT at which the tiny model's coarsest map (stride 64) has more than one value."""
    load_detector(tiny_model_dir, device="cpu", image_size=(65, 65)).detect(photo, ["a dog"])
    with pytest.raises(ConfigError, match="at least 65"):
        load_detector(tiny_model_dir, device="cpu", image_size=(64, 64))
    real = variant_config("tiny")  # Real-Model: 900 queries need 201 × 201 (1.33 positions per 64 pixels)
    assert input_problem(real, 201, 201) is None and input_problem(real, 200, 200) is not None


def test_a_model_size_in_its_preprocessor_file_is_checked_too(model_copy, no_weights):
    _edit_processor(model_copy, size={"shortest_edge": 5, "longest_edge": 1333})
    with pytest.raises(ConfigError, match=r"model/preprocessor_config.json \(size\): too small for this model: a "
                                          r"square image is resized to 5×5"):
        load_detector(model_copy, device="cpu")


def test_a_tokenizer_folder_without_a_vocabulary_says_so(model_copy, no_weights, tmp_path, capsys, photo):
    """It said 'tokenizer ids for [CLS] [SEP] . ? [PAD] are [2, 3, 1, 1, 0]', nothing of the missing file."""
    (model_copy / "vocab.txt").unlink()
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"model: no tokenizer vocabulary \(neither vocab.txt nor tokenizer.json\)"):
        load_tokenizer(model_copy)
    photo.save(tmp_path / "a.jpg")
    code, _, err = run_cli(["detect", str(tmp_path / "a.jpg"), str(model_copy), "--texts", "a dog", "--device", "cpu",
                            "--out-dir", str(tmp_path / "out")], capsys)
    assert code != 0 and "no tokenizer vocabulary" in err and "[2, 3, 1, 1, 0]" not in err, err


@pytest.mark.parametrize("name", ["tokenizer_config.json", "tokenizer.json"])
def test_a_broken_tokenizer_file_is_named_as_broken(name, model_copy):
    """A damaged tokenizer_config.json was reported as 'no BERT tokenizer files (vocab.txt) found'."""
    (model_copy / name).write_text("{bad")
    with pytest.raises(ConfigError, match=rf"model/{name}: not valid JSON: .*; fix the file, or remove it"):
        load_tokenizer(model_copy)
