"""Hugging Face model folders of the detector: the detector class of a config, loading weights with
every missing or unexpected key named, the BERT tokenizer checked against the ids Grounding-DINO
hard-codes, and writing a folder (config + safetensors + vocab.txt).

The loader and the checkpoint converter both stand on this file; neither imports the other's folder code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from reallod.errors import ConfigError
from reallod.model import token_prompt as P

if TYPE_CHECKING:
    import torch

DETECTOR_CLASSES = {
    "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
    "grounding-dino": "GroundingDinoForObjectDetection",
}

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
HUB_TIMEOUT_S = 5.0
"""How long the one look-up that tells whether the Hugging Face hub is reachable may take."""

SourceKind = Literal["model", "tokenizer"]


def looks_like_path(name: str | Path) -> bool:
    """Whether ``name`` means a local folder rather than a hub id (``ORG/NAME``).

    Path-like: a ``Path``; anything that exists; a name starting with ``.``, ``/`` or ``~``; a Windows
    separator; more than one ``/`` or a trailing one; a checkpoint file name (``.pth``...); or ``A/B``
    where the folder ``A`` exists here.
    """
    if isinstance(name, Path):
        return True
    s = str(name)
    if os.path.exists(s) or s.startswith((".", "/", "~")) or "\\" in s or s.endswith("/") or s.count("/") > 1:
        return True
    if s.lower().endswith(CHECKPOINT_SUFFIXES):
        return True
    return "/" in s and Path(s).parent.is_dir()


def check_local_folder(name: str | Path, kind: SourceKind = "model") -> Path | None:
    """A path-like ``name`` as a checked folder (no network, no transformers); None for a hub id.

    A path that does not exist, a file, or (for a model) a folder without config.json is a
    :class:`ConfigError` naming it, at once.
    """
    if not looks_like_path(name):
        return None
    src = str(name)
    path = Path(src).expanduser()
    if not path.exists():
        raise ConfigError(f"{src}: {kind} folder not found (a local path; hub ids look like ORG/NAME)")
    if kind == "model" and path.is_file() and path.name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ConfigError(f"{src}: a checkpoint file, not a model folder; pass a model folder as MODEL and this "
                          "file as --weights, or convert it with `reallod convert-checkpoint`")
    if kind == "model" and (not path.is_dir() or not (path / "config.json").is_file()):
        raise ConfigError(f"{src}: not a model folder (expected a folder with config.json; "
                          "convert MMDetection .pth checkpoints with `reallod convert-checkpoint`)")
    if not path.is_dir():
        raise ConfigError(f"{src}: not a {kind} folder")
    return path


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (the hub and transformers write paragraphs), shortened."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "ON", "YES", "TRUE")


def _cached_snapshot(repo_id: str) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # "not cached", in whichever way the hub library says it
        return None


def resolve_source(name: str | Path, kind: SourceKind = "model") -> str:
    """What to load ``name`` from: a checked local folder, a cached hub snapshot, or a hub id.

    Local paths are checked at once (:func:`check_local_folder`). A hub id is looked up once, with a
    short timeout, so an unreachable hub (no network, or ``HF_HUB_OFFLINE=1``) is one clear line within
    seconds instead of half a minute of retries; a model already in the local hub cache is then loaded
    from there.
    """
    local = check_local_folder(name, kind)
    if local is not None:
        return str(local)
    repo_id = str(name)
    if _offline():
        cached = _cached_snapshot(repo_id)
        if cached is None:
            raise ConfigError(f"{repo_id}: cannot reach the Hugging Face hub for {repo_id} (offline: HF_HUB_OFFLINE "
                              "is set) and it is not in the local cache; pass a local folder")
        return cached
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    try:
        HfApi(endpoint=constants.ENDPOINT).model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except HFValidationError as e:
        raise ConfigError(f"{repo_id}: no such {kind} folder, and not a valid hub id ({one_line(e)})") from e
    except RepositoryNotFoundError as e:
        raise ConfigError(f"{repo_id}: no such {kind} folder here, and the Hugging Face hub has no public model of "
                          "that id (private or gated models need `hf auth login`)") from e
    except HfHubHTTPError:
        return repo_id  # the hub answered: transformers loads (and reports) as usual
    except Exception as e:  # DNS, refused, proxy, timeout: each HTTP library names them its way
        cached = _cached_snapshot(repo_id)
        if cached is None:
            raise ConfigError(f"{repo_id}: cannot reach the Hugging Face hub for {repo_id} (offline?); pass a "
                              f"local folder ({type(e).__name__}: {one_line(e, 120)})") from e
        return cached
    return repo_id


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


def load_tokenizer(source: str | Path):
    """The BERT tokenizer, checked to use bert-base-uncased ids for the delimiters the model hard-codes."""
    from transformers import BertTokenizer

    src = resolve_source(source, "tokenizer")
    try:
        tok = BertTokenizer.from_pretrained(src)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{source}: no BERT tokenizer files (vocab.txt) found: {one_line(e)}; pass --tokenizer with a "
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
