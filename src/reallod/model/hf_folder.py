"""Hugging Face model folders of the detector: the detector class of a config, loading weights with
every missing or unexpected key named, the BERT tokenizer checked against the ids Grounding-DINO
hard-codes, and writing a folder (config + safetensors + vocab.txt).

The loader and the checkpoint converter both stand on this file; neither imports the other's folder code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reallod.errors import ConfigError
from reallod.model import token_prompt as P

if TYPE_CHECKING:
    import torch

DETECTOR_CLASSES = {
    "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
    "grounding-dino": "GroundingDinoForObjectDetection",
}

def detector_class(config):
    import transformers

    return getattr(transformers, DETECTOR_CLASSES[config.model_type])


def load_model_checked(folder: str | Path, config, dtype: torch.dtype | None = None, **kwargs: Any):
    """``from_pretrained`` that fails, naming the keys, when any weight is missing, unexpected or misshaped."""
    cls = detector_class(config)
    try:
        model, info = cls.from_pretrained(str(folder), config=config, dtype=dtype, output_loading_info=True,
                                          ignore_mismatched_sizes=True, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder}: cannot load the detector weights ({e})") from e
    except RuntimeError as e:  # size mismatches are raised by torch's load
        raise ConfigError(f"{folder}: weights do not fit the config: {e}") from e
    problems = []
    def name(item: Any) -> str:
        if isinstance(item, tuple) and len(item) == 3:  # (key, shape in the file, shape in the model)
            return f"{item[0]} (file {list(item[1])}, model {list(item[2])})"
        return str(item)

    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        items = sorted(name(k) for k in (info.get(kind) or []))
        if items:
            problems.append(f"{len(items)} {kind.replace('_', ' ')}: " + ", ".join(items[:50])
                            + (" ..." if len(items) > 50 else ""))
    if problems:
        raise ConfigError(f"{folder}: weights do not match the {config.model_type} config; " + "; ".join(problems))
    return model


def load_tokenizer(source: str | Path):
    """The BERT tokenizer, checked to use bert-base-uncased ids for the delimiters the model hard-codes."""
    from transformers import BertTokenizer

    try:
        tok = BertTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{source}: no BERT tokenizer files (vocab.txt) found: {e}; pass --tokenizer with a "
                          "folder or hub id holding the bert-base-uncased vocabulary") from e
    got = tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?", "[PAD]"])
    want = [P.CLS_ID, P.SEP_ID, P.DOT_ID, P.QUESTION_ID, P.PAD_ID]
    if got != want:
        raise ConfigError(f"{source}: tokenizer ids for [CLS] [SEP] . ? [PAD] are {got}; Grounding-DINO needs "
                          f"the bert-base-uncased ids {want}")
    return tok


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """Tokenizer files plus a plain ``vocab.txt`` (what other BERT tooling, MMDetection included, reads)."""
    tokenizer.save_pretrained(str(folder))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] == list(range(len(vocab))):
        (Path(folder) / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")


def write_model_folder(state: dict[str, Any], config, folder: str | Path) -> None:
    """config.json + model.safetensors; tensors are cloned so none share memory (safetensors refuses)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
