"""Resuming a run from a checkpoint: where it stopped (in images of its epoch, whatever the batch size
now), what it was built from, and what this run's config changes of it, read before anything is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reallod.errors import ConfigError
from reallod.train import checkpoint as C
from reallod.train.config import TrainConfig, dump_yaml
from reallod.train.dataset import EpochBatches

# what a checkpoint's model was built from: a resume loads that model, so it cannot take other values
MODEL_FIELDS = ("model.init", "model.tiny", "model.tokenizer", "model.max_text_len")
SPLIT_FIELDS = ("processes", "train.batch_size", "train.grad_accum")  # how a step's images are split


@dataclass
class ResumeFrom:
    """Where a checkpoint's run stopped and how it was set up, read before anything is loaded."""

    progress: C.Progress
    images: int  # of the checkpoint's epoch, trained by all processes together
    split: tuple[int, int, int] | None  # its processes, train.batch_size, train.grad_accum (None: unknown)
    changes: dict[str, tuple[Any, Any]]  # config field → (the checkpoint's value, this run's)

    @classmethod
    def read(cls, ckpt: Path, cfg: TrainConfig, world: int) -> ResumeFrom:
        """Refuses a config that changes the checkpoint's model, and a process count that cannot share
        the rest of its epoch evenly."""
        progress = C.Progress.from_json(ckpt / "state.json")
        saved = _saved_config(ckpt)
        run = saved.get("train") if isinstance(saved, dict) else None
        split = None
        if isinstance(run, dict) and isinstance(run.get("batch_size"), int) and isinstance(run.get("grad_accum", 1), int):
            split = (progress.processes, run["batch_size"], run.get("grad_accum", 1))
        images = progress.images_in_epoch
        if images is None:  # written before images were counted: batches of the checkpoint's train.batch_size
            if progress.batch_in_epoch and split is None:
                raise C.damaged(ckpt / "config.yaml", f"{ckpt / 'config.yaml'}: missing or without train.batch_size, "
                                "which says where in its epoch the checkpoint stopped")
            images = progress.batch_in_epoch * split[0] * split[1] if progress.batch_in_epoch else 0
        changes = _config_changes(saved, yaml.safe_load(dump_yaml(cfg))) if saved is not None else {}
        model = [f"{k} {short(a)} → {short(b)}" for k, (a, b) in changes.items()
                 if any(k == f or k.startswith(f + ".") for f in MODEL_FIELDS)]
        if model:
            raise ConfigError(f"{ckpt}: a resume trains the checkpoint's model, and this config changes what it was "
                              f"built from: {', '.join(model)}; resume with the checkpoint's values (its config.yaml), "
                              "or start a new run in another --work-dir (from these weights: "
                              f"model.init={ckpt / 'model'})")
        if images % world:
            raise ConfigError(f"{ckpt}: it stopped after {images} images of epoch {progress.epoch}, which {world} "
                              f"processes cannot share evenly (it was written by {progress.processes}): resume with "
                              f"{progress.processes} process(es) until the epoch ends, or from a checkpoint written "
                              "at an epoch's end")
        return cls(progress, images, split, changes)

    def split_warning(self, cfg: TrainConfig, world: int) -> str | None:
        """A warning when this run splits its steps otherwise than the checkpoint's run did."""
        p, now = self.progress, (world, cfg.train.batch_size, cfg.train.grad_accum)
        if self.split is not None:
            per_step = self.split[1] * self.split[2]
            changed = [f"{n} {a} → {b}" for n, a, b in zip(SPLIT_FIELDS, self.split, now, strict=True) if a != b]
            if not changed:
                return None
        elif not p.batch_size or (p.processes, p.batch_size) == (world, now[1] * now[2]):
            return None  # a checkpoint without its config.yaml: only its images per step are known
        else:
            per_step, changed = p.batch_size, []
        what = f" ({', '.join(changed)})" if changed else ""
        where = (f"after the {self.images} images of epoch {p.epoch} it had trained" if self.images
                 else f"at the start of epoch {p.epoch}")
        same = p.processes * per_step == world * now[1] * now[2]
        return (f"warning: the checkpoint was written by {p.processes} process(es) × {per_step} images per step; "
                f"this run has {world} × {now[1] * now[2]}{what}: training goes on {where}, "
                + ("with the same images per step, split otherwise (close to, not bit-identical with, an "
                   "uninterrupted run)" if same else "but its steps hold other images than an uninterrupted run's"))


def _saved_config(ckpt: Path) -> dict[str, Any] | None:
    """The checkpoint's ``config.yaml`` as written (None when it has none)."""
    path = ckpt / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise C.damaged(path, f"{path}: not a readable config ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(saved, dict):
        raise C.damaged(path, f"{path}: not a config (a YAML mapping)")
    return saved


def _config_changes(old: Any, new: Any, where: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted field → (old, new) for each field whose value differs; a field the old config lacks (one
    added to reallod since) is no change."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: dict[str, tuple[Any, Any]] = {}
        for k in new:
            if k in old:
                found.update(_config_changes(old[k], new[k], f"{where}.{k}" if where else str(k)))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) \
            and any(isinstance(v, dict) for v in old + new):  # data.train: by entry, as --cfg-options names them
        found = {}
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found.update(_config_changes(a, b, f"{where}.{i}"))
        return found
    return {} if old == new else {where: (old, new)}


def short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


class FromImage:
    """:class:`EpochBatches` from image ``skip`` of this process's share of an epoch on: a resume with another
    batch size goes on right after the images the checkpoint trained, the first batch the rest of one."""

    def __init__(self, batches: EpochBatches) -> None:
        self.batches, self.cut = batches, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.batches.set_epoch(epoch, skip // self.batches.batch_size)
        self.cut = skip % self.batches.batch_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        for i, batch in enumerate(self.batches):
            yield batch[self.cut:] if i == 0 else batch
