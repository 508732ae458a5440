"""Hugging Face model folders of the detector: the detector class of a config, loading weights with
every missing or unexpected key named, the BERT tokenizer checked against the ids Grounding-DINO
hard-codes, and writing a folder (config + safetensors + vocab.txt).

The loader and the checkpoint converter both stand on this file; neither imports the other's folder code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reallod.errors import ConfigError
from reallod.hub import (
    CHECKPOINT_SUFFIXES,
    SourceKind,
    local_source,
    looks_like_path,
    one_line,
    option_error,
    resolve_source,
)
from reallod.model import token_prompt as P

if TYPE_CHECKING:
    import torch

DETECTOR_CLASSES = {
    "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
    "grounding-dino": "GroundingDinoForObjectDetection",
}

CONVERT_HINT = "; convert MMDetection .pth checkpoints with `reallod convert-checkpoint`"


def check_local_folder(name: str | Path, kind: SourceKind = "model") -> Path | None:
    """A path-like ``name`` as a checked detector (or tokenizer) folder; None for a hub id. A checkpoint
    file given as the model is told to go to ``--weights`` or to be converted."""
    src = str(name)
    path = Path(src).expanduser()
    if kind == "model" and looks_like_path(name) and path.is_file() \
            and path.name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ConfigError(f"{src}: a checkpoint file, not a model folder; pass a model folder as MODEL and this "
                          "file as --weights, or convert it with `reallod convert-checkpoint`")
    return local_source(name, kind, hint=CONVERT_HINT)


def check_tokenizer_option(tokenizer: str) -> None:
    """A ``--tokenizer`` that cannot be found (a missing folder, a hub id offline), named as that option
    before the model loads: the loader's error names the value alone, which may look like MODEL's."""
    try:
        resolve_source(tokenizer, "tokenizer")
    except ConfigError as e:
        raise option_error(e, "--tokenizer", tokenizer) from None


def resolve_detector_source(name: str | Path, kind: SourceKind = "model") -> str:
    """:func:`reallod.hub.resolve_source` for the detector: its folder checks and hints first."""
    local = check_local_folder(name, kind)
    return str(local) if local is not None else resolve_source(name, kind)


def detector_class(config):
    import transformers

    return getattr(transformers, DETECTOR_CLASSES[config.model_type])


SHOWN_KEYS = 3
"""Keys named per kind when a checkpoint does not fit: a few examples and a count, not a wall of names."""


def _module_of(key: str) -> str:
    """The part of a key that names its module: up to its first layer index, else its parent."""
    parts = key.split(" ")[0].split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return ".".join(parts[:-1])


def key_listing(kind: str, items: list[str], shown: int = SHOWN_KEYS) -> str:
    """``"2 missing keys: a, b"`` or ``"12 missing keys, e.g. a, b, c; … and 9 more"``; the examples
    come from different modules where there are several, so they tell where the mismatch is."""
    n = len(items)
    if n <= shown + 1:
        return f"{n} {kind}: " + ", ".join(items)
    firsts: dict[str, str] = {}
    for item in items:
        firsts.setdefault(_module_of(item), item)
    examples = list(firsts.values())[:shown]
    examples += [i for i in items if i not in examples][:shown - len(examples)]
    return f"{n} {kind}, e.g. " + ", ".join(examples) + f"; … and {n - shown} more"


def load_model_checked(folder: str | Path, config, dtype: torch.dtype | None = None, *,
                       source: str | Path | None = None, **kwargs: Any):
    """``from_pretrained`` that fails, naming the keys, when any weight is missing, unexpected or misshaped.

    ``source``: what the user gave (a weights file written into a temporary ``folder``), named in errors.
    """
    from safetensors import SafetensorError

    where = str(source) if source is not None else str(folder)
    cls = detector_class(config)
    try:
        model, info = cls.from_pretrained(str(folder), config=config, dtype=dtype, output_loading_info=True,
                                          ignore_mismatched_sizes=True, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: cannot load the detector weights ({one_line(e)})") from e
    except SafetensorError as e:  # a truncated or overwritten file: name it
        files = sorted(Path(folder).glob("*.safetensors"))
        name = source if source is not None else files[0] if len(files) == 1 else folder
        raise ConfigError(f"{name}: damaged or incomplete weights file ({one_line(e)})") from e
    except RuntimeError as e:  # size mismatches are raised by torch's load
        raise ConfigError(f"{where}: weights do not fit the config: {one_line(e)}") from e
    problems = []
    def name(item: Any) -> str:
        if isinstance(item, tuple) and len(item) == 3:  # (key, shape in the file, shape in the model)
            return f"{item[0]} (file {list(item[1])}, model {list(item[2])})"
        return str(item)

    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        items = sorted(name(k) for k in (info.get(kind) or []))
        if items:
            problems.append(key_listing(kind.replace("_", " "), items))
    if problems:
        raise ConfigError(f"{where}: weights do not match the {config.model_type} config; " + "; ".join(problems))
    return model


TOKENIZER_JSON_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json")
VOCABULARY_FILES = ("vocab.txt", "tokenizer.json")


TOKENIZER_HINT = "pass --tokenizer with a folder or hub id holding it"  # the commands' option; train names its key


def check_tokenizer_folder(source: str | Path, folder: Path, hint: str = TOKENIZER_HINT) -> None:
    """A local tokenizer folder's files, before transformers reads them: its JSON files must each be a JSON
    object (a broken one is named as broken, not reported as missing), and it must hold a vocabulary:
    without one transformers builds a tokenizer of a handful of special tokens, whose ids then fail the
    bert-base-uncased check with no word of the missing file."""
    for name in TOKENIZER_JSON_FILES:
        file = folder / name
        if not file.is_file():
            continue
        try:
            ok = isinstance(json.loads(file.read_bytes()), dict)
            why = "not a JSON object"
        except (OSError, ValueError) as e:
            ok, why = False, f"not valid JSON: {one_line(e, 120)}"
        if not ok:
            raise ConfigError(f"{file}: {why}; fix the file, or remove it")
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        where = "" if Path(source) == folder else f" in {folder}"
        raise ConfigError(f"{source}: no tokenizer vocabulary (neither vocab.txt nor tokenizer.json{where}); copy "
                          f"bert-base-uncased's vocab.txt there, or {hint}")


def load_tokenizer(source: str | Path, *, hint: str = TOKENIZER_HINT):
    """The BERT tokenizer, checked to use bert-base-uncased ids for the delimiters the model hard-codes.
    ``hint``: how the user names another one (a command's option, a config key)."""
    from transformers import BertTokenizer

    src = resolve_source(source, "tokenizer")
    if Path(src).is_dir():
        check_tokenizer_folder(source, Path(src), hint)
    try:
        tok = BertTokenizer.from_pretrained(src)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{source}: no BERT tokenizer files (vocab.txt) found: {one_line(e)}; {hint} (the "
                          "bert-base-uncased vocabulary)") from e
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
