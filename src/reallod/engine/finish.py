"""The pipeline's last stage: re-aligned records → the Real-Data output.

The agent's assembly (:mod:`reallod.agent.assemble`) already placed re-aligned positives, moved what
it judged wrong and could not repair by the ``--unresolved`` policy, kept the raw positives as
``origin_positive_expressions`` and wrote provenance (task, verdict, cycles). This pass adds each
expression's ``source`` to its provenance, drops the generation-only record fields and the records
without pairs (the generated file's places of images without expressions), streaming and atomically
(never touching its input)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from reallod.data.io import JsonlWriter, iter_json

GENERATION_ONLY = ("caption_source",)


def finish_record(obj: dict[str, Any], counts: Counter[str]) -> dict[str, Any]:
    """One record with ``source`` in every provenance entry (pure apart from counting)."""
    pairs: dict[str, Any] = {}
    for source, items in (obj.get("pairs") or {}).items():
        out = []
        for pair in items if isinstance(items, list) else [items]:
            if isinstance(pair, dict) and isinstance(pair.get("provenance"), list):
                pair = {**pair, "provenance": [{**p, "source": source} if isinstance(p, dict) else p
                                               for p in pair["provenance"]]}
                counts[f"{source}: positives"] += len(pair.get("positive_expressions") or [])
                counts[f"{source}: negatives"] += len(pair.get("negative_expressions") or [])
            out.append(pair)
        pairs[source] = out
    return {**{k: v for k, v in obj.items() if k not in GENERATION_ONLY}, "pairs": pairs}


def finish(src: str | os.PathLike, dst: str | os.PathLike) -> Counter[str]:
    counts: Counter[str] = Counter()
    with JsonlWriter(dst) as writer:
        for _, obj in iter_json(src):
            if not obj.get("pairs"):
                counts["record without expressions:not written"] += 1
                continue
            writer.write_record(finish_record(obj, counts))
            counts["record:written"] += 1
    return counts
