"""Argument handling for ``reallod train`` that Typer cannot express.

``--resume`` takes an optional checkpoint (``--resume`` alone: the latest in the work dir), and
``--cfg-options`` takes any number of ``key=value`` words (MMDetection's convention). Typer options
take a fixed number of values, so the command accepts extra words and sorts them out here.
"""

from __future__ import annotations

from pathlib import Path

from reallod.errors import ConfigError


def split_extra_args(config: Path, extra: list[str], resume: bool, cfg_options: list[str]
                     ) -> tuple[Path, Path | None, list[str]]:
    """(config, checkpoint or None, overrides) from the parsed CONFIG and the words Typer left over."""
    unknown = [w for w in extra if w.startswith("-")]
    if unknown:
        raise ConfigError(f"no such option: {unknown[0]} (see reallod train --help)")
    overrides = list(cfg_options)
    loose = [w for w in extra if "=" in w]
    if loose and not cfg_options:
        raise ConfigError(f"{loose[0]!r}: put overrides after --cfg-options (e.g. --cfg-options optim.lr=1e-5)")
    overrides += loose
    paths = [w for w in extra if "=" not in w]
    if len(paths) > 1 or (paths and not resume):
        raise ConfigError(f"unexpected argument(s): {' '.join(paths)} (a checkpoint goes right after --resume)")
    ckpt = Path(paths[0]) if paths else None
    if ckpt is not None and config.is_dir() and not ckpt.is_dir():
        config, ckpt = ckpt, config  # `--resume CKPT CONFIG`: Typer took the checkpoint for CONFIG
    return config, ckpt, overrides


def quiet_transformers() -> None:
    """No per-tensor progress bars or advisory warnings from transformers on the console."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
