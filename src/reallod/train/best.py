"""``best/``: the model that scored highest in the run's periodic evaluation, with ``best.json`` (metric,
value, step, epoch, all metrics), kept the best of the evaluations of the steps the run has done.

A resumed run does the steps after its checkpoint again (their ``log.csv``/``eval.csv`` rows are dropped),
so a ``best/`` written at one of those steps is a state the resumed run may never reach again: ``best.json``
would name a step whose evaluation ``eval.csv`` no longer has, or has with another score once redone (a
changed config, another process count, a nondeterministic GPU), and the resumed run would compare its
scores with it. At start, such a ``best/`` is moved to ``best.dropped/`` and the best as of the starting
step takes its place. That one is kept for the purpose: a best that a newer one replaces while no
checkpoint covers the newer one yet stays as ``best.checkpointed/`` until the next checkpoint.

A resume that changes ``eval.metric`` would compare scores of the new metric with the old one's:
:func:`switch_metric` makes ``best/`` the best by the new metric of the ``eval.csv`` rows of the run's
history (its model taken from the checkpoint of that step), or, where that model is gone, starts afresh;
the best by the former metric is kept as ``best.by-METRIC/``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reallod.train import checkpoint as C

BEST = "best"
CHECKPOINTED = "best.checkpointed"  # the best as of the latest checkpoint, while best/ is from a later step
DROPPED = "best.dropped"  # a best/ from the steps a resumed run does again
OLD = "best.old"  # what a kill between C.replace_folder's two renames leaves of the replaced best/


def read(folder: Path) -> dict[str, Any] | None:
    """A folder's ``best.json``; None when there is none or it is not one (a damaged best/ is replaced)."""
    try:
        best = json.loads((folder / "best.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(best, dict) and isinstance(best.get("step"), int) and isinstance(best.get("value"), int | float)
    return best if ok else None


def save(work_dir: Path, best: dict[str, Any], write: Callable[[Path], None], checkpoint_step: int) -> None:
    """Make ``best`` (its model written into a folder by ``write``) ``best/``. When it is from a step after
    the latest checkpoint's (``checkpoint_step``), the best/ it replaces, if it is the best as of that
    checkpoint, becomes ``best.checkpointed/``: a resume from the checkpoint gets it back."""
    new = work_dir / "best.new"
    shutil.rmtree(new, ignore_errors=True)
    try:
        write(new)
        _write_json(new, best)
    except Exception as e:  # a full disk: os, torch, safetensors and tokenizers each say it their way
        raise C.write_failed(new, f"the new best model (step {best['step']}; {work_dir / BEST} is intact)", e,
                             work_dir) from e
    current = read(work_dir / BEST)
    if best["step"] > checkpoint_step and current is not None and current["step"] <= checkpoint_step:
        shutil.rmtree(work_dir / CHECKPOINTED, ignore_errors=True)
        (work_dir / BEST).rename(work_dir / CHECKPOINTED)
    C.replace_folder(new, work_dir / BEST)
    if best["step"] <= checkpoint_step:
        shutil.rmtree(work_dir / CHECKPOINTED, ignore_errors=True)


def checkpoint_written(work_dir: Path) -> None:
    """A checkpoint of the current step covers best/: ``best.checkpointed/`` is no longer needed."""
    shutil.rmtree(work_dir / CHECKPOINTED, ignore_errors=True)


def restore(work_dir: Path, step: int, info: Callable[[str], None]) -> dict[str, Any] | None:
    """Make ``best/`` the best as of ``step``, where this run starts, and return its ``best.json``: the
    highest score (the earliest step of equal ones, as the run keeps them) of ``best/``,
    ``best.checkpointed/`` and ``best.old/`` from a step up to ``step``. A ``best/`` that is not that one
    (one from a later step) is moved to ``best.dropped/``; the others are deleted."""
    found = {name: b for name in (BEST, CHECKPOINTED, OLD) if (b := read(work_dir / name)) is not None}
    candidates = [name for name, b in found.items() if b["step"] <= step]
    pick = max(candidates, key=lambda name: (found[name]["value"], -found[name]["step"]), default=None)
    current = found.get(BEST)
    if pick != BEST and (work_dir / BEST).exists() and (current is not None or pick is not None):
        shutil.rmtree(work_dir / DROPPED, ignore_errors=True)
        (work_dir / BEST).rename(work_dir / DROPPED)
        if current is None:
            why = "has no readable best.json"
        elif current["step"] > step:
            why = (f"held step {current['step']} ({_score(current)}), after step {step} where this run starts "
                   "(those steps are done again)")
        else:
            why = f"held step {current['step']} ({_score(current)}), below step {found[pick]['step']}'s"
        info(f"best/ {why}: moved to {work_dir / DROPPED}")
    if pick is not None and pick != BEST:
        (work_dir / pick).rename(work_dir / BEST)
        info(f"best/ is the best up to step {step} again: step {found[pick]['step']} ({_score(found[pick])})")
    for name in (CHECKPOINTED, OLD):
        shutil.rmtree(work_dir / name, ignore_errors=True)
    return found[pick] if pick is not None else None


def switch_metric(work_dir: Path, metric: str, rows: list[dict[str, str]], info: Callable[[str], None]) -> None:
    """When ``best/`` was kept by another metric than ``metric`` (a resume that changed ``eval.metric``),
    make it the best by ``metric`` of ``rows`` (``eval.csv``, the run's history): its model is ``best/``'s own
    when that step is also the best by ``metric``, else the checkpoint's of that step. Where neither has
    it, ``best/`` starts afresh. The replaced ``best/`` becomes ``best.by-OLD_METRIC/``."""
    current = read(work_dir / BEST)
    if current is None or current.get("metric", metric) == metric:
        return
    scored = [(float(r[metric]), -int(r["step"]), r) for r in rows if _number(r.get(metric)) and _number(r.get("step"))]
    top = max(scored, key=lambda t: t[:2], default=(0.0, 0, None))[2]
    was = f"best/ was kept by {current['metric']} (step {current['step']}); eval.metric is now {metric}"
    if top is not None and int(top["step"]) == current["step"]:
        _write_json(work_dir / BEST, _from_row(top, metric))
        info(f"{was}: its step {top['step']} is also the best by {metric} in eval.csv ({_score(read(work_dir / BEST))})")
        return
    model = C.checkpoint_dir(work_dir) / C.checkpoint_name(int(top["step"])) / "model" if top is not None else None
    kept = work_dir / f"best.by-{current['metric']}"  # not best.dropped/: a resume may just have put one there
    shutil.rmtree(kept, ignore_errors=True)
    (work_dir / BEST).rename(kept)
    if model is not None and model.is_dir():
        shutil.copytree(model, work_dir / "best.new")
        _write_json(work_dir / "best.new", _from_row(top, metric))
        (work_dir / "best.new").rename(work_dir / BEST)
        info(f"{was}: best/ is the best by {metric} in eval.csv, step {top['step']} ({_score(read(work_dir / BEST))}, "
             f"its model from {model}); the best by {current['metric']} moved to {kept}")
    else:
        why = (f"the model of step {top['step']}, the best by {metric} in eval.csv, is in no checkpoint"
               if top is not None else f"eval.csv holds no {metric} scores")
        info(f"{was}, and {why}: best/ starts afresh with the next evaluation (the best by {current['metric']} "
             f"moved to {kept})")


def _number(text: str | None) -> bool:
    try:
        return text is not None and not math.isnan(float(text))
    except ValueError:
        return False


def _from_row(row: dict[str, str], metric: str) -> dict[str, Any]:
    """A ``best.json`` from an ``eval.csv`` row (its values as the CSV rounded them)."""
    metrics = {k: float(v) for k, v in row.items() if k not in ("step", "epoch", "eval_s") and _number(v)}
    return {"metric": metric, "value": float(row[metric]), "step": int(row["step"]),
            "epoch": int(row["epoch"]) if (row.get("epoch") or "").isdigit() else None, "metrics": metrics}


def _write_json(folder: Path, best: dict[str, Any]) -> None:
    (folder / "best.json").write_text(json.dumps(best, indent=2) + "\n")


def _score(best: dict[str, Any]) -> str:
    return f"{best.get('metric', 'metric')} {best['value']:.4f}"
