"""``reallod data ...``: the Real-Data toolkit (validate, stats, convert, filter, sample, split, merge, show).

Every command parses its arguments, calls one function of :mod:`reallod.data` and prints its summary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from reallod.cli.common import console, ordered_group, reports_to_stderr

COMMANDS = ("validate", "stats", "convert", "filter", "sample", "split", "merge", "show")
"""The commands of ``reallod data``, in the order its help lists (and names) them."""

app = typer.Typer(cls=ordered_group(*COMMANDS), no_args_is_help=True,
                  help=f"Real-Data toolkit: {', '.join(COMMANDS)}.")


def _stdin(path: Any) -> Any:
    """``-`` is standard input, as for most Unix tools: read as ``/dev/stdin`` (a pipe, read once)."""
    if isinstance(path, list):
        return [_stdin(p) for p in path]
    return Path("/dev/stdin") if path is not None and str(path) == "-" else path


def _stdout(path: Any) -> Any:
    """``-`` is standard output (written through as ``/dev/stdout``; the command's report goes to stderr)."""
    return Path("/dev/stdout") if path is not None and str(path) == "-" else path



_Src = Annotated[Path, typer.Argument(callback=_stdin, help="Real-Data file.", show_default=False)]
_Out = Annotated[Path, typer.Argument(callback=_stdout, help="Real-Data file to write.", show_default=False)]
_Workers = Annotated[int | None, typer.Option(
    "--workers", min=1, help="Processes for an uncompressed file (default: the CPU count).")]
_Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


@app.command("validate")
def data_validate(
    file: Annotated[Path, typer.Argument(
        callback=_stdin, help="Real-Data file, .jsonl or .jsonl.gz.", show_default=False)],
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="ROOT", help="Image root: also check each image exists, is an image and has the recorded "
        "size (from its header).")] = None,
    decode: Annotated[bool, typer.Option(
        "--decode", help="With --images: decode every image whole, as training does, to find truncated or "
        "corrupt files (slower: a header read is instant, a decode takes milliseconds).")] = False,
    max_errors: Annotated[int | None, typer.Option(
        "--max-errors", min=0, metavar="N", help="Print at most N problems; the counts stay complete.")] = None,
    fix: Annotated[Path | None, typer.Option(
        "--fix", metavar="OUT", callback=_stdout,
        help="Write the valid records, in canonical form, to OUT (atomically).")] = None,
    clamp: Annotated[bool, typer.Option(
        "--clamp", help="With --fix: clamp boxes to the image and keep records whose only problem was that.")] = False,
    workers: _Workers = None,
    as_json: _Json = False,
) -> None:
    """Check every line; print each problem as FILE:LINE: field: message, then counts per kind.

    Exit code 0 when the file is valid, 1 when anything is wrong, 2 for unusable arguments (a file that
    cannot be opened, or one JSON document such as a COCO json in place of JSON Lines, included).
    """
    import orjson

    from reallod.data.convert_common import EmptyRunError
    from reallod.data.validate import render_summary, validate_file

    shown = 0
    to_stderr = reports_to_stderr(fix)  # --fix /dev/stdout: the records are the data stream
    report_out = sys.stderr if to_stderr else sys.stdout

    def on_issue(issue) -> None:
        nonlocal shown
        if as_json:
            report_out.write(('{"issues": [\n  ' if not shown else ",\n  ") + orjson.dumps(issue.to_dict()).decode())
        else:
            report_out.write(issue.format() + "\n")
        shown += 1

    try:
        report = validate_file(file, images=images, max_errors=max_errors, fix=fix, clamp=clamp,
                               workers=workers, on_issue=on_issue, decode=decode)
    except BrokenPipeError:  # `validate ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), report_out.fileno())
        raise typer.Exit(1) from None
    except EmptyRunError:  # --fix would write nothing: the issues stay a JSON document, the error follows
        if as_json:
            report_out.write(('{"issues": [' if not shown else "\n") + "]}\n")
        raise
    if as_json:
        report_out.write(('{"issues": [' if not shown else "\n") + '], "summary": '
                         + orjson.dumps(report.to_dict()).decode() + "}\n")
    else:
        console(stderr=to_stderr).print(*render_summary(report, max_errors=max_errors))
    raise typer.Exit(0 if report.ok else 1)


@app.command("stats")
def data_stats(
    files: Annotated[list[Path], typer.Argument(
        callback=_stdin, help="Real-Data files, .jsonl or .jsonl.gz.", show_default=False)],
    workers: _Workers = None,
    as_json: _Json = False,
) -> None:
    """Images / instances / expressions per file and in total, by source, relation and length.

    Instances are the distinct boxes of an image across its sources; expressions count positives
    and negatives. Lines that are not records are counted apart (run `data validate` for why).
    Exit code 1 when a file has no valid record; 2, before anything is counted, when a file cannot be
    opened or is one JSON document (a COCO json) instead of JSON Lines.
    """
    import orjson

    from reallod.data.stats import render_stats, stats_files, stats_report

    per_file, total = stats_files(files, workers=workers)
    if as_json:
        sys.stdout.write(orjson.dumps(stats_report(per_file, total), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        console().print(*render_stats(per_file, total))
    empty = [(path, st) for path, st in per_file if not st.has_valid]
    for path, st in empty:
        lines = st.images + st.bad_lines
        typer.echo(f"warning: {path}: no valid Real-Data record"
                   + (f" (none of its {lines:,} lines passes the record check; `reallod data validate {path}` "
                      "says why)" if lines else " (the file is empty or holds only blank lines)"), err=True)
    if empty:
        raise typer.Exit(1)


# --- convert / filter / sample / split / merge / show -------------------------------------------

convert_app = typer.Typer(
    no_args_is_help=True,
    help="Convert Real-Data to ODVG (training), COCO or OmniLabel json; or COCO detection json to Real-Data.",
)
app.add_typer(convert_app, name="convert")

_ConvertSrc = Annotated[Path, typer.Argument(
    callback=_stdin, help="Real-Data file (.jsonl or .jsonl.gz).", show_default=False)]
_KeepEmpty = Annotated[bool, typer.Option("--keep-empty", help="Keep images that have no box.")]
_SourcesOpt = Annotated[list[str] | None, typer.Option(
    "--source", "-s", help="Use only this source (vlm_short, vlm_long, llm, category...); repeat for several. "
    "Default: every source.", show_default=False)]


def _done(summary: str, *outputs: Path) -> None:
    """Say what a command wrote; on stderr when an output is a pipe or a device (the data stream)."""
    typer.echo(f"{' + '.join(map(str, outputs))}: {summary}", err=reports_to_stderr(*outputs))


@convert_app.command("odvg")
def data_convert_odvg(
    src: _ConvertSrc,
    out: Annotated[Path, typer.Argument(
        callback=_stdout, help="ODVG jsonl to write (.gz compresses, but mmdet's ODVGDataset reads plain text "
        "only: give it a .jsonl).", show_default=False)],
    sources: _SourcesOpt = None,
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
) -> None:
    """Real-Data → ODVG grounding jsonl (MM-Grounding-DINO / mmdet ODVGDataset).

    Caption = chosen positives then negatives, as "a. b. c."; each positive is a region with its
    boxes (xyxy pixels) and its character span; '.' and '?' inside expressions are removed.
    """
    from reallod.data.convert import realdata_to_odvg

    stats = realdata_to_odvg(src, out, sources=sources, per_source=not merge_sources, positives=positives,
                             max_negatives=max_negatives, category_source=category_source, seed=seed)
    _done(stats.summary().replace(" written", " lines written"), out)


@convert_app.command("coco")
def data_convert_coco(
    src: _ConvertSrc,
    out: Annotated[Path, typer.Argument(callback=_stdout, help="COCO json to write.", show_default=False)],
    sources: _SourcesOpt = None,
    keep_empty: _KeepEmpty = False,
) -> None:
    """Real-Data → COCO detection json: categories from the category names, boxes xywh.

    One annotation per distinct box and category of an image; the expressions of single objects are
    kept on it as "expressions", "negative_expressions" and "sources". A 'multi' pair's expressions
    refer to its boxes together: they go to a "groups" section that lists its "annotation_ids", and
    each annotation names its groups in "group_ids".
    """
    from reallod.data.convert import realdata_to_coco

    _done(realdata_to_coco(src, out, sources=sources, keep_empty=keep_empty).summary(), out)


@convert_app.command("omnilabel")
def data_convert_omnilabel(
    src: _ConvertSrc,
    out: Annotated[Path, typer.Argument(
        callback=_stdout, help="OmniLabel-style ground-truth json to write.", show_default=False)],
    sources: _SourcesOpt = None,
    categories: Annotated[bool, typer.Option(
        "--categories", help="Also add each pair's category name as a plain-category (type C) description.")] = False,
) -> None:
    """Real-Data → OmniLabel-style GT json, to evaluate a Real-Data split as a LOD benchmark.

    Positives become descriptions with their boxes; negatives become descriptions of the image that
    refer to no box. The 'category' source gives plain-category descriptions.
    """
    from reallod.data.convert import realdata_to_omnilabel

    _done(realdata_to_omnilabel(src, out, sources=sources, categories=categories).summary(), out)


@convert_app.command("from-coco")
def data_convert_from_coco(
    ann: Annotated[Path, typer.Argument(
        callback=_stdin, help="COCO / LVIS / Objects365 detection json (.json or .json.gz).",
                                        show_default=False)],
    out: Annotated[Path, typer.Argument(
        callback=_stdout, help="Real-Data jsonl to write (.gz compresses).", show_default=False)],
    skip_crowd: Annotated[bool, typer.Option("--skip-crowd", help="Drop boxes marked iscrowd.")] = False,
    min_area: Annotated[float, typer.Option("--min-area", min=0, help="Drop boxes smaller than this (w x h, pixels).")] = 0.0,
    prefix: Annotated[str, typer.Option(
        "--prefix", help="Folder put in front of every filename, e.g. train2017.")] = "",
    synonyms: Annotated[bool, typer.Option(
        "--synonyms", help="LVIS: add the category synonyms as extra positive expressions.")] = False,
    keep_empty: _KeepEmpty = False,
) -> None:
    """COCO detection json → Real-Data skeleton: one 'category' pair per box, the name as its expression.

    Boxes go from xywh to xyxy, clamped to the image. LVIS images without file_name take the folder
    and name from coco_url ('train2017/NAME.jpg', 'val2017/NAME.jpg'), so point --images at the COCO root.
    """
    from reallod.data.convert import coco_to_realdata

    stats = coco_to_realdata(ann, out, skip_crowd=skip_crowd, min_area=min_area, prefix=prefix,
                             synonyms=synonyms, keep_empty=keep_empty)
    _done(stats.summary().replace(" records read", " images read"), out)


@app.command("filter")
def data_filter(
    src: _Src,
    out: _Out,
    sources: _SourcesOpt = None,
    relation: Annotated[str | None, typer.Option("--relation", help="Keep only 'single' or 'multi' pairs.")] = None,
    categories: Annotated[list[str] | None, typer.Option(
        "--category", "-c", help="Keep only pairs of this category (case-insensitive); repeat for several.",
        show_default=False)] = None,
) -> None:
    """Keep the pairs that match every criterion; images left with no pair are dropped."""
    from reallod.data.ops import filter_file

    _done(filter_file(src, out, sources=sources, relation=relation, categories=categories).summary(), out)


@app.command("sample")
def data_sample(
    src: _Src,
    out: _Out,
    n: Annotated[int | None, typer.Option("-n", "--n", min=1, help="Exactly N images (reservoir sampling).")] = None,
    fraction: Annotated[float | None, typer.Option(
        "--fraction", help="About this share of the images, above 0 and at most 1 (constant memory).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same sample.")] = 0,
) -> None:
    """Random sample of images, kept in input order, deterministic for a seed."""
    from reallod.data.ops import sample_file

    _done(sample_file(src, out, n=n, fraction=fraction, seed=seed).summary(), out)


@app.command("split")
def data_split(
    src: _Src,
    train: Annotated[Path, typer.Option(
        "--train", callback=_stdout, help="Train file to write.", show_default=False)],
    val: Annotated[Path, typer.Option(
        "--val", callback=_stdout, help="Validation file to write.", show_default=False)],
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Share of images that go to --val, strictly between 0 and 1 (each side gets "
        "images).")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same split.")] = 0,
) -> None:
    """Image-level train/val split by a seeded hash of the filename: streaming and reproducible."""
    from reallod.data.ops import split_file

    _done(split_file(src, train, val, val_fraction=val_fraction, seed=seed).summary(), train, val)


@app.command("merge")
def data_merge(
    srcs: Annotated[list[Path], typer.Argument(
        callback=_stdin, help="Real-Data files to merge.", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", callback=_stdout, help="Real-Data file to write.", show_default=False)],
) -> None:
    """Concatenate files; records of the same image are combined into one (sizes must agree).

    Pairs of one source over the same boxes and category have their expressions united; an expression
    that one has as a positive and the other as a negative stops the merge, naming both places.
    Inputs must be regular files (each is read twice), not pipes.
    """
    from reallod.data.ops import merge_files

    _done(merge_files(srcs, out).summary(), out)


@app.command("show")
def data_show(
    src: _Src,
    images: Annotated[Path, typer.Option("--images", help="Image root the filenames are relative to.",
                                         show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.", show_default=False)],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Draw the first N records.")] = 20,
    sources: _SourcesOpt = None,
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="Skip records whose image is missing instead of stopping.")] = False,
) -> None:
    """Draw boxes with their positive expressions, negatives listed under the image, one PNG per record."""
    from reallod.data.show import show_file

    typer.echo(show_file(src, images, out_dir, n=n, sources=sources, skip_missing=skip_missing).summary(out_dir))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")
