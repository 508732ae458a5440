"""``reallod realign ...`` (the agent over a file, ``realign merge`` for shards) and ``reallod agent-eval``.

The commands parse and print; running, Ray and reports are :mod:`reallod.agent.dispatch`'s and
:mod:`reallod.agent.agent_eval`'s. ``realign`` is a group whose plain form ``reallod realign INPUT ...``
goes to a hidden default command: see :func:`realign_argv`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from reallod.cli.common import (
    AGENT_CONFIG_HELP,
    MAX_PIXELS,
    BaseUrl,
    LlmBaseUrl,
    MaxPixels,
    NoCache,
    ResponseCache,
    VlmBaseUrl,
    config_file_value,
    console,
    progress_monitor,
    quiet_transformers,
)

_ADDRESS = re.compile(r"[\w.\-]+:\d+")


def looks_like_address(value: str) -> bool:
    """Whether the word after ``--ray`` is a Ray address (auto, local, ray://..., host:port), not an input."""
    return value in ("auto", "local") or "://" in value or bool(_ADDRESS.fullmatch(value))


def realign_argv(args: list[str], subcommands: Collection[str], default: str = "run") -> list[str]:
    """The words after ``reallod realign``, as the group parses them.

    Anything that does not start with a subcommand name (``merge``) goes to the hidden ``default``
    command, so ``reallod realign INPUT --config C --out O`` keeps working; a bare ``--ray`` (followed
    by another option, a non-address word or nothing) gets the value ``local``: a local Ray instance.
    """
    if not args or args[0] not in subcommands:
        args = [default, *args]
    fixed = []
    for i, word in enumerate(args):
        fixed.append(word)
        if word == "--ray" and (i + 1 == len(args) or not looks_like_address(args[i + 1])):
            fixed.append("local")
    return fixed


class _RealignGroup(typer.core.TyperGroup):
    """``reallod realign INPUT ...`` runs the agent; ``reallod realign merge ...`` joins shards."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, realign_argv(args, self.commands))

    def resolve_command(self, ctx: typer.Context, args: list[str]):  # type: ignore[no-untyped-def]
        name, cmd, rest = super().resolve_command(ctx, args)
        # the default command's help and errors read "reallod realign ...", as users type it
        return ("" if name == "run" else name), cmd, rest


class _RealignRunContext(typer.Context):
    @property
    def command_path(self) -> str:  # no trailing space for the nameless default command
        return super().command_path.rstrip()


class _RealignRun(typer.core.TyperCommand):
    context_class = _RealignRunContext


app = typer.Typer(cls=_RealignGroup, no_args_is_help=False, add_completion=False,
                  help="Re-align expressions with the agent (reallod realign INPUT --config CFG --out OUT); "
                       "`reallod realign merge SHARDS... --out OUT` joins --shard outputs.")


def register(root: typer.Typer) -> None:
    """``realign`` (with ``realign merge``) and ``agent-eval``, in this order."""
    root.add_typer(app, name="realign")
    root.command("agent-eval", short_help="Score the agent against gold labels (confusion matrix, precision, fix rate, cost).")(agent_eval_cmd)


_ForceResume = Annotated[bool, typer.Option(
    "--force-resume", help="Resume even though the config changed since the journal was started (never on "
    "another input: give that one another --out).")]
_MaxCycles = Annotated[int | None, typer.Option(
    "--max-cycles", min=1, help="Cycles per task (cycle 1 reflects) (default: the config's, 3).")]
_Concurrency = Annotated[int | None, typer.Option(
    "--concurrency", min=1, help="Tasks in flight (default: the config's; 64 when it says nothing).")]


@app.command("run", hidden=True, cls=_RealignRun)
def realign_cmd(
    input: Annotated[Path | None, typer.Argument(
        help="Real-Data records (.jsonl[.gz]) or the published task list (JSON list or JSONL).",
        show_default=False)] = None,
    config: Annotated[str | None, typer.Option("--config", help=AGENT_CONFIG_HELP, callback=config_file_value)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Real-Data output (.jsonl or .jsonl.gz); OUT.trace.jsonl (.jsonl.gz for a .gz output) and "
        "OUT.journal.jsonl go next to it.")] = None,
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="ROOT", help="Image root; image paths in the input are relative to it (default: the input file's folder).")] = None,
    captions: Annotated[Path | None, typer.Option(
        "--captions", help="Captions keyed by image filename: a JSON object or JSONL {filename, caption}.")] = None,
    max_pixels: MaxPixels = MAX_PIXELS,
    max_cycles: _MaxCycles = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Run only the first N tasks.")] = None,
    unresolved: Annotated[str, typer.Option(
        "--unresolved", help="What happens to wrong, unresolved and failed expressions: drop, keep (as they "
        "are) or negative (moved to the negatives).")] = "keep",
    source: Annotated[str | None, typer.Option(
        "--source", help="Source name of the output pairs when the input is a published task list (default: "
        "realigned; a Real-Data input keeps its pairs' sources).")] = None,
    base_url: BaseUrl = None,
    llm_base_url: LlmBaseUrl = None,
    vlm_base_url: VlmBaseUrl = None,
    concurrency: _Concurrency = None,
    endpoint_limit: Annotated[int | None, typer.Option(
        "--endpoint-limit", min=1, help="Requests in flight per endpoint (base URL) (default: the concurrency).")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the run summary to FILE as JSON and Markdown (FILE.json + FILE.md).")] = None,
    report_dir: Annotated[Path | None, typer.Option(
        "--report-dir", help="Write a readable per-task report (index.html, index.md, PNG per task) to this folder.")] = None,
    cache: ResponseCache = None,
    no_cache: NoCache = False,
    force_resume: _ForceResume = False,
    shard: Annotated[str | None, typer.Option(
        "--shard", metavar="K/N", help="Process shard K of N (K from 1): a fixed slice, for N machines; "
        "join with `reallod realign merge`.")] = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Run the shards as Ray tasks on the cluster at ADDRESS (a local "
        "instance when none is given) and merge them into OUT.")] = None,
    ray_shards: Annotated[int | None, typer.Option(
        "--ray-shards", min=1, help="With --ray: number of shards (default: one per Ray node).")] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar; into a log (stderr no terminal), a plain line every 30 s "
        "($REALLOD_PROGRESS_INTERVAL) (default: on a terminal only).")] = None,
    explain: Annotated[Path | None, typer.Option(
        "--explain", help="Print one task of this trace readably (with --task) instead of running.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="With --explain: the task id.")] = None,
) -> None:
    """Re-align expressions with the agent: write Real-Data, a trace and a journal next to it, print a summary.

    Rerunning the same command resumes an interrupted run (Ctrl-C included). When every task fails, the
    reasons are shown and the exit status is 1. Examples:
    reallod realign data.jsonl --config vllm --out realigned.jsonl --images imgs/ --report run;
    reallod realign data.jsonl --config vllm --out s1.jsonl --shard 1/4 (then `reallod realign merge s1.jsonl ... --out all.jsonl`);
    reallod realign --explain realigned.trace.jsonl --task 0/vlm_short/0/1
    """

    from reallod.agent.dispatch import run_realign, shard_line

    opts = monitor = None
    if explain is not None:
        if task is None:
            raise typer.BadParameter("--explain needs --task ID", param_hint="--task")
    else:
        missing = [name for name, v in (("INPUT", input), ("--config", config), ("--out", out)) if v is None]
        if missing:
            raise typer.BadParameter(f"missing {', '.join(missing)} (or use --explain TRACE --task ID)")
        if ray is not None and shard is not None:
            raise typer.BadParameter("--ray makes its own shards: leave out --shard", param_hint="--shard")
        from reallod.agent.realign import RealignOptions
        from reallod.agent.task import VERDICTS

        quiet_transformers()  # the config's roles may be transformers models
        opts = RealignOptions(
            input=input, config=config, out=out, images=images, captions=captions, max_cycles=max_cycles,
            limit=limit, unresolved=unresolved, source=source, base_url=base_url, llm_base_url=llm_base_url,
            vlm_base_url=vlm_base_url, report_dir=report_dir, concurrency=concurrency, report=report, shard=shard,
            cache=cache, no_cache=no_cache, force_resume=force_resume, endpoint_limit=endpoint_limit,
            max_pixels=max_pixels)
        if ray is None:
            monitor = progress_monitor(progress, labels=VERDICTS)
    out_console = console()
    outcome = run_realign(opts, explain=explain, task=task, ray=ray, ray_shards=ray_shards, monitor=monitor,
                          on_shard_done=lambda k, n, info: out_console.print(shard_line(k, n, info)))
    if outcome.text is not None:
        typer.echo(outcome.text)
    for shown in outcome.renderables():
        out_console.print(shown)
    summary = outcome.run.summary if outcome.run else outcome.merged.summary if outcome.merged else None
    if summary is not None:
        from reallod.agent.summary import check_some_succeeded

        check_some_succeeded(summary, what="realign")  # exit status 1, after the reasons were shown


@app.command("merge")
def realign_merge_cmd(
    shards: Annotated[list[Path], typer.Argument(help="The --out files of the shard runs (all N of them).",
                                                 show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Merged Real-Data output (trace: OUT.trace.jsonl, .jsonl.gz for a .gz output).")],
    unresolved: Annotated[str | None, typer.Option(
        "--unresolved", help="drop, keep or negative, as for realign (default: the one the shards ran with; "
        "one given here wins, and the merge says so).")] = None,
    source: Annotated[str | None, typer.Option("--source", help="As for realign (published task lists).")] = None,
) -> None:
    """Join the outputs of `reallod realign --shard K/N` runs (no task missing or doubled, no shard running).

    The result equals what one unsharded run with the shards' options would have written. Example:
    reallod realign merge out/s1.jsonl out/s2.jsonl --out out/all.jsonl
    """

    from reallod.agent.merge import merge_shards
    from reallod.agent.summary import check_some_succeeded, render

    merged = merge_shards(shards, out, unresolved=unresolved, source=source)
    console().print(render(merged.summary, out=str(merged.out), trace=str(merged.trace) if merged.trace else None))
    if merged.trace_note:
        typer.echo(merged.trace_note, err=True)
    typer.echo(f"merged {merged.shards} shard(s) into {merged.out} with --unresolved {merged.unresolved} "
               f"({merged.policy_note})"
               + (f" and --source {merged.source} ({merged.source_note})" if merged.source_note else ""))
    check_some_succeeded(merged.summary, what="realign merge")  # exit status 1, as realign's


def agent_eval_cmd(
    labelled: Annotated[Path, typer.Argument(
        help="Tasks (published format, JSON list or JSONL) each with \"gold\": {\"correct\": bool, "
        "\"expression\": optional}.", show_default=False)],
    config: Annotated[str, typer.Option("--config", help=AGENT_CONFIG_HELP, callback=config_file_value)],
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="ROOT", help="Image root (default: the labelled file's folder).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Keep the run's Real-Data, trace and journal here (default: a temporary folder).")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the scores to FILE.json and FILE.md (never over the input or --out's files).")] = None,
    max_cycles: _MaxCycles = None,
    concurrency: _Concurrency = None,
    max_pixels: MaxPixels = MAX_PIXELS,
    base_url: BaseUrl = None,
    llm_base_url: LlmBaseUrl = None,
    vlm_base_url: VlmBaseUrl = None,
    cache: ResponseCache = None,
    no_cache: NoCache = False,
    force_resume: _ForceResume = False,
    min_f1: Annotated[float, typer.Option(
        "--match-f1", min=0.0, max=1.0, help="A rewrite matches a gold expression at this content-word F1.")] = 0.6,
) -> None:
    """Score the agent against gold labels: confusion matrix, precision of kept expressions, rewrite fix
    rate, cost per task. Failed tasks are listed by reason and left out of the scores; when no labelled
    task is scored (every task failed, or none has a result) the exit status is 1. Takes a labelled task
    list, not Real-Data records. Example:
    reallod agent-eval examples/labelled.jsonl --images examples/images --config vllm --base-url http://127.0.0.1:8000/v1"""
    from rich.markdown import Markdown

    from reallod.agent.agent_eval import agent_eval, check_scored, eval_markdown, write_eval_report
    from reallod.agent.realign import RealignOptions
    from reallod.agent.summary import check_some_succeeded

    quiet_transformers()  # the config's roles may be transformers models
    opts = RealignOptions(input=labelled, config=config, out=out, images=images, max_cycles=max_cycles,  # type: ignore[arg-type]
                          concurrency=concurrency, base_url=base_url, llm_base_url=llm_base_url,
                          vlm_base_url=vlm_base_url, cache=cache, no_cache=no_cache, max_pixels=max_pixels,
                          force_resume=force_resume)
    rep, run = agent_eval(labelled, opts, min_f1=min_f1, report=report)  # checks --report before the run
    console().print(Markdown(eval_markdown(rep)))
    if report is not None:
        json_path, md_path = write_eval_report(rep, report)
        typer.echo(f"report: {json_path} and {md_path}")
    check_some_succeeded(run.summary, what="agent-eval")
    check_scored(rep)
