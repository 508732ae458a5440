"""``reallod realign --ray [ADDRESS]``: the shards of one input as Ray tasks, then merged.

Each Ray task is ``realign --shard K/N`` (the same asyncio runner, resumable, with its own journal)
on whatever machine Ray puts it, using the endpoints of the config; outputs go to
``OUT.shards/shard-K-of-N.jsonl`` beside the output (so every machine must see the same filesystem
at the same paths), and :func:`reallod.agent.merge.merge_shards` joins them. Running the same
command again resumes each shard where it stopped. Without an address Ray starts a local instance.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reallod.agent.merge import MergeResult, merge_shards
from reallod.agent.runner import RealignOptions, realign
from reallod.errors import ConfigError, ReallodError

ShardDone = Callable[[int, int, dict[str, Any]], None]


def shard_dir_for(out: Path) -> Path:
    name = out.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return out.with_name(f"{name}.shards")


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
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--ray needs Ray: pip install 'reallod[dist]'") from e
    if shards is not None and shards < 1:
        raise ConfigError("--ray-shards must be at least 1")
    if opts.limit is not None or opts.shard is not None:
        raise ConfigError("--ray runs the whole input in shards of its own: leave out --limit and --shard")
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--ray {address or '(local)'}: cannot start or reach Ray: {e}") from e
    try:
        n = shards or max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        task = ray.remote(num_cpus=1, max_retries=0)(_run_shard)
        refs = {task.remote(shard_options(opts, k, n)): k for k in range(1, n + 1)}
        infos: dict[int, dict[str, Any]] = {}
        failures: list[str] = []
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            k = refs[ready[0]]
            try:
                infos[k] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None) or e
                failures.append(f"shard {k}/{n}: {cause}")
                continue
            if on_shard_done is not None:
                on_shard_done(k, n, infos[k])
        if failures:
            raise ReallodError("; ".join(failures) + " (the other shards are done; rerun the same command to "
                               "resume the failed ones)")
        outs = [shard_options(opts, k, n).out for k in range(1, n + 1)]
        merged = merge_shards(outs, opts.out, unresolved=opts.unresolved, source=opts.source)
        return merged, [infos[k] for k in range(1, n + 1)]
    finally:
        if started_here:
            ray.shutdown()
