"""Load a Grounding-DINO detector (model + BERT tokenizer + PIL image processor) on a device and dtype."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reallod.data.images import DEFAULT_MAX_PIXELS
from reallod.errors import ConfigError
from reallod.hub import (
    CHECKPOINT_SUFFIXES,
    as_found,
    config_errors,
    hub_revision,
    looks_like_path,
    one_line,
    resolve_source,
)
from reallod.model import token_prompt as P
from reallod.model.convert_checkpoint import hf_state_from_file
from reallod.model.hf_folder import (
    DETECTOR_CLASSES,
    load_model_checked,
    load_tokenizer,
    resolve_detector_source,
    write_model_folder,
)
from reallod.model.inference import Detector, input_problem, resized_size

if TYPE_CHECKING:
    import torch

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


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


def resolve_model_source(model: str | Path) -> str:
    """What to load ``model`` from: a checked local folder, a cached hub snapshot, or a hub id
    (see :func:`reallod.model.hf_folder.resolve_detector_source`)."""
    return resolve_detector_source(model, "model")


def read_detector_config(model: str | Path, max_text_len: int | None = None, *, resolved: bool = False):
    """The model's config, checked to be a Grounding-DINO detector, with an optional new text limit.

    ``resolved``: ``model`` already comes from :func:`resolve_model_source` (no second hub look-up).
    """
    src = str(model) if resolved else resolve_model_source(model)
    from transformers import AutoConfig

    path = Path(src)
    if path.is_dir():
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"{path / 'config.json'}: not a valid JSON config ({one_line(e)})") from e
        if model_type not in DETECTOR_CLASSES:
            raise ConfigError(f"{model}: model_type {model_type!r} is not a Grounding-DINO detector "
                              f"(expected one of {', '.join(DETECTOR_CLASSES)})")
    try:
        config = AutoConfig.from_pretrained(src)
    except config_errors() as e:
        where = path / "config.json" if path.is_dir() else model
        raise ConfigError(f"{where}: cannot read the model config ({one_line(e)})") from e
    if config.model_type not in DETECTOR_CLASSES:
        raise ConfigError(f"{model}: model_type {config.model_type!r} is not a Grounding-DINO detector")
    if max_text_len is not None:
        limit = min(P.MAX_TEXT_LEN, int(getattr(config.text_config, "max_position_embeddings", P.MAX_TEXT_LEN)))
        if not 4 <= max_text_len <= limit:
            raise ConfigError(f"max_text_len must be between 4 and {limit} for this text encoder, not {max_text_len}")
        config.max_text_len = int(max_text_len)
    return config


MAX_INPUT_PIXELS = DEFAULT_MAX_PIXELS  # the largest image reallod decodes by default: no larger model input


def check_image_size(image_size: tuple[int, int], what: str = "--image-size") -> None:
    """Refuse an ``--image-size SHORT,LONG`` out of bounds, before anything is loaded: 0 < SHORT <= LONG,
    and no image resized to it above :data:`MAX_INPUT_PIXELS` (SHORT × LONG at most: the largest image
    reallod decodes by default, Pillow's decompression-bomb threshold). The smallest size a model takes
    depends on its backbone: :func:`check_input_size`."""
    short, long = (int(v) for v in image_size)
    if not 0 < short <= long:
        raise ConfigError(f"{what} {short},{long}: must be SHORT,LONG with 0 < SHORT <= LONG (such as 800,1333)")
    if short * long > MAX_INPUT_PIXELS:
        raise ConfigError(f"{what} {short},{long}: an image resized to it may have {short * long:,} pixels, "
                          f"more than the {MAX_INPUT_PIXELS:,} of the largest image reallod decodes; give a smaller "
                          "size (Real-Model's is 800,1333)")


def check_input_size(processor, config, where: str) -> None:
    """Refuse an image size at which even a square image gives the detector an input it cannot take (too
    few positions for its queries, or a feature map of one value: :func:`input_problem`), so every image
    would fail; ``where``: ``--image-size`` or the preprocessor file, named in the message. Done with the
    config alone, before the weights load. The smallest SHORT the backbone's strides allow is named."""
    if not getattr(processor, "do_resize", True):
        return
    square = resized_size(getattr(processor, "size", None), 1000, 1000)
    why = input_problem(config, *square) if square is not None else None
    if why is None:
        return
    smallest = next((n for n in range(1, 1 << 16) if input_problem(config, n, n) is None), None)
    hint = f"; this model needs a SHORT of at least {smallest}" if smallest is not None else ""
    raise ConfigError(f"{where}: too small for this model: a square image is resized to {square[1]}×{square[0]}, "
                      f"where {why}{hint}")


def load_image_processor(source: str | Path | None, image_size: tuple[int, int] | None = None):
    """The PIL Grounding-DINO image processor (folder settings if present), optionally resized. The
    published defaults (800 / 1333) are used only where the model has no preprocessor_config.json: one
    that cannot be read, or that the processor fails on, is a ``ConfigError`` naming it."""
    from PIL import Image
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    if image_size is not None:
        check_image_size(image_size, "image size")
    proc = None
    where = "the default image processor"
    if source is not None:
        local = Path(str(source)).expanduser()
        file = local / "preprocessor_config.json"
        if local.is_dir() and file.is_file():
            where = str(file)
            try:
                proc = GroundingDinoImageProcessorPil.from_pretrained(str(local))
            except Exception as e:  # not JSON, a list, unknown size keys...: the file's fault
                raise ConfigError(f"{file}: not a usable image processor config ({one_line(e)}); fix it, or remove "
                                  "it to use the defaults (800,1333)") from e
        elif not looks_like_path(source) and not local.is_dir():  # a hub id
            try:
                proc = GroundingDinoImageProcessorPil.from_pretrained(str(source))
                where = f"{source}'s preprocessor_config.json"
            except OSError:
                proc = None  # no preprocessor config there: the defaults are the published ones (800 / 1333)
            except ValueError as e:
                raise ConfigError(f"{source}: its preprocessor_config.json is not usable ({one_line(e)})") from e
    if proc is None:
        proc = GroundingDinoImageProcessorPil()
    if image_size is not None:
        short, long = (int(v) for v in image_size)
        proc = GroundingDinoImageProcessorPil(**{**proc.to_dict(), "size": {"shortest_edge": short,
                                                                             "longest_edge": long}})
    try:  # once, on a small picture: settings it fails on would otherwise fail on every image
        proc(images=[Image.new("RGB", (64, 48))], return_tensors="pt")
    except Exception as e:  # whatever its settings make it raise
        raise ConfigError(f"{where}: the image processor fails on an image ({one_line(e)}); fix its settings") from e
    return proc


def weights_stamp(model: str | Path, weights: str | Path | None = None) -> list[list]:
    """Which weights these are, cheaply: name, size and modification time of each weight file of the
    (resolved) model folder and of ``weights``. Outputs kept for a resume must come from the same weights,
    and a checkpoint retrained into the same folder keeps its path; hashing gigabytes would cost more
    than the check is worth."""
    folder = Path(model)
    files = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES) if folder.is_dir() else []
    if weights is not None:
        files.append(Path(weights))
    stamp: list[list] = [[str(model), "revision", rev]] if (rev := hub_revision(model)) else []
    return stamp + [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()]


# The small files besides the weights that a loaded detector reads: its config (architecture, text limit),
# image processor (size, normalisation) and tokenizer.
SETTINGS_FILES = ("config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "added_tokens.json")


def files_stamp(folder: str | Path | None, names: Iterable[str]) -> dict[str, str]:
    """What each of these settings files of a local folder holds: its path (the folder resolved) → a hash of
    its bytes. Small files, so their content is compared, not their time; a hub id (no folder) gives none."""
    if folder is None or not Path(folder).is_dir():  # a hub id: the commit it loads, when the hub named one
        return {f"{folder}@revision": rev} if folder is not None and (rev := hub_revision(folder)) else {}
    base = Path(as_found(str(folder)) or folder)
    return {str(base / name): hashlib.sha256((base / name).read_bytes()).hexdigest()[:16]
            for name in names if (base / name).is_file()}


def size_setting(size: Any) -> str:
    """An image processor's size as ``--image-size`` writes it (``800,1333``), or its keys when it is no
    shortest/longest edge pair (``height=640,width=640``)."""
    given = {k: v for k, v in dict(size or {}).items() if v is not None}
    if set(given) == {"shortest_edge", "longest_edge"}:
        return f"{given['shortest_edge']},{given['longest_edge']}"
    return ",".join(f"{k}={v}" for k, v in sorted(given.items()))


def loaded_settings(model: str | Path, *, max_text_len: int | None = None, tokenizer: str | Path | None = None,
                    image_size: tuple[int, int] | None = None, resolved: bool = False) -> dict[str, Any]:
    """What :func:`load_detector` with these arguments predicts with, read without loading the weights: the
    text limit and image size in effect (the options, else the folder's files) and the content of the
    config, image processor and tokenizer files. A resume compares them before the model loads: the
    folder's files edited since change the predictions as much as the options do. ``resolved``: ``model``
    already comes from :func:`resolve_model_source`."""
    src = str(model) if resolved else resolve_model_source(model)
    config = read_detector_config(src, max_text_len, resolved=True)
    size = load_image_processor(src, image_size).size
    return {"max_text_len": int(config.max_text_len), "image_size": size_setting(size),
            "files": {**files_stamp(src, SETTINGS_FILES),
                      **files_stamp(src if tokenizer is None else resolve_source(tokenizer, "tokenizer"),
                                    TOKENIZER_FILES)}}


def _size_source(model: str, image_size: tuple[int, int] | None) -> str:
    """What set the image size, for messages: the option, or the model's preprocessor file."""
    if image_size is not None:
        return f"--image-size {image_size[0]},{image_size[1]}"
    file = Path(model) / "preprocessor_config.json"
    return f"{file} (size)" if file.is_file() else "the default image size 800,1333"


def load_detector(model: str | Path, *, weights: str | Path | None = None, device: str | None = None,
                  dtype: str | torch.dtype = "fp32", max_text_len: int | None = None,
                  tokenizer: str | Path | None = None, image_size: tuple[int, int] | None = None) -> Detector:
    """Load a detector from a Hugging Face folder or hub id.

    ``weights`` replaces the folder's weights with a state dict file: Hugging Face layout
    (.safetensors / .bin / .pth) or an MMDetection MM-Grounding-DINO checkpoint, converted on the fly.
    The weights stay in float32 whatever ``dtype``: bf16 and fp16 run as mixed precision
    (:func:`reallod.model.inference.mixed_precision`), which keeps the boxes' precision.
    """
    import torch

    src = resolve_model_source(model)
    config = read_detector_config(src, max_text_len, resolved=True)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    proc = load_image_processor(src, image_size)  # the small files first: their errors come before the weights load
    check_input_size(proc, config, _size_source(src, image_size))
    tok = load_tokenizer(tokenizer if tokenizer is not None else src)
    if weights is None:
        net = load_model_checked(src, config, torch.float32)
    else:
        state = hf_state_from_file(weights, config)
        with tempfile.TemporaryDirectory(prefix="reallod-weights-") as tmp:
            write_model_folder(state, config, tmp)
            net = load_model_checked(tmp, config, torch.float32, source=weights)  # errors name the user's file
    net = net.to(dev).eval()
    return Detector(net, tok, proc, dev, dt, source=str(model) if weights is None else f"{model} + {weights}",
                    stamp=weights_stamp(src, weights))
