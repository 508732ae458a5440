"""Training configs: YAML files (with ``_base_`` inheritance) → typed dataclasses, plus overrides.

``--cfg-options key=value`` sets any field by its dotted path (``optim.lr=1e-5``,
``data.train.0.ratio=2``, ``schedule.milestones=[8,11]``); the value is read as YAML. Unknown keys,
in a file or an override, are errors that name the key and list the known ones. Every range and length
is checked on reading (:func:`check`), and an error names the field and where its value was set: the
file and line (through ``_base_`` files), or the override. A key twice in one mapping, which YAML would
silently drop, is an error too. ``{work_dir}`` in any string is replaced by the run's work directory.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reallod.data.images import DEFAULT_MAX_PIXELS
from reallod.errors import ConfigError, json_kind
from reallod.model.token_prompt import MAX_TEXT_LEN
from reallod.train.augment import AugmentOptions
from reallod.train.sampling import DEFAULT_SOURCE_PROBS
from reallod.yaml_lines import Sources, join_key, read_yaml_lines, where_set


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
    # how long a process waits for the others at a synchronisation (NCCL's own default: ten minutes), e.g.
    # while the main process checks the held-out images or writes a checkpoint; as HF Trainer's ddp_timeout
    dist_timeout_s: int = 1800


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



# (boolean, field) → the documented word of a string field that YAML 1.1 reads, unquoted, as that boolean
BOOLEAN_WORDS: dict[tuple[bool, str], str] = {(False, "train.mixed_precision"): "no"}


class FieldError(ConfigError):
    """A bad value of one field (``field``, dotted): :func:`load_config` adds where that value was set."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def read_yaml_sources(path: str | Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Sources]:
    """A YAML mapping, with ``_base_`` (a path relative to this file, or a list of them) merged under it,
    and the file and line that set each key (``chain``: the files inheriting from this
    one, to refuse a ``_base_`` cycle, which would otherwise recurse until Python gives up)."""
    path = Path(path)
    chain = (*chain, path)
    data, sources = _read_file(path)
    bases = data.pop("_base_", None)
    at = sources.pop("_base_", str(path))
    if bases is None:
        return data, sources
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{at}: _base_: expected a file name or a list of them, got {bases!r}")
    merged: dict[str, Any] = {}
    merged_sources: Sources = {}
    for base in bases:
        base_path = path.parent / base
        if base_path.resolve() in {p.resolve() for p in chain}:
            raise ConfigError(f"{at}: _base_ {base}: a cycle of _base_ files "
                              f"({' → '.join(str(p) for p in (*chain, base_path))}): remove one of its links")
        if not base_path.exists():
            raise ConfigError(f"{at}: _base_ {base}: config file not found ({base_path}; a _base_ "
                              "path is relative to the file that names it)")
        base_data, base_sources = read_yaml_sources(base_path, chain)
        merged, merged_sources = (deep_merge(merged, base_data),
                                  _merge_sources(merged_sources, base_sources, base_data, merged))
    return deep_merge(merged, data), _merge_sources(merged_sources, sources, data, merged)


def _read_file(path: Path) -> tuple[dict[str, Any], Sources]:
    """One file's mapping and the line of each key (:func:`reallod.yaml_lines.read_yaml_lines`: a key twice
    in one mapping is an error)."""
    data, sources = read_yaml_lines(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a YAML mapping")
    return data, sources


def _merge_sources(base: Sources, over: Sources, over_data: dict[str, Any], base_data: dict[str, Any]) -> Sources:
    """Where each key of ``deep_merge(base_data, over_data)`` was set: a value that is not a mapping replaces
    all the base set under its key (an empty section replaces nothing)."""
    replaced = tuple(k + "." for k in _replacing_keys(over_data, "", base_data))
    return {**{k: v for k, v in base.items() if not k.startswith(replaced)}, **over}


def _replacing_keys(data: dict[str, Any], where: str, base: Any) -> list[str]:
    out = []
    for k, v in data.items():
        key, under = join_key(where, str(k)), base.get(k) if isinstance(base, dict) else None
        if v is None and isinstance(under, dict):
            continue
        out += _replacing_keys(v, key, under) if isinstance(v, dict) else [key]
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else is replaced; an empty section
    (``optim:`` with every line under it commented out) keeps the base's, where it reset it to the defaults."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None and isinstance(out.get(k), dict):
            continue
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_overrides(data: dict[str, Any], options: list[str], sources: Sources | None = None) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (value parsed as YAML) to a copy of the raw config; ``sources``, when
    given, records each option as where its key was set."""
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
        if "" in parts:  # optim..lr, optim.lr.: blamed on the config file's line of the key before
            raise ConfigError(f"--cfg-options {opt}: the key {key.strip()!r} has an empty part (two dots in a row, or "
                              "one at an end)")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, dict) and node.get(part) is None:
                _default_list(node, part, ".".join(parts[: i + 1]), parts[i + 1], opt)
            node, parts[i] = _child(node, part, ".".join(parts[: i + 1]), create=True)
        last = parts[-1]
        if not isinstance(node, dict | list):  # optim.lr.x=1: "'float' object does not support item assignment"
            raise ConfigError(f"--cfg-options {opt}: {'.'.join(parts[:-1])} is {json_kind(node)}, not a section: "
                              "nothing can be set inside it")
        if isinstance(node, list):
            parts[-1] = str(_index(node, last, key))
            node[int(parts[-1])] = value
        else:
            node[last] = value
        if sources is not None:
            dotted = ".".join(parts)
            for k in [k for k in sources if k.startswith(dotted + ".")]:
                del sources[k]
            sources[dotted] = f"--cfg-options {opt}"
    return out


def _default_list(node: dict[str, Any], key: str, dotted: str, index: str, opt: str) -> None:
    """Put the default of a list field the config leaves unset under ``key``, so that one item of it can be set
    (``optim.betas.1=0.99``: ``[0.9, 0.99]``); an index past its end is refused, naming the default."""
    default, hint = _default(dotted)
    if not isinstance(default, list):
        return
    try:
        inside = -len(default) <= int(index) < len(default)
    except ValueError:
        inside = True  # not an index: _index says so
    if not inside:
        item = typing.get_args(hint)[0] if typing.get_args(hint) else None
        whole = (yaml.safe_dump(default, default_flow_style=True, width=10**6).strip() if default else
                 "[{" + ", ".join(f"{f.name}: ..." for f in dataclasses.fields(item)) + "}]"
                 if dataclasses.is_dataclass(item) else "[...]")
        raise ConfigError(f"--cfg-options {opt}: {dotted} is not set in the config, and its default {default} has no "
                          f"item {index}: give the whole list instead, e.g. {dotted}={whole}")
    node[key] = copy.deepcopy(default)


def _default(dotted: str) -> tuple[Any, Any]:
    """The default of the config field at a dotted path (inside an unset optional section: that section's own
    defaults) and its type; (None, None) when there is no such field."""
    value: Any = TrainConfig()
    hint: Any = None
    for key in dotted.split("."):
        if not (dataclasses.is_dataclass(value) and key in {f.name for f in dataclasses.fields(value)}):
            return None, None
        hint = typing.get_type_hints(type(value))[key]
        value = getattr(value, key)
        if value is None:
            section = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
            value = section[0]() if section else None
    return value, hint


def _index(node: list, part: str, where: str) -> int:
    """A list index, counted from the start (-1: the last)."""
    try:
        i = int(part)
    except ValueError:
        raise ConfigError(f"--cfg-options {where}: {part!r} indexes a list, so it must be a number") from None
    if not -len(node) <= i < len(node):
        raise ConfigError(f"--cfg-options {where}: index {i} is out of range (the list has {len(node)} items)")
    return i % len(node)


def _child(node: Any, part: str, where: str, create: bool) -> tuple[Any, str]:
    """The child and its key (a list index counted from the start)."""
    if isinstance(node, list):
        i = _index(node, part, where)
        return node[i], str(i)
    if not isinstance(node, dict):
        raise ConfigError(f"--cfg-options {where}: cannot set a field inside a {type(node).__name__}")
    if node.get(part) is None and create:
        node[part] = {}
    return node[part], part


def load_config(path: str | Path | None = None, options: list[str] | None = None,
                data: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or take ``data``), apply overrides, build and check the dataclasses. A bad value
    is named with where it was set (``FILE:LINE``, or the ``--cfg-options`` word; a default: the config file)."""
    raw, sources = read_yaml_sources(path) if path is not None else (copy.deepcopy(data or {}), {})
    if path is not None and not raw and not options:  # else told of the first field a config must set
        raise ConfigError(f"{path}: the config is empty: set at least model (model.init or model.tiny) and data "
                          "(the configs in configs/train/ are examples)")
    raw = apply_overrides(raw, list(options or []), sources)
    try:
        cfg = build(TrainConfig, raw, "")
        check(cfg)
    except FieldError as e:
        where = where_set(sources, e.field, path)
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    return cfg


def build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a mapping, checking every key and value type; errors name the dotted key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FieldError(where or "config", f"expected a mapping, got {json_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted((k for k in data if k not in names), key=str)  # a key `on:` is YAML's true: not a str
    if unknown:
        read = ("" if isinstance(unknown[0], str) else f" (YAML reads an unquoted on, off, yes or no as {unknown[0]}: "
                "quote the key if it is a word)")
        raise FieldError(join_key(where, str(unknown[0])), f"unknown key{read}; known keys here: {', '.join(names)}")
    kwargs = {k: _value(hints[k], v, join_key(where, k)) for k, v in data.items()}
    return cls(**kwargs)


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
            raise FieldError(where, f"expected a list, got {v!r}")
        return [_value(args[0], x, f"{where}.{i}") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise FieldError(where, f"expected a mapping, got {v!r}")
        return {str(k): _value(args[1], x, f"{where}.{k}") for k, x in v.items()}
    if tp is bool:
        if not isinstance(v, bool):
            raise FieldError(where, f"expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise FieldError(where, f"expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise FieldError(where, f"expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if isinstance(v, bool):
            if (v, where) in BOOLEAN_WORDS:
                return BOOLEAN_WORDS[v, where]
            raise FieldError(where, f"expected a string, got {v!r} (YAML reads yes, no, on, off unquoted as true or "
                             "false: quote the value)")
        if not isinstance(v, str):
            raise FieldError(where, f"expected a string, got {v!r}")
        return v
    return v


def check(cfg: TrainConfig) -> None:
    """Every range, length and cross-field rule, naming the field: a bad value stops the run here, before
    any model is built, not at the first batch or an epoch later as an error from inside torch."""
    _finite(cfg, "")
    _within("seed", cfg.seed, 0, 2**32 - 1)  # NumPy's seed range
    _check_model(cfg.model)
    _check_data(cfg.data)
    _check_augment(cfg.augment)
    _check_optim(cfg.optim)
    s = cfg.schedule
    _at_least("schedule.epochs", s.epochs, 1)
    if s.max_steps is not None:
        _at_least("schedule.max_steps", s.max_steps, 1)
    _at_least("schedule.warmup_steps", s.warmup_steps, 0)
    _need(0 < s.warmup_start_factor <= 1, "schedule.warmup_start_factor", f"must be in (0, 1], not {s.warmup_start_factor}")
    _each("schedule.milestones", s.milestones, 0)
    _need(s.gamma > 0, "schedule.gamma", f"must be > 0, not {s.gamma}")
    t = cfg.train
    _need(t.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision",
          f"use no, bf16 or fp16, not {t.mixed_precision!r}")
    _at_least("train.batch_size", t.batch_size, 1)
    _at_least("train.grad_accum", t.grad_accum, 1)
    if t.threads is not None:
        _at_least("train.threads", t.threads, 1)
    _at_least("train.dist_timeout_s", t.dist_timeout_s, 1)
    # 0 would still save at every epoch end: refused rather than read as "off", as eval.every_epochs: 0 is
    _at_least("checkpoint.every_epochs", cfg.checkpoint.every_epochs, 1)
    _at_least("checkpoint.every_steps", cfg.checkpoint.every_steps, 0)
    _at_least("checkpoint.keep_last", cfg.checkpoint.keep_last, 0)
    _at_least("log.every_steps", cfg.log.every_steps, 1)
    _check_eval(cfg.eval, cfg.data.synthetic is not None)


def _check_model(m: ModelConfig) -> None:
    if (m.init is None) == (m.tiny is None):
        raise FieldError("model.tiny", "set exactly one of model.init (a detector folder or hub id) and model.tiny")
    _within("model.max_text_len", m.max_text_len, 8, MAX_TEXT_LEN)
    if m.tiny is not None:
        t = m.tiny
        _need(t.text_backbone in ("tiny", "minilm"), "model.tiny.text_backbone",
              f"use tiny or minilm, not {t.text_backbone!r}")
        _need(t.d_model >= 32 and t.d_model % 32 == 0, "model.tiny.d_model",
              f"must be a multiple of 32 (GroupNorm(32)), not {t.d_model}")
        _at_least("model.tiny.num_queries", t.num_queries, 1)
        _at_least("model.tiny.encoder_layers", t.encoder_layers, 1)
        _at_least("model.tiny.decoder_layers", t.decoder_layers, 2)  # transformers fails with 1


def _check_data(d: DataConfig) -> None:
    if not d.train and d.synthetic is None:
        raise FieldError("data.train", "no training files (add {file, images, ratio} entries or data.synthetic)")
    for i, f in enumerate(d.train):
        _need(bool(f.file and f.images), f"data.train.{i}", "both file and images are required")
        _at_least(f"data.train.{i}.ratio", f.ratio, 0)
    if (syn := d.synthetic) is not None:
        _at_least("data.synthetic.num_train", syn.num_train, 1)
        _at_least("data.synthetic.num_val", syn.num_val, 0)
        _pair("data.synthetic.size", syn.size, "width and height, in pixels")
        _each("data.synthetic.size", syn.size, 16)
        _at_least("data.synthetic.max_shapes", syn.max_shapes, 1)
    for name, p in d.source_probs.items():
        _at_least(f"data.source_probs.{name}", p, 0)
    _need(any(p > 0 for p in d.source_probs.values()), "data.source_probs",
          "at least one text source needs a probability above 0")
    _at_least("data.positives_per_instance", d.positives_per_instance, 1)
    _at_least("data.max_negatives", d.max_negatives, 0)
    if d.max_text_len is not None:
        _within("data.max_text_len", d.max_text_len, 8, MAX_TEXT_LEN)
    _need(bool(d.relations) and set(d.relations) <= {"single", "multi"}, "data.relations",
          f"use single, multi or both, not {d.relations}")
    _at_least("data.num_workers", d.num_workers, 0)
    _at_least("data.max_pixels", d.max_pixels, 1)


def _check_augment(a: AugmentConfig) -> None:
    _within("augment.flip_prob", a.flip_prob, 0, 1)
    _within("augment.crop_prob", a.crop_prob, 0, 1)
    for name, sides in (("augment.scales", a.scales), ("augment.crop_pre_scales", a.crop_pre_scales)):
        _need(bool(sides), name, "needs at least one short side (pixels)")
        _each(name, sides, 1)
    _at_least("augment.max_size", a.max_size, 1)
    _at_least("augment.crop_pre_max_size", a.crop_pre_max_size, 1)
    _pair("augment.crop_size", a.crop_size, "the smallest and the largest crop side, in pixels")
    _each("augment.crop_size", a.crop_size, 1)
    _need(a.crop_size[0] <= a.crop_size[1], "augment.crop_size", f"the smallest side comes first, not {a.crop_size}")
    _at_least("augment.min_box_size", a.min_box_size, 0)
    _pair("augment.test_scale", a.test_scale, "the short side and the long side limit, in pixels")
    _each("augment.test_scale", a.test_scale, 1)


def _check_optim(o: OptimConfig) -> None:
    for name in ("lr", "weight_decay", "eps", "backbone_lr_mult", "text_lr_mult"):
        _at_least(f"optim.{name}", getattr(o, name), 0)
    _pair("optim.betas", o.betas, "beta1 and beta2, each in [0, 1)")
    for i, b in enumerate(o.betas):
        _need(0 <= b < 1, f"optim.betas.{i}", f"must be in [0, 1), not {b}")
    if o.clip_grad is not None:
        _need(o.clip_grad > 0, "optim.clip_grad", f"must be > 0 (null: no clipping), not {o.clip_grad}")
    _at_least("optim.base_batch_size", o.base_batch_size, 1)


def _check_eval(e: EvalConfig, synthetic: bool) -> None:
    _need(e.metric in ("ap50", "ap", "ap50_pos", "ap_pos"), "eval.metric",
          f"use ap50, ap, ap50_pos or ap_pos, not {e.metric!r}")
    if (e.file is None) != (e.images is None):  # one alone would be replaced, or evaluated against the wrong root
        given, missing = ("eval.file", "eval.images") if e.images is None else ("eval.images", "eval.file")
        raise FieldError(given, f"{missing} is not set: set both eval.file and eval.images (the root of the file's "
                         "image filenames), or neither"
                         + (" (data.synthetic then evaluates on its held-out shapes)" if synthetic else ""))
    for name in ("file", "images"):
        _need(getattr(e, name) != "", f"eval.{name}", "is empty: give a path, or null (no evaluation)")
    _at_least("eval.every_epochs", e.every_epochs, 0)
    _at_least("eval.every_steps", e.every_steps, 0)
    _need(bool(e.sources), "eval.sources", "needs at least one text source (e.g. [vlm_short])")
    if e.max_images is not None:
        _at_least("eval.max_images", e.max_images, 1)
    _at_least("eval.negatives_per_image", e.negatives_per_image, 0)
    _at_least("eval.batch_size", e.batch_size, 1)


def _need(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise FieldError(field, message)


def _at_least(field: str, value: float, low: float) -> None:
    _need(value >= low, field, f"must be >= {low}, not {value}")


def _within(field: str, value: float, low: float, high: float) -> None:
    _need(low <= value <= high, field, f"must be between {low} and {high}, not {value}")


def _each(field: str, values: list, low: float) -> None:
    for i, v in enumerate(values):
        _at_least(f"{field}.{i}", v, low)


def _pair(field: str, values: list, what: str) -> None:
    _need(len(values) == 2, field, f"takes two numbers ({what}), not {values}")


def _finite(x: Any, where: str) -> None:
    """NaN passes every range test (all comparisons are false), infinity most: refuse both (YAML .nan, .inf)."""
    if dataclasses.is_dataclass(x):
        for f in dataclasses.fields(x):
            _finite(getattr(x, f.name), join_key(where, f.name))
    elif isinstance(x, list | dict):
        for k, v in (x.items() if isinstance(x, dict) else enumerate(x)):
            _finite(v, f"{where}.{k}")
    elif isinstance(x, float) and not math.isfinite(x):
        raise FieldError(where, f"must be a finite number, not {x}")


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
