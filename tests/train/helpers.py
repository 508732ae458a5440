"""A tiny training config for the loop tests: a 1-layer random text encoder, 80-pixel shapes, 2 images a batch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from reallod.train.config import TrainConfig, load_config

TINY: dict[str, Any] = {
    "seed": 3,
    "model": {"tiny": {"text_backbone": "tiny", "d_model": 32, "num_queries": 10, "encoder_layers": 1,
                       "decoder_layers": 2}, "max_text_len": 64},
    "data": {"synthetic": {"num_train": 12, "num_val": 3, "size": [80, 80], "max_shapes": 2},
             "max_negatives": 4, "num_workers": 0},
    # Evaluation runs one image at a time: at 96 pixels the coarsest feature level is still 2×2 (GroupNorm
    # needs more than one value per group).
    "augment": {"scales": [64, 80], "max_size": 128, "crop_prob": 0.5, "crop_pre_scales": [80],
                "crop_size": [40, 80], "test_scale": [96, 128]},
    "optim": {"lr": 1.0e-3, "clip_grad": 1.0, "backbone_lr_mult": 0.5, "text_lr_mult": 0.1},
    "schedule": {"epochs": 3, "warmup_steps": 2, "warmup_start_factor": 0.5, "milestones": [2]},
    "train": {"batch_size": 2, "threads": 1},
    "checkpoint": {"every_epochs": 1, "every_steps": 0, "keep_last": 10},
    "log": {"every_steps": 1, "tensorboard": False},
    "eval": {"every_epochs": 0},
}


def tiny_raw(data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["data"]["synthetic"]["dir"] = str(data_dir)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def tiny_config(data_dir: Path, options: list[str] | None = None, **sections: dict[str, Any]) -> TrainConfig:
    return load_config(data=tiny_raw(data_dir, **sections), options=options)


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def quiet(line: str) -> None:
    """An ``echo`` for ``train`` that prints nothing."""


def interrupt_at(fn: Any, n: int, error: BaseException | type[BaseException] = KeyboardInterrupt) -> Any:
    """``fn`` as a test double that is Ctrl-C (KeyboardInterrupt, or ``error``) at its ``n``-th call, and
    ``fn`` otherwise."""
    calls = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == n:
            raise error
        return fn(*args, **kwargs)

    return wrapped
