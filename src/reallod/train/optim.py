"""AdamW parameter groups and the learning-rate schedule of the published recipe.

Groups: the image backbone and the text encoder train at a learning-rate multiplier (0.1), the
rest at the base rate; within each, norms, biases and position embeddings get no weight decay.
Schedule: linear warm-up over the first steps, then ×gamma after each milestone epoch (at the step where
that epoch begins, also after a resume that splits its steps otherwise). With
``auto_scale_lr`` the base rate is scaled by total batch / base batch (the linear scaling rule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from reallod.train.config import OptimConfig, ScheduleConfig

BACKBONE_PREFIXES = ("model.backbone.",)
TEXT_PREFIXES = ("model.text_backbone.",)
POSITION_KEYWORDS = ("position_embedding", "position_embeddings", "relative_position_bias_table",
                     "absolute_position", "absolute_pos_embed")


@dataclass(frozen=True)
class ParamInfo:
    name: str
    part: str  # backbone | text | other
    decay: bool


def classify(named: Iterable[tuple[str, nn.Parameter]], norm_params: set[int]) -> list[ParamInfo]:
    """Which part each trainable parameter belongs to, and whether it is weight-decayed."""
    out = []
    for name, p in named:
        if not p.requires_grad:
            continue
        key = name.removeprefix("module.")
        part = ("backbone" if key.startswith(BACKBONE_PREFIXES) else
                "text" if key.startswith(TEXT_PREFIXES) else "other")
        no_decay = (id(p) in norm_params or key.endswith("bias") or p.ndim == 0
                    or any(k in key for k in POSITION_KEYWORDS))
        out.append(ParamInfo(name, part, not no_decay))
    return out


def norm_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters owned by normalisation layers (any module class whose name ends in Norm / NormNd)."""
    ids = set()
    for module in model.modules():
        cls = type(module).__name__
        if isinstance(module, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm) or "Norm" in cls:
            ids.update(id(p) for p in module.parameters(recurse=False))
    return ids


def freeze_zero_lr(model: nn.Module, cfg: OptimConfig) -> list[str]:
    """A part whose lr multiplier is 0 is frozen (no gradients computed at all); returns the parts frozen."""
    frozen = []
    for part, mult, prefixes in (("backbone", cfg.backbone_lr_mult, BACKBONE_PREFIXES),
                                 ("text", cfg.text_lr_mult, TEXT_PREFIXES)):
        if mult == 0:
            for name, p in model.named_parameters():
                if name.removeprefix("module.").startswith(prefixes):
                    p.requires_grad_(False)
            frozen.append(part)
    return frozen


def param_groups(model: nn.Module, cfg: OptimConfig, lr: float) -> list[dict]:
    """AdamW groups (each with ``name``, ``lr``, ``lr_mult``, ``weight_decay``), empty groups left out."""
    params = dict(model.named_parameters())
    mult = {"backbone": cfg.backbone_lr_mult, "text": cfg.text_lr_mult, "other": 1.0}
    groups: dict[tuple[str, bool], dict] = {}
    for info in classify(params.items(), norm_parameter_ids(model)):
        g = groups.setdefault((info.part, info.decay), {
            "name": f"{info.part}{'' if info.decay else '.no_decay'}", "params": [], "param_names": [],
            "lr": lr * mult[info.part], "lr_mult": mult[info.part],
            "weight_decay": cfg.weight_decay if info.decay else 0.0})
        g["params"].append(params[info.name])
        g["param_names"].append(info.name)
    order = [(p, d) for p in ("other", "backbone", "text") for d in (True, False)]
    return [groups[k] for k in order if k in groups]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.AdamW:
    groups = param_groups(model, cfg, lr)
    for g in groups:
        g.pop("param_names")
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


def scaled_lr(cfg: OptimConfig, total_batch: int, auto_scale: bool | None = None) -> float:
    """The base rate, scaled by ``total_batch / base_batch_size`` when auto-scaling is on."""
    on = cfg.auto_scale_lr if auto_scale is None else auto_scale
    return cfg.lr * total_batch / cfg.base_batch_size if on else cfg.lr


def lr_factor(step: int, *, warmup_steps: int, start_factor: float, milestone_steps: Sequence[int],
              gamma: float) -> float:
    """Multiplier of the base rate at optimizer step ``step`` (0-based): warm-up × step decay."""
    warm = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        warm = start_factor + (1.0 - start_factor) * step / warmup_steps
    decays = sum(1 for m in milestone_steps if step >= m)
    return warm * gamma ** decays


def milestone_steps(milestones: Sequence[int], steps_per_epoch: int, *, step: int = 0, epoch: int = 0,
                    steps_left: int | None = None) -> list[int]:
    """The step at which each milestone epoch begins: ``m × steps_per_epoch`` from the start. A resume counts
    on from the checkpoint's ``step`` in its ``epoch``, of which ``steps_left`` steps of this run's split are
    left: its earlier steps may have held other numbers of images (another batch size, accumulation or
    process count), and the rate must still drop where the epoch begins."""
    left = steps_per_epoch if steps_left is None else steps_left
    return [step + left + (m - epoch - 1) * steps_per_epoch for m in milestones]


def schedule_fn(cfg: ScheduleConfig, steps_per_epoch: int, *, step: int = 0, epoch: int = 0,
                steps_left: int | None = None) -> Callable[[int], float]:
    """Step → rate factor (``step``, ``epoch``, ``steps_left``: where a resume starts, see :func:`milestone_steps`)."""
    milestones = milestone_steps(cfg.milestones, steps_per_epoch, step=step, epoch=epoch, steps_left=steps_left)
    return lambda step: lr_factor(step, warmup_steps=cfg.warmup_steps, start_factor=cfg.warmup_start_factor,
                                  milestone_steps=milestones, gamma=cfg.gamma)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, *, step: int = 0,
                    epoch: int = 0, steps_left: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(cfg, steps_per_epoch, step=step, epoch=epoch,
                                                                    steps_left=steps_left))
