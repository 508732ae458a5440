"""The ``reallod`` command: a thin Typer layer that parses arguments and calls library functions.

Heavy modules (torch, transformers, gradio) are imported inside the commands that need them, so
``reallod data ...`` starts fast and stays small in memory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from reallod.errors import ReallodError

app = typer.Typer(
    name="reallod", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Real-LOD: re-align language to visual objects, the Real-Data toolkit and Real-Model.",
)
data_app = typer.Typer(no_args_is_help=True, help="Real-Data toolkit: validate, stats, convert, filter, show.")
app.add_typer(data_app, name="data")


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        from reallod import __version__

        typer.echo(__version__)
        raise typer.Exit()


# ---------------------------------------------------------------------------------------------
# reallod data ...
# ---------------------------------------------------------------------------------------------

# --- data validate / data stats (data:validate-stats) -----------------------------------------


@data_app.command("validate")
def data_validate(
    file: Annotated[Path, typer.Argument(help="Real-Data file, .jsonl or .jsonl.gz.", show_default=False)],
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="ROOT", help="Image root: also check each image exists, decodes and has the recorded size.")] = None,
    max_errors: Annotated[int | None, typer.Option(
        "--max-errors", min=0, metavar="N", help="Print at most N problems; the counts stay complete.")] = None,
    fix: Annotated[Path | None, typer.Option(
        "--fix", metavar="OUT", help="Write the valid records, in canonical form, to OUT (atomically).")] = None,
    clamp: Annotated[bool, typer.Option(
        "--clamp", help="With --fix: clamp boxes to the image and keep records whose only problem was that.")] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Processes for an uncompressed file (default: the CPU count).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Check every line; print each problem as FILE:LINE: field: message, then counts per kind.

    Exit code 0 when the file is valid, 1 when anything is wrong, 2 for unusable arguments.
    """
    import orjson

    from reallod.data.validate import render_summary, validate_file

    shown = 0

    def on_issue(issue) -> None:
        nonlocal shown
        if as_json:
            sys.stdout.write(('{"issues": [\n  ' if not shown else ",\n  ") + orjson.dumps(issue.to_dict()).decode())
        else:
            sys.stdout.write(issue.format() + "\n")
        shown += 1

    try:
        report = validate_file(file, images=images, max_errors=max_errors, fix=fix, clamp=clamp,
                               workers=workers, on_issue=on_issue)
    except BrokenPipeError:  # `validate ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(('{"issues": [' if not shown else "\n") + '], "summary": '
                         + orjson.dumps(report.to_dict()).decode() + "}\n")
    else:
        _console().print(*render_summary(report, max_errors=max_errors))
    raise typer.Exit(0 if report.ok else 1)


@data_app.command("stats")
def data_stats(
    files: Annotated[list[Path], typer.Argument(help="Real-Data files, .jsonl or .jsonl.gz.", show_default=False)],
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Processes for an uncompressed file (default: the CPU count).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Images / instances / expressions per file and in total, by source, relation and length.

    Instances are the distinct boxes of an image across its sources; expressions count positives
    and negatives. Lines that are not records are counted apart (run `data validate` for why).
    """
    import orjson

    from reallod.data.stats import render_stats, stats_files, stats_report

    per_file, total = stats_files(files, workers=workers)
    if as_json:
        sys.stdout.write(orjson.dumps(stats_report(per_file, total), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _console().print(*render_stats(per_file, total))


def _console():
    """Rich console on stdout; wide when piped, so tables are not squeezed to 80 columns."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)

# --- end data validate / data stats -----------------------------------------------------------

# --- data convert / filter / sample / split / merge / show (data:tools) ------------------------

convert_app = typer.Typer(
    no_args_is_help=True,
    help="Convert Real-Data to ODVG (training), COCO or OmniLabel json; or COCO detection json to Real-Data.",
)
data_app.add_typer(convert_app, name="convert")

_SourcesOpt = Annotated[list[str] | None, typer.Option(
    "--source", "-s", help="Use only this source (vlm_short, vlm_long, llm, category...); repeat for several. "
    "Default: every source.", show_default=False)]


def _done(out: object, summary: str) -> None:
    typer.echo(f"{out}: {summary}")


@convert_app.command("odvg")
def data_convert_odvg(
    src: Annotated[Path, typer.Argument(help="Real-Data file (.jsonl or .jsonl.gz).", show_default=False)],
    out: Annotated[Path, typer.Argument(help="ODVG jsonl to write (.gz compresses).", show_default=False)],
    sources: _SourcesOpt = None,
    merge_sources: Annotated[bool, typer.Option(
        "--merge-sources", help="One line per image with every chosen source, instead of one per image x source.")] = False,
    positives: Annotated[int, typer.Option(
        "--positives", min=0, help="Positive expressions per pair (0 = all).")] = 1,
    max_negatives: Annotated[int, typer.Option(
        "--max-negatives", help="Negative expressions per line, put in the caption with no box (-1 = all).")] = 50,
    category_source: Annotated[bool, typer.Option(
        "--category-source", help="Add a 'category' source made of the category names (when the image has none).")] = False,
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
    _done(out, stats.summary().replace(" written", " lines written"))


@convert_app.command("coco")
def data_convert_coco(
    src: Annotated[Path, typer.Argument(help="Real-Data file (.jsonl or .jsonl.gz).", show_default=False)],
    out: Annotated[Path, typer.Argument(help="COCO json to write.", show_default=False)],
    sources: _SourcesOpt = None,
    keep_empty: Annotated[bool, typer.Option("--keep-empty", help="Keep images that have no box.")] = False,
) -> None:
    """Real-Data → COCO detection json: categories from the category names, boxes xywh.

    One annotation per distinct box and category of an image; its expressions are kept on it as
    "expressions", "negative_expressions" and "sources".
    """
    from reallod.data.convert import realdata_to_coco

    _done(out, realdata_to_coco(src, out, sources=sources, keep_empty=keep_empty).summary())


@convert_app.command("omnilabel")
def data_convert_omnilabel(
    src: Annotated[Path, typer.Argument(help="Real-Data file (.jsonl or .jsonl.gz).", show_default=False)],
    out: Annotated[Path, typer.Argument(help="OmniLabel-style ground-truth json to write.", show_default=False)],
    sources: _SourcesOpt = None,
    categories: Annotated[bool, typer.Option(
        "--categories", help="Also add each pair's category name as a plain-category (type C) description.")] = False,
) -> None:
    """Real-Data → OmniLabel-style GT json, to evaluate a Real-Data split as a LOD benchmark.

    Positives become descriptions with their boxes; negatives become descriptions of the image that
    refer to no box. The 'category' source gives plain-category descriptions.
    """
    from reallod.data.convert import realdata_to_omnilabel

    _done(out, realdata_to_omnilabel(src, out, sources=sources, categories=categories).summary())


@convert_app.command("from-coco")
def data_convert_from_coco(
    ann: Annotated[Path, typer.Argument(help="COCO / LVIS / Objects365 detection json (.json or .json.gz).",
                                        show_default=False)],
    out: Annotated[Path, typer.Argument(help="Real-Data jsonl to write (.gz compresses).", show_default=False)],
    skip_crowd: Annotated[bool, typer.Option("--skip-crowd", help="Drop boxes marked iscrowd.")] = False,
    min_area: Annotated[float, typer.Option("--min-area", min=0, help="Drop boxes smaller than this (w x h, pixels).")] = 0.0,
    prefix: Annotated[str, typer.Option(
        "--prefix", help="Folder put in front of every filename, e.g. train2017.")] = "",
    synonyms: Annotated[bool, typer.Option(
        "--synonyms", help="LVIS: add the category synonyms as extra positive expressions.")] = False,
    keep_empty: Annotated[bool, typer.Option("--keep-empty", help="Keep images that have no box.")] = False,
) -> None:
    """COCO detection json → Real-Data skeleton: one 'category' pair per box, the name as its expression.

    Boxes go from xywh to xyxy, clamped to the image. LVIS images without file_name take
    'train2017/NAME.jpg' from coco_url, so point --images at the COCO root.
    """
    from reallod.data.convert import coco_to_realdata

    stats = coco_to_realdata(ann, out, skip_crowd=skip_crowd, min_area=min_area, prefix=prefix,
                             synonyms=synonyms, keep_empty=keep_empty)
    _done(out, stats.summary().replace(" records read", " images read"))


@data_app.command("filter")
def data_filter(
    src: Annotated[Path, typer.Argument(help="Real-Data file.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="Real-Data file to write.", show_default=False)],
    sources: _SourcesOpt = None,
    relation: Annotated[str | None, typer.Option("--relation", help="Keep only 'single' or 'multi' pairs.")] = None,
    categories: Annotated[list[str] | None, typer.Option(
        "--category", "-c", help="Keep only pairs of this category (case-insensitive); repeat for several.",
        show_default=False)] = None,
) -> None:
    """Keep the pairs that match every criterion; images left with no pair are dropped."""
    from reallod.data.ops import filter_file

    _done(out, filter_file(src, out, sources=sources, relation=relation, categories=categories).summary())


@data_app.command("sample")
def data_sample(
    src: Annotated[Path, typer.Argument(help="Real-Data file.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="Real-Data file to write.", show_default=False)],
    n: Annotated[int | None, typer.Option("-n", "--n", min=0, help="Exactly N images (reservoir sampling).")] = None,
    fraction: Annotated[float | None, typer.Option(
        "--fraction", min=0.0, max=1.0, help="About this share of the images (constant memory).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same sample.")] = 0,
) -> None:
    """Random sample of images, kept in input order, deterministic for a seed."""
    from reallod.data.ops import sample_file

    _done(out, sample_file(src, out, n=n, fraction=fraction, seed=seed).summary())


@data_app.command("split")
def data_split(
    src: Annotated[Path, typer.Argument(help="Real-Data file.", show_default=False)],
    train: Annotated[Path, typer.Option("--train", help="Train file to write.", show_default=False)],
    val: Annotated[Path, typer.Option("--val", help="Validation file to write.", show_default=False)],
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", min=0.0, max=1.0, help="Share of images that go to --val.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same split.")] = 0,
) -> None:
    """Image-level train/val split by a seeded hash of the filename: streaming and reproducible."""
    from reallod.data.ops import split_file

    _done(f"{train} + {val}", split_file(src, train, val, val_fraction=val_fraction, seed=seed).summary())


@data_app.command("merge")
def data_merge(
    srcs: Annotated[list[Path], typer.Argument(help="Real-Data files to merge.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Real-Data file to write.", show_default=False)],
) -> None:
    """Concatenate files; records of the same image are combined into one (sizes must agree).

    Pairs of one source over the same boxes and category have their expressions united.
    """
    from reallod.data.ops import merge_files

    _done(out, merge_files(srcs, out).summary())


@data_app.command("show")
def data_show(
    src: Annotated[Path, typer.Argument(help="Real-Data file.", show_default=False)],
    images: Annotated[Path, typer.Option("--images", help="Image root the filenames are relative to.",
                                         show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.", show_default=False)],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Draw the first N records.")] = 20,
    sources: _SourcesOpt = None,
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="Skip records whose image is missing instead of stopping.")] = False,
) -> None:
    """Draw boxes with their positive expressions, negatives listed under the image, one PNG per record."""
    from reallod.data.draw import show_file

    typer.echo(show_file(src, images, out_dir, n=n, sources=sources, skip_missing=skip_missing).summary(out_dir))

# --- end data convert / filter / sample / split / merge / show ---------------------------------


# ---------------------------------------------------------------------------------------------
# reallod realign ... (agent)
# ---------------------------------------------------------------------------------------------

# --- realign / realign merge / realign --explain / agent-eval (agent:io, agent:scale) -----------


class _RealignGroup(typer.core.TyperGroup):
    """``reallod realign INPUT ...`` runs the agent; ``reallod realign merge ...`` joins shards.

    Anything that is not a subcommand name goes to the hidden default command ``run``, so the plain
    form keeps working. A bare ``--ray`` (no address after it) means a local Ray instance.
    """

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if not args or args[0] not in self.commands:
            args = ["run", *args]
        fixed = []
        for i, a in enumerate(args):
            fixed.append(a)
            if a == "--ray" and (i + 1 == len(args) or not _looks_like_address(args[i + 1])):
                fixed.append("local")
        return super().parse_args(ctx, fixed)

    def resolve_command(self, ctx, args):  # type: ignore[no-untyped-def]
        name, cmd, rest = super().resolve_command(ctx, args)
        # the default command's help and errors read "reallod realign ...", as users type it
        return ("" if name == "run" else name), cmd, rest


class _RealignRunContext(typer.core._click.core.Context):
    @property
    def command_path(self) -> str:  # no trailing space for the nameless default command
        return super().command_path.rstrip()


class _RealignRun(typer.core.TyperCommand):
    context_class = _RealignRunContext


def _looks_like_address(value: str) -> bool:
    return value in ("auto", "local") or "://" in value or bool(__import__("re").fullmatch(r"[\w.\-]+:\d+", value))


realign_app = typer.Typer(cls=_RealignGroup, no_args_is_help=False, add_completion=False,
                          help="Re-align expressions with the agent (reallod realign INPUT --config CFG --out OUT); "
                               "`reallod realign merge SHARDS... --out OUT` joins --shard outputs.")
app.add_typer(realign_app, name="realign")


@realign_app.command("run", hidden=True, cls=_RealignRun)
def realign_cmd(
    input: Annotated[Path | None, typer.Argument(
        help="Real-Data records (.jsonl[.gz]) or the published task list (JSON list or JSONL).",
        show_default=False)] = None,
    config: Annotated[str | None, typer.Option(
        "--config", help="Agent config: a YAML file or a shipped name (offline, vllm, published).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Real-Data output (.jsonl or .jsonl.gz); OUT.trace.jsonl and OUT.journal.jsonl go next to it.")] = None,
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="ROOT", help="Image root; image paths in the input are relative to it (default: the input file's folder).")] = None,
    captions: Annotated[Path | None, typer.Option(
        "--captions", help="Captions keyed by image filename: a JSON object or JSONL {filename, caption}.")] = None,
    max_cycles: Annotated[int | None, typer.Option(
        "--max-cycles", min=1, help="Cycles per task (cycle 1 reflects) (default: the config's, 3).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="Run only the first N tasks.")] = None,
    unresolved: Annotated[str, typer.Option(
        "--unresolved", help="What happens to wrong, unresolved and failed expressions: drop, keep (as they "
        "are) or negative (moved to the negatives).")] = "keep",
    source: Annotated[str, typer.Option(
        "--source", help="Source name of the output pairs when the input is a published task list.")] = "realigned",
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="Point every openai-backend role at this server (also REALLOD_BASE_URL).")] = None,
    llm_base_url: Annotated[str | None, typer.Option("--llm-base-url", help="... only the LLM roles.")] = None,
    vlm_base_url: Annotated[str | None, typer.Option("--vlm-base-url", help="... only the VLM role.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", min=1, help="Tasks in flight (default: the config's; 64 when it says nothing).")] = None,
    endpoint_limit: Annotated[int | None, typer.Option(
        "--endpoint-limit", min=1, help="Requests in flight per endpoint (base URL) (default: the concurrency).")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the run summary to FILE as JSON and Markdown (FILE.json + FILE.md).")] = None,
    report_dir: Annotated[Path | None, typer.Option(
        "--report-dir", help="Write a readable per-task report (index.html, index.md, PNG per task) to this folder.")] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Response cache (SQLite) (default: ~/.cache/reallod/responses.sqlite, or $REALLOD_CACHE).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the response cache.")] = False,
    force_resume: Annotated[bool, typer.Option(
        "--force-resume", help="Resume even though the config or input changed since the journal was started.")] = False,
    shard: Annotated[str | None, typer.Option(
        "--shard", metavar="K/N", help="Process shard K of N (K from 1): a fixed slice, for N machines; "
        "join with `reallod realign merge`.")] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Run the shards as Ray tasks on the cluster at ADDRESS (a local "
        "instance when none is given) and merge them into OUT.")] = None,
    ray_shards: Annotated[int | None, typer.Option(
        "--ray-shards", min=1, help="With --ray: number of shards (default: one per Ray node).")] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar (default: when stderr is a terminal).")] = None,
    explain: Annotated[Path | None, typer.Option(
        "--explain", help="Print one task of this trace readably (with --task) instead of running.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="With --explain: the task id.")] = None,
) -> None:
    """Re-align expressions with the agent: write Real-Data, a trace and a journal next to it, print a summary.

    Rerunning the same command resumes an interrupted run. Examples:
    reallod realign data.jsonl --config vllm --out realigned.jsonl --images imgs/ --report run;
    reallod realign data.jsonl --config vllm --out s1.jsonl --shard 1/4 (then `reallod realign merge s1.jsonl ... --out all.jsonl`);
    reallod realign --explain realigned.trace.jsonl --task 0/vlm_short/0/1
    """
    if explain is not None:
        if task is None:
            raise typer.BadParameter("--explain needs --task ID", param_hint="--task")
        from reallod.agent.explain import explain as explain_task

        typer.echo(explain_task(explain, task))
        return
    missing = [name for name, v in (("INPUT", input), ("--config", config), ("--out", out)) if v is None]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)} (or use --explain TRACE --task ID)")
    if ray is not None and shard is not None:
        raise typer.BadParameter("--ray makes its own shards: leave out --shard", param_hint="--shard")
    from rich.console import Console

    from reallod.agent.runner import RealignOptions, realign
    from reallod.agent.summary import render

    opts = RealignOptions(
        input=input, config=config, out=out, images=images, captions=captions, max_cycles=max_cycles,
        limit=limit, unresolved=unresolved, source=source, base_url=base_url, llm_base_url=llm_base_url,
        vlm_base_url=vlm_base_url, report_dir=report_dir, concurrency=concurrency, report=report, shard=shard,
        cache=cache, no_cache=no_cache, force_resume=force_resume, endpoint_limit=endpoint_limit)
    console = Console()
    if ray is not None:
        from reallod.agent.ray_runner import realign_on_ray

        def shard_done(k: int, n: int, info: dict) -> None:
            console.print(f"shard {k}/{n}: {info['tasks_total']} task(s) ({info['tasks_run']} run now) -> {info['out']}")

        merged, _ = realign_on_ray(opts, address=None if ray == "local" else ray, shards=ray_shards,
                                   on_shard_done=shard_done)
        console.print(render(merged.summary, out=str(merged.out), trace=str(merged.trace) if merged.trace else None))
        return
    err = Console(stderr=True)
    monitor = None
    if progress if progress is not None else err.is_terminal:
        from reallod.agent.progress import RichMonitor

        monitor = RichMonitor(err)
    from reallod.agent.progress import run_table

    run = realign(opts, monitor=monitor)
    console.print(render(run.summary, out=str(run.out), trace=str(run.trace),
                         report=str(run.report) if run.report else None))
    console.print(run_table(run.info))
    if run.run_report:
        console.print(f"run report: {run.run_report[0]} and {run.run_report[1]}")


@realign_app.command("merge")
def realign_merge_cmd(
    shards: Annotated[list[Path], typer.Argument(help="The --out files of the shard runs (all N of them).",
                                                 show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Merged Real-Data output (trace: OUT.trace.jsonl).")],
    unresolved: Annotated[str, typer.Option(
        "--unresolved", help="drop, keep or negative, as for realign.")] = "keep",
    source: Annotated[str, typer.Option("--source", help="As for realign (published task lists).")] = "realigned",
) -> None:
    """Join the outputs of `reallod realign --shard K/N` runs, checking that no task is missing or doubled.

    The result equals what one unsharded run would have written. Example:
    reallod realign merge out/s1.jsonl out/s2.jsonl --out out/all.jsonl
    """
    from rich.console import Console

    from reallod.agent.merge import merge_shards
    from reallod.agent.summary import render

    merged = merge_shards(shards, out, unresolved=unresolved, source=source)
    Console().print(render(merged.summary, out=str(merged.out), trace=str(merged.trace) if merged.trace else None))
    typer.echo(f"merged {merged.shards} shard(s) into {merged.out}")


@app.command("agent-eval")
def agent_eval_cmd(
    labelled: Annotated[Path, typer.Argument(
        help="Tasks (published format, JSON list or JSONL) each with \"gold\": {\"correct\": bool, "
        "\"expression\": optional}.", show_default=False)],
    config: Annotated[str, typer.Option("--config", help="Agent config: a YAML file or a shipped name.")],
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="ROOT", help="Image root (default: the labelled file's folder).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Keep the run's Real-Data, trace and journal here (default: a temporary folder).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the scores to FILE.json and FILE.md.")] = None,
    max_cycles: Annotated[int | None, typer.Option("--max-cycles", min=1)] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1)] = None,
    base_url: Annotated[str | None, typer.Option("--base-url")] = None,
    llm_base_url: Annotated[str | None, typer.Option("--llm-base-url")] = None,
    vlm_base_url: Annotated[str | None, typer.Option("--vlm-base-url")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the response cache.")] = False,
    min_f1: Annotated[float, typer.Option(
        "--match-f1", min=0.0, max=1.0, help="A rewrite matches a gold expression at this content-word F1.")] = 0.6,
) -> None:
    """Score the agent against gold labels: confusion matrix, precision of kept expressions, rewrite fix
    rate, cost per task. Example: reallod agent-eval examples/labelled.jsonl --config vllm"""
    from rich.console import Console
    from rich.markdown import Markdown

    from reallod.agent.agent_eval import agent_eval, eval_markdown
    from reallod.agent.runner import RealignOptions

    opts = RealignOptions(input=labelled, config=config, out=out, images=images, max_cycles=max_cycles,  # type: ignore[arg-type]
                          concurrency=concurrency, base_url=base_url, llm_base_url=llm_base_url,
                          vlm_base_url=vlm_base_url, no_cache=no_cache)
    rep, _ = agent_eval(labelled, opts, min_f1=min_f1)
    text = eval_markdown(rep)
    Console().print(Markdown(text))
    if report is not None:
        import orjson

        from reallod.agent.run_report import report_paths
        from reallod.data.io import atomic_text

        json_path, md_path = report_paths(report)
        with atomic_text(json_path) as f:
            f.write(orjson.dumps(rep.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
        with atomic_text(md_path) as f:
            f.write(text)
        typer.echo(f"report: {json_path} and {md_path}")


# --- end realign -------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reallod detect / convert-checkpoint (model)
# ---------------------------------------------------------------------------------------------

# --- detect / convert-checkpoint (model) --------------------------------------------------------


@app.command("detect")
def detect_cmd(
    inputs: Annotated[Path, typer.Argument(help="An image file or a folder of images (searched recursively).",
                                           show_default=False)],
    model: Annotated[str, typer.Argument(help="Detector: a Hugging Face folder (see convert-checkpoint) or hub id.",
                                         show_default=False)],
    texts: Annotated[list[str] | None, typer.Option(
        "--texts", help="What to look for: \"a dog . a red car .\", one expression, a .txt file (one per line) "
        "or \"$: coco\"; repeat to add more.", show_default=False)] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="Replace MODEL's weights with this file: .safetensors/.pth in Hugging Face layout, or "
        "an MMDetection MM-Grounding-DINO / Real-Model .pth (converted on the fly).")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Writes OUT/preds/*.json and OUT/vis/*.")] = Path("outputs"),
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda if available).",
                                               show_default=False)] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")] = "fp32",
    pred_score_thr: Annotated[float, typer.Option(
        "--pred-score-thr", min=0.0, max=1.0, help="Draw boxes scoring at least this (the JSON keeps all).")] = 0.3,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Prompts per forward pass; the image backbone runs once per image.")] = 8,
    mode: Annotated[str, typer.Option(
        "--mode", help="parallel: one prompt per expression (benchmark mode); concat: all in one prompt.")] = "parallel",
    topk: Annotated[int, typer.Option("--topk", min=1, help="Boxes kept per expression.")] = 300,
    nms_iou: Annotated[float | None, typer.Option(
        "--nms-iou", min=0.0, max=1.0, help="Per-expression NMS at this IoU (default: off).",
        show_default=False)] = None,
    max_text_len: Annotated[int | None, typer.Option(
        "--max-text-len", min=4, max=512, help="Text limit in tokens (default: the model's).",
        show_default=False)] = None,
    image_size: Annotated[str | None, typer.Option(
        "--image-size", help="Resize to SHORT,LONG (e.g. 800,1333) (default: the model's preprocessor).",
        show_default=False)] = None,
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="Tokenizer folder or hub id (default: MODEL's).", show_default=False)] = None,
    max_pixels: Annotated[int, typer.Option(
        "--max-pixels", min=1, help="Skip images with more pixels than this (decompression-bomb guard).")] = 89_478_485,
    palette: Annotated[str, typer.Option("--palette", help="Box colours: coco, voc, citys, random or none.")] = "coco",
    show: Annotated[bool, typer.Option("--show", help="Open each picture in an image viewer.")] = False,
    no_save_vis: Annotated[bool, typer.Option("--no-save-vis", help="Do not write pictures.")] = False,
    no_save_pred: Annotated[bool, typer.Option("--no-save-pred", help="Do not write JSON predictions.")] = False,
    print_result: Annotated[bool, typer.Option("--print-result", help="Print each image's JSON on stdout.")] = False,
) -> None:
    """Detect the given expressions in images: one JSON (boxes xyxy, scores, expression per box) and one
    labelled picture per image.

    Example: reallod detect photos/ models/real-model-t --texts "the dog without a leash . a red cup ."
    """
    from reallod.model.detect import DetectOptions, run_detect
    from reallod.model.draw import PALETTES
    from reallod.model.inference import InferenceOptions
    from reallod.model.loading import load_detector
    from reallod.model.texts import parse_texts

    if not texts:
        raise typer.BadParameter("give at least one --texts (e.g. --texts \"a dog . a red car .\")",
                                 param_hint="--texts")
    if palette not in PALETTES:
        raise typer.BadParameter(f"use one of {', '.join(PALETTES)}", param_hint="--palette")
    size = None
    if image_size is not None:
        try:
            short, long = (int(v) for v in image_size.split(","))
        except ValueError:
            raise typer.BadParameter("expected SHORT,LONG, e.g. 800,1333", param_hint="--image-size") from None
        size = (short, long)
    expressions = parse_texts(texts)
    inference = InferenceOptions(mode=mode, batch_size=batch_size, topk=topk, nms_iou=nms_iou)  # type: ignore[arg-type]
    options = DetectOptions(out_dir=out_dir, score_thr=pred_score_thr, save_vis=not no_save_vis,
                            save_pred=not no_save_pred, show=show, print_result=print_result, palette=palette,
                            max_pixels=max_pixels)
    _quiet_transformers()
    detector = load_detector(model, weights=weights, device=device, dtype=dtype, max_text_len=max_text_len,
                             tokenizer=tokenizer, image_size=size)
    summary = run_detect(inputs, detector, expressions, options=options, inference=inference)
    written = [f"{len(summary.pred_files)} JSON in {out_dir / 'preds'}" if options.save_pred else "",
               f"{len(summary.vis_files)} pictures in {out_dir / 'vis'}" if options.save_vis else ""]
    typer.echo(f"{summary.processed} images, {len(expressions)} expressions ({mode}) on {detector.device}; "
               + "; ".join(w for w in written if w) + (f"; {len(summary.skipped)} skipped" if summary.skipped else ""),
               err=print_result)
    if summary.processed == 0:
        raise ReallodError(f"{inputs}: none of the {len(summary.skipped)} images could be read")


@app.command("convert-checkpoint")
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
    _quiet_transformers()
    result = convert_checkpoint(src, out_dir, variant=variant,  # type: ignore[arg-type]
                                config=config_from_file(config) if config is not None else None,
                                tokenizer=tokenizer, max_text_len=max_text_len, overwrite=overwrite)
    typer.echo(f"{result.out_dir}: MM-Grounding-DINO-{result.variant}, {result.report.summary()}; "
               "loaded back with no missing or unexpected keys")


def _quiet_transformers() -> None:
    """No per-tensor progress bars or advisory warnings from transformers in the CLI's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# --- end detect / convert-checkpoint ------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reallod eval ... (benchmarks)
# ---------------------------------------------------------------------------------------------

# --- eval omnilabel / d3 / ovdeval (eval) ---------------------------------------------------------

eval_app = typer.Typer(
    no_args_is_help=True,
    help="Score a detector on OmniLabel, D³ or OVDEval with the official protocols: run --model over the "
    "images (one GPU, or sharded with torchrun / accelerate launch), or score saved --predictions.",
)
app.add_typer(eval_app, name="eval")

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
_EvTopk = Annotated[int, typer.Option(
    "--topk", min=1, help="Boxes kept per description (the metrics use at most 100 per image and description).")]
_EvMaxPerImage = Annotated[int | None, typer.Option(
    "--max-per-image", min=1, help="Keep only the best N boxes of an image over all its descriptions.",
    show_default=False)]
_EvOut = Annotated[Path | None, typer.Option("--out", help="Write the predictions here (the benchmark's format).")]
_EvShowDir = Annotated[Path | None, typer.Option(
    "--show-dir", metavar="DIR", help="Draw each image's detections (score >= 0.3) into DIR.")]
_EvDevice = Annotated[str | None, typer.Option(
    "--device", help="cpu, cuda or cuda:N \\[default: cuda if available; cuda:LOCAL_RANK per process].",
    show_default=False)]
_EvDtype = Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")]
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


def _run_eval(benchmark: str, *, annotations: Path, images: Path | None, model: str | None,
              predictions: Path | None, weights: Path | None, mode: str, batch_size: int, topk: int,
              max_per_image: int | None, out: Path | None, show_dir: Path | None, device: str | None, dtype: str,
              metrics_out: Path | None, image_size: str | None, tokenizer: str | None, max_text_len: int | None,
              **extra) -> None:
    from reallod.eval.jobs import EvalJob, run_job
    from reallod.eval.report import render
    from reallod.eval.runner import ModelSpec, RunOptions

    spec = None
    run = RunOptions(show_dir=show_dir, max_per_image=max_per_image)
    if model is not None:
        from transformers.utils import logging as hf_logging

        from reallod.model.inference import InferenceOptions

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        size = None
        if image_size is not None:
            try:
                short, long = (int(v) for v in image_size.split(","))
            except ValueError:
                raise typer.BadParameter("expected SHORT,LONG, e.g. 800,1333", param_hint="--image-size") from None
            size = (short, long)
        spec = ModelSpec(model, weights=str(weights) if weights else None, device=device, dtype=dtype,
                         max_text_len=max_text_len, tokenizer=tokenizer, image_size=size)
        run.inference = InferenceOptions(mode=mode, batch_size=batch_size, topk=topk)  # type: ignore[arg-type]
    job = EvalJob(benchmark, annotations, predictions=predictions, model=spec, images=images, out=out,
                  metrics_out=metrics_out, run=run, **extra)
    outcome = run_job(job)
    if outcome.result is None:  # another process of a sharded run: rank 0 reports
        return
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    console.print(render(outcome.result))
    wrote = [f"metrics: {outcome.metrics_path}"]
    if outcome.prediction_paths:
        wrote.append("predictions: " + ", ".join(str(p) for p in outcome.prediction_paths))
    typer.echo(f"{outcome.n_predictions} prediction rows scored ({outcome.processes} process"
               f"{'es' if outcome.processes > 1 else ''}); " + "; ".join(wrote))


@eval_app.command("omnilabel")
def eval_omnilabel(
    annotations: _EvAnnotations, images: _EvImages = None, model: _EvModel = None,
    predictions: _EvPredictions = None, weights: _EvWeights = None, mode: _EvMode = "parallel",
    batch_size: _EvBatch = 8, topk: _EvTopk = 100, max_per_image: _EvMaxPerImage = None, out: _EvOut = None,
    show_dir: _EvShowDir = None, device: _EvDevice = None, dtype: _EvDtype = "fp32",
    metrics_out: _EvMetricsOut = None, image_size: _EvImageSize = None, tokenizer: _EvTokenizer = None,
    max_text_len: _EvMaxTextLen = None,
    skip_categories: Annotated[bool, typer.Option(
        "--skip-categories", help="Prompt and score free-form descriptions only (as the published Real-Model "
        "did): AP-descr and AP-descr-pos; AP-categ and AP are then undefined.")] = False,
) -> None:
    """OmniLabel: AP (harmonic mean), AP-categ, AP-descr, AP-descr-pos, AP-descr-S/M/L, AP50/AP75, AR.

    GT is the official json (images, descriptions, annotations; any version). Predictions:
    [{image_id, bbox xywh, description_ids, scores}]. Example: reallod eval omnilabel --annotations
    dataset_all_val_v0.1.3.json --images omnilabel/ --model models/real-model-b --skip-categories --out preds.json
    """
    _run_eval("omnilabel", annotations=annotations, images=images, model=model, predictions=predictions,
              weights=weights, mode=mode, batch_size=batch_size, topk=topk, max_per_image=max_per_image, out=out,
              show_dir=show_dir, device=device, dtype=dtype, metrics_out=metrics_out, image_size=image_size,
              tokenizer=tokenizer, max_text_len=max_text_len, skip_categories=skip_categories)


@eval_app.command("d3")
def eval_d3(
    annotations: _EvAnnotations, images: _EvImages = None, model: _EvModel = None,
    predictions: _EvPredictions = None, weights: _EvWeights = None, mode: _EvMode = "parallel",
    batch_size: _EvBatch = 8, topk: _EvTopk = 100, max_per_image: _EvMaxPerImage = None, out: _EvOut = None,
    show_dir: _EvShowDir = None, device: _EvDevice = None, dtype: _EvDtype = "fp32",
    metrics_out: _EvMetricsOut = None, image_size: _EvImageSize = None, tokenizer: _EvTokenizer = None,
    max_text_len: _EvMaxTextLen = None, backend: _EvBackend = "pycocotools",
    inter: Annotated[bool, typer.Option(
        "--inter", help="Inter-scenario: prompt every image with all descriptions (default: intra-scenario, "
        "its scenario's descriptions).")] = False,
) -> None:
    """D³: COCO AP / AP50 / AP75 on FULL, PRES and ABS, and AP by description length.

    GT is the folder of annotation pickles (sentences/annotations/images/groups.pkl; needs
    `pip install 'reallod\\[eval]'`). Predictions: COCO results [{image_id, category_id = sentence id,
    bbox xywh, score}]. Example: reallod eval d3 --annotations d3/d3_pkl --images d3/d3_images --model M
    """
    _run_eval("d3", annotations=annotations, images=images, model=model, predictions=predictions,
              weights=weights, mode=mode, batch_size=batch_size, topk=topk, max_per_image=max_per_image, out=out,
              show_dir=show_dir, device=device, dtype=dtype, metrics_out=metrics_out, image_size=image_size,
              tokenizer=tokenizer, max_text_len=max_text_len, backend=backend, inter=inter)


@eval_app.command("ovdeval")
def eval_ovdeval(
    annotations: _EvAnnotations, images: _EvImages = None, model: _EvModel = None,
    predictions: _EvPredictions = None, weights: _EvWeights = None, mode: _EvMode = "parallel",
    batch_size: _EvBatch = 8, topk: _EvTopk = 300, max_per_image: _EvMaxPerImage = None, out: _EvOut = None,
    show_dir: _EvShowDir = None, device: _EvDevice = None, dtype: _EvDtype = "fp32",
    metrics_out: _EvMetricsOut = None, image_size: _EvImageSize = None, tokenizer: _EvTokenizer = None,
    max_text_len: _EvMaxTextLen = None, backend: _EvBackend = "pycocotools",
    subset: Annotated[str | None, typer.Option(
        "--subset", metavar="NAME", help="With a folder of subsets: evaluate only this one (e.g. negation).",
        show_default=False)] = None,
) -> None:
    """OVDEval: NMS-AP per subset and their average (with AP50 / AP75).

    GT is one subset's COCO json (images with text and neg_text) or a folder of them. Predictions:
    COCO results per subset (one file, or a folder of <subset>.json). With several subsets --out is a
    folder. Example: reallod eval ovdeval --annotations OVDEval/annotations --images OVDEval/images --model M
    """
    _run_eval("ovdeval", annotations=annotations, images=images, model=model, predictions=predictions,
              weights=weights, mode=mode, batch_size=batch_size, topk=topk, max_per_image=max_per_image, out=out,
              show_dir=show_dir, device=device, dtype=dtype, metrics_out=metrics_out, image_size=image_size,
              tokenizer=tokenizer, max_text_len=max_text_len, backend=backend, subset=subset)


# --- end eval -----------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reallod train
# ---------------------------------------------------------------------------------------------

# --- train (train) -----------------------------------------------------------------------------


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(
        help="Training config (YAML), e.g. configs/train/tiny-cpu.yaml.", show_default=False)],
    work_dir: Annotated[Path | None, typer.Option(
        "--work-dir", help="Checkpoints, logs (log.csv, eval.csv) and best/ go here "
        "(default: work_dirs/CONFIG-NAME).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the latest checkpoint in the work dir, or from the checkpoint "
        "folder given right after it (--resume CKPT).")] = False,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision: bf16 where supported, else fp16.")] = False,
    auto_scale_lr: Annotated[bool, typer.Option(
        "--auto-scale-lr", help="Scale the learning rate by total batch / optim.base_batch_size.")] = False,
    cfg_options: Annotated[list[str] | None, typer.Option(
        "--cfg-options", metavar="KEY=VALUE ...", help="Override config fields by dotted path, e.g. "
        "--cfg-options optim.lr=1e-5 schedule.max_steps=100 data.train.0.ratio=2 (values read as YAML).")] = None,
) -> None:
    """Train Real-Model on Real-Data (one process, or one per device under `accelerate launch` / `torchrun`).

    Examples: reallod train configs/train/tiny-cpu.yaml --work-dir work/tiny;
    reallod train configs/train/tiny-cpu.yaml --work-dir work/tiny --resume;
    accelerate launch --multi_gpu --num_processes 8 -m reallod train configs/train/real-model-t.yaml --amp
    """
    from reallod.train.cli_args import quiet_transformers, split_extra_args
    from reallod.train.config import load_config
    from reallod.train.loop import train

    config, ckpt, overrides = split_extra_args(config, list(ctx.args), resume, list(cfg_options or []))
    cfg = load_config(config, overrides)
    quiet_transformers()
    result = train(cfg, work_dir or Path("work_dirs") / config.stem,
                   resume=ckpt if ckpt is not None else (True if resume else None),
                   amp=amp, auto_scale_lr=True if auto_scale_lr else None)
    if not result.main_process:
        return
    if result.best:
        typer.echo(f"best {result.best['metric']} = {result.best['value']:.4f} (step {result.best['step']}): "
                   f"{result.work_dir / 'best'}")
    typer.echo(f"trained to step {result.step}; last checkpoint: {result.last_checkpoint}")


# --- end train ---------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reallod demo
# ---------------------------------------------------------------------------------------------

# --- demo model / demo agent (demo) ------------------------------------------------------------

demo_app = typer.Typer(
    no_args_is_help=True,
    help="Web demos (Gradio) of Real-Model and of the agent; served on 127.0.0.1 unless --server_name says otherwise.")
app.add_typer(demo_app, name="demo")

_ServerName = Annotated[str, typer.Option(
    "--server_name", "--server-name", help="Address to bind; 0.0.0.0 makes the page reachable from other machines.")]
_ServerPort = Annotated[int, typer.Option("--server_port", "--server-port", min=1, max=65535, help="Port to serve on.")]
_Share = Annotated[bool, typer.Option("--share", help="Ask Gradio for a public share link (off unless given).")]
_Debug = Annotated[bool, typer.Option("--debug", help="Show unexpected errors' messages in the page; log tracebacks.")]
_MaxUpload = Annotated[float, typer.Option("--max-upload-mb", min=0.01, help="Largest upload, in MB.")]
_MaxPixels = Annotated[int, typer.Option("--max-pixels", min=1, help="Largest image, in pixels (width × height).")]
_Timeout = Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds one request may take, waiting included.")]
_Concurrency = Annotated[int, typer.Option("--concurrency", min=1, help="Requests running at once.")]
_PerClient = Annotated[int, typer.Option(
    "--per-client", min=1, help="Requests one client address may have waiting or running.")]


def _demo_setup(server_name: str, server_port: int, share: bool, debug: bool, max_upload_mb: float,
                max_pixels: int, timeout: float, concurrency: int, per_client: int):  # type: ignore[no-untyped-def]
    """Server options and limits; a clear error when gradio (the demo extra) is missing."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ReallodError("the demos need gradio: pip install 'reallod[demo]'")
    from reallod.demo.limits import DemoLimits
    from reallod.demo.server import ServerOptions

    limits = DemoLimits(max_upload_mb=max_upload_mb, max_pixels=max_pixels, timeout_s=timeout,
                        concurrency=concurrency, per_client=per_client)
    return ServerOptions(server_name, server_port, share, debug), limits


@demo_app.command("model")
def demo_model_cmd(
    model: Annotated[str, typer.Argument(help="Detector: a Hugging Face folder (see convert-checkpoint) or hub id.",
                                         show_default=False)],
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="Replace MODEL's weights with this file (as for `reallod detect`).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N [default: cuda if available].",
                                               show_default=False)] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")] = "fp32",
    server_name: _ServerName = "127.0.0.1",
    server_port: _ServerPort = 7860,
    score_thre: Annotated[float, typer.Option(
        "--score_thre", "--score-thre", min=0.0, max=1.0, help="Initial score threshold of the page.")] = 0.3,
    share: _Share = False,
    debug: _Debug = False,
    max_upload_mb: _MaxUpload = 10.0,
    max_pixels: _MaxPixels = 25_000_000,
    timeout: _Timeout = 120.0,
    concurrency: _Concurrency = 1,
    per_client: _PerClient = 1,
) -> None:
    """Serve the Real-Model page: upload an image, type expressions, see boxes, a table and a JSON download.

    Example: reallod demo model models/real-model-t --server_port 7860
    """
    options, limits = _demo_setup(server_name, server_port, share, debug, max_upload_mb, max_pixels, timeout,
                                  concurrency, per_client)
    from reallod.demo.model_app import serve_model_demo
    from reallod.model.loading import load_detector

    _quiet_transformers()
    detector = load_detector(model, weights=weights, device=device, dtype=dtype)
    typer.echo(f"Real-Model demo: {model} on {detector.device}; http://{server_name}:{server_port} (Ctrl-C stops it)",
               err=True)
    serve_model_demo(detector, options, limits=limits, score_thr=score_thre)


@demo_app.command("agent")
def demo_agent_cmd(
    config: Annotated[str, typer.Option(
        "--config", help="Agent config: a YAML file or a shipped name (offline, vllm, published).")],
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="Point every openai-backend role at this server (also REALLOD_BASE_URL).")] = None,
    llm_base_url: Annotated[str | None, typer.Option("--llm-base-url", help="... only the LLM roles.")] = None,
    vlm_base_url: Annotated[str | None, typer.Option("--vlm-base-url", help="... only the VLM role.")] = None,
    max_cycles: Annotated[int | None, typer.Option(
        "--max-cycles", min=1, max=20, help="Initial cycles per task (default: the config's).")] = None,
    server_name: _ServerName = "127.0.0.1",
    server_port: _ServerPort = 7860,
    share: _Share = False,
    debug: _Debug = False,
    max_upload_mb: _MaxUpload = 10.0,
    max_pixels: _MaxPixels = 25_000_000,
    timeout: _Timeout = 300.0,
    concurrency: _Concurrency = 1,
    per_client: _PerClient = 1,
) -> None:
    """Serve the agent page: give an object, a caption and an expression; watch the workflow re-align it.

    Example: reallod demo agent --config offline
    """
    options, limits = _demo_setup(server_name, server_port, share, debug, max_upload_mb, max_pixels, timeout,
                                  concurrency, per_client)
    from reallod.demo.agent_app import roles_from_config, serve_agent_demo

    _quiet_transformers()
    cfg, roles = roles_from_config(config, base_url=base_url, llm_base_url=llm_base_url, vlm_base_url=vlm_base_url)
    typer.echo(f"Real-Agent demo: config {cfg.name}; http://{server_name}:{server_port} (Ctrl-C stops it)", err=True)
    serve_agent_demo(roles, options, config_name=cfg.name, max_cycles=max_cycles or cfg.max_cycles, limits=limits)


# --- end demo ----------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reallod generate / pipeline
# ---------------------------------------------------------------------------------------------

# --- generate / pipeline (engine) ----------------------------------------------------------------

_ANN_HELP = "Detection annotations: COCO-format json (COCO, LVIS, Objects365) or an OpenImages box CSV."


def _engine_options(annotations: Path, images: Path, config: str, out: Path, classes: Path | None,
                    keep_crowd: bool, min_area: float, llm_expressions: int, group_expressions: int,
                    hard_negatives: int, easy_negatives: int, max_objects: int | None, clip_model: str | None,
                    clip_threshold: float, limit: int | None, shard: str | None, concurrency: int | None,
                    base_url: str | None, cache: Path | None, no_cache: bool, force_resume: bool):  # type: ignore[no-untyped-def]
    from reallod.engine.generate import GenerateSettings
    from reallod.engine.pipeline import GenerateOptions

    settings = GenerateSettings(llm_expressions=llm_expressions, group_expressions=group_expressions,
                                hard_negatives=hard_negatives, easy_negatives=easy_negatives, max_objects=max_objects)
    return GenerateOptions(annotations=annotations, images=images, config=config, out=out, classes=classes,
                           skip_crowd=not keep_crowd, min_area=min_area, settings=settings, clip_model=clip_model,
                           clip_threshold=clip_threshold, limit=limit, shard=shard, concurrency=concurrency,
                           base_url=base_url, cache=cache, no_cache=no_cache, force_resume=force_resume)


def _engine_monitor(progress: bool | None, stage: str = "generate"):  # type: ignore[no-untyped-def]
    from rich.console import Console

    err = Console(stderr=True)
    if progress if progress is not None else err.is_terminal:
        from reallod.agent.progress import RichMonitor

        return RichMonitor(err, description="generating" if stage == "generate" else "re-aligning")
    return None


def _counts_line(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)


_A = Annotated
_OPT_ANN = _A[Path, typer.Option("--annotations", help=_ANN_HELP, show_default=False)]
_OPT_IMAGES = _A[Path, typer.Option("--images", help="Image root the annotations' file names are relative to.",
                                    show_default=False)]
_OPT_CONFIG = _A[str, typer.Option("--config", help="Agent config (path, or shipped name: offline, vllm, published); "
                                   "its rewriter model writes the LLM steps, its vlm the VLM steps.")]
_OPT_CLASSES = _A[Path | None, typer.Option("--classes", help="OpenImages class-description CSV.")]
_OPT_CROWD = _A[bool, typer.Option("--keep-crowd", help="Keep crowd (COCO iscrowd / OpenImages IsGroupOf) boxes.")]
_OPT_MIN_AREA = _A[float, typer.Option("--min-box-area", help="Drop boxes smaller than this (w×h pixels).")]
_OPT_NLLM = _A[int, typer.Option("--llm-expressions", help="LLM phrases per object.")]
_OPT_NGROUP = _A[int, typer.Option("--group-expressions", help="Group phrases per multi-instance category.")]
_OPT_NHARD = _A[int, typer.Option("--hard-negatives", help="Hard negatives per object (LLM).")]
_OPT_NEASY = _A[int, typer.Option("--easy-negatives", help="Easy negatives per object (absent categories).")]
_OPT_MAXOBJ = _A[int | None, typer.Option("--max-objects", help="At most this many objects per image (largest).")]
_OPT_CLIP = _A[str | None, typer.Option("--clip-model", help="CLIP/SigLIP path or hub id: drop expressions whose "
                                        "region-text similarity is under --clip-threshold (off by default).")]
_OPT_CLIPT = _A[float, typer.Option("--clip-threshold", help="Similarity threshold of the --clip-model filter.")]
_OPT_LIMIT = _A[int | None, typer.Option("--limit", help="Only the first N images (of the shard).")]
_OPT_SHARD = _A[str | None, typer.Option("--shard", help="K/N: this run's share of the images.")]
_OPT_CONC = _A[int | None, typer.Option("--concurrency", help="Images (and agent tasks) in flight.")]
_OPT_URL = _A[str | None, typer.Option("--base-url", help="OpenAI-compatible server for every openai role.")]
_OPT_CACHE = _A[Path | None, typer.Option("--cache", help="Response cache file.")]
_OPT_NOCACHE = _A[bool, typer.Option("--no-cache", help="Do not read or write the response cache.")]
_OPT_FORCE = _A[bool, typer.Option("--force-resume", help="Resume even if the config or input changed.")]
_OPT_PROGRESS = _A[bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal).")]


@app.command("generate")
def generate_cmd(annotations: _OPT_ANN, images: _OPT_IMAGES, out: _A[Path, typer.Option(
        "--out", help="Raw-expression Real-Data (.jsonl) to write.", show_default=False)],
        config: _OPT_CONFIG = "offline", classes: _OPT_CLASSES = None, keep_crowd: _OPT_CROWD = False,
        min_box_area: _OPT_MIN_AREA = 0.0, llm_expressions: _OPT_NLLM = 3, group_expressions: _OPT_NGROUP = 2,
        hard_negatives: _OPT_NHARD = 2, easy_negatives: _OPT_NEASY = 2, max_objects: _OPT_MAXOBJ = None,
        clip_model: _OPT_CLIP = None, clip_threshold: _OPT_CLIPT = 0.2, limit: _OPT_LIMIT = None,
        shard: _OPT_SHARD = None, concurrency: _OPT_CONC = None, base_url: _OPT_URL = None,
        cache: _OPT_CACHE = None, no_cache: _OPT_NOCACHE = False, force_resume: _OPT_FORCE = False,
        progress: _OPT_PROGRESS = None) -> None:
    """Write raw expressions (caption, vlm_short, vlm_long, llm, groups, negatives) for annotated objects."""
    from reallod.engine.pipeline import generate

    opts = _engine_options(annotations, images, config, out, classes, keep_crowd, min_box_area, llm_expressions,
                           group_expressions, hard_negatives, easy_negatives, max_objects, clip_model,
                           clip_threshold, limit, shard, concurrency, base_url, cache, no_cache, force_resume)
    run = generate(opts, monitor=_engine_monitor(progress))
    typer.echo(f"generated {run.images} image(s) ({run.ran} now, {run.resumed} resumed) -> {run.out}")
    if run.unavailable:
        typer.echo(f"unavailable without a VLM: {', '.join(run.unavailable)} (caption taken from the annotations)")
    typer.echo(_counts_line(run.counts))


@app.command("pipeline")
def pipeline_cmd(annotations: _OPT_ANN, images: _OPT_IMAGES, out: _A[Path, typer.Option(
        "--out", help="Real-Data (.jsonl) to write; intermediate files go next to it.", show_default=False)],
        config: _OPT_CONFIG = "offline", classes: _OPT_CLASSES = None, keep_crowd: _OPT_CROWD = False,
        min_box_area: _OPT_MIN_AREA = 0.0, llm_expressions: _OPT_NLLM = 3, group_expressions: _OPT_NGROUP = 2,
        hard_negatives: _OPT_NHARD = 2, easy_negatives: _OPT_NEASY = 2, max_objects: _OPT_MAXOBJ = None,
        clip_model: _OPT_CLIP = None, clip_threshold: _OPT_CLIPT = 0.2, limit: _OPT_LIMIT = None,
        shard: _OPT_SHARD = None, concurrency: _OPT_CONC = None, base_url: _OPT_URL = None,
        cache: _OPT_CACHE = None, no_cache: _OPT_NOCACHE = False, force_resume: _OPT_FORCE = False,
        progress: _OPT_PROGRESS = None,
        unresolved: _A[str, typer.Option("--unresolved", help="Expressions the agent judged wrong and could not "
                                         "repair: negative (default), drop or keep.")] = "negative",
        max_cycles: _A[int | None, typer.Option("--max-cycles", help="Agent cycles per expression.")] = None,
        report: _A[Path | None, typer.Option("--report", help="Re-alignment run summary (JSON + Markdown).")] = None,
) -> None:
    """generate → realign → assemble: detection annotations to Real-Data, resumable at every stage."""
    from reallod.engine.pipeline import PipelineOptions, pipeline

    opts = _engine_options(annotations, images, config, out, classes, keep_crowd, min_box_area, llm_expressions,
                           group_expressions, hard_negatives, easy_negatives, max_objects, clip_model,
                           clip_threshold, limit, shard, concurrency, base_url, cache, no_cache, force_resume)
    run = pipeline(PipelineOptions(opts, unresolved=unresolved, max_cycles=max_cycles, report=report),
                   monitors=lambda stage: _engine_monitor(progress, stage))
    g = run.generated
    typer.echo(f"generate: {g.images} image(s) ({g.ran} now, {g.resumed} resumed) -> {run.paths['generated']}")
    if g.unavailable:
        typer.echo(f"unavailable without a VLM: {', '.join(g.unavailable)} (caption taken from the annotations)")
    s = run.realigned.summary
    typer.echo(f"realign: {s.tasks} task(s): {_counts_line(dict(s.verdicts))} -> {run.paths['realigned']}")
    typer.echo(f"assemble: {_counts_line(dict(run.assembled))} -> {run.out}")


# --- end generate / pipeline ---------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; errors a user can act on are printed as one line, never as a traceback."""
    try:
        app(args=argv)  # standalone: usage errors, --help and exit codes are handled by Typer
    except ReallodError as e:
        _fail(f"error: {e}", 2)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        _fail(f"error: {e.filename}: {e.strerror}", 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:
        if os.environ.get("REALLOD_DEBUG") == "1":
            raise
        _fail(f"error: unexpected {type(e).__name__}: {e} (set REALLOD_DEBUG=1 for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    typer.echo(message, err=True)
    sys.exit(code)
