"""The file that makes a folder a fine-tune's: ``finetune.json`` (settings, status, dataset), written by
:mod:`reallod.finetune.trainer` and looked for by ``sft-data``, which keeps its datasets out of such a folder."""

from __future__ import annotations

import json
from pathlib import Path

RUN_FILE = "finetune.json"


def is_finetune(folder: Path) -> bool:
    """Whether ``folder`` holds a fine-tune's ``finetune.json`` (finished or not)."""
    try:
        run = json.loads((folder / RUN_FILE).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(run, dict) and "status" in run
