"""Load a Grounding-DINO detector (model + BERT tokenizer + PIL image processor) on a device and dtype."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reallod.errors import ConfigError
from reallod.model import prompt as P

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from reallod.model.detections import Detections
    from reallod.model.inference import InferenceOptions

DETECTOR_CLASSES = {
    "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
    "grounding-dino": "GroundingDinoForObjectDetection",
}
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass
class Detector:
    """Everything inference needs, on one device and dtype."""

    model: Any  # MMGroundingDinoForObjectDetection | GroundingDinoForObjectDetection
    tokenizer: Any  # BertTokenizer with the bert-base-uncased vocabulary
    image_processor: Any  # GroundingDinoImageProcessorPil
    device: torch.device
    dtype: torch.dtype
    source: str = ""

    @property
    def max_text_len(self) -> int:
        return int(self.model.config.max_text_len)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detect(self, image: Image.Image, expressions: list[str], options: InferenceOptions | None = None,
               **kwargs: Any) -> Detections:
        """Detect every expression in one PIL image (see :func:`reallod.model.inference.detect`)."""
        from reallod.model.inference import detect

        return detect(self, image, expressions, options, **kwargs)


def resolve_device(device: str | None) -> torch.device:
    """``None``/``auto`` → CUDA when available, else CPU; an unavailable CUDA is a clear error."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported (use cpu, cuda or cuda:N)")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPES.get(str(dtype).lower())
    if name is None:
        raise ConfigError(f"unknown dtype {dtype!r} (use fp32, fp16 or bf16)")
    return getattr(torch, name)


def _is_local(model: str | Path) -> bool:
    s = str(model)
    return isinstance(model, Path) or os.path.exists(s) or s.startswith((".", "/", "~")) or s.count("/") > 1


def read_detector_config(model: str | Path, max_text_len: int | None = None):
    """The model's config, checked to be a Grounding-DINO detector, with an optional new text limit."""
    from transformers import AutoConfig

    src = str(model)
    if _is_local(model):
        path = Path(src).expanduser()
        if not path.exists():
            raise ConfigError(f"{src}: model folder not found")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(f"{src}: not a model folder (expected a folder with config.json; "
                              "convert MMDetection .pth checkpoints with `reallod convert-checkpoint`)")
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"{path / 'config.json'}: not a valid JSON config ({e})") from e
        if model_type not in DETECTOR_CLASSES:
            raise ConfigError(f"{src}: model_type {model_type!r} is not a Grounding-DINO detector "
                              f"(expected one of {', '.join(DETECTOR_CLASSES)})")
        src = str(path)
    try:
        config = AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{src}: cannot read the model config ({e})") from e
    if config.model_type not in DETECTOR_CLASSES:
        raise ConfigError(f"{src}: model_type {config.model_type!r} is not a Grounding-DINO detector")
    if max_text_len is not None:
        limit = min(P.MAX_TEXT_LEN, int(getattr(config.text_config, "max_position_embeddings", P.MAX_TEXT_LEN)))
        if not 4 <= max_text_len <= limit:
            raise ConfigError(f"max_text_len must be between 4 and {limit} for this text encoder, not {max_text_len}")
        config.max_text_len = int(max_text_len)
    return config


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


def load_image_processor(source: str | Path | None, image_size: tuple[int, int] | None = None):
    """The PIL Grounding-DINO image processor (folder settings if present), optionally resized."""
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    proc = None
    if source is not None:
        local = Path(str(source)).expanduser()
        if not _is_local(source) or (local / "preprocessor_config.json").is_file():
            try:
                proc = GroundingDinoImageProcessorPil.from_pretrained(str(source))
            except (OSError, ValueError):
                proc = None  # no preprocessor config: the defaults are the published ones (800 / 1333)
    if proc is None:
        proc = GroundingDinoImageProcessorPil()
    if image_size is not None:
        short, long = (int(v) for v in image_size)
        if not 0 < short <= long:
            raise ConfigError(f"image size must be SHORT,LONG with 0 < SHORT <= LONG, not {image_size}")
        proc = GroundingDinoImageProcessorPil(**{**proc.to_dict(), "size": {"shortest_edge": short,
                                                                             "longest_edge": long}})
    return proc


def load_detector(model: str | Path, *, weights: str | Path | None = None, device: str | None = None,
                  dtype: str | torch.dtype = "fp32", max_text_len: int | None = None,
                  tokenizer: str | Path | None = None, image_size: tuple[int, int] | None = None) -> Detector:
    """Load a detector from a Hugging Face folder or hub id.

    ``weights`` replaces the folder's weights with a state dict file: Hugging Face layout
    (.safetensors / .bin / .pth) or an MMDetection MM-Grounding-DINO checkpoint, converted on the fly.
    """
    config = read_detector_config(model, max_text_len)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    src = str(Path(str(model)).expanduser()) if _is_local(model) else str(model)
    if weights is None:
        net = load_model_checked(src, config, dt)
    else:
        from reallod.model.convert_checkpoint import hf_state_from_file, write_model_folder

        state = hf_state_from_file(weights, config)
        with tempfile.TemporaryDirectory(prefix="reallod-weights-") as tmp:
            write_model_folder(state, config, tmp)
            net = load_model_checked(tmp, config, dt)
    net = net.to(dev).eval()
    tok = load_tokenizer(tokenizer if tokenizer is not None else src)
    proc = load_image_processor(src, image_size)
    return Detector(net, tok, proc, dev, dt, source=str(model))
