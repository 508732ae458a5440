"""Optional region–text filter: a CLIP or SigLIP model (transformers; path or hub id) scores each
expression against its object's crop, and expressions under a threshold are dropped. Off by default.

CLIP scores are cosine similarities of the projected embeddings (about 0.2–0.35 for a match with
openai/clip-vit-base-patch32); SigLIP's are the sigmoid of its calibrated logit, a probability.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from reallod.errors import ConfigError
from reallod.hub import resolve_source


class RegionTextScorer:
    """Similarity of text to image regions with one dual-encoder model (CPU or the given device)."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, *, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.model = model.eval().to(device)
        self.tokenizer, self.image_processor, self.device = tokenizer, image_processor, device
        self.kind = "siglip" if "siglip" in type(model).__name__.lower() else "clip"

    @classmethod
    def load(cls, name_or_path: str, *, device: str = "cpu") -> RegionTextScorer:
        try:
            source = resolve_source(name_or_path)  # a typo: at once, not after a minute of hub retries
        except ConfigError as e:
            raise ConfigError(f"--clip-model {e}") from None
        try:
            from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

            model = AutoModel.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
            processor = AutoImageProcessor.from_pretrained(source)
        except Exception as e:  # not found, no network, not a CLIP/SigLIP checkpoint
            raise ConfigError(f"--clip-model {name_or_path}: cannot load a CLIP/SigLIP model ({e})") from e
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ConfigError(f"--clip-model {name_or_path}: {type(model).__name__} is not a CLIP/SigLIP model")
        return cls(model, tokenizer, processor, device=device)

    def _features(self, out: Any) -> Any:
        return out if isinstance(out, self.torch.Tensor) else getattr(out, "pooler_output", out[0])

    def scores(self, image: Image.Image, boxes: list[list[float]], texts: list[str]) -> list[float]:
        """One score per text for the region covering ``boxes`` (a group: their union)."""
        if not texts:
            return []
        torch = self.torch
        x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x2, y2 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        crop = image.convert("RGB").crop((int(x1), int(y1), max(int(x2), int(x1) + 1), max(int(y2), int(y1) + 1)))
        pixels = self.image_processor(images=crop, return_tensors="pt")["pixel_values"].to(self.device)
        tokens = self.tokenizer(texts, padding="max_length" if self.kind == "siglip" else True, truncation=True,
                                max_length=64, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        if self.kind == "siglip":
            tokens.pop("attention_mask", None)
        with torch.no_grad():
            img = torch.nn.functional.normalize(self._features(self.model.get_image_features(pixel_values=pixels)), dim=-1)
            txt = torch.nn.functional.normalize(self._features(self.model.get_text_features(**tokens)), dim=-1)
            cos = (txt @ img.T).squeeze(-1)
            if self.kind == "siglip":
                cos = torch.sigmoid(cos * self.model.logit_scale.exp() + self.model.logit_bias)
        return [float(v) for v in cos.reshape(-1)]
