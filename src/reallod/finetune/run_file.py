"""The file that makes a folder a fine-tune's: ``finetune.json`` (settings, status, dataset), written by
:mod:`reallod.finetune.trainer` and looked for by ``sft-data``, which keeps its datasets out of such a folder."""

from __future__ import annotations

import json
from pathlib import Path

RUN_FILE = "finetune.json"


def is_finetune(folder: Path) -> bool:
    """Whether ``folder`` holds a fine-tune's ``finetune.json`` (finished or not)."""
    return has_json_key(folder / RUN_FILE, "status")


def has_json_key(path: Path, key: str) -> bool:
    """Whether ``path`` is a JSON object with ``key``: how a folder's marker file (a fine-tune's, a
    dataset's manifest) is told from a file that happens to bear its name."""
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and key in obj
