"""D³ (Described Object Detection): annotation pickles, prompts per image and the official metric.

The annotation folder holds the four pickles of the release (``sentences.pkl``, ``annotations.pkl``,
``images.pkl``, ``groups.pkl``), read with the ``ddd-dataset`` package (``from d_cube import D3``,
the ``eval`` extra). Its COCO conversion gives the three ground truths: FULL (all 422 descriptions),
PRES (presence descriptions) and ABS (absence descriptions, such as "dog without a leash"); the
conversion numbers annotations from 0, which pycocotools reads as "unmatched", so they are
renumbered from 1.

Settings: intra-scenario (default) prompts each image with its scenario's (group's) descriptions;
inter-scenario prompts every image with all of them. The ground truth is the same in both (the
conversion's default, which keeps on each box the descriptions of its own scenario): the release's
documentation says the prompts are the only difference.

Predictions, the benchmark's result format: a COCO result list {image_id, category_id (the
sentence id), bbox xywh, score}. Scores: COCO bbox AP, AP50 and AP75 on each ground truth, and AP
by description length as the official analysis script partitions it (words split on single spaces:
short ≤3, mid 4–6, long 7–9, very long ≥10; the mean of the per-description APs).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reallod.errors import ConfigError, DataError
from reallod.eval.coco_tools import coco_evaluate
from reallod.eval.common import (
    EvalImage,
    EvalResult,
    Predictions,
    check_known,
    coco_results,
    prompt_problem,
    read_coco_results,
    write_coco_results,
)

NAME = "d3"
PICKLES = ("sentences.pkl", "annotations.pkl", "images.pkl", "groups.pkl")
SETTINGS = (("FULL", 0), ("PRES", 1), ("ABS", 2))  # ddd-dataset's anti_mode
LENGTH_BUCKETS = (("short", 1, 3), ("mid", 4, 6), ("long", 7, 9), ("very-long", 10, 10 ** 9))


@dataclass
class D3Benchmark:
    """The images, each image's descriptions to prompt, and the three COCO ground truths."""

    anno_dir: str
    inter: bool
    images: list[dict[str, Any]]  # id, file_name, width, height, group_id
    sentences: dict[int, str]  # sentence id → text
    absence: set[int]  # sentence ids of absence descriptions
    prompts: dict[int, list[int]]  # image id → sentence ids
    gts: dict[str, dict[str, Any]]  # FULL / PRES / ABS → COCO ground truth

    def eval_images(self) -> list[EvalImage]:
        return [EvalImage(img["id"], img["file_name"], [self.sentences[s] for s in self.prompts[img["id"]]],
                          list(self.prompts[img["id"]]), img.get("width"), img.get("height"))
                for img in self.images]

    @property
    def setting(self) -> str:
        return "inter-scenario" if self.inter else "intra-scenario"


def _d3_class():
    try:
        from d_cube import D3
    except ImportError as e:
        raise ConfigError("D³ needs the ddd-dataset package: pip install 'reallod[eval]'") from e
    return D3


def renumber_annotations(coco: dict[str, Any]) -> dict[str, Any]:
    """Annotation ids 1..N in order (ddd-dataset starts at 0, which pycocotools cannot match)."""
    for i, a in enumerate(coco["annotations"]):
        a["id"] = i + 1
    return coco


def _sentences(sents: list[dict[str, Any]], path: Path) -> dict[int, str]:
    """Sentence id → text, each text one the model can prompt (words left once '.' and '?' are removed)."""
    out = {}
    for s in sents:
        text = s["raw_sent"]
        if not isinstance(text, str):
            raise DataError(f"sentence {s['id']}: raw_sent: expected a string, got {text!r}", path=str(path))
        if problem := prompt_problem(text):
            raise DataError(f"sentence {s['id']}: raw_sent {problem}", path=str(path))
        out[int(s["id"])] = text
    return out


def _check_entries(entries: Callable[[], list[Any]], keys: tuple[str, ...], path: Path) -> None:
    """Each entry a dict with ``keys``: the package's own reading of a damaged pickle says only
    ``KeyError: 'file_name'``, naming neither the file nor the entry."""
    try:
        listed = entries()
    except (AttributeError, TypeError) as e:  # the pickle holds no dict of entries by id
        raise DataError(f"D³ annotations: expected a dict of entries by id ({type(e).__name__}: {e})",
                        path=str(path)) from e
    for k, entry in enumerate(listed):
        if not isinstance(entry, dict):
            raise DataError(f"entry {k}: expected a dict, got {type(entry).__name__}", path=str(path))
        if missing := [key for key in keys if key not in entry]:
            name = f" (id {entry['id']!r})" if "id" in entry else ""
            raise DataError(f"entry {k}{name}: no {', '.join(map(repr, missing))}", path=str(path))


def _unreadable_pickle(folder: Path) -> Path | None:
    """The first of the folder's pickles that does not load (named in the error), once the package's reader
    failed on one of them; None when each loads alone (the failure was elsewhere)."""
    import pickle

    for name in PICKLES:
        try:
            with open(folder / name, "rb") as f:
                pickle.load(f)  # the files the package's reader was about to load
        except Exception:
            return folder / name
    return None


def load(anno_dir: str | Path, *, inter: bool = False, image_root: str | Path | None = None) -> D3Benchmark:
    """Read the pickles and build the FULL / PRES / ABS ground truths for the chosen setting."""
    folder = Path(anno_dir)
    if not folder.is_dir():
        raise DataError("D³ annotations: expected the folder of annotation pickles "
                        f"({', '.join(PICKLES)})", path=str(folder))
    missing = [name for name in PICKLES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"D³ annotations: missing {', '.join(missing)}", path=str(folder))
    D3 = _d3_class()
    try:
        d3 = D3(str(image_root or ""), str(folder))
    except Exception as e:  # pickle errors come in many types
        raise DataError(f"D³ annotations: cannot read the pickles ({type(e).__name__}: {e})",
                        path=str(_unreadable_pickle(folder) or folder)) from e
    for name, keys, entries in (("images.pkl", ("id", "file_name"), d3.load_imgs),  # before the package reads them
                                ("sentences.pkl", ("id", "raw_sent", "is_negative"), d3.load_sents)):
        _check_entries(entries, keys, folder / name)
    try:
        gts = {}
        with tempfile.TemporaryDirectory(prefix="reallod-d3-") as tmp:
            for setting, mode in SETTINGS:
                d3.convert2coco(tmp, anti_mode=mode)
                with open(Path(tmp) / "coco_annotations.json") as f:
                    gts[setting] = renumber_annotations(json.load(f))
        sentences = _sentences(d3.load_sents(), folder / "sentences.pkl")
        absence = {int(s["id"]) for s in d3.load_sents() if s["is_negative"]}
        images, prompts = [], {}
        every = sorted(sentences)
        for img in d3.load_imgs():
            image_id = int(img["id"])
            images.append({"id": image_id, "file_name": img["file_name"], "width": img.get("width"),
                           "height": img.get("height"), "group_id": img.get("group_id")})
            if inter:
                prompts[image_id] = every
            else:
                groups = d3.get_group_ids(img_ids=[image_id])
                prompts[image_id] = sorted(int(s) for s in d3.get_sent_ids(group_ids=groups))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise DataError(f"D³ annotations: unexpected pickle contents ({type(e).__name__}: {e})",
                        path=str(folder)) from e
    return D3Benchmark(str(folder), inter, images, sentences, absence, prompts, gts)


# ---------------------------------------------------------------------------------------------
# predictions and metric
# ---------------------------------------------------------------------------------------------


load_predictions = read_coco_results  # the benchmark's format is the COCO result list
write_predictions = write_coco_results


def length_partition(per_cat: dict[int, float], names: dict[int, str]) -> dict[str, float | None]:
    """Mean per-description AP by length, summed in the official script's order (per length, then over lengths)."""
    by_len: dict[int, list[float]] = {}
    for cat, value in per_cat.items():
        if not np.isnan(value):
            by_len.setdefault(len(names[cat].split(" ")), []).append(value)
    top = max(by_len, default=0)
    out: dict[str, float | None] = {}
    for name, lo, hi in LENGTH_BUCKETS:
        lengths = range(lo, min(hi, top) + 1)
        count = sum(len(by_len.get(n, [])) for n in lengths)
        out[name] = sum([sum(by_len.get(n, [])) for n in lengths]) / count if count else None
    return out


def evaluate(bench: D3Benchmark, pred: Predictions, *, path: str | None = None,
             backend: str = "pycocotools") -> EvalResult:
    """AP / AP50 / AP75 and AP by description length on FULL, PRES and ABS."""
    check_known(pred, "image_id", np.array([img["id"] for img in bench.images]), "image", path)
    check_known(pred, "label", np.array(list(bench.sentences)), "description (sentence) id", path,
                field_name="category_id")
    results = coco_results(pred)
    metrics: dict[str, float | None] = {}
    details: dict[str, Any] = {"setting": bench.setting, "per_description_AP": {}}
    for setting, _ in SETTINGS:
        scores = coco_evaluate(bench.gts[setting], results, backend)
        metrics.update(scores.ap(setting))
        per_cat = scores.category_ap()
        for name, value in length_partition(per_cat, dict(zip(scores.cat_ids, scores.cat_names, strict=True))).items():
            metrics[f"{setting}/AP-{name}"] = value
        details["per_description_AP"][setting] = {str(c): (None if np.isnan(v) else v) for c, v in per_cat.items()}
    return EvalResult(NAME, metrics, details, [f"D³ {bench.setting}"])
