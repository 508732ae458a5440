"""What ``reallod eval {omnilabel,d3,ovdeval}`` does: read the benchmark, get predictions (a saved file,
or a model run over the images), score them, write the predictions and the metrics.

Under ``torchrun`` / ``accelerate launch`` every process runs this; the images are shared out, and
rank 0 alone writes files and scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reallod.errors import ConfigError
from reallod.eval.common import EvalImage, EvalResult, Predictions
from reallod.eval.predict import Dist, ModelSpec, RunOptions, init_distributed, load_model, predict, shard
from reallod.eval.resume import PredictionJournal, remove_journals

BENCHMARKS = ("omnilabel", "d3", "ovdeval")


@dataclass
class EvalJob:
    """One evaluation: a benchmark, its ground truth, and either saved predictions or a model."""

    benchmark: str
    annotations: Path
    predictions: Path | None = None
    model: ModelSpec | None = None
    images: Path | None = None
    out: Path | None = None  # predictions to write (model runs)
    metrics_out: Path | None = None
    run: RunOptions = field(default_factory=RunOptions)
    subset: str | None = None  # OVDEval
    inter: bool = False  # D³ inter-scenario
    skip_categories: bool = False  # OmniLabel
    backend: str = "pycocotools"  # D³, OVDEval


@dataclass
class JobOutcome:
    result: EvalResult | None  # None on ranks other than 0
    metrics_path: Path | None = None
    prediction_paths: list[Path] = field(default_factory=list)
    n_predictions: int = 0
    processes: int = 1


@dataclass
class _Bench:
    name: str
    images: list[EvalImage]
    read: Callable[[Path], Predictions]
    write: Callable[[Path, Predictions], list[Path]]
    score: Callable[[Predictions, str | None], EvalResult]
    describe: dict[str, Any]


def _open_benchmark(job: EvalJob) -> _Bench:
    if job.benchmark == "omnilabel":
        from reallod.eval import omnilabel as ol

        gt = ol.load_gt(job.annotations, skip_categories=job.skip_categories)

        def write_ol(path: Path, pred: Predictions) -> list[Path]:
            ol.write_predictions(path, pred)
            return [path]

        return _Bench("omnilabel", gt.eval_images(), ol.load_predictions, write_ol,
                      lambda pred, path: ol.evaluate(gt, pred, path=path),
                      {"skip_categories": job.skip_categories})
    if job.benchmark == "d3":
        from reallod.eval import d3

        bench = d3.load(job.annotations, inter=job.inter, image_root=job.images)

        def write_d3(path: Path, pred: Predictions) -> list[Path]:
            d3.write_predictions(path, pred)
            return [path]

        return _Bench("d3", bench.eval_images(), d3.load_predictions, write_d3,
                      lambda pred, path: d3.evaluate(bench, pred, path=path, backend=job.backend),
                      {"setting": bench.setting, "backend": job.backend})
    if job.benchmark == "ovdeval":
        from reallod.eval import ovdeval as ov

        ovd = ov.load(job.annotations, job.subset)
        return _Bench("ovdeval", ovd.eval_images(), lambda path: ov.load_predictions(path, ovd),
                      lambda path, pred: ov.write_predictions(path, ovd, pred),
                      lambda pred, path: ov.evaluate(ovd, pred, path=path, backend=job.backend),
                      {"subsets": [s.name for s in ovd.subsets], "backend": job.backend})
    raise ConfigError(f"unknown benchmark {job.benchmark!r} (use one of {', '.join(BENCHMARKS)})")


def default_metrics_path(job: EvalJob) -> Path:
    """Beside the predictions (written or read): PRED.metrics.json; else ./BENCHMARK.metrics.json."""
    base = job.out if job.model is not None and job.out is not None else job.predictions
    if base is None:
        return Path(f"{job.benchmark}.metrics.json")
    base = Path(base)
    if base.is_dir() or not base.suffix:
        return base / "metrics.json"
    name = base.name[: -len(".json.gz")] if base.name.endswith(".json.gz") else base.stem
    return base.with_name(f"{name}.metrics.json")


def _check(job: EvalJob) -> None:
    if (job.predictions is None) == (job.model is None):
        raise ConfigError("give either --model (with --images) to run a detector, or --predictions to score a file")
    if job.model is not None and job.images is None:
        raise ConfigError("--model needs --images ROOT (the folder the file names in the annotations are relative to)")
    if job.model is not None and not Path(job.images).is_dir():
        raise ConfigError(f"--images {job.images}: not a folder")
    if job.model is not None:
        from reallod.model.hf_folder import check_local_folder

        check_local_folder(job.model.model)  # a mistyped path fails before the benchmark is read
    if job.predictions is not None and (job.out is not None or job.run.show_dir is not None):
        raise ConfigError("--out and --show-dir go with --model; --predictions only scores a file")


def run_job(job: EvalJob, *, dist: Dist | None = None) -> JobOutcome:
    """Score saved predictions, or run the model (sharded when launched over several processes) and score."""
    _check(job)
    if job.predictions is not None:
        bench = _open_benchmark(job)
        pred = bench.read(Path(job.predictions))
        result = bench.score(pred, str(job.predictions))
        return _finish(job, bench, result, len(pred), [])
    own_dist = dist is None
    dist = dist or init_distributed()
    journal: PredictionJournal | None = None
    try:
        bench = _open_benchmark(job)
        if job.out is not None:  # what each image gives is kept as it comes: a killed run resumes
            journal = PredictionJournal(Path(job.out), resume_settings(job, bench), dist.rank, dist.world_size,
                                        mine=set(shard(len(bench.images), dist)))
        detector = load_model(job.model, dist)
        pred = predict(bench.images, detector, job.images, job.run, dist, desc=f"eval {bench.name}",
                       journal=journal)
        if pred is None:
            return JobOutcome(None, processes=dist.world_size)
        written = bench.write(Path(job.out), pred) if job.out is not None else []
        if journal is not None:
            journal.close()
            remove_journals(Path(job.out))  # the predictions file holds it all now
        result = bench.score(pred, str(written[0]) if len(written) == 1 else None)
        return _finish(job, bench, result, len(pred), written, dist.world_size)
    finally:
        if journal is not None:
            journal.close()
        if own_dist:
            dist.close()


def resume_settings(job: EvalJob, bench: _Bench) -> dict[str, Any]:
    """What a run's predictions depend on: a journal left with other settings is not resumed."""
    from dataclasses import asdict

    from reallod.model.inference import InferenceOptions
    from reallod.model.loading import resolve_model_source, weights_stamp
    from reallod.runs.journal import fingerprint_path

    assert job.model is not None and job.images is not None
    inference = asdict(job.run.inference or InferenceOptions())
    inference.pop("batch_size")  # not the batch size or the device: a resume may change them
    model = asdict(job.model)
    model.pop("device")
    model["stamp"] = weights_stamp(resolve_model_source(job.model.model), job.model.weights)
    return {"benchmark": bench.name, "annotations": fingerprint_path(job.annotations),
            **{k: v for k, v in bench.describe.items() if k != "backend"},
            "images": str(Path(job.images).resolve()), "model": model, "inference": inference,
            "max_per_image": job.run.max_per_image, "max_pixels": job.run.max_pixels}


def _finish(job: EvalJob, bench: _Bench, result: EvalResult, n: int, written: list[Path],
            processes: int = 1) -> JobOutcome:
    import orjson

    from reallod.data.io import atomic_text

    path = job.metrics_out or default_metrics_path(job)
    doc = {**result.to_dict(), "annotations": str(job.annotations),
           "predictions": str(job.predictions) if job.predictions else [str(p) for p in written] or None,
           "model": job.model.model if job.model else None, "images": len(bench.images), "prediction_rows": n,
           "processes": processes, **bench.describe}
    if job.model is not None and job.run.inference is not None:
        doc["mode"] = job.run.inference.mode
        doc["score_over"] = job.run.inference.score_over
    with atomic_text(path) as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return JobOutcome(result, path, written, n, processes)
