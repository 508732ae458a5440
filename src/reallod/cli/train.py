"""``reallod train``: train Real-Model on Real-Data (:func:`reallod.train.loop.train` does the work).

``--resume`` takes an optional checkpoint (``--resume`` alone: the latest in the work dir), and
``--cfg-options`` takes any number of ``key=value`` words (MMDetection's convention). Typer options
take a fixed number of values, so the command accepts extra words and :func:`split_extra_args`
sorts them out.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reallod.cli.common import quiet_transformers, shipped_config_dir, shipped_configs
from reallod.errors import ConfigError

if TYPE_CHECKING:
    from reallod.train.config import TrainConfig


def register(root: typer.Typer) -> None:
    root.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_cmd)


def split_extra_args(config: Path, extra: list[str], resume: bool, cfg_options: list[str]
                     ) -> tuple[Path, Path | None, list[str]]:
    """(config, checkpoint or None, overrides) from the parsed CONFIG and the words Typer left over."""
    unknown = [w for w in extra if w.startswith("-")]
    if unknown:
        raise ConfigError(f"no such option: {unknown[0]} (see reallod train --help)")
    overrides = list(cfg_options)
    spaced = [w for w in overrides if "=" not in w]  # `--cfg-options optim.lr 1e-5`: the value left loose
    if spaced:
        raise ConfigError(f"--cfg-options {spaced[0]}: expected KEY=VALUE, one word each (e.g. --cfg-options "
                          "optim.lr=1e-5)")
    loose = [w for w in extra if "=" in w]
    if loose and not cfg_options:
        raise ConfigError(f"{loose[0]!r}: put overrides after --cfg-options (e.g. --cfg-options optim.lr=1e-5)")
    overrides += loose
    paths = [w for w in extra if "=" not in w]
    if len(paths) > 1 or (paths and not resume):
        raise ConfigError(f"unexpected argument(s): {' '.join(paths)} (a checkpoint goes right after --resume; "
                          "--cfg-options takes KEY=VALUE words, e.g. optim.lr=1e-5)")
    ckpt = Path(paths[0]) if paths else None
    if ckpt is not None and config.is_dir() and not ckpt.is_dir():
        config, ckpt = ckpt, config  # `--resume CKPT CONFIG`: Typer took the checkpoint for CONFIG
    return config, ckpt, overrides


def check_config_file(config: Path) -> None:
    """CONFIG is a file: a folder (``configs/train``) or a name (``tiny-cpu``: CONFIG is a path, as
    docs/training.md writes it) is told the YAML files it could mean, rather than "config file not found"
    or "cannot read: Is a directory"."""
    if config.is_file():
        return
    folder = shipped_config_dir("train")
    shipped = ", ".join(_shown(folder / f"{name}.yaml") for name in shipped_configs("train"))
    if config.is_dir():
        files = ", ".join(str(p) for p in sorted(config.glob("*.yaml"))) or shipped
        raise ConfigError(f"{config}: a folder, not a config file" + (f"; give a YAML file such as {files}" if files
                                                                      else ""))
    if not config.exists():
        raise ConfigError(f"{config}: config file not found" + (f"; the shipped training configs: {shipped}"
                                                                if shipped else ""))


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is below it (``configs/train/tiny-cpu.yaml``)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_data_paths(config: Path, overrides: list[str], cfg: TrainConfig, work_dir: Path) -> None:
    """The data files and image roots the config names exist, checked before the run writes anything in the
    work dir; errors name the field (``data.train.0.file``) and where it was set."""
    from reallod.train.config import FieldError, apply_overrides, read_yaml_sources, resolve_paths
    from reallod.train.dataset import check_data_paths as check
    from reallod.yaml_lines import where_set

    try:
        check(resolve_paths(cfg, work_dir))
    except FieldError as e:
        raw, sources = read_yaml_sources(config)
        apply_overrides(raw, overrides, sources)
        where = where_set(sources, e.field, config)
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def check_config_kept(config: Path, work_dir: Path) -> None:
    """Refuse a CONFIG that is the work dir's ``config.yaml``, which the run replaces with its resolved config
    (comments and ``_base_`` lost), before anything is written; unless it is that resolved config already (a
    resume from the file an earlier run wrote there), which the run may write again."""
    from reallod.train.config import dump_yaml, load_config

    written = work_dir / "config.yaml"
    if not written.is_file() or not config.is_file() or not written.samefile(config):
        return
    try:
        if config.read_text(encoding="utf-8") == dump_yaml(load_config(config)):
            return
    except (ConfigError, OSError, UnicodeDecodeError):  # valid only with its --cfg-options: not a resolved config
        pass
    raise ConfigError(f"{config}: the run writes its resolved config to {written} (the --work-dir's config.yaml), "
                      "which would replace this file, its comments and _base_ lost: rename it (e.g. to "
                      f"{work_dir / 'train.yaml'}) and train from that, or give another --work-dir")


def train_cmd(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(
        help="Training config (YAML), e.g. configs/train/tiny-cpu.yaml.", show_default=False)],
    work_dir: Annotated[Path | None, typer.Option(
        "--work-dir", help="Checkpoints, logs (log.csv, eval.csv) and best/ go here "
        "(default: work_dirs/CONFIG-NAME).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the latest checkpoint in the work dir, or from the checkpoint "
        "folder given right after it (--resume CKPT).")] = False,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision: bf16 where supported, else fp16.")] = False,
    auto_scale_lr: Annotated[bool, typer.Option(
        "--auto-scale-lr", help="Scale the learning rate by total batch / optim.base_batch_size.")] = False,
    max_pixels: Annotated[int | None, typer.Option(
        "--max-pixels", min=1, show_default=False, help="Largest image decoded, in pixels (width × height; default: "
        "data.max_pixels, else Pillow's 89,478,485): a larger training image is skipped and counted, a larger "
        "held-out image stops the run at setup (a decompression-bomb guard: raise it for genuine large images).")
    ] = None,
    cfg_options: Annotated[list[str] | None, typer.Option(
        "--cfg-options", metavar="KEY=VALUE ...", help="Override config fields by dotted path, e.g. "
        "--cfg-options optim.lr=1e-5 schedule.max_steps=100 data.train.0.ratio=2 (values read as YAML).")] = None,
) -> None:
    """Train Real-Model on Real-Data (one process, or one per device under `accelerate launch` / `torchrun`).

    Ctrl-C stops within a second or two (exit status 130) and says the step reached, the last checkpoint
    and the command that continues from it.

    Examples: reallod train configs/train/tiny-cpu.yaml --work-dir work/tiny;
    reallod train configs/train/tiny-cpu.yaml --work-dir work/tiny --resume;
    accelerate launch --multi_gpu --num_processes 8 -m reallod train configs/train/real-model-t.yaml --amp
    """
    from reallod.data.io import check_writable
    from reallod.train.config import load_config
    from reallod.train.loop import train

    config, ckpt, overrides = split_extra_args(config, list(ctx.args), resume, list(cfg_options or []))
    check_config_file(config)
    cfg = load_config(config, overrides)
    quiet_transformers()
    work_dir = work_dir or Path("work_dirs") / config.stem
    check_writable(work_dir, option="--work-dir", folder=True, hint="give a folder for the checkpoints and logs")
    check_config_kept(config, work_dir)
    check_data_paths(config, overrides, cfg, work_dir)
    again = ["reallod", "train", str(config), "--work-dir", str(work_dir), "--resume",
             *(["--amp"] if amp else []), *(["--auto-scale-lr"] if auto_scale_lr else []),
             *(["--max-pixels", str(max_pixels)] if max_pixels is not None else []),
             *(["--cfg-options", *overrides] if overrides else [])]
    result = train(cfg, work_dir, resume=ckpt if ckpt is not None else (True if resume else None),
                   amp=amp, auto_scale_lr=True if auto_scale_lr else None, max_pixels=max_pixels,
                   resume_command=shlex.join(again))
    if not result.main_process:
        return
    if result.best:
        typer.echo(f"best {result.best['metric']} = {result.best['value']:.4f} (step {result.best['step']}): "
                   f"{result.work_dir / 'best'}")
    typer.echo(f"trained to step {result.step}; last checkpoint: {result.last_checkpoint}")

