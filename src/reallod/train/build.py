"""The detector, tokenizer and image processor a training run starts from (or resumes).

A pretrained start is a Hugging Face detector folder or hub id (MMDetection checkpoints are
converted first with ``reallod convert-checkpoint``); ``model.tiny`` builds a random-initialised
tiny detector (``reallod.model.tiny``) whose classification biases are reset to the focal-loss prior
(p = 0.01), as a detector trained from scratch starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from reallod.train.config import ModelConfig

PRIOR_PROB = 0.01


def reset_class_bias(model: Any, prior: float = PRIOR_PROB) -> None:
    """Set every contrastive classification head's bias to log(p / (1 - p))."""
    import torch

    heads = [*model.class_embed, model.model.encoder_output_class_embed]
    with torch.no_grad():
        for head in heads:
            if getattr(head, "bias", None) is not None:
                head.bias.fill_(math.log(prior / (1 - prior)))


TOKENIZER_KEY_HINT = "set model.tokenizer to a folder or hub id holding it"


def build_detector(cfg: ModelConfig, *, seed: int, test_scale: tuple[int, int], folder: str | Path | None = None
                   ) -> tuple[Any, Any, Any]:
    """(model in train mode, tokenizer, image processor). ``folder`` (a checkpoint's model) wins over the config."""
    from reallod.model.hf_folder import load_model_checked, load_tokenizer
    from reallod.model.loading import load_image_processor, read_detector_config, resolve_model_source

    if folder is not None:
        config = read_detector_config(folder)
        model = load_model_checked(folder, config)
        tokenizer = load_tokenizer(folder, hint="copy the tokenizer files of the run's model.init (or of an "
                                   "earlier checkpoint's model/) there, or set model.tokenizer to a folder or hub id "
                                   "holding them")
        processor = load_image_processor(folder, test_scale)
    elif cfg.tiny is not None:
        from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
            GroundingDinoImageProcessorPil,
        )

        from reallod.model.tiny import build_tiny_detector, load_vocab_tokenizer

        t = cfg.tiny
        model = build_tiny_detector(seed=seed, text_backbone=t.text_backbone, max_text_len=cfg.max_text_len,
                                    d_model=t.d_model, num_queries=t.num_queries, encoder_layers=t.encoder_layers,
                                    decoder_layers=t.decoder_layers)
        reset_class_bias(model)
        # a folder with no vocabulary made a tokenizer of 5 special tokens: every word [UNK], trained on
        tokenizer = load_tokenizer(cfg.tokenizer, hint=TOKENIZER_KEY_HINT) if cfg.tokenizer else load_vocab_tokenizer()
        processor = GroundingDinoImageProcessorPil(size={"shortest_edge": test_scale[0],
                                                         "longest_edge": test_scale[1]})
    else:
        init = resolve_model_source(cfg.init)  # one hub look-up; a cached snapshot when offline
        config = read_detector_config(init, cfg.max_text_len, resolved=True)
        model = load_model_checked(init, config)
        tokenizer = load_tokenizer(cfg.tokenizer or init, hint=TOKENIZER_KEY_HINT)
        processor = load_image_processor(init, test_scale)
    model.config.auxiliary_loss = bool(cfg.aux_loss)
    return model.train(), tokenizer, processor
