"""Where a model comes from: a local folder checked at once, a cached hub snapshot, or a hub id the hub
answers for within seconds. Every loader (the detector, the agent's transformers models, the CLIP filter,
the fine-tuning base) asks here first, so a mistyped path is one line at once, not a minute of hub retries
ending in "couldn't connect"."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from reallod.errors import ConfigError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
HUB_TIMEOUT_S = 5.0
"""How long the one look-up that tells whether the Hugging Face hub is reachable may take."""

SourceKind = Literal["model", "tokenizer", "GGUF model"]
"""What is loaded: only a ``model`` folder must hold config.json (a GGUF folder holds the .gguf file)."""


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


def as_found(name: str | None) -> str | None:
    """A local path that exists, absolute and without symlinks (``m``, ``./m`` and ``../here/m`` are one
    model); anything else (a hub id) as typed. What resume fingerprints compare."""
    if not name:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def local_source(name: str | Path, kind: SourceKind = "model", *, hint: str = "") -> Path | None:
    """A path-like ``name`` as a checked folder (no network, no transformers); None for a hub id.

    A path that does not exist, a file, or (for a model) a folder without config.json is a
    :class:`ConfigError` naming it, at once; ``hint`` says what to do about a model folder that is not one.
    """
    if not looks_like_path(name):
        return None
    src = str(name)
    path = Path(src).expanduser()
    if not path.exists():
        raise ConfigError(f"{src}: {kind} folder not found (a local path; hub ids look like ORG/NAME)")
    if kind == "model" and (not path.is_dir() or not (path / "config.json").is_file()):
        inside = models_inside(path)
        if inside:
            raise ConfigError(f"{src}: not a model folder (no config.json), but a training checkpoint or work dir "
                              f"(its model is in model/, best/ or its latest checkpoint's model/): pass the model "
                              f"folder in it, {inside[0]}")
        raise ConfigError(f"{src}: not a model folder (expected a folder with config.json{hint})")
    if not path.is_dir():
        raise ConfigError(f"{src}: not a {kind} folder")
    return path


def models_inside(path: Path) -> list[Path]:
    """The model folders training writes: a checkpoint's ``model/``, a work dir's ``best/``, else its latest
    checkpoint's (a run without held-out data writes no ``best/``)."""
    found = [path / name for name in ("model", "best") if (path / name / "config.json").is_file()]
    if (path / "checkpoints").is_dir():
        steps = sorted((int(m[1]), p) for p in (path / "checkpoints").iterdir()
                       if (m := re.fullmatch(r"ckpt-(\d+)", p.name)) and (p / "model" / "config.json").is_file())
        found += [p / "model" for _, p in reversed(steps)]
    return found


def option_error(e: ConfigError, option: str, value: str | Path, note: str = "") -> ConfigError:
    """``e``, about ``value``, as an error of the option it came from: ``--tokenizer X (the default): ...``;
    the user may never have typed ``X`` (a default), and a hub id alone does not say which option it is."""
    name, text = str(value), str(e)
    head = f"{option} {name}{note}"
    return ConfigError(head + text[len(name):] if text.startswith(f"{name}:") else f"{head}: {text}")


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (the hub and transformers write paragraphs), shortened."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def config_errors() -> tuple[type[Exception], ...]:
    """What reading a model's ``config.json`` raises for a bad file: a field of the wrong type is a
    ``StrictDataclassError`` of huggingface_hub (transformers checks config fields with it), no
    ValueError, and went through as an unexpected error naming no file."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # a huggingface_hub before strict dataclasses
        return (OSError, ValueError, TypeError)
    return (OSError, ValueError, TypeError, StrictDataclassError)


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


def resolve_source(name: str | Path, kind: SourceKind = "model", *, hint: str = "") -> str:
    """What to load ``name`` from: a checked local folder, a cached hub snapshot, or a hub id.

    Local paths are checked at once (:func:`local_source`). A hub id is looked up once, with a short
    timeout, so an unreachable hub (no network, or ``HF_HUB_OFFLINE=1``) is one clear line within seconds
    instead of half a minute of retries; a model already in the local hub cache is then loaded from there.
    """
    local = local_source(name, kind, hint=hint)
    if local is not None:
        return str(local)
    repo_id = str(name)
    if _offline():
        cached = _cached_snapshot(repo_id)
        if cached is None:
            raise ConfigError(f"{repo_id}: no such {kind} folder here, and as a hub id it cannot be fetched: "
                              f"cannot reach the Hugging Face hub for {repo_id} (offline: HF_HUB_OFFLINE is set) and "
                              "it is not in the local cache; pass a local folder")
        return cached
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    try:
        info = HfApi(endpoint=constants.ENDPOINT).model_info(repo_id, timeout=HUB_TIMEOUT_S)
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
            raise ConfigError(f"{repo_id}: no such {kind} folder here, and as a hub id it cannot be fetched: "
                              f"cannot reach the Hugging Face hub for {repo_id} (offline?) and it is not in the local "
                              f"cache; pass a local folder ({type(e).__name__}: {one_line(e, 120)})") from e
        return cached
    if isinstance(getattr(info, "sha", None), str):
        _REVISIONS[repo_id] = info.sha
    return repo_id


_REVISIONS: dict[str, str] = {}
"""Hub id → the commit the hub named for it when :func:`resolve_source` looked it up (this process)."""


def hub_revision(source: str | Path) -> str | None:
    """The commit of a hub id that :func:`resolve_source` left as an id (the hub answered; transformers
    loads its files then), or None: a local folder, a cached snapshot (its files are compared by content),
    an id not looked up. What a resume compares where there are no files to stamp: a repo updated
    upstream between a kill and its resume must not mix two revisions' outputs."""
    return _REVISIONS.get(str(source))
