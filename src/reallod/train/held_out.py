"""A training run's periodic evaluation on its held-out set, across all of its processes.

Every process detects its share of the held-out images (every N-th, N processes) with its copy of the
model; the main process gathers the detections, scores them as one set and keeps ``best/``. So an
evaluation takes 1/N of the time it would on the main process alone, and no process waits on the others
for longer than its own share (a wait longer than NCCL's timeout, ten minutes by default, ends the run).
The scores are those of one process detecting every image: each image's queries stay together, and the
weights are the same in every process.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from reallod.data.records import TRAINING_SOURCES
from reallod.errors import ConfigError, OutOfMemory, out_of_memory
from reallod.train import best as B
from reallod.train import checkpoint as C
from reallod.train.config import TrainConfig
from reallod.train.metrics_log import MetricsLog
from reallod.train.processes import settle


def shared_queries(accelerator: Any, cfg: TrainConfig, log: MetricsLog) -> list | None:
    """The held-out queries, read and checked by the main process (its images too, at setup: the first
    evaluation, an epoch later, would otherwise find a missing one), then given to every process."""
    if not cfg.eval.file:
        return None
    queries, error = None, None
    if accelerator.is_main_process:
        try:
            queries = _read_queries(cfg, log)
        except Exception as e:  # the other processes stop with it instead of waiting for the queries
            error = e
    settle(accelerator, error, f"reading the held-out set {cfg.eval.file}")
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        queries = broadcast_object_list([queries], from_process=0)[0]
    return queries


def _read_queries(cfg: TrainConfig, log: MetricsLog) -> list:
    from reallod.train.evaluate import check_images, eval_queries, load_eval_records

    records = load_eval_records(cfg.eval.file, cfg.eval.images or "", cfg.eval.max_images, say=log.info)
    check_images(records, cfg.data.max_pixels)
    present = {s for record, _ in records for s in record.pairs}
    if unknown := sorted(set(cfg.eval.sources) - present - set(TRAINING_SOURCES)):  # a typo: vlm-short
        raise ConfigError(f"eval.sources: unknown source {', '.join(unknown)}; the sources of {cfg.eval.file} are "
                          f"{', '.join(sorted(present)) or 'none'}")
    queries = eval_queries(records, sources=tuple(cfg.eval.sources), negatives_per_image=cfg.eval.negatives_per_image)
    if not any(len(q.boxes) for q in queries):  # negatives alone: every evaluation's AP was nan, no best/
        raise ConfigError(f"{cfg.eval.file}: no evaluation queries (no positive expressions in sources "
                          f"{cfg.eval.sources})")
    return queries


def evaluate(accelerator: Any, model: Any, tokenizer: Any, processor: Any, cfg: TrainConfig, queries: list,
             step: int, pos: C.Progress, work_dir: Path, best: dict[str, Any] | None, log: MetricsLog,
             checkpoint_step: int, missing_only: bool = False
             ) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    """Score the held-out queries (every process detects, the main one scores); keep the model as
    ``best/`` when the metric improves (:func:`reallod.train.best.save`; ``checkpoint_step``: the latest
    checkpoint's). ``best/`` is settled before the ``eval.csv`` row is written, so a row means this step
    is done (``missing_only``: skip a step that has one). Returns (metrics, best) in the main process,
    (None, ``best``) in the others."""
    due = accelerator.is_main_process and not (missing_only and step in log.steps("eval"))
    if accelerator.num_processes > 1:  # the main process's log decides for all
        flag = torch.tensor([int(due)], device=accelerator.device)
        due = bool(accelerator.reduce(flag, reduction="sum").item())
    if not due:
        return None, best
    tic = time.perf_counter()
    share, error = {}, None
    try:
        share = _detect_share(accelerator, model, tokenizer, processor, cfg, queries)
    except Exception as e:  # the other processes stop with it, not at the gathering
        error = e
        if (what := out_of_memory(e)) is not None:
            error = OutOfMemory(f"{what} (evaluating step {step} with eval.batch_size {cfg.eval.batch_size}); "
                                "resume with a smaller one (--cfg-options eval.batch_size=N): the evaluation of "
                                f"step {step} is done again")
            error.__cause__ = e
    settle(accelerator, error, f"the evaluation of step {step}")
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([share])
        share = {i: d for part in parts for i, d in part.items()}
    metrics, error = None, None
    if accelerator.is_main_process:
        try:
            metrics, best = _score_and_keep(accelerator.unwrap_model(model), tokenizer, processor, cfg, queries, share,
                                            step, pos, work_dir, best, log, checkpoint_step, tic)
        except Exception as e:
            error = e
    settle(accelerator, error, f"the evaluation of step {step}")
    return metrics, best


def _detect_share(accelerator: Any, model: Any, tokenizer: Any, processor: Any, cfg: TrainConfig,
                  queries: list) -> dict[int, Any]:
    """This process's detections (query index → detections) of its share of the images."""
    from reallod.model.inference import Detector
    from reallod.model.loading import resolve_dtype
    from reallod.train.evaluate import detect_queries

    images = list(dict.fromkeys(q.image for q in queries))
    mine = set(images[accelerator.process_index::accelerator.num_processes])
    index = [i for i, q in enumerate(queries) if q.image in mine]
    net = accelerator.unwrap_model(model)
    net.eval()
    try:
        # in the training's precision, the whole forward (backbone too) under autocast as `reallod eval
        # --dtype bf16` runs it: the unwrapped model keeps accelerate's autocast on its forward alone
        mixed = str(accelerator.mixed_precision)
        dtype = resolve_dtype(mixed) if mixed in ("bf16", "fp16") else next(net.parameters()).dtype
        detector = Detector(net, tokenizer, processor, accelerator.device, dtype)
        found = detect_queries(detector, [queries[i] for i in index], batch_size=cfg.eval.batch_size,
                               max_pixels=cfg.data.max_pixels)
    finally:
        net.train()
    return dict(zip(index, found, strict=True))


def _score_and_keep(net: Any, tokenizer: Any, processor: Any, cfg: TrainConfig, queries: list,
                    detections: dict[int, Any], step: int, pos: C.Progress, work_dir: Path,
                    best: dict[str, Any] | None, log: MetricsLog, checkpoint_step: int, tic: float
                    ) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The main process's part: the scores, ``best/`` when they improve, the ``eval.csv`` row."""
    from reallod.model.hf_folder import save_tokenizer
    from reallod.train.evaluate import pooled_ap

    metrics = pooled_ap(queries, [detections[i] for i in range(len(queries))])
    value = metrics[cfg.eval.metric]
    row = {**metrics, "epoch": pos.epoch, "eval_s": time.perf_counter() - tic}
    improved = not math.isnan(value) and (best is None or value > best["value"])
    if improved:
        best = {"metric": cfg.eval.metric, "value": value, "step": step, "epoch": pos.epoch, "metrics": metrics}

        def write(folder: Path) -> None:
            net.save_pretrained(str(folder))
            save_tokenizer(tokenizer, folder)
            processor.save_pretrained(str(folder))

        B.save(work_dir, best, write, checkpoint_step)
    log.scalars(step, row, table="eval")
    if improved:
        log.info(f"new best {cfg.eval.metric} {value:.4f} at step {step}: {work_dir / 'best'}")
    return metrics, best
