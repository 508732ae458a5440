import json
import shutil

import numpy as np
import pytest
import torch

from reallod.errors import ConfigError
from reallod.model.loading import load_detector, resolve_device, resolve_dtype
from reallod.model.tiny import minilm_dir, save_tiny_detector


def test_loads_folder_with_tokenizer_and_processor(tiny_detector):
    assert tiny_detector.device.type == "cpu" and tiny_detector.dtype == torch.float32
    assert type(tiny_detector.model).__name__ == "MMGroundingDinoForObjectDetection"
    assert tiny_detector.tokenize("a dog.") == [1037, 3899, 1012]
    assert tiny_detector.image_processor.size.shortest_edge == 128


def test_a_folder_that_is_not_a_detector(tmp_path):
    with pytest.raises(ConfigError, match="model_type 'bert' is not a Grounding-DINO detector"):
        load_detector(minilm_dir(), device="cpu")
    with pytest.raises(ConfigError, match="model folder not found"):
        load_detector(tmp_path / "nope", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a model folder"):
        load_detector(tmp_path / "empty", device="cpu")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a valid JSON config"):
        load_detector(tmp_path / "bad", device="cpu")


def test_weights_that_do_not_match_the_config_are_named(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["decoder_layers"] = 3  # a layer the weights do not have
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"missing keys: .*decoder\.layers\.2\."):
        load_detector(folder, device="cpu")


def test_misshaped_weights_are_named(tiny_model_dir, tmp_path):
    folder = tmp_path / "q"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_queries"] = 40
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"query_position_embeddings\.weight \(file \[30, 32\], model \[40, 32\]\)"):
        load_detector(folder, device="cpu")


def test_tokenizer_with_other_ids_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n.\n?\ndog\n")
    with pytest.raises(ConfigError, match="bert-base-uncased ids"):
        load_detector(tiny_model_dir, device="cpu", tokenizer=folder)


def test_text_limit_is_configurable_up_to_512(tiny_model_dir):
    assert load_detector(tiny_model_dir, device="cpu", max_text_len=512).max_text_len == 512
    with pytest.raises(ConfigError, match="between 4 and 512"):
        load_detector(tiny_model_dir, device="cpu", max_text_len=1024)


def test_devices_and_dtypes():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("fp16") == torch.float16
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int8")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_weights_override_in_hf_layout(tiny_model_dir, tmp_path, photo, tiny_detector):
    other = save_tiny_detector(tmp_path / "seed7", seed=7)
    swapped = load_detector(tiny_model_dir, weights=other / "model.safetensors", device="cpu")
    direct = load_detector(other, device="cpu")
    a, b = swapped.detect(photo, ["a dog"]), direct.detect(photo, ["a dog"])
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert not np.allclose(a.scores, tiny_detector.detect(photo, ["a dog"]).scores, atol=1e-3)
