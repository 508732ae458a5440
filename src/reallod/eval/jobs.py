"""What ``reallod eval {omnilabel,d3,ovdeval}`` does: read the benchmark, get predictions (a saved file,
or a model run over the images), score them, write the predictions and the metrics.

Under ``torchrun`` / ``accelerate launch`` every process runs this; the images are shared out, and
rank 0 alone writes files and scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reallod.data.io import check_writable, same_file, written_over
from reallod.errors import ConfigError
from reallod.eval.coco_tools import check_backend
from reallod.eval.common import EvalImage, EvalResult, Predictions, is_json_name, json_stem
from reallod.eval.predict import (
    Dist,
    ModelSpec,
    RunOptions,
    image_stamp,
    init_distributed,
    load_model,
    picture_name,
    predict,
    shard,
)
from reallod.eval.resume import EvalInterrupted, PredictionJournal, own_journal, remove_journals
from reallod.hub import as_found
from reallod.runs.journal import check_journaled_output

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
    """Beside the predictions (written or read): ``PRED.metrics.json``, PRED being the file's name without
    ``.json`` / ``.json.gz`` (or its suffix), or the folder's name; else ``./BENCHMARK.metrics.json``."""
    if job.model is not None and job.out is not None:
        base, folder = Path(job.out), not is_json_name(job.out)
    elif job.predictions is not None:
        base, folder = Path(job.predictions), Path(job.predictions).is_dir()
    else:
        return Path(f"{job.benchmark}.metrics.json")
    base = _named(base)
    name = base.name if folder else json_stem(base).name if is_json_name(base) else base.stem
    return base.with_name(f"{name}.metrics.json")


def _named(path: Path) -> Path:
    """``.`` or ``..`` as the absolute folder they are, which has a name to put files beside."""
    return Path(os.path.abspath(path)) if path.name in ("", ".", "..") else path


def prediction_paths(job: EvalJob) -> list[Path]:
    """The files a model run writes its predictions to. ``--out`` ending in ``.json`` or ``.json.gz`` is a
    file; any other name is a folder, which OVDEval fills with ``<subset>.json`` (the others write one file)."""
    out = Path(job.out)  # type: ignore[arg-type]
    if job.benchmark == "ovdeval":
        from reallod.eval import ovdeval as ov

        return ov.prediction_files(out, [ov.subset_name(f) for f in ov.subset_files(job.annotations, job.subset)])
    if not is_json_name(out):
        suggest = out / f"{job.benchmark}_preds.json" if out.is_dir() else out.with_name(f"{out.name}.json")
        raise ConfigError(f"--out {out}: {'a folder' if out.is_dir() else 'a name without .json'}, but the "
                          f"{job.benchmark} predictions are one JSON file: give a file name ending in .json (or "
                          f".json.gz, written compressed), such as {suggest}")
    return [out]


def _overwrites(out: Path, source: Path) -> str | None:
    """'is' when writing ``out`` replaces ``source`` (the same path, through symlinks or a hard link), 'is
    inside' when ``source`` is a folder holding ``out``; None when they are apart."""
    if same_file(out, source):
        return "is"
    folder = source.resolve()
    return "is inside" if folder.is_dir() and out.resolve().is_relative_to(folder) else None


def _check_outputs(job: EvalJob) -> None:
    """Every path the job writes, checked before any work: a file where a file goes, a folder where a folder
    goes, in a writable place, over no input (the ground truth, the predictions read) nor each other."""
    outputs: list[tuple[str, Path]] = []
    if job.model is not None and job.out is not None:
        check_journaled_output(job.out)
        files = prediction_paths(job)
        if not is_json_name(job.out):
            check_writable(job.out, option="--out", folder=True,
                           hint="give a folder name (without .json), or remove the file")
        outputs += [("--out", f) for f in files]
        outputs.append(("--out's journal", own_journal(_named(Path(job.out)), 0, 1)))
    if job.metrics_out is not None:
        outputs.append(("--metrics-out", Path(job.metrics_out)))
    else:
        outputs.append(("the metrics file (default --metrics-out)", default_metrics_path(job)))
    if job.run.show_dir is not None:
        check_writable(job.run.show_dir, option="--show-dir", folder=True)
        _check_show_dir(Path(job.run.show_dir), job.images)
    inputs = [("--annotations", Path(job.annotations))]
    if job.predictions is not None:
        inputs.append(("--predictions", Path(job.predictions)))
    inputs += _model_inputs(job.model)
    taken: dict[Path, tuple[str, Path]] = {}
    for option, path in outputs:
        example = "metrics.json" if "metrics" in option else "preds.json"
        check_writable(path, option=option, hint=f"give a file name, such as {path / example}")
        for what, source in inputs:
            how = _overwrites(path, source)
            if how:
                raise ConfigError(f"{option} {path}: {how} {what} {source}, an input; writing there would "
                                  f"{'overwrite' if how == 'is' else 'add to'} it: give a path outside it")
        if job.model is not None and (what := written_over(path, {}, job.images)):
            raise ConfigError(f"{option} {path}: would overwrite {what}: give a path outside it")
        other = taken.setdefault(path.resolve(), (option, path))
        if other != (option, path):
            raise ConfigError(f"{option} {path}: also {other[0]} {other[1]}; give them different paths")


def _model_inputs(model: ModelSpec | None) -> list[tuple[str, Path]]:
    """The model's local files a run reads: the files of its folder and of a local ``--tokenizer``'s (those
    there and those the loader looks for), and ``--weights`` (hub ids have none here). Only those: a
    metrics file kept beside a model is no harm to it."""
    if model is None:
        return []
    from reallod.model.hf_folder import check_local_folder
    from reallod.model.loading import SETTINGS_FILES, TOKENIZER_FILES

    found: list[tuple[str, Path]] = []
    for what, folder in (("--model", check_local_folder(model.model)),
                         ("--tokenizer", check_local_folder(model.tokenizer, "tokenizer") if model.tokenizer else None)):
        if folder is not None:
            names = {p.name for p in folder.iterdir() if p.is_file()} | {*SETTINGS_FILES, *TOKENIZER_FILES}
            found += [(f"{what}'s file", folder / name) for name in sorted(names)]
    if model.weights is not None:
        found.append(("--weights", Path(model.weights)))
    return found


def _check_show_dir(show: Path, root: Path | None) -> None:
    """``--show-dir`` is not the image root: pictures drawn there would land among the benchmark's images."""
    if root is not None and show.resolve() == Path(root).resolve():
        raise ConfigError(f"--show-dir {show}: is --images {root}; the pictures (<image id>.png) would be written "
                          "among the benchmark's images, over any named like one: give a folder outside it")


def _check_pictures(job: EvalJob, images: list[EvalImage]) -> None:
    """No picture ``--show-dir`` draws replaces an input image: a --show-dir that is a folder of the images
    (inside the root, or reached through a link) holding one named like a picture (``10.png``). Names are
    compared casefolded, as a case-insensitive file system would."""
    if job.run.show_dir is None or job.images is None:
        return
    show = Path(job.run.show_dir)
    real_show = Path(os.path.realpath(show))
    pictures = {picture_name(img).casefold(): img for img in images if img.texts}  # those drawn
    folders: dict[Path, Path] = {}  # an image's folder → where it really is (one lookup per folder)
    for img in images:
        path = Path(job.images) / img.file_name
        drawn = pictures.get(path.name.casefold())
        if drawn is None:
            continue
        folder = folders.setdefault(path.parent, Path(os.path.realpath(path.parent)))
        if folder == real_show:
            raise ConfigError(f"--show-dir {show}: the picture of image {drawn.image_id} ({picture_name(drawn)}) "
                              f"would be written over the input image {path}: give a --show-dir outside the "
                              f"folders of the images (--images {job.images})")


MISSING_SHOWN = 5  # missing images named in the error, of how many


def _check_prompts(job: EvalJob, images: list[EvalImage]) -> None:
    """A model run has something to prompt, and every image it prompts is there: refused before the model
    loads, rather than an all-n/a table at the end or one missing image at a time mid-run."""
    if not any(img.texts for img in images):
        why = (" (--skip-categories leaves out the plain categories, and it has no free-form descriptions)"
               if job.skip_categories else "")
        raise ConfigError(f"--annotations {job.annotations}: no image has a description or label to prompt"
                          f"{why}; there is nothing to run the model on")
    from reallod.data.images import resolve_image

    root = str(job.images)
    missing = [img.file_name for img in images if img.texts and not _is_file(resolve_image(root, img.file_name))]
    if missing:
        first = ", ".join(repr(name) for name in missing[:MISSING_SHOWN])
        raise ConfigError(f"--images {job.images}: {len(missing)} of the {sum(1 for img in images if img.texts)} "
                          f"images to prompt are not there (first: {first}; file names absolute or leading out "
                          "of the root count too): give the image root the annotations' file names are "
                          "relative to, or add the images")


def _is_file(path: str | None) -> bool:
    return path is not None and os.path.isfile(path)


def _check(job: EvalJob) -> None:
    if (job.predictions is None) == (job.model is None):
        raise ConfigError("give either --model (with --images) to run a detector, or --predictions to score a file")
    if job.model is not None and job.images is None:
        raise ConfigError("--model needs --images ROOT (the folder the file names in the annotations are relative to)")
    if job.model is not None and not Path(job.images).is_dir():
        raise ConfigError(f"--images {job.images}: not a folder")
    if job.model is not None:
        from reallod.model.hf_folder import check_local_folder, check_tokenizer_option

        check_local_folder(job.model.model)  # a mistyped path fails before the benchmark is read
        if job.model.tokenizer:
            check_tokenizer_option(job.model.tokenizer)
    if job.predictions is not None and (job.out is not None or job.run.show_dir is not None):
        raise ConfigError("--out and --show-dir go with --model; --predictions only scores a file")
    if job.predictions is not None and (job.run.inference is not None or job.run.max_per_image is not None):
        raise ConfigError("the inference options (--topk, --max-per-image, --mode, --score-over...) go with "
                          "--model; saved --predictions are scored as they are")
    if job.benchmark != "omnilabel":
        check_backend(job.backend)
    _check_outputs(job)


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
        _check_prompts(job, bench.images)
        _check_pictures(job, bench.images)
        out = _named(Path(job.out)) if job.out is not None else None
        if out is not None:  # what each image gives is kept as it comes: a killed run resumes
            images, root = bench.images, Path(job.images)  # type: ignore[arg-type]
            journal = PredictionJournal(out, resume_settings(job, bench), dist.rank, dist.world_size,
                                        mine=set(shard(len(images), dist)),
                                        source=lambda i: image_stamp(root, images[i]))
        detector = load_model(job.model, dist)
        pred = predict(bench.images, detector, job.images, job.run, dist, desc=f"eval {bench.name}",
                       journal=journal)
        if pred is None:
            return JobOutcome(None, processes=dist.world_size)
        try:
            written = bench.write(out, pred) if out is not None else []
            result = bench.score(pred, str(written[0]) if len(written) == 1 else None)
            outcome = _finish(job, bench, result, len(pred), written, dist.world_size)
        except KeyboardInterrupt:  # every image is predicted: say so, not a bare "interrupted"
            raise EvalInterrupted.after_predicting(journal) from None
        if journal is not None and out is not None:  # kept to the end: a run that fails to score resumes
            journal.close()
            remove_journals(out)
        return outcome
    finally:
        if journal is not None:
            journal.close()
        if own_dist:
            dist.close()


def resume_settings(job: EvalJob, bench: _Bench) -> dict[str, Any]:
    """What a run's predictions depend on: a journal left with other settings is not resumed. The model's
    are those it loads with, read before it loads: the text limit and image size in effect (the options,
    else its folder's files) and the content of its settings files, not only the options as typed."""
    from dataclasses import asdict

    from reallod.model.inference import InferenceOptions
    from reallod.model.loading import loaded_settings, resolve_model_source, weights_stamp
    from reallod.runs.journal import fingerprint_path

    assert job.model is not None and job.images is not None
    inference = asdict(job.run.inference or InferenceOptions())
    inference.pop("batch_size")  # not the batch size or the device: a resume may change them
    model = asdict(job.model)
    model.pop("device")
    for key in ("model", "weights", "tokenizer"):  # ./m and /abs/m are one model
        model[key] = as_found(model[key])
    source = resolve_model_source(job.model.model)
    model["stamp"] = weights_stamp(as_found(source), model["weights"])
    model.update(loaded_settings(source, max_text_len=job.model.max_text_len, tokenizer=job.model.tokenizer,
                                 image_size=job.model.image_size, resolved=True))
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
