"""``reallod detect`` and ``reallod convert-checkpoint``: run Real-Model on images, and turn an
MMDetection checkpoint into a Hugging Face folder (:mod:`reallod.model` does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reallod.cli.common import MAX_PIXELS, Dtype, MaxPixels, ModelArg, parse_image_size, quiet_transformers
from reallod.errors import ReallodError


def register(root: typer.Typer) -> None:
    """``detect`` and ``convert-checkpoint``."""
    root.command("detect")(detect_cmd)
    root.command("convert-checkpoint")(convert_checkpoint_cmd)


def detect_cmd(
    inputs: Annotated[Path, typer.Argument(help="An image file or a folder of images (searched recursively).",
                                           show_default=False)],
    model: ModelArg,
    texts: Annotated[list[str] | None, typer.Option(
        "--texts", help="What to look for: \"a dog . a red car .\", one expression, a .txt file (one per line) "
        "or \"$: coco\"; repeat to add more.", show_default=False)] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="Replace MODEL's weights with this file: .safetensors/.pth in Hugging Face layout, or "
        "an MMDetection MM-Grounding-DINO / Real-Model .pth (converted on the fly).")] = None,
    out_dir: Annotated[Path, typer.Option(
        "--out-dir", help="Writes OUT/preds/*.json and OUT/vis/*; a rerun with the same settings skips the images "
        "done there. Files of a run with other settings that this run does not write again are refused (see "
        "--discard-earlier).")] = Path("outputs"),
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda or cuda:N \\[default: cuda if available; cuda:LOCAL_RANK per process under "
        "torchrun / accelerate launch].", show_default=False)] = None,
    dtype: Dtype = "fp32",
    pred_score_thr: Annotated[float, typer.Option(
        "--pred-score-thr", min=0.0, max=1.0, help="Draw boxes scoring at least this (the JSON keeps all).")] = 0.3,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Prompts per forward pass; the image backbone runs once per image.")] = 8,
    mode: Annotated[str, typer.Option(
        "--mode", help="parallel: one prompt per expression (benchmark mode); concat: all in one prompt.")] = "parallel",
    topk: Annotated[int, typer.Option("--topk", min=1, help="Boxes kept per expression.")] = 300,
    score_over: Annotated[str, typer.Option(
        "--score-over", help="expression-tokens: a box scores the mean over the expression's own tokens (the "
        "benchmark protocol); all-tokens: the max over every token of the prompt, special tokens and \".\" "
        "included, as the published Real-Model demos score (parallel mode only).")] = "expression-tokens",
    nms_iou: Annotated[float | None, typer.Option(
        "--nms-iou", min=0.0, max=1.0, help="Per-expression NMS at this IoU (default: off).",
        show_default=False)] = None,
    max_text_len: Annotated[int | None, typer.Option(
        "--max-text-len", min=4, max=512, help="Text limit in tokens (default: the model's).",
        show_default=False)] = None,
    image_size: Annotated[str | None, typer.Option(
        "--image-size", help="Resize to SHORT,LONG (e.g. 800,1333) (default: the model's preprocessor); SHORT × "
        "LONG at most 89,478,485 pixels, SHORT at least what the model needs (201 for Real-Model).",
        show_default=False)] = None,
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="Tokenizer folder or hub id (default: MODEL's).", show_default=False)] = None,
    max_pixels: MaxPixels = MAX_PIXELS,
    palette: Annotated[str, typer.Option("--palette", help="Box colours: coco, voc, citys, random or none.")] = "coco",
    show: Annotated[bool, typer.Option("--show", help="Open each picture in an image viewer.")] = False,
    no_save_vis: Annotated[bool, typer.Option("--no-save-vis", help="Do not write pictures.")] = False,
    no_save_pred: Annotated[bool, typer.Option("--no-save-pred", help="Do not write JSON predictions.")] = False,
    print_result: Annotated[bool, typer.Option("--print-result", help="Print each image's JSON on stdout.")] = False,
    discard_earlier: Annotated[bool, typer.Option(
        "--discard-earlier", help="Delete the files a run with other settings wrote in --out-dir that this run does "
        "not write again (only those its journal lists, unchanged since), instead of refusing to mix them with "
        "this run's.")] = False,
) -> None:
    """Detect expressions in images: per image, a JSON of boxes (xyxy, score, expression) and a labelled picture.

    Example: reallod detect photos/ models/real-model-t --texts "the dog without a leash . a red cup ."
    """
    from reallod.model.hf_folder import check_local_folder, check_tokenizer_option

    check_local_folder(model)  # a mistyped local path fails here, before the heavy imports
    if tokenizer is not None:
        check_tokenizer_option(tokenizer)
    from reallod.model.detect import check_links, check_outputs, find_images, run_detect
    from reallod.model.detect_journal import DetectOptions, check_earlier, job_settings, shared_stems
    from reallod.model.draw import PALETTES
    from reallod.model.inference import InferenceOptions
    from reallod.model.loading import check_image_size, load_detector
    from reallod.model.texts import parse_texts
    from reallod.runs.launch import launch_place, process_device

    if not texts:
        raise typer.BadParameter("give at least one --texts (e.g. --texts \"a dog . a red car .\")",
                                 param_hint="--texts")
    if palette not in PALETTES:
        raise typer.BadParameter(f"use one of {', '.join(PALETTES)}", param_hint="--palette")
    size = parse_image_size(image_size)
    if size is not None:
        check_image_size(size)  # the bounds any model has; the smallest this model takes: once its config is read
    expressions = parse_texts(texts)
    inference = InferenceOptions(mode=mode, batch_size=batch_size, topk=topk, nms_iou=nms_iou,  # type: ignore[arg-type]
                                 score_over=score_over)  # type: ignore[arg-type]
    options = DetectOptions(out_dir=out_dir, score_thr=pred_score_thr, save_vis=not no_save_vis,
                            save_pred=not no_save_pred, show=show, print_result=print_result, palette=palette,
                            max_pixels=max_pixels, discard_earlier=discard_earlier)
    # before the model is loaded: outputs that would replace the images, or mix with another run's
    check_outputs(inputs, options)
    images = find_images(inputs, options.out_dir)
    check_links(*images, options)
    shared_stems(images[1], options)  # two images that would write one file are refused
    if (options.save_pred or options.save_vis) and not discard_earlier:  # the model's own settings: once loaded
        check_earlier(options.out_dir, images[1], options, job_settings(expressions, inference, options), partial=True)
    place = launch_place()  # one of several processes under torchrun / accelerate launch: its share of the images
    quiet_transformers()
    detector = load_detector(model, weights=weights, device=process_device(device, place.local_rank, place.world_size),
                             dtype=dtype, max_text_len=max_text_len, tokenizer=tokenizer, image_size=size)
    summary = run_detect(inputs, detector, expressions, options=options, inference=inference, place=place,
                         images=images)
    written = [f"{summary.preds} JSON in {out_dir / 'preds'}" if options.save_pred else "",
               f"{summary.pictures} pictures in {out_dir / 'vis'}" if options.save_vis else ""]
    resumed = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    who = "" if place.world_size == 1 else f"process {place.rank} of {place.world_size}: "
    typer.echo(f"{who}{summary.processed + summary.resumed} images{resumed}, {len(expressions)} expressions ({mode}) "
               f"on {detector.device}; " + "; ".join(w for w in written if w)
               + (f"; {len(summary.skipped)} skipped" if summary.skipped else ""), err=print_result)
    if summary.images and summary.processed + summary.resumed == 0:
        raise ReallodError(f"{inputs}: none of the {len(summary.skipped)} images could be read")


def convert_checkpoint_cmd(
    src: Annotated[Path, typer.Argument(help="MMDetection MM-Grounding-DINO / Real-Model checkpoint (.pth).",
                                        show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Hugging Face folder to create.", show_default=False)],
    variant: Annotated[str | None, typer.Option(
        "--variant", help="tiny (Swin-T) or base (Swin-B) (default: read from the checkpoint).",
        show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Instead of --variant: an mm-grounding-dino config.json for another architecture.",
        show_default=False)] = None,
    tokenizer: Annotated[str, typer.Option(
        "--tokenizer", help="Folder or hub id with the bert-base-uncased tokenizer files to copy in.")
    ] = "google-bert/bert-base-uncased",
    max_text_len: Annotated[int, typer.Option(
        "--max-text-len", min=4, max=512, help="Text limit written to the config (Real-Model uses 512).")] = 512,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT_DIR if it is not empty.")] = False,
) -> None:
    """Convert an MMDetection checkpoint into a folder `reallod detect` and transformers load.

    The folder is loaded back before it is moved into place; unknown or missing keys are listed by name.
    """
    from reallod.model.convert_checkpoint import config_from_file, convert_checkpoint

    if variant is not None and variant not in ("tiny", "base"):
        raise typer.BadParameter("use tiny or base", param_hint="--variant")
    if variant is not None and config is not None:
        raise typer.BadParameter("give --variant or --config, not both", param_hint="--config")
    quiet_transformers()
    result = convert_checkpoint(src, out_dir, variant=variant,  # type: ignore[arg-type]
                                config=config_from_file(config) if config is not None else None,
                                tokenizer=tokenizer, max_text_len=max_text_len, overwrite=overwrite)
    typer.echo(f"{result.out_dir}: MM-Grounding-DINO-{result.variant}, {result.report.summary()}; "
               "loaded back with no missing or unexpected keys")

