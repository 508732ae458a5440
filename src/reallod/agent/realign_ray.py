"""``reallod realign --ray [ADDRESS]``: the shards of one input as Ray tasks, then merged.

Each Ray task is ``realign --shard K/N`` (the same asyncio runner, resumable, with its own journal)
on whatever machine Ray puts it, using the endpoints of the config; outputs go to
``OUT.shards/shard-K-of-N.jsonl`` beside the output (so every machine must see the same filesystem
at the same paths), and :func:`reallod.agent.merge.merge_shards` joins them. Running the same
command again resumes each shard where it stopped, in as many shards as the journals there say,
whatever the number of live nodes is now. Without an address Ray starts a local instance.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reallod.agent.agent_config import load_agent_config
from reallod.agent.merge import MergeResult, merge_shards
from reallod.agent.realign import RealignOptions, check_outputs, image_loader, realign
from reallod.data.io import wants_gzip
from reallod.errors import ConfigError, DataError
from reallod.runs.journal import beside
from reallod.runs.ray import import_ray, live_nodes, map_on_ray, ray_session
from reallod.runs.session import RunInterrupted

ShardDone = Callable[[int, int, dict[str, Any]], None]


def shard_dir_for(out: Path) -> Path:
    return beside(out, ".shards")


_SHARD_JOURNAL = re.compile(r"shard-(\d+)-of-(\d+)\.journal\.jsonl")


def earlier_shards(out: Path) -> list[int]:
    """The numbers of shards N of the journals (``shard-K-of-N.journal.jsonl``) that earlier runs of this
    output left in ``OUT.shards``."""
    folder = shard_dir_for(out)
    names = os.listdir(folder) if folder.is_dir() else []
    return sorted({int(m[2]) for name in names if (m := _SHARD_JOURNAL.fullmatch(name))})


def choose_shards(out: Path, shards: int | None) -> int | None:
    """How many shards to run: ``shards`` (``--ray-shards``), else as many as the journals an earlier run
    left in ``OUT.shards``, so a rerun on fewer or more live nodes resumes them; None: one per live node.
    Refuses another number than the earlier run's: its journals would be left behind, their work redone."""
    earlier, folder = earlier_shards(out), shard_dir_for(out)
    if not earlier or shards in earlier:
        return shards
    runs = " and ".join(str(n) for n in earlier)
    if shards is None and len(earlier) == 1:
        return earlier[0]
    if shards is None:
        raise ConfigError(f"{folder} holds the journals of runs of this output in {runs} shards: pass --ray-shards "
                          "with the number to resume, and delete the shard-K-of-N files of the others")
    raise ConfigError(f"--ray-shards {shards}: {folder} holds the journals of a run of this output in {runs} "
                      f"shards, whose finished tasks resume only in as many shards: rerun with --ray-shards "
                      f"{earlier[-1]}, or delete {folder} to start over in {shards}")


def shard_options(opts: RealignOptions, k: int, n: int) -> RealignOptions:
    """Shard K's options: absolute paths (a worker may start elsewhere), its own output, no reports."""

    def absolute(p: Path | None) -> Path | None:
        return None if p is None else Path(os.path.abspath(p))

    config = opts.config
    if Path(config).is_file():
        config = os.path.abspath(config)
    # a .gz output's shards are gzipped too, their traces with them (a twelfth of the size)
    name = f"shard-{k}-of-{n}.jsonl" + (".gz" if wants_gzip(opts.out) else "")
    out = shard_dir_for(absolute(opts.out)) / name  # type: ignore[arg-type]
    return dataclasses.replace(
        opts, input=absolute(opts.input), config=config, out=out,
        images=absolute(opts.images if opts.images is not None else opts.input.parent),
        captions=absolute(opts.captions), cache=absolute(opts.cache), shard=f"{k}/{n}", report=None,
        report_dir=None)


def _run_shard(opts: RealignOptions) -> dict[str, Any]:
    """What one Ray task does (module-level so workers import it instead of unpickling code)."""
    return realign(opts).info


def realign_on_ray(opts: RealignOptions, *, address: str | None = None, shards: int | None = None,
                   on_shard_done: ShardDone | None = None, say: Callable[[str], None] | None = None
                   ) -> tuple[MergeResult, list[dict[str, Any]]]:
    """Run ``shards`` shards (default: as many as an earlier run's journals, else one per live node) as
    Ray tasks and merge them into ``opts.out``; ``say`` tells when the earlier run's number is kept."""
    t0 = time.perf_counter()
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    import_ray()
    if shards is not None and shards < 1:
        raise ConfigError("--ray-shards must be at least 1")
    if opts.limit is not None or opts.shard is not None:
        raise ConfigError("--ray runs the whole input in shards of its own: leave out --limit and --shard")
    if not Path(opts.input).is_file():
        raise DataError("no such file", path=str(opts.input))
    check_outputs(opts)  # the merged output's; each shard checks its own
    fixed = choose_shards(opts.out, shards)
    # here, before Ray starts: else every shard fails on its own with the same message
    load_agent_config(opts.config, base_url=opts.base_url, llm_base_url=opts.llm_base_url,
                      vlm_base_url=opts.vlm_base_url)
    with ray_session(address):
        n = fixed or live_nodes()
        if shards is None and fixed is not None and (nodes := live_nodes()) != n:
            say(f"resuming the earlier run in {n} shards (its journals are in {shard_dir_for(opts.out)}), although "
                f"{nodes} Ray node(s) are live now; delete that folder to start over in {nodes}")
        jobs = [shard_options(opts, k, n) for k in range(1, n + 1)]
        done = None if on_shard_done is None else (lambda i, info: on_shard_done(i + 1, n, info))
        try:
            infos = map_on_ray(_run_shard, jobs, names=[f"shard {k}/{n}" for k in range(1, n + 1)], on_done=done,
                               what="other shards")
        except KeyboardInterrupt as e:
            raise RunInterrupted(f"the tasks the {n} shards finished are in their journals in "
                                 f"{shard_dir_for(opts.out)}; rerun the same command to resume") from e
        merged = merge_shards([job.out for job in jobs], opts.out, unresolved=opts.unresolved, source=opts.source)
    write_reports(opts, merged, infos, wall_s=time.perf_counter() - t0)
    return merged, infos


def write_reports(opts: RealignOptions, merged: MergeResult, infos: list[dict[str, Any]], *, wall_s: float) -> None:
    """``--report`` and ``--report-dir`` of the merged run (the shards write none), as a run here would."""
    if opts.report is not None:
        from reallod.agent.run_report import merged_info, write_run_report

        info = merged_info(infos, out=str(merged.out), trace=str(merged.trace) if merged.trace else None,
                           summary=merged.summary, wall_s=wall_s)
        merged.run_report = write_run_report(opts.report, merged.summary, info)
    if opts.report_dir is not None and merged.trace is not None:
        from reallod.agent.task_report import write_report

        merged.report = write_report(merged.trace, opts.report_dir, images=image_loader(opts))
