"""``reallod eval omnilabel | d3 | ovdeval``: score a detector with each benchmark's official protocol,
by running a model (:mod:`reallod.eval.jobs`) or from saved predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from reallod.cli.common import Dtype, console, parse_image_size, quiet_transformers, with_options

app = typer.Typer(
    no_args_is_help=True,
    help="Score a detector on OmniLabel, D³ or OVDEval with the official protocols: run --model over the "
    "images (one GPU, or sharded with torchrun / accelerate launch), or score saved --predictions.",
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")


_EvAnnotations = Annotated[Path, typer.Option(
    "--annotations", metavar="GT", help="Ground truth (see the command's help).", show_default=False)]
_EvImages = Annotated[Path | None, typer.Option(
    "--images", metavar="ROOT", help="Image root the annotations' file names are relative to (with --model).")]
_EvModel = Annotated[str | None, typer.Option(
    "--model", help="Detector to run: a Hugging Face folder (see convert-checkpoint) or hub id.")]
_EvPredictions = Annotated[Path | None, typer.Option(
    "--predictions", help="Score this file (the benchmark's own result format) instead of running a model.")]
_EvWeights = Annotated[Path | None, typer.Option(
    "--weights", help="Replace MODEL's weights (.safetensors/.pth, or an MMDetection Real-Model .pth).")]
_EvMode = Annotated[str, typer.Option(
    "--mode", help="parallel: one prompt per description (the published protocol); concat: all in one prompt.")]
_EvBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per forward pass.")]
_EvScoreOver = Annotated[str, typer.Option(
    "--score-over", help="expression-tokens: a box scores the mean over the description's own tokens (the "
    "benchmark protocol); all-tokens: the max over every token of the prompt, special tokens and \".\" included, "
    "as the published Real-Model demos score (parallel mode only).")]
_EvTopk = Annotated[int, typer.Option(
    "--topk", min=1, help="Boxes kept per description (the metrics read at most 100 per image and description).")]
_OvdTopk = Annotated[int, typer.Option(
    "--topk", min=1, help="Boxes kept per description, before OVDEval's NMS (the metrics then read at most 100 per "
    "image and description).")]
_EvMaxPerImage = Annotated[int | None, typer.Option(
    "--max-per-image", min=1, help="Keep only the best N boxes of an image over all its descriptions.",
    show_default=False)]
_EvOut = Annotated[Path | None, typer.Option(
    "--out", help="Write the predictions here (the benchmark's format): a .json or .json.gz file, or for OVDEval a "
    "folder of <subset>.json; a run killed part-way resumes from the journal kept beside it.")]
_EvShowDir = Annotated[Path | None, typer.Option(
    "--show-dir", metavar="DIR", help="Draw each image's detections (score >= 0.3) into DIR as <image id>.png "
    "(OVDEval: <subset>_<image id>.png; a folder other than the images').")]
_EvDevice = Annotated[str | None, typer.Option(
    "--device", help="cpu, cuda or cuda:N \\[default: cuda if available; cuda:LOCAL_RANK per process].",
    show_default=False)]
_EvMetricsOut = Annotated[Path | None, typer.Option(
    "--metrics-out", help="Metrics JSON \\[default: PRED.metrics.json beside the predictions].", show_default=False)]
_EvBackend = Annotated[str, typer.Option(
    "--backend", help="COCO evaluator: pycocotools (as the official scripts) or faster-coco-eval (faster, "
    "equal to ~1e-15).")]
_EvImageSize = Annotated[str | None, typer.Option(
    "--image-size", help="Resize to SHORT,LONG \\[default: the model's preprocessor, 800,1333 for Real-Model].",
    show_default=False)]
_EvTokenizer = Annotated[str | None, typer.Option("--tokenizer", help="Tokenizer folder or hub id \\[default: MODEL's].",
                                                  show_default=False)]
_EvMaxTextLen = Annotated[int | None, typer.Option("--max-text-len", min=4, max=512, help="Text limit in tokens.",
                                                   show_default=False)]


def _eval_job(
    ctx: typer.Context, annotations: _EvAnnotations, images: _EvImages = None, model: _EvModel = None,
    predictions: _EvPredictions = None, weights: _EvWeights = None, mode: _EvMode = "parallel",
    batch_size: _EvBatch = 8, topk: _EvTopk = 100, max_per_image: _EvMaxPerImage = None, out: _EvOut = None,
    show_dir: _EvShowDir = None, device: _EvDevice = None, dtype: Dtype = "fp32",
    metrics_out: _EvMetricsOut = None, image_size: _EvImageSize = None, tokenizer: _EvTokenizer = None,
    max_text_len: _EvMaxTextLen = None, score_over: _EvScoreOver = "expression-tokens",
) -> dict[str, Any]:
    """The options every benchmark takes (:func:`with_options`), as :class:`EvalJob` fields."""
    if model is not None and predictions is None and images is not None and images.is_dir():
        from reallod.model.hf_folder import check_local_folder

        check_local_folder(model)  # a mistyped local path fails here, before torch and the benchmark load
    from reallod.eval.predict import ModelSpec, RunOptions

    if model is None:
        _refuse_model_options(ctx)
    spec = None
    run = RunOptions(show_dir=show_dir)
    if model is not None:
        run.max_per_image = max_per_image
        from reallod.model.inference import InferenceOptions

        quiet_transformers()
        spec = ModelSpec(model, weights=str(weights) if weights else None, device=device, dtype=dtype,
                         max_text_len=max_text_len, tokenizer=tokenizer, image_size=parse_image_size(image_size))
        run.inference = InferenceOptions(mode=mode, batch_size=batch_size, topk=topk,  # type: ignore[arg-type]
                                         score_over=score_over)  # type: ignore[arg-type]
    return dict(annotations=annotations, predictions=predictions, model=spec, images=images, out=out,
                metrics_out=metrics_out, run=run)


# The options only a model run reads: given with --predictions, they would change nothing.
_MODEL_OPTIONS = {"weights": "--weights", "mode": "--mode", "batch_size": "--batch-size", "topk": "--topk",
                  "max_per_image": "--max-per-image", "score_over": "--score-over", "device": "--device",
                  "dtype": "--dtype", "image_size": "--image-size", "tokenizer": "--tokenizer",
                  "max_text_len": "--max-text-len"}


def _refuse_model_options(ctx: typer.Context) -> None:
    """Saved predictions are scored as they are: an option that says how a model predicts, given with them,
    is refused rather than ignored (``--topk 1`` would otherwise leave the numbers as they were)."""
    given = [flag for name, flag in _MODEL_OPTIONS.items()
             if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")]
    if given:
        one = len(given) == 1
        raise typer.BadParameter(f"{'goes' if one else 'go'} with --model (saved predictions are already scored: "
                                 f"leave {'it' if one else 'them'} out)", param_hint=given)


def _run_eval(benchmark: str, job: dict[str, Any], **extra: Any) -> None:
    from reallod.eval.jobs import EvalJob, run_job
    from reallod.eval.report import render

    outcome = run_job(EvalJob(benchmark, **job, **extra))
    if outcome.result is None:  # another process of a sharded run: rank 0 reports
        return
    console().print(render(outcome.result))
    wrote = [f"metrics: {outcome.metrics_path}"]
    if outcome.prediction_paths:
        wrote.append("predictions: " + ", ".join(str(p) for p in outcome.prediction_paths))
    typer.echo(f"{outcome.n_predictions} prediction rows scored ({outcome.processes} process"
               f"{'es' if outcome.processes > 1 else ''}); " + "; ".join(wrote))


@app.command("omnilabel")
@with_options(_eval_job)
def eval_omnilabel(
    skip_categories: Annotated[bool, typer.Option(
        "--skip-categories", help="Prompt and score free-form descriptions only (as the published Real-Model "
        "did): AP-descr and AP-descr-pos; AP-categ and AP are then undefined.")] = False,
    **options: Any,
) -> None:
    """OmniLabel: AP (harmonic mean), AP-categ, AP-descr, AP-descr-pos, AP-descr-S/M/L, AP50/AP75, AR.

    GT is the official json (images, descriptions, annotations; any version). Predictions:
    [{image_id, bbox xywh, description_ids, scores}]. Example: reallod eval omnilabel --annotations
    dataset_all_val_v0.1.3.json --images omnilabel/ --model models/real-model-b --skip-categories --out preds.json
    """
    _run_eval("omnilabel", _eval_job(**options), skip_categories=skip_categories)


@app.command("d3")
@with_options(_eval_job)
def eval_d3(
    backend: _EvBackend = "pycocotools",
    inter: Annotated[bool, typer.Option(
        "--inter", help="Inter-scenario: prompt every image with all descriptions (default: intra-scenario, "
        "its scenario's descriptions).")] = False,
    **options: Any,
) -> None:
    """D³: COCO AP / AP50 / AP75 on FULL, PRES and ABS, and AP by description length.

    GT is the folder of annotation pickles (sentences/annotations/images/groups.pkl; needs
    `pip install 'reallod\\[eval]'`). Predictions: COCO results [{image_id, category_id = sentence id,
    bbox xywh, score}]. Example: reallod eval d3 --annotations d3/d3_pkl --images d3/d3_images --model M
    """
    _run_eval("d3", _eval_job(**options), backend=backend, inter=inter)


@app.command("ovdeval")
@with_options(_eval_job)
def eval_ovdeval(
    topk: _OvdTopk = 300,
    backend: _EvBackend = "pycocotools",
    subset: Annotated[str | None, typer.Option(
        "--subset", metavar="NAME", help="With a folder of subsets: evaluate only this one (e.g. negation).",
        show_default=False)] = None,
    **options: Any,
) -> None:
    """OVDEval: NMS-AP per subset and their average (with AP50 / AP75).

    GT is one subset's COCO json (images with text and neg_text) or a folder of them. Predictions:
    COCO results per subset (one file, or a folder of <subset>.json). --out is a folder of <subset>.json
    (with one subset, a .json name is also accepted). Example: reallod eval ovdeval --annotations OVDEval/annotations --images OVDEval/images --model M
    """
    _run_eval("ovdeval", _eval_job(topk=topk, **options), backend=backend, subset=subset)
