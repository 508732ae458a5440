import json
import shutil
from pathlib import Path

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
    with pytest.raises(ConfigError, match=r"\d+ missing keys, e\.g\. \S*\.2\.\S+, \S*\.2\.\S+, \S*\.2\.\S+; … and \d+ more$"):
        load_detector(folder, device="cpu")


def test_a_config_field_of_the_wrong_type_names_the_file(tiny_model_dir, tmp_path):
    """transformers checks config fields as strict dataclasses: the error went through as 'unexpected
    StrictDataclassFieldValidationError', exit 1, naming no file."""
    folder = tmp_path / "t"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["d_model"] = "big"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"t/config\.json: (cannot read the model config|.*d_model)"):
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


# --- local paths and the hub: a mistyped path or an unreachable hub is one line, at once -------------


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """The hub is unreachable (a closed local port) and its cache empty; nothing leaves the machine."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize("name", ["./no/such/model", "no/such/model", "~/no-such-reallod-model", "models/typo",
                                  "real-model_t.pth", "models\\typo"])
def test_a_missing_local_path_fails_at_once_without_the_hub(name, monkeypatch, tmp_path, no_hub):
    import time

    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("a local path was sent to the hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # the parent folder exists: models/typo is a path, not ORG/NAME
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"model folder not found|checkpoint file") as err:
        load_detector(name, device="cpu")
    assert time.perf_counter() - start < 5  # no hub look-up (that would retry for ~26 s)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_file_as_model_says_to_use_weights(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"a checkpoint file, not a model folder.*--weights"):
        load_detector(str(tmp_path / "w.pth"), device="cpu")


def test_a_hub_id_offline_fails_fast_with_one_line(monkeypatch, no_hub):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_detector("some-org/some-detector", device="cpu")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("some-org/some-detector: no such model folder here, and as a hub id "
                                              "it cannot be fetched: cannot reach the Hugging Face hub")
    assert "HF_HUB_OFFLINE" in msg and "pass a local folder" in msg


def test_an_unreachable_hub_fails_fast_with_one_line(no_hub):
    import time

    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"no such model folder here, and as a hub id it cannot be fetched: cannot "
                       r"reach the Hugging Face hub for some-org/some-detector \(offline\?\) and it is not in the "
                       "local cache; pass a local folder") as err:
        load_detector("some-org/some-detector", device="cpu")
    assert time.perf_counter() - start < 12  # one look-up, no retries (the hub library's retries take ~26 s)
    assert "\n" not in str(err.value)


def test_a_cached_hub_model_loads_offline(monkeypatch, tmp_path, tiny_model_dir, no_hub):
    from huggingface_hub import constants

    repo = tmp_path / "hub-cache" / "models--some-org--tiny"
    commit = "0" * 40
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert Path(constants.HF_HUB_CACHE) == tmp_path / "hub-cache"
    det = load_detector("some-org/tiny", device="cpu")  # the hub is unreachable: the cache serves it
    assert det.source == "some-org/tiny" and det.tokenize("a dog") == [1037, 3899]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_detector("some-org/tiny", device="cpu").max_text_len == det.max_text_len
