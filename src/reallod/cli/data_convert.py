"""``reallod data convert ...``: Real-Data to ODVG (training), COCO or OmniLabel json, and COCO detection json
to Real-Data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reallod.cli.common import ReadProgress, data_progress
from reallod.cli.data_args import SourcesOpt, say_written, stdin_path, stdout_path

convert_app = typer.Typer(
    no_args_is_help=True,
    help="Convert Real-Data to ODVG (training), COCO or OmniLabel json; or COCO detection json to Real-Data.",
)
_ConvertSrc = Annotated[Path, typer.Argument(
    callback=stdin_path, help="Real-Data file (.jsonl or .jsonl.gz).", show_default=False)]
_KeepEmpty = Annotated[bool, typer.Option("--keep-empty", help="Keep images that have no box.")]


@convert_app.command("odvg")
def data_convert_odvg(
    src: _ConvertSrc,
    out: Annotated[Path, typer.Argument(
        callback=stdout_path, help="ODVG jsonl to write (.gz compresses, but mmdet's ODVGDataset reads plain text "
        "only: give it a .jsonl).", show_default=False)],
    sources: SourcesOpt = None,
    merge_sources: Annotated[bool, typer.Option(
        "--merge-sources", help="One line per image with every chosen source, instead of one per image x source.")] = False,
    positives: Annotated[int, typer.Option(
        "--positives", min=0, help="Positive expressions per pair (0 = all).")] = 1,
    max_negatives: Annotated[int, typer.Option(
        "--max-negatives", min=-1, help="Negative expressions per line, put in the caption with no box (-1 = all).")] = 50,
    category_source: Annotated[bool, typer.Option(
        "--category-source", help="Add a 'category' source, even where -s leaves it out: an image's own, or one "
        "made of the category names of its pairs of the chosen sources (of every source with -s category alone); "
        "an image with neither gets none.")] = False,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Pick positives and negatives at random with this seed (default: the first ones).")] = None,
    progress: ReadProgress = None,
) -> None:
    """Real-Data → ODVG grounding jsonl (MM-Grounding-DINO / mmdet ODVGDataset).

    Caption = chosen positives then negatives, as "a. b. c."; each positive is a region with its
    boxes (xyxy pixels) and its character span; '.' and '?' inside expressions are removed.
    """
    from reallod.data.convert import realdata_to_odvg

    with data_progress(progress, "convert odvg", [src]):
        stats = realdata_to_odvg(src, out, sources=sources, per_source=not merge_sources, positives=positives,
                                 max_negatives=max_negatives, category_source=category_source, seed=seed)
    say_written(stats.summary().replace(" written", " lines written"), out)


@convert_app.command("coco")
def data_convert_coco(
    src: _ConvertSrc,
    out: Annotated[Path, typer.Argument(callback=stdout_path, help="COCO json to write.", show_default=False)],
    sources: SourcesOpt = None,
    keep_empty: _KeepEmpty = False,
    progress: ReadProgress = None,
) -> None:
    """Real-Data → COCO detection json: categories from the category names, boxes xywh.

    One annotation per distinct box and category of an image; the expressions of single objects are
    kept on it as "expressions", "negative_expressions" and "sources". A 'multi' pair's expressions
    refer to its boxes together: they go to a "groups" section that lists its "annotation_ids", and
    each annotation names its groups in "group_ids".
    """
    from reallod.data.convert import realdata_to_coco

    with data_progress(progress, "convert coco", [src]):
        stats = realdata_to_coco(src, out, sources=sources, keep_empty=keep_empty)
    say_written(stats.summary(), out)


@convert_app.command("omnilabel")
def data_convert_omnilabel(
    src: _ConvertSrc,
    out: Annotated[Path, typer.Argument(
        callback=stdout_path, help="OmniLabel-style ground-truth json to write.", show_default=False)],
    sources: SourcesOpt = None,
    categories: Annotated[bool, typer.Option(
        "--categories", help="Also add each pair's category name as a plain-category (type C) description.")] = False,
    progress: ReadProgress = None,
) -> None:
    """Real-Data → OmniLabel-style GT json, to evaluate a Real-Data split as a LOD benchmark.

    Positives become descriptions with their boxes; negatives become descriptions of the image that
    refer to no box. The 'category' source gives plain-category descriptions.
    """
    from reallod.data.convert import realdata_to_omnilabel

    with data_progress(progress, "convert omnilabel", [src]):
        stats = realdata_to_omnilabel(src, out, sources=sources, categories=categories)
    say_written(stats.summary(), out)


@convert_app.command("from-coco")
def data_convert_from_coco(
    ann: Annotated[Path, typer.Argument(
        callback=stdin_path, help="COCO / LVIS / Objects365 detection json (.json or .json.gz).",
                                        show_default=False)],
    out: Annotated[Path, typer.Argument(
        callback=stdout_path, help="Real-Data jsonl to write (.gz compresses).", show_default=False)],
    skip_crowd: Annotated[bool, typer.Option("--skip-crowd", help="Drop boxes marked iscrowd.")] = False,
    min_area: Annotated[float, typer.Option("--min-area", min=0, help="Drop boxes smaller than this (w x h, pixels).")] = 0.0,
    prefix: Annotated[str, typer.Option(
        "--prefix", help="Folder put in front of every filename, e.g. train2017.")] = "",
    synonyms: Annotated[bool, typer.Option(
        "--synonyms", help="LVIS: add the category synonyms as extra positive expressions.")] = False,
    keep_empty: _KeepEmpty = False,
    progress: ReadProgress = None,
) -> None:
    """COCO detection json → Real-Data skeleton: one 'category' pair per box, the name as its expression.

    Boxes go from xywh to xyxy, clamped to the image. LVIS images without file_name take the folder
    and name from coco_url ('train2017/NAME.jpg', 'val2017/NAME.jpg'), so point --images at the COCO root.
    """
    from reallod.data.convert import coco_to_realdata

    with data_progress(progress, "convert from-coco", [ann]):
        stats = coco_to_realdata(ann, out, skip_crowd=skip_crowd, min_area=min_area, prefix=prefix,
                                 synonyms=synonyms, keep_empty=keep_empty)
    say_written(stats.summary().replace(" records read", " images read"), out)
