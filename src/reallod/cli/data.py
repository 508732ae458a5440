"""``reallod data ...``: the Real-Data toolkit (validate, stats, convert, filter, sample, split, merge, show).

Every command parses its arguments, calls one function of :mod:`reallod.data` and prints its summary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from reallod.cli.common import ReadProgress, console, data_progress, ordered_group, reports_to_stderr
from reallod.cli.data_args import SourcesOpt, say_written, stdin_path, stdout_path
from reallod.cli.data_convert import convert_app

COMMANDS = ("validate", "stats", "convert", "filter", "sample", "split", "merge", "show")
"""The commands of ``reallod data``, in the order its help lists (and names) them."""

app = typer.Typer(cls=ordered_group(*COMMANDS), no_args_is_help=True,
                  help=f"Real-Data toolkit: {', '.join(COMMANDS)}.")


_Src = Annotated[Path, typer.Argument(callback=stdin_path, help="Real-Data file.", show_default=False)]
_Out = Annotated[Path, typer.Argument(callback=stdout_path, help="Real-Data file to write.", show_default=False)]
_Workers = Annotated[int | None, typer.Option(
    "--workers", min=1, help="Processes for an uncompressed file (default: the CPU count).")]
_Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


@app.command("validate")
def data_validate(
    file: Annotated[Path, typer.Argument(
        callback=stdin_path, help="Real-Data file, .jsonl or .jsonl.gz.", show_default=False)],
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="ROOT", help="Image root: also check each image exists, is an image and has the recorded "
        "size (from its header).")] = None,
    decode: Annotated[bool, typer.Option(
        "--decode", help="With --images: decode every image whole, as training does, to find truncated or "
        "corrupt files (slower: a header read is instant, a decode takes milliseconds).")] = False,
    max_errors: Annotated[int | None, typer.Option(
        "--max-errors", min=0, metavar="N", help="Print at most N problems; the counts stay complete.")] = None,
    fix: Annotated[Path | None, typer.Option(
        "--fix", metavar="OUT", callback=stdout_path,
        help="Write the valid records, in canonical form, to OUT (atomically).")] = None,
    clamp: Annotated[bool, typer.Option(
        "--clamp", help="With --fix: clamp boxes to the image and keep records whose only problem was that.")] = False,
    workers: _Workers = None,
    as_json: _Json = False,
    progress: ReadProgress = None,
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

    def on_issue(issue) -> None:
        nonlocal shown
        report_out = sys.stderr if to_stderr else sys.stdout  # looked up now: a progress bar puts it above itself
        if as_json:
            report_out.write(('{"issues": [\n  ' if not shown else ",\n  ") + orjson.dumps(issue.to_dict()).decode())
        else:
            report_out.write(issue.format() + "\n")
        shown += 1

    report_out = sys.stderr if to_stderr else sys.stdout
    try:
        with data_progress(progress, "validate", [file]):
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
        callback=stdin_path, help="Real-Data files, .jsonl or .jsonl.gz.", show_default=False)],
    workers: _Workers = None,
    as_json: _Json = False,
    progress: ReadProgress = None,
) -> None:
    """Images / instances / expressions per file and in total, by source, relation and length.

    Instances are the distinct boxes of an image across its sources; expressions count positives
    and negatives. Lines that are not records are counted apart (run `data validate` for why).
    Exit code 1 when a file has no valid record; 2, before anything is counted, when a file cannot be
    opened or is one JSON document (a COCO json) instead of JSON Lines.
    """
    import orjson

    from reallod.data.stats import render_stats, stats_files, stats_report

    with data_progress(progress, "stats", files):
        per_file, total = stats_files(files, workers=workers)
    if as_json:
        sys.stdout.write(orjson.dumps(stats_report(per_file, total), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        console().print(*render_stats(per_file, total))
    repeats = [(path, st.repeated_images()) for path, st in per_file]  # a sort of every record's hash: once
    for path, repeated in repeats:
        if repeated:
            some = "1 image has" if repeated == 1 else f"{repeated:,} images have"
            typer.echo(f"warning: {path}: {some} more than one record, each record counted as an "
                       f"image (`reallod data validate {path}` names their lines; `reallod data merge` combines "
                       "them)", err=True)
    within = sum(n for _, n in repeats)
    if len(per_file) > 1 and (across := total.repeated_images()) > within:
        typer.echo(f"warning: {across:,} images have more than one record across the {len(per_file)} files "
                   f"({within:,} within one file), each record counted as an image in the total (`reallod data "
                   "merge` combines them)", err=True)
    empty = [(path, st) for path, st in per_file if not st.has_valid]
    for path, st in empty:
        lines = st.images + st.bad_lines
        typer.echo(f"warning: {path}: no valid Real-Data record"
                   + (f" (none of its {lines:,} lines passes the record check; `reallod data validate {path}` "
                      "says why)" if lines else " (the file is empty or holds only blank lines)"), err=True)
    if empty:
        raise typer.Exit(1)


app.add_typer(convert_app, name="convert")  # reallod.cli.data_convert


# --- filter / sample / split / merge / show ----------------------------------------------------


@app.command("filter")
def data_filter(
    src: _Src,
    out: _Out,
    sources: SourcesOpt = None,
    relation: Annotated[str | None, typer.Option("--relation", help="Keep only 'single' or 'multi' pairs.")] = None,
    categories: Annotated[list[str] | None, typer.Option(
        "--category", "-c", help="Keep only pairs of this category (case-insensitive); repeat for several.",
        show_default=False)] = None,
    progress: ReadProgress = None,
) -> None:
    """Keep the pairs that match every criterion; images left with no pair are dropped."""
    from reallod.data.ops import filter_file

    with data_progress(progress, "filter", [src]):
        stats = filter_file(src, out, sources=sources, relation=relation, categories=categories)
    say_written(stats.summary(), out)


@app.command("sample")
def data_sample(
    src: _Src,
    out: _Out,
    n: Annotated[int | None, typer.Option("-n", "--n", min=1, help="Exactly N images (reservoir sampling).")] = None,
    fraction: Annotated[float | None, typer.Option(
        "--fraction", help="About this share of the images, above 0 and at most 1 (constant memory).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same sample.")] = 0,
    progress: ReadProgress = None,
) -> None:
    """Random sample of images, kept in input order, deterministic for a seed."""
    from reallod.data.ops import sample_file

    with data_progress(progress, "sample", [src]):
        stats = sample_file(src, out, n=n, fraction=fraction, seed=seed)
    say_written(stats.summary(), out)


@app.command("split")
def data_split(
    src: _Src,
    train: Annotated[Path, typer.Option(
        "--train", callback=stdout_path, help="Train file to write.", show_default=False)],
    val: Annotated[Path, typer.Option(
        "--val", callback=stdout_path, help="Validation file to write.", show_default=False)],
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Share of images that go to --val, strictly between 0 and 1 (each side gets "
        "images).")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same split.")] = 0,
    progress: ReadProgress = None,
) -> None:
    """Image-level train/val split by a seeded hash of the filename: streaming and reproducible."""
    from reallod.data.ops import split_file

    with data_progress(progress, "split", [src]):
        stats = split_file(src, train, val, val_fraction=val_fraction, seed=seed)
    say_written(stats.summary(), train, val)


@app.command("merge")
def data_merge(
    srcs: Annotated[list[Path], typer.Argument(
        callback=stdin_path, help="Real-Data files to merge.", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", callback=stdout_path, help="Real-Data file to write.", show_default=False)],
    progress: ReadProgress = None,
) -> None:
    """Concatenate files; records of the same image are combined into one (sizes must agree).

    Pairs of one source over the same boxes and category have their expressions united; an expression
    that one has as a positive and the other as a negative stops the merge, naming both places.
    Inputs must be regular files (each is read twice), not pipes.
    """
    from reallod.data.ops import merge_files

    with data_progress(progress, "merge", srcs, passes=2):
        stats = merge_files(srcs, out)
    say_written(stats.summary(), out)


@app.command("show")
def data_show(
    src: _Src,
    images: Annotated[Path, typer.Option("--images", help="Image root the filenames are relative to.",
                                         show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.", show_default=False)],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Draw the first N records.")] = 20,
    sources: SourcesOpt = None,
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="Skip records whose image is missing instead of stopping.")] = False,
) -> None:
    """Draw boxes with their positive expressions, negatives listed under the image, one PNG per record."""
    from reallod.data.show import show_file

    typer.echo(show_file(src, images, out_dir, n=n, sources=sources, skip_missing=skip_missing).summary(out_dir))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")
