"""The training loop: one readable loop on ``accelerate``, from one CPU process to many GPUs on many machines.

Launch it as a plain command (one process) or under ``accelerate launch`` / ``torchrun`` (one process
per device; gloo on CPU, NCCL on GPU). Each process reads its own share of every epoch
(:class:`reallod.train.dataset.EpochBatches`), so the data order depends only on the seed, the
epoch and the process count; gradient accumulation is explicit (no gradient sync until the last
micro-batch of a step), so a step is the same whether or not the run was resumed in between.

Per optimizer step: forward with the loss (transformers' Grounding-DINO loss: focal classification
over the prompt's tokens, L1 and GIoU on matched boxes, for the two-stage proposals and every
decoder layer), backward, gradient clipping, AdamW, learning-rate schedule. Logging, checkpoints
and the periodic evaluation happen between steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reallod.data.io import AtomicWriter
from reallod.errors import ConfigError, Interrupted, OutOfMemory, ReallodError, out_of_memory, smaller_batches
from reallod.train import best as B
from reallod.train import checkpoint as C
from reallod.train import held_out
from reallod.train.build import build_detector
from reallod.train.config import TrainConfig, check, dump_yaml, resolve_paths
from reallod.train.ctrl_c import CtrlC
from reallod.train.dataset import (
    DataFile,
    EpochBatches,
    TrainDataset,
    check_data_paths,
    check_image_root,
    collate,
    index_file,
    skipped_summary,
)
from reallod.train.losses import NonFiniteOutputs, training_loss
from reallod.train.losses import install as install_loss
from reallod.train.metrics_log import MetricsLog
from reallod.train.optim import build_optimizer, build_scheduler, freeze_zero_lr, scaled_lr
from reallod.train.processes import PeerFailed, settle
from reallod.train.resume import FromImage, ResumeFrom, short
from reallod.train.sampling import TextOptions, absent_sources, check_source_names

MODEL_INPUTS = ("pixel_values", "pixel_mask", "input_ids", "attention_mask", "token_type_ids")
MAX_FAILURES_SHOWN = 10
HYPERPARAMETERS = ("initial_lr", "lr_mult", "weight_decay", "betas", "eps")  # of each group, set by the config
LOGGED_LOSSES = ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_enc", "loss_bbox_enc", "loss_giou_enc")


@dataclass
class TrainResult:
    work_dir: Path
    step: int
    epoch: int
    last_checkpoint: Path | None
    best: dict[str, Any] | None = None
    last_eval: dict[str, float] | None = None
    failed_images: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    main_process: bool = True  # False in the other processes of a distributed run


class TokenizeFn:
    """Text → token ids without special tokens; a class (not a lambda) so data workers can pickle it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def pick_mixed_precision(configured: str, amp: bool, use_cpu: bool) -> str:
    """``--amp`` turns on bf16 where the device supports it, else fp16; a configured mode is kept."""
    if configured != "no" or not amp:
        return configured
    if use_cpu or not torch.cuda.is_available() or torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp16"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train(cfg: TrainConfig, work_dir: str | Path, *, resume: str | Path | bool | None = None, amp: bool = False,
          auto_scale_lr: bool | None = None, max_pixels: int | None = None, echo: Any = None,
          resume_command: str | None = None) -> TrainResult:
    """Train (or resume) as the config says; checkpoints, logs and the best model go under ``work_dir``.
    ``max_pixels`` (``--max-pixels``), when given, replaces ``data.max_pixels``.

    Ctrl-C (SIGINT) stops the run at once and raises :class:`TrainInterrupted` (exit status 130 in the
    CLI), whose message says the step reached, the last complete checkpoint and how to continue:
    ``resume_command`` (the CLI passes the command line with ``--resume``), else ``resume=True``.

    One run at a time trains in ``work_dir``: the main process locks it (``WORK/train.lock``,
    :func:`reallod.train.checkpoint.lock_work_dir`) before any process reads or writes it, and holds the
    lock to the end; a second run is refused at once (:class:`reallod.runs.journal.JournalBusy`, naming
    the pid of the run there), in every one of its processes.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    work_dir = Path(work_dir).resolve()
    cfg = resolve_paths(cfg, work_dir)
    if max_pixels is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_pixels=max_pixels))
        check(cfg)
    check_data_paths(cfg)  # before the work dir and its logs are made
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    mixed = pick_mixed_precision(cfg.train.mixed_precision, amp, cfg.train.cpu)
    # --amp and --auto-scale-lr as the resolved config's own: its config.yaml says what the run did, and a
    # resume without them names the change (it went from bf16 to fp32 without a word)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, mixed_precision=mixed),
        optim=dataclasses.replace(cfg.optim, auto_scale_lr=cfg.optim.auto_scale_lr if auto_scale_lr is None
                                  else auto_scale_lr))
    accelerator = Accelerator(mixed_precision=mixed, cpu=cfg.train.cpu, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters),
        InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.train.dist_timeout_s))])
    main = accelerator.is_main_process
    lock, error = None, None
    try:
        if main:  # held to the end of the run; no process reads or writes the work dir before it is taken
            try:
                work_dir.mkdir(parents=True, exist_ok=True)
                lock = C.lock_work_dir(work_dir)
                _check_not_a_rerun(work_dir, resume)
            except Exception as e:
                error = e
        try:
            settle(accelerator, error, f"opening the work dir {work_dir}")  # a refusal ends every process
        except BaseException:
            # every process is past the synchronisation: closing the group now, the processes exit with
            # their status (gloo's teardown as one ends with a peer gone aborted it: 'terminate called')
            if accelerator.num_processes > 1:
                accelerator.state.destroy_process_group()
            raise
        return _locked_train(cfg, work_dir, accelerator, main, resume, mixed, auto_scale_lr, echo, resume_command)
    finally:
        if lock is not None:
            lock.release()


def _check_not_a_rerun(work_dir: Path, resume: Any) -> None:
    """A rerun that forgot ``--resume`` would start over on top of the run there; and a folder that holds a
    ``config.yaml`` of no run (a project folder: ``--work-dir "$WORK"`` with WORK unset is the current
    one) would have it replaced by the run's resolved config."""
    if not resume and (found := C.list_checkpoints(work_dir)):
        raise ConfigError(f"{work_dir} already holds a training run (latest checkpoint {found[-1].name}); starting "
                          "over there would write over its checkpoints and logs: add --resume to continue it, or "
                          "give another --work-dir (or delete that one) to start a new run")
    config = work_dir / "config.yaml"
    if config.is_file() and not _a_runs_config(config):
        raise ConfigError(f"--work-dir {work_dir}: its config.yaml is not one a training run wrote, and the run "
                          "writes its resolved config there: give a folder of its own (an empty or new one)")


def _a_runs_config(path: Path) -> bool:
    """Whether ``path`` is the resolved config a run of this command wrote (a run killed before its first
    checkpoint leaves one: the rerun starts over and replaces it)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.keys() == TrainConfig().to_dict().keys()


def _locked_train(cfg: TrainConfig, work_dir: Path, accelerator: Any, main: bool, resume: Any, mixed: str,
                  auto_scale_lr: bool | None, echo: Any, resume_command: str | None) -> TrainResult:
    """:func:`train` once the work dir is this run's."""
    from accelerate.utils import set_seed

    log = MetricsLog(work_dir, enabled=main, tensorboard=cfg.log.tensorboard, echo=echo)
    live = _Live()
    try:
        with live.ctrl_c:
            try:
                return _train(cfg, work_dir, accelerator, log, resume, auto_scale_lr, set_seed, live)
            except KeyboardInterrupt:
                live.ctrl_c.pressed = True  # however it came: what its frames held is freed next, quietly
            gc.collect()  # what the interrupt left half-built complains from __del__: here, not after our message
    except NonFiniteOutputs:
        raise _diverged(live.step, cfg, mixed, work_dir, resume_command) from None
    except Exception as e:
        if (what := out_of_memory(e)) is None:
            raise
        raise _step_out_of_memory(what, live.step, cfg, mixed, work_dir, resume_command) from e
    finally:
        log.close()
    raise TrainInterrupted.at(live.step, work_dir, resume_command)


@dataclass
class _Live:
    """Where the run is, readable when Ctrl-C arrives anywhere inside it."""

    step: int | None = None  # None until the run has set up (model, data, checkpoint) and begins stepping
    ctrl_c: CtrlC = field(default_factory=CtrlC)


def _step_out_of_memory(what: str, step: int | None, cfg: TrainConfig, mixed: str, work_dir: Path,
                        resume_command: str | None) -> OutOfMemory:
    """What to change when a training step ran out of GPU memory: the same images per step in smaller
    batches, accumulated (a resume takes another split of its step: :mod:`reallod.train.resume`)."""
    ckpt, ckpt_step = _latest_checkpoint(work_dir)
    saved = f"checkpoint at step {ckpt_step} in {work_dir} ({ckpt.name})" if ckpt else f"no checkpoint in {work_dir} yet"
    where = "while setting up" if step is None else f"at step {step}"
    how = resume_command or "train(..., resume=True)"
    if smaller := smaller_batches(cfg.train.batch_size, cfg.train.grad_accum):
        pairs = f"train.batch_size={smaller[0]} train.grad_accum={smaller[1]}"
        fix = (f"train(...) with {pairs.replace(' ', ', ')} and resume=True" if resume_command is None else
               f"{how} {pairs}" if "--cfg-options" in how else f"{how} --cfg-options {pairs}")
        advice = f"the same images per step fit in less memory as smaller batches accumulated: `{fix}`"
    else:
        advice = ("one image per batch does not fit: lower augment.scales and augment.max_size"
                  + (", train with --amp" if mixed == "no" else "") + f", or use a GPU with more memory, then `{how}`")
    return OutOfMemory(f"{what} ({where}, train.batch_size {cfg.train.batch_size} per process); {saved}; {advice}")


class TrainingDiverged(ReallodError):
    """The model's outputs became NaN or infinite: the message says at which step, what to lower and
    which checkpoint to resume from."""


def _diverged(step: int | None, cfg: TrainConfig, mixed: str, work_dir: Path,
              resume_command: str | None) -> TrainingDiverged:
    ckpt, ckpt_step = _latest_checkpoint(work_dir)
    at = "at the first step" if not step else f"at step {step + 1} (log.csv holds the steps before it)"
    fix = (f"lower optim.lr (now {cfg.optim.lr:g})" + ("" if cfg.optim.clip_grad else " or set optim.clip_grad")
           + (", or train in bf16 (fp16 overflows where bf16 does not)" if mixed == "fp16" else ""))
    how = ("train(...) with the lower optim.lr and resume=True" if resume_command is None else
           f"{resume_command} optim.lr=..." if "--cfg-options" in resume_command else
           f"{resume_command} --cfg-options optim.lr=...")
    then = (f"resume from the checkpoint at step {ckpt_step} ({ckpt.name}) if its loss in log.csv is finite: "
            f"`{how}`" if ckpt else "start again")
    return TrainingDiverged(f"training diverged: the model's boxes are NaN or infinite {at}; {fix}, then {then}")


def _latest_checkpoint(work_dir: Path) -> tuple[Path | None, int | None]:
    """The latest complete checkpoint and its step (None, None: none)."""
    ckpt = C.latest_checkpoint(work_dir)
    if ckpt is None:
        return None, None
    try:
        return ckpt, C.Progress.from_json(ckpt / "state.json").step
    except ConfigError:
        return None, None


class TrainInterrupted(Interrupted):
    """Ctrl-C stopped training: the step reached, the last complete checkpoint and how to continue."""

    def __init__(self, message: str, *, step: int | None, checkpoint: Path | None, checkpoint_step: int | None,
                 work_dir: Path) -> None:
        super().__init__(message)
        self.step, self.checkpoint, self.checkpoint_step, self.work_dir = step, checkpoint, checkpoint_step, work_dir

    @classmethod
    def at(cls, step: int | None, work_dir: Path, resume_command: str | None) -> TrainInterrupted:
        ckpt, ckpt_step = _latest_checkpoint(work_dir)
        how = f"`{resume_command}`" if resume_command else "train(..., resume=True)"
        where = "while setting up, before the first step" if step is None else f"at step {step}"
        if ckpt is None:
            message = (f"interrupted {where}; no checkpoint in {work_dir} yet, so nothing is saved; "
                       f"{how} starts from the beginning")
        else:
            message = (f"interrupted {where}; checkpoint at step {ckpt_step} in {work_dir} ({ckpt.name}); "
                       f"{how} continues from there")
        return cls(message, step=step, checkpoint=ckpt, checkpoint_step=ckpt_step, work_dir=work_dir)


def _prepare_data(cfg: TrainConfig, accelerator: Any) -> TrainConfig:
    """Generate the synthetic set when configured (main process), and point train/eval at it if unset (eval:
    neither eval.file nor eval.images set, :func:`reallod.train.config.check`)."""
    syn = cfg.data.synthetic
    if syn is None:
        return cfg
    from reallod.train.config import DataFileConfig
    from reallod.train.synthetic import ensure_shapes_dataset

    if accelerator.is_main_process:
        ensure_shapes_dataset(syn.dir, num_train=syn.num_train, num_val=syn.num_val, seed=syn.seed,
                              size=(syn.size[0], syn.size[1]), max_shapes=syn.max_shapes)
    accelerator.wait_for_everyone()
    root = Path(syn.dir)
    if not cfg.data.train:
        cfg.data.train = [DataFileConfig(str(root / "train.jsonl"), str(root), 1.0)]
    if cfg.eval.file is None and syn.num_val > 0:
        cfg.eval.file, cfg.eval.images = str(root / "val.jsonl"), str(root)
    return cfg


def _train(cfg: TrainConfig, work_dir: Path, accelerator: Any, log: MetricsLog, resume: Any,
           auto_scale_lr: bool | None, set_seed: Any, live: _Live) -> TrainResult:
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    cfg = _prepare_data(cfg, accelerator)
    ckpt = C.resolve_resume(resume, work_dir)
    if resume and ckpt is None:
        log.info(f"no checkpoint in {work_dir} yet: starting from the beginning")
    start = ResumeFrom.read(ckpt, cfg, world) if ckpt is not None else None  # refuses before anything is loaded
    set_seed(cfg.seed)

    files = [index_file(DataFile(f.file, f.images, f.ratio)) for f in cfg.data.train]
    for f in files:  # before the model is built: a wrong image root is found in seconds
        check_image_root(f)
    check_source_names(dict(cfg.data.source_probs), {s for f in files for s in f.sources})
    no_source = absent_sources(dict(cfg.data.source_probs), {f.spec.path: f.sources for f in files})
    test_scale = (cfg.augment.test_scale[0], cfg.augment.test_scale[1])
    try:
        model, tokenizer, processor = build_detector(cfg.model, seed=cfg.seed, test_scale=test_scale,
                                                     folder=ckpt / "model" if ckpt else None)
    except ConfigError as e:
        if ckpt is None:
            raise
        raise C.damaged(ckpt / "model", str(e)) from None
    max_text_len = cfg.data.max_text_len or int(model.config.max_text_len)
    if max_text_len > int(model.config.max_text_len):
        raise ConfigError(f"data.max_text_len {max_text_len} exceeds the model's max_text_len "
                          f"{model.config.max_text_len} (set model.max_text_len)")
    text = TextOptions(source_probs=dict(cfg.data.source_probs), positives_per_instance=cfg.data.positives_per_instance,
                       max_negatives=cfg.data.max_negatives, max_text_len=max_text_len,
                       relations=tuple(cfg.data.relations), shuffle_phrases=cfg.data.shuffle_phrases)
    mean = tuple(getattr(processor, "image_mean", None) or (0.485, 0.456, 0.406))
    std = tuple(getattr(processor, "image_std", None) or (0.229, 0.224, 0.225))
    dataset = TrainDataset(files, TokenizeFn(tokenizer), text, cfg.augment.options(), seed=cfg.seed, mean=mean, std=std,
                           max_pixels=cfg.data.max_pixels)
    sampler = EpochBatches(dataset, cfg.train.batch_size, world, rank)
    batches = FromImage(sampler)
    loader_gen = torch.Generator()
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                         num_workers=cfg.data.num_workers, generator=loader_gen,
                                         pin_memory=accelerator.device.type == "cuda")
    batches_per_epoch = sampler.batches_per_epoch()
    if batches_per_epoch == 0:
        raise ConfigError("nothing to train: data.train gives no image an epoch ("
                          + ", ".join(f"{f.spec.path}: {len(f)} usable records × ratio {f.spec.ratio:g}" for f in files)
                          + ")")
    accum = cfg.train.grad_accum
    steps_per_epoch = -(-batches_per_epoch // accum)
    total_batch = cfg.train.batch_size * world * accum
    lr = scaled_lr(cfg.optim, total_batch, auto_scale_lr)
    frozen = freeze_zero_lr(model, cfg.optim)
    optimizer = build_optimizer(model, cfg.optim, lr)
    skip = start.images // world if start is not None else 0  # of this process's share of the epoch
    start_batch = skip // cfg.train.batch_size
    at = {} if start is None else {"step": start.progress.step, "epoch": start.progress.epoch,
                                   "steps_left": steps_per_epoch - start_batch // accum}  # at this run's split
    scheduler = build_scheduler(optimizer, cfg.schedule, steps_per_epoch, **at)
    install_loss(model, cfg.model.fix_encoder_loss)
    model_config = model.config
    model, optimizer = accelerator.prepare(model, optimizer)

    progress, overridden = C.Progress(0, 0, 0, "start"), ""
    if ckpt is not None:
        progress, overridden = _load_training_state(ckpt, optimizer, scheduler, accelerator, rank)
    # the steps after the checkpoint are done again: a resume's, and a new start's in a work dir whose
    # earlier run was killed before its first checkpoint (its rows would be doubled)
    log.drop_after(progress.step)
    eval_queries = held_out.shared_queries(accelerator, cfg, log)
    if main:  # checkpoints and a best/ from the steps after the checkpoint are not part of this run's history
        if dropped := C.drop_after(work_dir, progress.step):
            log.info(f"checkpoint(s) after step {progress.step}, where this run starts (those steps are done again), "
                     f"moved to {dropped[0].parent}: {', '.join(p.name for p in dropped)}")
        B.restore(work_dir, progress.step, log.info)
        B.switch_metric(work_dir, cfg.eval.metric, log.rows("eval"), log.info)
    accelerator.wait_for_everyone()
    best = B.read(work_dir / B.BEST)
    if main:
        with AtomicWriter(work_dir / "config.yaml") as w:  # a full disk names it and leaves the earlier one whole
            w.write(dump_yaml(cfg).encode("utf-8"))
        log.info(f"reallod train: {world} process(es) on {accelerator.device}, mixed precision {accelerator.mixed_precision}, "
                 f"batch {cfg.train.batch_size}/process × {world} × accum {accum} = {total_batch}, lr {lr:.3g}"
                 f"{' (auto-scaled)' if lr != cfg.optim.lr else ''}, {steps_per_epoch} steps/epoch, "
                 f"{cfg.schedule.epochs} epochs")
        log.info("data: " + skipped_summary(files))
        if no_source:
            log.info(no_source)
        if frozen:
            log.info(f"frozen (lr multiplier 0): {', '.join(frozen)}")
        if ckpt is not None:
            log.info(f"resumed from {ckpt} (step {progress.step}, epoch {progress.epoch}, "
                     f"batch {progress.batch_in_epoch})")
            if start.changes:
                log.info(f"the config differs from the checkpoint's ({ckpt / 'config.yaml'}): "
                         + ", ".join(f"{k} {short(a)} → {short(b)}" for k, (a, b) in start.changes.items()))
            if overridden:
                log.info(f"the config's optimizer settings replace the checkpoint's: {overridden}")
            if warning := start.split_warning(cfg, world):
                log.info(warning)

    result = TrainResult(work_dir, progress.step, progress.epoch, ckpt, best, main_process=main)
    step, epoch = progress.step, progress.epoch
    checkpoint_step = step  # of the latest checkpoint of this run's history (0: none)
    live.step = step
    max_steps = cfg.schedule.max_steps
    stop = max_steps is not None and step >= max_steps
    window = _Window()
    if ckpt is not None and cfg.eval.file and _eval_due(cfg, step, progress, skip == 0, stop):
        # The checkpoint is written before its evaluation, which an interrupt may have cut short: do it now.
        result.last_eval, result.best = held_out.evaluate(accelerator, model, tokenizer, processor, cfg, eval_queries,
                                                          step, progress, work_dir, result.best, log, checkpoint_step,
                                                          missing_only=True)

    while epoch < cfg.schedule.epochs and not stop:
        batches.set_epoch(epoch, skip)
        loader_gen.manual_seed(cfg.seed * 100_003 + epoch)
        batch_idx = start_batch
        model.train()
        tic = time.perf_counter()
        for batch in loader:
            live.ctrl_c.check()
            window.data_time += time.perf_counter() - tic
            group_start = (batch_idx // accum) * accum
            group_end = min(group_start + accum, batches_per_epoch)
            sync = batch_idx + 1 == group_end
            group_size = group_end - max(group_start, start_batch)  # a resume with another split may cut one
            inputs = {k: batch[k].to(accelerator.device, non_blocking=True) for k in MODEL_INPUTS}
            labels = [{k: v.to(accelerator.device, non_blocking=True) for k, v in t.items()}
                      for t in batch["labels"]]  # pinned by the loader on CUDA: copies that do not block
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                out = model(**inputs, labels=labels)
                loss, terms = training_loss(model_config, out, labels, inputs["input_ids"], inputs["attention_mask"],
                                            cfg.model.fix_encoder_loss)
                accelerator.backward(loss / group_size)
            window.add(loss, terms, len(labels), batch["failed_images"])
            if batch["failed_images"]:
                result.failed_images += len(batch["failed_images"])
                if result.failed_images <= MAX_FAILURES_SHOWN:  # then only counted (log.csv: failed_images)
                    log.info(f"skipped {len(batch['failed_images'])} unusable image(s) (replaced by other "
                             f"records): {batch['failed_images'][0]}")
            batch_idx += 1
            if sync:
                if cfg.optim.clip_grad:
                    # a tensor until the log row reads it: float() here would wait for the backward pass
                    window.grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                window.lrs = [(str(g.get("name", "other")), g["lr"]) for g in optimizer.param_groups]
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                live.step = step
                epoch_end = batch_idx >= batches_per_epoch
                pos = C.Progress(step, epoch + 1, 0) if epoch_end else \
                    C.Progress(step, epoch, batch_idx, images_in_epoch=batch_idx * cfg.train.batch_size * world)
                if step % cfg.log.every_steps == 0:
                    row = window.row(accelerator, world)
                    row["epoch"] = epoch
                    log.scalars(step, row)
                    result.history.append({"step": step, **row})
                stop = max_steps is not None and step >= max_steps
                reason = _checkpoint_reason(cfg, step, pos, epoch_end, stop)
                if reason:
                    pos.reason, pos.processes, pos.batch_size = reason, world, cfg.train.batch_size * accum
                    result.last_checkpoint = save_checkpoint(accelerator, model, tokenizer, processor, optimizer,
                                                             scheduler, cfg, work_dir, pos)
                    checkpoint_step = step
                    if main:
                        B.checkpoint_written(work_dir)
                if _eval_due(cfg, step, pos, epoch_end, stop) and cfg.eval.file:
                    result.last_eval, result.best = held_out.evaluate(accelerator, model, tokenizer, processor,
                                                                      cfg, eval_queries, step, pos, work_dir,
                                                                      result.best, log, checkpoint_step)
                if stop:
                    break
            tic = time.perf_counter()
        if not stop:
            epoch, skip, start_batch = epoch + 1, 0, 0
        result.step, result.epoch = step, epoch
    accelerator.wait_for_everyone()
    result.step = step
    if result.failed_images:
        log.info(f"{result.failed_images} unusable image(s) (unreadable, too large, or not of their record's size) "
                 "were replaced by other records in this process")
    log.info(f"done: {step} steps; last checkpoint {result.last_checkpoint}"
             + (f"; best {result.best['metric']} {result.best['value']:.4f} at step {result.best['step']}"
                if result.best else ""))
    return result


class _Window:
    """Running sums between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses: dict[str, torch.Tensor] = {}
        self.micro = 0
        self.images = 0
        self.failed = 0
        self.data_time = 0.0
        self.grad_norm: torch.Tensor | float = float("nan")
        self.lrs: list[tuple[str, float]] = []
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, loss_terms: dict[str, torch.Tensor], n_images: int, failed: list[str]) -> None:
        self.micro += 1
        self.images += n_images
        self.failed += len(failed)
        terms = {"loss": loss.detach()}
        terms.update({k: loss_terms[k].detach() for k in LOGGED_LOSSES if k in loss_terms})
        for k, v in terms.items():
            self.losses[k] = self.losses[k] + v if k in self.losses else v

    def row(self, accelerator: Any, world: int) -> dict[str, Any]:
        keys = sorted(self.losses)
        local = torch.stack([self.losses[k].float() for k in keys]).to(accelerator.device) / max(self.micro, 1)
        mean = accelerator.reduce(local, "mean") if world > 1 else local
        failed = torch.tensor([float(self.failed)], device=accelerator.device)
        failed = accelerator.reduce(failed, "sum") if world > 1 else failed
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        row: dict[str, Any] = {k: float(v) for k, v in zip(keys, mean.tolist(), strict=True)}
        for name, lr in self.lrs:  # the rates the last step used: lr (base groups), lr_backbone, lr_text
            part = name.split(".")[0]
            row.setdefault("lr" if part == "other" else f"lr_{part}", lr)
        row["grad_norm"] = float(self.grad_norm)
        row["images_per_s"] = self.images * world / elapsed
        row["data_time_frac"] = self.data_time / elapsed
        row["peak_mem_mb"] = peak_memory_mb(accelerator.device)
        row["failed_images"] = int(failed.item())  # all processes
        self.reset()
        return row


def _checkpoint_reason(cfg: TrainConfig, step: int, pos: C.Progress, epoch_end: bool, stop: bool) -> str | None:
    if epoch_end and (pos.epoch % cfg.checkpoint.every_epochs == 0 or pos.epoch == cfg.schedule.epochs):
        return "epoch"
    if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
        return "interval"
    if stop:
        return "final"
    return None


def _eval_due(cfg: TrainConfig, step: int, pos: C.Progress, epoch_end: bool, stop: bool) -> bool:
    """At the configured epochs/steps, and at the last step of a run when any periodic evaluation is on."""
    e = cfg.eval
    if epoch_end and e.every_epochs and (pos.epoch % e.every_epochs == 0 or pos.epoch == cfg.schedule.epochs):
        return True
    if stop and (e.every_epochs or e.every_steps):
        return True
    return bool(e.every_steps and step % e.every_steps == 0)


def save_checkpoint(accelerator: Any, model: Any, tokenizer: Any, processor: Any, optimizer: Any, scheduler: Any,
                    cfg: TrainConfig, work_dir: Path, progress: C.Progress) -> Path:
    """Write ``checkpoints/ckpt-STEP`` (all processes take part: each writes its RNG state). A write the
    disk refuses is a :class:`reallod.train.checkpoint.CheckpointWriteError` naming the last complete one."""
    from reallod.model.hf_folder import save_tokenizer

    final = C.checkpoint_dir(work_dir) / C.checkpoint_name(progress.step)
    tmp = final.with_name(final.name + ".tmp")
    main, what = accelerator.is_main_process, f"the checkpoint of step {progress.step}"

    def together(write: Callable[[], None]) -> None:
        """What one process fails to write stops them all; the main process removes the partial folder
        once every process is done with it (removed sooner, the others' writes would fail too)."""
        error = None
        try:
            write()
        except Exception as e:  # a full disk: os, torch, safetensors and tokenizers each say it their way
            error = e
        try:
            settle(accelerator, error, f"writing {what}")
        except PeerFailed:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as e:
            raise C.write_failed(tmp, what, e, work_dir, remove=main) from e

    def start() -> None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def write_parts() -> None:
        tmp.mkdir(parents=True, exist_ok=True)  # a node without the shared work dir still writes its own copy
        torch.save(C.rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        if main:
            net = accelerator.unwrap_model(model)
            net.save_pretrained(str(tmp / "model"))
            save_tokenizer(tokenizer, tmp / "model")
            processor.save_pretrained(str(tmp / "model"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
            (tmp / "config.yaml").write_text(dump_yaml(cfg))
            C.write_state(tmp, progress)

    def finish() -> None:
        if main:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            C.prune(work_dir, cfg.checkpoint.keep_last)

    for part in (start, write_parts, finish):
        together(part)
    return final


def _load_training_state(ckpt: Path, optimizer: Any, scheduler: Any, accelerator: Any, rank: int
                         ) -> tuple[C.Progress, str]:
    """Progress, and which optimizer settings of the checkpoint the config replaced ("" for none)."""
    progress = C.Progress.from_json(ckpt / "state.json")
    configured = [{k: g[k] for k in HYPERPARAMETERS} for g in optimizer.param_groups]
    saved = C.load_torch(ckpt / "optimizer.pt")
    try:
        optimizer.load_state_dict(saved)
    except ValueError as e:  # PyTorch: the parameter groups differ from the checkpoint's
        raise ConfigError(f"{ckpt / 'optimizer.pt'}: the checkpoint's optimizer does not fit this config ({e}); a "
                          "learning-rate multiplier set to or from 0 freezes or unfreezes a part: resume with the "
                          f"checkpoint's settings, or start a new run from its weights (model.init={ckpt / 'model'})"
                          ) from None
    scheduler.load_state_dict(C.load_torch(ckpt / "scheduler.pt"))
    overridden = _keep_configured(optimizer, scheduler, configured)
    if accelerator.scaler is not None and (ckpt / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(C.load_torch(ckpt / "scaler.pt"))
    rng = ckpt / f"rng-{rank}.pt"
    if rng.is_file():
        C.set_rng_state(C.load_torch(rng))
    return progress, overridden


def _keep_configured(optimizer: Any, scheduler: Any, configured: list[dict[str, Any]]) -> str:
    """The config wins over the checkpoint: ``load_state_dict`` brings back the saved rate, weight decay,
    betas and eps (and the scheduler its base rates), so ``--cfg-options optim.lr=...`` on a resume would
    otherwise be ignored. The rate is recomputed from the configured base and the schedule at the
    checkpoint's step; unchanged settings give the very same numbers. Returns what changed, e.g.
    ``"lr 0.001 → 0.0005"``."""
    changed: dict[str, str] = {}
    for i, (group, want) in enumerate(zip(optimizer.param_groups, configured, strict=True)):
        for k, v in want.items():
            if group.get(k) != v:
                changed.setdefault("lr" if k == "initial_lr" else k, f"{group.get(k)} → {v}")
            group[k] = v
        scheduler.base_lrs[i] = want["initial_lr"]
        group["lr"] = want["initial_lr"] * scheduler.lr_lambdas[i](scheduler.last_epoch)
    return ", ".join(f"{k} {v}" for k, v in changed.items())

