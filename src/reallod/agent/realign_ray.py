"""``reallod realign --ray [ADDRESS]``: the shards of one input as Ray tasks, then merged.

Each Ray task is ``realign --shard K/N`` (the same asyncio runner, resumable, with its own journal)
on whatever machine Ray puts it, using the endpoints of the config; outputs go to
``OUT.shards/shard-K-of-N.jsonl`` beside the output (so every machine must see the same filesystem
at the same paths), and :func:`reallod.agent.merge.merge_shards` joins them. Running the same
command again resumes each shard where it stopped. Without an address Ray starts a local instance.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reallod.agent.agent_config import load_agent_config
from reallod.agent.merge import MergeResult, merge_shards
from reallod.agent.realign import RealignOptions, realign
from reallod.errors import ConfigError, DataError
from reallod.runs.journal import beside
from reallod.runs.ray import import_ray, live_nodes, map_on_ray, ray_session

ShardDone = Callable[[int, int, dict[str, Any]], None]


def shard_dir_for(out: Path) -> Path:
    return beside(out, ".shards")


def shard_options(opts: RealignOptions, k: int, n: int) -> RealignOptions:
    """Shard K's options: absolute paths (a worker may start elsewhere), its own output, no reports."""

    def absolute(p: Path | None) -> Path | None:
        return None if p is None else Path(os.path.abspath(p))

    config = opts.config
    if Path(config).is_file():
        config = os.path.abspath(config)
    out = shard_dir_for(absolute(opts.out)) / f"shard-{k}-of-{n}.jsonl"  # type: ignore[arg-type]
    return dataclasses.replace(
        opts, input=absolute(opts.input), config=config, out=out,
        images=absolute(opts.images if opts.images is not None else opts.input.parent),
        captions=absolute(opts.captions), cache=absolute(opts.cache), shard=f"{k}/{n}", report=None,
        report_dir=None)


def _run_shard(opts: RealignOptions) -> dict[str, Any]:
    """What one Ray task does (module-level so workers import it instead of unpickling code)."""
    return realign(opts).info


def realign_on_ray(opts: RealignOptions, *, address: str | None = None, shards: int | None = None,
                   on_shard_done: ShardDone | None = None) -> tuple[MergeResult, list[dict[str, Any]]]:
    """Run ``shards`` shards (default: one per live node) as Ray tasks and merge them into ``opts.out``."""
    import_ray()
    if shards is not None and shards < 1:
        raise ConfigError("--ray-shards must be at least 1")
    if opts.limit is not None or opts.shard is not None:
        raise ConfigError("--ray runs the whole input in shards of its own: leave out --limit and --shard")
    if not Path(opts.input).is_file():
        raise DataError("no such file", path=str(opts.input))
    # here, before Ray starts: else every shard fails on its own with the same message
    load_agent_config(opts.config, base_url=opts.base_url, llm_base_url=opts.llm_base_url,
                      vlm_base_url=opts.vlm_base_url)
    with ray_session(address):
        n = shards or live_nodes()
        jobs = [shard_options(opts, k, n) for k in range(1, n + 1)]
        done = None if on_shard_done is None else (lambda i, info: on_shard_done(i + 1, n, info))
        infos = map_on_ray(_run_shard, jobs, names=[f"shard {k}/{n}" for k in range(1, n + 1)], on_done=done,
                           what="other shards")
        merged = merge_shards([job.out for job in jobs], opts.out, unresolved=opts.unresolved, source=opts.source)
        return merged, infos
