"""Training checkpoints: a Hugging Face detector folder plus optimizer, scheduler, progress and RNG state.

Layout of ``WORK/checkpoints/ckpt-00001234/``::

    model/            config.json, model.safetensors, tokenizer, preprocessor config
                      (a folder `reallod detect --model` loads as it is)
    optimizer.pt      optimizer state (torch.save; loaded with weights_only=True)
    scheduler.pt      learning-rate scheduler state
    scaler.pt         fp16 gradient scaler state, when there is one
    rng-0.pt ...      per process: Python, NumPy and torch (CPU and CUDA) generator states
    state.json        step, epoch, batches and images already consumed in that epoch, why it was written
    config.yaml       the resolved training config

A checkpoint is written into ``ckpt-N.tmp`` and renamed when complete, so a run killed while
writing never leaves a half checkpoint that ``--resume`` would pick up; one the disk refuses is a
:class:`CheckpointWriteError` (the ``.tmp`` removed). A resume from an older checkpoint moves the
newer ones of the abandoned run to ``checkpoints.dropped/`` (:func:`drop_after`). One run at a time
trains in a work dir: :func:`lock_work_dir` refuses a second one at once.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reallod.errors import ConfigError, ReallodError
from reallod.runs.journal import JournalBusy, JournalLock, lock_holder, lock_journal

CKPT_RE = re.compile(r"^ckpt-(\d{8})$")
DROPPED = "checkpoints.dropped"  # the checkpoints after the one a run resumed from (an abandoned run's)


@dataclass
class Progress:
    step: int  # optimizer steps done
    epoch: int  # epoch the next batch belongs to
    batch_in_epoch: int  # batches of that epoch already consumed (by each process)
    reason: str = "interval"  # interval | epoch | final
    processes: int = 1  # the run's process count and per-process batch: a resume with others
    batch_size: int = 0  # still works, but no longer replays the same data order
    # images of that epoch already consumed by all processes together (None: at the epoch's start, or a
    # checkpoint written before they were counted): a resume with another batch size goes on after them
    images_in_epoch: int | None = None

    @classmethod
    def from_json(cls, path: Path) -> Progress:
        try:
            d = json.loads(path.read_text())
            images = d.get("images_in_epoch")
            return cls(int(d["step"]), int(d["epoch"]), int(d["batch_in_epoch"]), str(d.get("reason", "")),
                       int(d.get("processes", 1)), int(d.get("batch_size", 0)), None if images is None else int(images))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise damaged(path, f"{path}: not a readable checkpoint state ({e})") from None


WORK_LOCK = "train"  # the work dir's lock file is WORK/train.lock (:func:`reallod.runs.journal.lock_path_for`)


def lock_work_dir(work_dir: Path) -> JournalLock:
    """``work_dir`` locked for this run (it must exist), or :class:`JournalBusy` at once naming the run
    training there. Two runs in one work dir (a job started twice, a rerun while the workers of a killed
    ``torchrun`` go on) would interleave their logs and checkpoints, and one would prune, drop or half-read
    the other's. The lock is the kernel's, so it goes with its process, ``kill -9`` included."""
    try:
        return lock_journal(work_dir / WORK_LOCK)
    except JournalBusy:
        holder = lock_holder(work_dir / WORK_LOCK)
        raise JournalBusy(f"{work_dir} is being trained by another run{holder}: wait for it to end, or use "
                          "another --work-dir") from None


def checkpoint_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}"


def list_checkpoints(work_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a work dir, oldest first."""
    root = checkpoint_dir(work_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def latest_checkpoint(work_dir: str | Path) -> Path | None:
    found = list_checkpoints(work_dir)
    return found[-1] if found else None


def checkpoint_step(ckpt: Path) -> int:
    return int(CKPT_RE.match(ckpt.name).group(1))


def drop_after(work_dir: str | Path, step: int) -> list[Path]:
    """Move the work dir's checkpoints from after ``step`` (a resume from an older checkpoint does those steps
    again) into ``checkpoints.dropped/``, so that pruning, the interrupt message and a later ``--resume``
    see the resumed run's own history. A same-named one dropped before is kept (the new one gets a suffix).
    Returns where they went."""
    moved = []
    for ckpt in list_checkpoints(work_dir):
        if checkpoint_step(ckpt) <= step:
            continue
        dst = Path(work_dir) / DROPPED / ckpt.name
        n = 1
        while dst.exists():
            n += 1
            dst = dst.with_name(f"{ckpt.name}-{n}")
        dst.parent.mkdir(exist_ok=True)
        ckpt.rename(dst)
        moved.append(dst)
    return moved


def resolve_resume(resume: str | Path | bool | None, work_dir: str | Path) -> Path | None:
    """``True``/``"latest"``: the newest checkpoint in the work dir (None when there is none yet); a path: that one."""
    if resume in (None, False):
        return None
    if resume is True or resume == "latest":
        return latest_checkpoint(work_dir)
    path = Path(resume)
    if (path / "checkpoints").is_dir() and not (path / "state.json").exists():
        found = latest_checkpoint(path)  # a work dir: its latest checkpoint
        if found is None:
            raise ConfigError(f"{path}: no complete checkpoint in this work dir")
        return found
    if not (path / "state.json").is_file() or not (path / "model" / "config.json").is_file():
        raise ConfigError(f"{path}: not a training checkpoint (expected state.json and model/config.json)")
    return path


# ---------------------------------------------------------------------------------------------
# RNG state (stored as plain tensors / lists so it loads with weights_only=True)
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():  # this process's device only: a resume may see fewer (or other) GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, list):  # earlier checkpoints kept every visible device's: this process's own
        device = torch.cuda.current_device()
        if device >= len(cuda):
            return
        cuda = cuda[device]
    torch.cuda.set_rng_state(cuda)


def load_torch(path: Path) -> Any:
    """``torch.load`` with ``weights_only``; a damaged file fails in many ways (``KeyError: 101`` for
    text), each one a :class:`ConfigError` naming the file and what to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever the unpickler raises, the file is unusable
        detail = " ".join(str(e).split())
        if "weights_only" in detail:  # torch's advice to load it unsafely: only the unpickler's own reason
            detail = detail.rpartition("WeightsUnpickler error:")[2].partition(" Check the documentation")[0]
            detail = detail.strip() or "not a file of tensors"
        raise damaged(path, f"{path}: cannot read this checkpoint file ({type(e).__name__}: {detail[:200]})") from None


def damaged(path: Path, message: str) -> ConfigError:
    """``message`` plus what to do: resume from the newest older checkpoint of the work dir, or delete this one."""
    ckpt = next((p for p in Path(path).parents if CKPT_RE.match(p.name)), Path(path).parent)
    older = [c for c in list_checkpoints(ckpt.parent.parent) if c.name < ckpt.name]
    if older:
        return ConfigError(f"{message}; the checkpoint is damaged: resume from an older one "
                           f"(`--resume {older[-1]}`), or delete {ckpt}")
    return ConfigError(f"{message}; the checkpoint is damaged and there is no older one: delete {ckpt} and start over")


class CheckpointWriteError(ReallodError):
    """The disk refused a checkpoint or ``best/`` write (full, read-only, gone); the run stops."""

    exit_code = 1


def write_failed(path: Path, what: str, error: BaseException, work_dir: Path, *,
                 remove: bool = True) -> CheckpointWriteError:
    """The error for a failed write of ``path`` (removed unless ``remove`` is false, another process's to
    do: a partial folder only takes space), naming the cause and the last complete checkpoint, which
    ``--resume`` continues from."""
    full = _nearly_full(path.parent)  # before the partial folder is removed: torch names no full disk
    if remove:
        shutil.rmtree(path, ignore_errors=True)
    detail = " ".join(str(error).split())[:300] + full
    last = latest_checkpoint(work_dir)
    then = (f"the last complete checkpoint, {last}, is intact: free disk space (or fix the cause), then `--resume` "
            "continues from it" if last is not None else
            "no checkpoint is complete yet: free disk space (or fix the cause), then `--resume` starts over")
    return CheckpointWriteError(f"{path}: cannot write {what} ({type(error).__name__}: {detail}); {then}")


def _nearly_full(folder: Path) -> str:
    """What to add to a write error's cause when the disk is (nearly) full: torch says of it only
    ``[enforce fail at inline_container.cc] . unexpected pos``."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f"; the disk has {free / 2**20:.1f} MiB free: full?" if free < 64 * 2**20 else ""


def replace_folder(new: Path, dst: Path) -> None:
    """Move the complete folder ``new`` to ``dst``; the old ``dst`` is moved aside first, then deleted."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    new.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def prune(work_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete interval checkpoints beyond the newest ``keep_last`` (epoch and final ones stay)."""
    interval = [p for p in list_checkpoints(work_dir) if Progress.from_json(p / "state.json").reason == "interval"]
    latest = latest_checkpoint(work_dir)
    doomed = [p for p in interval[: max(0, len(interval) - max(keep_last, 0))] if p != latest]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def write_state(folder: Path, progress: Progress) -> None:
    state = {k: v for k, v in asdict(progress).items() if v is not None}
    (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")
