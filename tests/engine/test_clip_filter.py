"""The CLIP/SigLIP region-text filter with tiny random-initialised models (no downloads)."""

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from reallod.engine.annotations import AnnObject, ImageAnnotation
from reallod.engine.clip_filter import RegionTextScorer
from reallod.engine.generate import GenerateSettings, Generators, generate_image
from reallod.errors import ConfigError
from reallod.model.tiny import load_vocab_tokenizer
from tests.agent.scripted import ScriptedBackend
from tests.engine.scripted_models import generation_answers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def save_tiny(kind: str, path: Path) -> Path:
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    torch.manual_seed(0)
    text = {"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 64,
            "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0}  # the BERT vocabulary's ids
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(path)
    processor.save_pretrained(path)
    load_vocab_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["clip", "siglip"])
def scorer(request, tmp_path_factory) -> RegionTextScorer:
    return RegionTextScorer.load(str(save_tiny(request.param, tmp_path_factory.mktemp(request.param))))


def test_scores_one_number_per_text_and_are_deterministic(scorer):
    image = Image.open(EXAMPLES / "images" / "chelsea.jpg")
    texts = ["the cat", "a tabby cat on the left", "a rocket"]
    a = scorer.scores(image, [[10, 10, 200, 200]], texts)
    assert len(a) == 3 and a == scorer.scores(image, [[10, 10, 200, 200]], texts)
    assert len(set(a)) > 1  # the texts are told apart
    assert scorer.scores(image, [[0, 0, 5, 5]], []) == []


def test_the_filter_drops_expressions_under_the_threshold(scorer):
    image = Image.open(EXAMPLES / "images" / "chelsea.jpg").convert("RGB")
    img = ImageAnnotation("chelsea.jpg", image.height, image.width, [AnnObject("cat", [10, 10, 300, 290])])
    settings = GenerateSettings(hard_negatives=0, easy_negatives=0, group_expressions=0)
    llm = ScriptedBackend(generation_answers(), "rewriter")
    scores = scorer.scores(image, [[10, 10, 300, 290]], ["the cat on the left", "a large cat", "the cat near the middle"])
    threshold = sorted(scores)[1]  # keeps the two best
    gens = Generators(llm=llm, vlm=None, scorer=scorer, threshold=threshold)
    entry = asyncio.run(generate_image(img, gens, settings, lambda: image, ["cat", "dog"]))
    kept = entry["record"]["pairs"]["llm"][0]["positive_expressions"]
    assert len(kept) == 2 and entry["counts"]["clip filter:dropped"] == 1
    off = Generators(llm=ScriptedBackend(generation_answers(), "rewriter"), vlm=None)
    entry = asyncio.run(generate_image(img, off, settings, lambda: image, ["cat", "dog"]))
    assert len(entry["record"]["pairs"]["llm"][0]["positive_expressions"]) == 3


def test_a_model_that_is_not_there_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"--clip-model .*nothing: model folder not found"):
        RegionTextScorer.load(str(tmp_path / "nothing"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="cannot load a CLIP/SigLIP model"):
        RegionTextScorer.load(str(tmp_path / "folder"))
