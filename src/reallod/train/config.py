"""Training configs: YAML files (with ``_base_`` inheritance) → typed dataclasses, plus overrides.

``--cfg-options key=value`` sets any field by its dotted path (``optim.lr=1e-5``,
``data.train.0.ratio=2``, ``schedule.milestones=[8,11]``); the value is read as YAML. Unknown keys,
in a file or an override, are errors that name the key and list the known ones. ``{work_dir}`` in
any string is replaced by the run's work directory.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reallod.data.images import DEFAULT_MAX_PIXELS
from reallod.errors import ConfigError
from reallod.train.augment import AugmentOptions
from reallod.train.sampling import DEFAULT_SOURCE_PROBS


@dataclass
class TinyModelConfig:
    """A random-initialised tiny detector (``reallod.model.tiny``) instead of a pretrained one."""

    text_backbone: str = "minilm"  # minilm: the real MiniLM-L6 weights; tiny: random
    d_model: int = 64
    num_queries: int = 30
    encoder_layers: int = 1
    decoder_layers: int = 2


@dataclass
class ModelConfig:
    init: str | None = None  # a Hugging Face detector folder or hub id (see `reallod convert-checkpoint`)
    tiny: TinyModelConfig | None = None
    tokenizer: str | None = None  # default: the init folder
    max_text_len: int = 512
    aux_loss: bool = True  # losses on every decoder layer, as MM-Grounding-DINO trains
    fix_encoder_loss: bool = True  # train query selection as DINO does (see reallod.train.losses)


@dataclass
class DataFileConfig:
    file: str = ""
    images: str = ""
    ratio: float = 1.0  # each record is visited this many times per epoch (fractions: a random subset)


@dataclass
class SyntheticConfig:
    """Generate the coloured-shapes data set (``reallod.train.synthetic``) when it is not there yet."""

    dir: str = "{work_dir}/shapes"
    num_train: int = 300
    num_val: int = 40
    seed: int = 0
    size: list[int] = field(default_factory=lambda: [128, 128])
    max_shapes: int = 3


@dataclass
class DataConfig:
    train: list[DataFileConfig] = field(default_factory=list)
    synthetic: SyntheticConfig | None = None
    source_probs: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SOURCE_PROBS))
    positives_per_instance: int = 1
    max_negatives: int = 50
    max_text_len: int | None = None  # token budget; default: the model's
    relations: list[str] = field(default_factory=lambda: ["single", "multi"])
    shuffle_phrases: bool = True
    num_workers: int = 2
    # The largest image decoded (width × height; --max-pixels), training and held-out alike: a larger training
    # image is skipped (counted as failed), a larger held-out one stops the run at setup. Pillow's budget.
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class AugmentConfig:
    flip_prob: float = 0.5
    swap_left_right: bool = True
    scales: list[int] = field(default_factory=lambda: list(AugmentOptions().scales))
    max_size: int = 1333
    crop_prob: float = 0.5
    crop_pre_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_pre_max_size: int = 4200
    crop_size: list[int] = field(default_factory=lambda: [384, 600])
    min_box_size: float = 1.0
    test_scale: list[int] = field(default_factory=lambda: [800, 1333])

    def options(self) -> AugmentOptions:
        return AugmentOptions(
            flip_prob=self.flip_prob, swap_left_right=self.swap_left_right, scales=tuple(self.scales),
            max_size=self.max_size, crop_prob=self.crop_prob, crop_pre_scales=tuple(self.crop_pre_scales),
            crop_pre_max_size=self.crop_pre_max_size, crop_size=(self.crop_size[0], self.crop_size[1]),
            min_box_size=self.min_box_size, test_scale=(self.test_scale[0], self.test_scale[1]))


@dataclass
class OptimConfig:
    lr: float = 2e-6
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    backbone_lr_mult: float = 0.1  # image backbone
    text_lr_mult: float = 0.1  # text encoder
    clip_grad: float | None = 0.1  # max gradient norm; null: no clipping
    auto_scale_lr: bool = False  # lr × total batch / base_batch_size
    base_batch_size: int = 64  # the published total batch (4 per GPU × 16 GPUs)


@dataclass
class ScheduleConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (a checkpoint is written)
    warmup_steps: int = 1000
    warmup_start_factor: float = 0.001
    milestones: list[int] = field(default_factory=lambda: [6, 8])  # epochs after which lr × gamma
    gamma: float = 0.1


@dataclass
class RunConfig:
    batch_size: int = 4  # per process
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16 (--amp: bf16 where supported, else fp16)
    cpu: bool = False  # train on the CPU even when a GPU is there
    threads: int | None = None  # torch CPU threads per process; null: torch's default
    find_unused_parameters: bool = True  # DDP: some heads get no gradient without the auxiliary loss


@dataclass
class CheckpointConfig:
    every_epochs: int = 1
    every_steps: int = 0  # 0: only at epoch ends
    keep_last: int = 3  # step checkpoints kept (epoch and final ones are all kept)


@dataclass
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = True  # only when the tensorboard package is installed


@dataclass
class EvalConfig:
    file: str | None = None  # held-out Real-Data; null: no periodic evaluation
    images: str | None = None
    every_epochs: int = 1
    every_steps: int = 0
    metric: str = "ap50"  # ap50 | ap | ap50_pos | ap_pos
    sources: list[str] = field(default_factory=lambda: ["vlm_short"])
    max_images: int | None = 500
    negatives_per_image: int = 3
    batch_size: int = 8


@dataclass
class TrainConfig:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping, with ``_base_`` (a path relative to this file, or a list of them) merged under it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a YAML mapping")
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = deep_merge(merged, read_yaml(path.parent / base))
    return deep_merge(merged, data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_overrides(data: dict[str, Any], options: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (value parsed as YAML) to a copy of the raw config."""
    out = copy.deepcopy(data)
    for opt in options:
        key, sep, raw = opt.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--cfg-options {opt!r}: expected key=value (e.g. optim.lr=1e-5)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--cfg-options {opt!r}: the value is not valid YAML ({e})") from None
        parts = key.strip().split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: i + 1]), create=True)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = value
        else:
            node[last] = value
    return out


def _index(node: list, part: str, where: str) -> int:
    try:
        i = int(part)
    except ValueError:
        raise ConfigError(f"--cfg-options {where}: {part!r} indexes a list, so it must be a number") from None
    if not -len(node) <= i < len(node):
        raise ConfigError(f"--cfg-options {where}: index {i} is out of range (the list has {len(node)} items)")
    return i


def _child(node: Any, part: str, where: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if not isinstance(node, dict):
        raise ConfigError(f"--cfg-options {where}: cannot set a field inside a {type(node).__name__}")
    if node.get(part) is None and create:
        node[part] = {}
    return node[part]


def load_config(path: str | Path | None = None, options: list[str] | None = None,
                data: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or take ``data``), apply overrides, build and check the dataclasses."""
    raw = read_yaml(path) if path is not None else copy.deepcopy(data or {})
    raw = apply_overrides(raw, list(options or []))
    cfg = build(TrainConfig, raw, "")
    check(cfg)
    return cfg


def build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a mapping, checking every key and value type; errors name the dotted key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key; known keys here: {', '.join(names)}")
    kwargs = {k: _value(hints[k], v, _join(where, k)) for k, v in data.items()}
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _value(tp: Any, v: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], v, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, v, where)
    if origin is list:
        if not isinstance(v, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {v!r}")
        return [_value(args[0], x, f"{where}.{i}") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping, got {v!r}")
        return {str(k): _value(args[1], x, f"{where}.{k}") for k, x in v.items()}
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{where}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where}: expected a string, got {v!r}")
        return v
    return v


def check(cfg: TrainConfig) -> None:
    """Cross-field checks a dataclass cannot express."""
    m = cfg.model
    if (m.init is None) == (m.tiny is None):
        raise ConfigError("model: set exactly one of model.init (a detector folder or hub id) and model.tiny")
    if not cfg.data.train and cfg.data.synthetic is None:
        raise ConfigError("data.train: no training files (add {file, images, ratio} entries or data.synthetic)")
    for i, f in enumerate(cfg.data.train):
        if not f.file or not f.images:
            raise ConfigError(f"data.train.{i}: both file and images are required")
        if f.ratio < 0:
            raise ConfigError(f"data.train.{i}.ratio: must be >= 0, not {f.ratio}")
    if cfg.train.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"train.mixed_precision: use no, bf16 or fp16, not {cfg.train.mixed_precision!r}")
    for name, v in (("train.batch_size", cfg.train.batch_size), ("train.grad_accum", cfg.train.grad_accum),
                    ("schedule.epochs", cfg.schedule.epochs), ("log.every_steps", cfg.log.every_steps),
                    ("data.max_pixels", cfg.data.max_pixels)):
        if v < 1:
            raise ConfigError(f"{name}: must be >= 1, not {v}")
    if cfg.schedule.max_steps is not None and cfg.schedule.max_steps < 1:
        raise ConfigError(f"schedule.max_steps: must be >= 1, not {cfg.schedule.max_steps}")
    if cfg.schedule.warmup_steps < 0 or not 0 < cfg.schedule.warmup_start_factor <= 1:
        raise ConfigError("schedule: warmup_steps must be >= 0 and warmup_start_factor in (0, 1]")
    if cfg.eval.metric not in ("ap50", "ap", "ap50_pos", "ap_pos"):
        raise ConfigError(f"eval.metric: use ap50, ap, ap50_pos or ap_pos, not {cfg.eval.metric!r}")
    if (cfg.eval.file is None) != (cfg.eval.images is None) and cfg.data.synthetic is None:
        raise ConfigError("eval: set both eval.file and eval.images (or neither)")
    a = cfg.augment
    if len(a.crop_size) != 2 or len(a.test_scale) != 2 or not a.scales or not a.crop_pre_scales:
        raise ConfigError("augment: crop_size and test_scale take two numbers; scales and crop_pre_scales at least one")


def resolve_paths(cfg: TrainConfig, work_dir: str | Path) -> TrainConfig:
    """A copy with ``{work_dir}`` replaced in every string field."""
    wd = str(work_dir)

    def sub(x: Any) -> Any:
        if isinstance(x, str):
            return x.replace("{work_dir}", wd)
        if isinstance(x, list):
            return [sub(v) for v in x]
        if isinstance(x, dict):
            return {k: sub(v) for k, v in x.items()}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.replace(x, **{f.name: sub(getattr(x, f.name)) for f in dataclasses.fields(x)})
        return x

    return sub(cfg)


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
