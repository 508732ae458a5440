"""``reallod generate`` and ``reallod pipeline``: detection annotations to raw expressions, and on to
Real-Data (generate → realign → assemble); the work is :mod:`reallod.engine.pipeline`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from reallod.cli.common import (
    MAX_PIXELS,
    SHIPPED_AGENT_CONFIGS,
    BaseUrl,
    LlmBaseUrl,
    MaxPixels,
    NoCache,
    ResponseCache,
    VlmBaseUrl,
    config_file_value,
    progress_monitor,
    quiet_transformers,
    with_options,
)


def register(root: typer.Typer) -> None:
    """``generate`` and ``pipeline``."""
    root.command("generate")(generate_cmd)
    root.command("pipeline")(pipeline_cmd)


_ANN_HELP = "Detection annotations: COCO-format json (COCO, LVIS, Objects365) or an OpenImages box CSV."


def _engine_monitor(progress: bool | None, stage: str = "generate"):  # type: ignore[no-untyped-def]
    if stage == "generate":
        return progress_monitor(progress, description="generating", labels=())
    from reallod.agent.task import VERDICTS

    return progress_monitor(progress, description="re-aligning", labels=VERDICTS)


def _counts_line(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)


_A = Annotated
_OPT_ANN = _A[Path, typer.Option("--annotations", help=_ANN_HELP, show_default=False)]
_OPT_IMAGES = _A[Path, typer.Option("--images", help="Image root the annotations' file names are relative to.",
                                    show_default=False)]
_OPT_CONFIG = _A[str, typer.Option("--config", help=f"Agent config (path, or shipped name: {SHIPPED_AGENT_CONFIGS}); "
                                   "its rewriter model writes the LLM steps, its vlm the VLM steps.",
                                   callback=config_file_value)]
_OPT_CLASSES = _A[Path | None, typer.Option("--classes", help="OpenImages class-description CSV.")]
_OPT_CROWD = _A[bool, typer.Option("--keep-crowd", help="Keep crowd (COCO iscrowd / OpenImages IsGroupOf) boxes.")]
_OPT_MIN_AREA = _A[float, typer.Option("--min-box-area", min=0, help="Drop boxes smaller than this (w×h pixels).")]
_OPT_CLAMP = _A[bool, typer.Option("--clamp-boxes", help="Clamp boxes that leave their image by more than 1 px to it "
                                   "(counted in the summary) instead of refusing the annotations.")]
_OPT_NLLM = _A[int, typer.Option("--llm-expressions", min=0, help="LLM phrases per object.")]
_OPT_NGROUP = _A[int, typer.Option("--group-expressions", min=0, help="Group phrases per multi-instance category.")]
_OPT_NHARD = _A[int, typer.Option("--hard-negatives", min=0, help="Hard negatives per object (LLM).")]
_OPT_NEASY = _A[int, typer.Option("--easy-negatives", min=0, help="Easy negatives per object (absent categories).")]
_OPT_MAXOBJ = _A[int | None, typer.Option("--max-objects", min=1, help="At most this many objects per image (largest).")]
_OPT_CLIP = _A[str | None, typer.Option("--clip-model", help="CLIP/SigLIP path or hub id: drop expressions whose "
                                        "region-text similarity is under --clip-threshold (off by default).")]
_OPT_CLIPT = _A[float | None, typer.Option("--clip-threshold", help="Similarity threshold of the --clip-model filter "
                                           "(default 0.2; only with --clip-model).", show_default=False)]
_OPT_LIMIT = _A[int | None, typer.Option("--limit", min=1, help="Only the first N images (of the shard).")]
_OPT_SHARD = _A[str | None, typer.Option("--shard", help="K/N: this run's share of the images.")]
_OPT_CONC = _A[int | None, typer.Option("--concurrency", min=1, help="Images (and agent tasks) in flight.")]
_OPT_FORCE = _A[bool, typer.Option("--force-resume", help="Resume even if the config changed (never on other "
                                    "annotations: give those another --out).")]
_OPT_PROGRESS = _A[bool | None, typer.Option("--progress/--no-progress", help="Progress bar; into a log (stderr no terminal), a plain line every 30 s ($REALLOD_PROGRESS_INTERVAL) (default: on a terminal only).")]


def _generate_options(
        annotations: _OPT_ANN, images: _OPT_IMAGES, out: Path, config: _OPT_CONFIG = "offline",
        classes: _OPT_CLASSES = None, keep_crowd: _OPT_CROWD = False, min_box_area: _OPT_MIN_AREA = 0.0,
        clamp_boxes: _OPT_CLAMP = False,
        llm_expressions: _OPT_NLLM = 3, group_expressions: _OPT_NGROUP = 2, hard_negatives: _OPT_NHARD = 2,
        easy_negatives: _OPT_NEASY = 2, max_objects: _OPT_MAXOBJ = None, clip_model: _OPT_CLIP = None,
        clip_threshold: _OPT_CLIPT = None, max_pixels: MaxPixels = MAX_PIXELS, limit: _OPT_LIMIT = None,
        shard: _OPT_SHARD = None,
        concurrency: _OPT_CONC = None, base_url: BaseUrl = None, llm_base_url: LlmBaseUrl = None,
        vlm_base_url: VlmBaseUrl = None, cache: ResponseCache = None,
        no_cache: NoCache = False, force_resume: _OPT_FORCE = False,
        progress: _OPT_PROGRESS = None):  # type: ignore[no-untyped-def]
    """The options of ``generate`` and ``pipeline`` (:func:`with_options`; each command declares its own
    ``--out``), as the engine's :class:`GenerateOptions` (``--progress`` is the command's)."""
    from reallod.engine.generate import GenerateSettings
    from reallod.engine.pipeline import GenerateOptions

    if clip_threshold is not None and clip_model is None:
        raise typer.BadParameter("has no effect without --clip-model (the filter is off): give --clip-model "
                                 "too, or leave --clip-threshold out", param_hint="--clip-threshold")
    settings = GenerateSettings(llm_expressions=llm_expressions, group_expressions=group_expressions,
                                hard_negatives=hard_negatives, easy_negatives=easy_negatives, max_objects=max_objects)
    return GenerateOptions(annotations=annotations, images=images, config=config, out=out, classes=classes,
                           skip_crowd=not keep_crowd, min_area=min_box_area, clamp_boxes=clamp_boxes,
                           settings=settings, clip_model=clip_model,
                           clip_threshold=0.2 if clip_threshold is None else clip_threshold, max_pixels=max_pixels,
                           limit=limit, shard=shard, concurrency=concurrency,
                           base_url=base_url, llm_base_url=llm_base_url, vlm_base_url=vlm_base_url, cache=cache,
                           no_cache=no_cache, force_resume=force_resume)


@with_options(_generate_options)
def generate_cmd(out: _A[Path, typer.Option("--out", help="Raw-expression Real-Data (.jsonl) to write.",
                                            show_default=False)], **options: Any) -> None:
    """Write raw expressions (caption, vlm_short, vlm_long, llm, groups, negatives) for annotated objects."""
    from reallod.engine.pipeline import check_generated, generate

    quiet_transformers()  # the config's roles may be transformers models
    run = generate(_generate_options(out=out, **options), monitor=_engine_monitor(options["progress"]))
    typer.echo(f"generated {run.images} image(s) ({_done(run)}) -> {run.out}")
    _generation_summary(run)
    check_generated(run)  # exit status 1 when every image tried failed, after the summary


def _done(run) -> str:  # type: ignore[no-untyped-def]
    return f"{run.ran} now, {run.resumed} resumed" + (f", {run.failed} failed" if run.failed else "")


def _generation_summary(run, *, pipeline: bool = False) -> None:  # type: ignore[no-untyped-def]
    """What generation kept and dropped, and why; plainly when it kept nothing."""
    if run.unavailable:
        typer.echo(f"unavailable without a VLM: {', '.join(run.unavailable)} (caption taken from the annotations)")
    typer.echo(_counts_line(run.counts) or "nothing to count")
    if run.failed:
        typer.echo(f"{run.failure_line()}: rerun the same command to retry them")
    if not run.records:
        why = _no_image(run) if not run.images else \
            "images failed or every expression was dropped (above)" if run.failed else \
            "every expression was dropped (the reasons are counted above)"
        held = "holds an empty record per image" if pipeline else "is empty"
        typer.echo(f"no record written: {why}; {run.out} {held}")


def _no_image(run) -> str:  # type: ignore[no-untyped-def]
    """Why no image was selected: none kept a box (and what dropped them), or the shard is empty."""
    if run.annotated:
        return "no image selected (an empty shard)"
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(run.skipped.items()) if reason != "images with no box")
    if not why:  # nothing was filtered: there is no box to keep
        images = run.skipped.get("images with no box", 0)
        return "the annotations hold no box" + (f" (for any of their {images} image(s))" if images else "")
    return (f"no image kept a box ({why}; --keep-crowd keeps crowd boxes, a lower --min-box-area keeps "
            "small ones)")


@with_options(_generate_options)
def pipeline_cmd(
        out: _A[Path, typer.Option("--out", help="Real-Data (.jsonl) to write; intermediate files go next to it.",
                                   show_default=False)],
        unresolved: _A[str, typer.Option("--unresolved", help="Expressions the agent judged wrong and could not "
                                         "repair: negative (default), drop or keep.")] = "negative",
        max_cycles: _A[int | None, typer.Option("--max-cycles", min=1, help="Agent cycles per expression.")] = None,
        report: _A[Path | None, typer.Option("--report", help="Re-alignment run summary (JSON + Markdown).")] = None,
        **options: Any,
) -> None:
    """generate → realign → assemble: detection annotations to Real-Data, resumable at every stage."""
    from reallod.engine.pipeline import PipelineOptions, check_generated, pipeline

    quiet_transformers()  # the config's roles may be transformers models
    opts = _generate_options(out=out, **options)
    from reallod.agent.summary import check_some_succeeded, render
    from reallod.cli.common import console

    run = pipeline(PipelineOptions(opts, unresolved=unresolved, max_cycles=max_cycles, report=report),
                   monitors=lambda stage: _engine_monitor(options["progress"], stage))
    g = run.generated
    typer.echo(f"generate: {g.images} image(s) ({_done(g)}) -> {run.paths['generated']}")
    _generation_summary(g, pipeline=True)
    s = run.realigned.summary
    typer.echo(f"realign: {s.tasks} task(s): {_counts_line(dict(s.verdicts)) or 'nothing to re-align'} "
               f"-> {run.paths['realigned']}")
    if s.tasks:  # as `reallod realign` prints it: failures, and what reached the output (pairs dropped too)
        console().print(render(s))
    assembled = _counts_line(dict(run.assembled))
    if not run.assembled["record:written"]:
        assembled = f"no record ({assembled})" if assembled else "no record"
    typer.echo(f"assemble: {assembled} -> {run.out}")
    check_some_succeeded(s, what="the pipeline's re-alignment")  # exit status 1, after the reasons
    check_generated(g, pipeline=True)  # exit status 1 while an image is not generated, after the output

