"""``--report FILE``: the run's summary as JSON (for scripts) and Markdown (for people), and the
run's own table printed at the end.

Both hold the same numbers: tasks per verdict, cycles, calls / requests / tokens / model time per role,
retries and given-up calls by error kind, failed tasks by reason (with examples), what reached the
output, and wall time per stage. :func:`report_dict` and :func:`to_markdown` are pure.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from reallod.agent.summary import RunSummary
from reallod.agent.task import VERDICTS
from reallod.data.io import atomic_text


def report_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(JSON, Markdown) paths for ``--report FILE``: ``x.json``/``x`` → x.json + x.md; ``x.md`` → x.json + x.md."""
    p = Path(path)
    if p.suffix.lower() in (".json", ".md"):
        return p.with_suffix(".json"), p.with_suffix(".md")
    return p.with_name(p.name + ".json"), p.with_name(p.name + ".md")


def report_dict(summary: RunSummary, info: dict[str, Any]) -> dict[str, Any]:
    """Everything the report shows, as plain JSON."""
    s = summary.to_dict()
    roles = {name: dict(stats) for name, stats in sorted(s["roles"].items())}
    return {
        "tasks": summary.tasks,
        "verdicts": {v: summary.verdicts.get(v, 0) for v in (*VERDICTS, *sorted(set(summary.verdicts) - set(VERDICTS)))},
        "cycles": s["cycles"],
        "roles": roles,
        "tools": dict(sorted(summary.tools.items())),
        "failures": {"by_reason": dict(summary.errors.most_common()),
                     "example_by_reason": {k: {"task_id": t, "error": e} for k, (t, e) in summary.reason_examples.items()},
                     "examples": [{"task_id": t, "error": e} for t, e in summary.error_examples],
                     "all_failed": summary.all_failed},
        "output": dict(sorted(summary.assembly.items())),
        "run": info,
    }


def merged_info(infos: list[dict[str, Any]], *, out: str, trace: str | None, summary: RunSummary,
                wall_s: float) -> dict[str, Any]:
    """The run info of shards run side by side (``realign --ray``), as one run's: counts and requests
    summed, pace the sum of the shards' (they ran at once), each stage the longest shard's."""
    def total(key: str) -> int:
        return sum(int(i.get(key) or 0) for i in infos)

    def counts(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in infos:
            for kind, n in (i["requests"].get(key) or {}).items():
                out[kind] = out.get(kind, 0) + n
        return out

    stages: dict[str, float] = {}
    for i in infos:
        for stage, secs in (i.get("stages_s") or {}).items():
            stages[stage] = max(stages.get(stage, 0.0), secs)
    first = infos[0] if infos else {}
    return {"input": first.get("input"), "out": out, "journal": None, "trace": trace, "agent": first.get("agent"),
            "shard": None, "shards": len(infos), "concurrency": total("concurrency"),
            "tasks_total": summary.tasks, "tasks_resumed": total("tasks_resumed"),
            "tasks_retried": total("tasks_retried"), "tasks_run": total("tasks_run"),
            "tasks_per_s": sum(float(i.get("tasks_per_s") or 0.0) for i in infos), "cache": first.get("cache"),
            "requests": {"sent": sum(i["requests"]["sent"] for i in infos),
                         "cache_hits": sum(i["requests"]["cache_hits"] for i in infos),
                         "retries": counts("retries"), "gave_up": counts("gave_up")},
            "stages_s": {k: round(v, 3) for k, v in stages.items()}, "wall_s": round(wall_s, 3)}


def md_text(value: Any) -> str:
    """Text from an input, a model or a server, as Markdown that shows it as it is: on one line (a newline
    split a table row, or ended a list item), HTML's special characters escaped (renderers pass raw HTML
    through: an expression ``<script>...`` ran in the browser) and ``\\ ` * [ ] |`` escaped (no link, code
    span or emphasis made of a reply, no table cell split)."""
    return re.sub(r"([\\`*\[\]|])", r"\\\1", html.escape(" ".join(str(value).split()), quote=False))


def md_code(value: Any) -> str:
    """``value`` as an inline code span on one line, delimited by more backticks than it holds in a row
    (inside a code span HTML is not read). A ``|`` must still be escaped in a table cell."""
    text = " ".join(str(value).split())
    ticks = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _retried(info: dict[str, Any]) -> str:
    n = info.get("tasks_retried") or 0
    return f", of which {n} had failed before" if n else ""


def to_markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    n = max(report["tasks"], 1)
    lines = [f"# reallod realign: {md_text(run.get('input', ''))}", "",
             f"{report['tasks']} task(s); {run['tasks_resumed']} resumed from the journal, {run['tasks_run']} "
             f"run now{_retried(run)} at {run['tasks_per_s']:.2f} tasks/s (concurrency {run['concurrency']}).", "",
             "## Verdicts", "", "| verdict | tasks | share |", "|---|---:|---:|"]
    lines += [f"| {v} | {c} | {100 * c / n:.0f}% |" for v, c in report["verdicts"].items()]
    lines += ["", "## Cycles", "", "| cycles | tasks |", "|---|---:|"]
    lines += [f"| {c} | {k} |" for c, k in report["cycles"].items()]
    lines += ["", "## Calls per role", "",
              "| role | calls | requests | cached | repaired | failed | tokens in | tokens out | model s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["roles"].items():
        lines.append(f"| {name} | {r['calls']} | {r['attempts']} | {r.get('cached', 0)} | {r['repaired']} | {r['failed']} | "
                     f"{r['prompt_tokens']} | {r['completion_tokens']} | {r['latency_s']:.1f} |")
    req = run["requests"]
    lines += ["", "## Requests (this session)", "",
              f"- answered by the model: {req['sent']}; from the cache: {req['cache_hits']}",
              "- retried: " + (", ".join(f"{k} {v}" for k, v in sorted(req["retries"].items())) or "none"),
              "- given up: " + (", ".join(f"{k} {v}" for k, v in sorted(req["gave_up"].items())) or "none")]
    lines += ["", "## Failed tasks", ""]
    fail = report["failures"]
    if fail["by_reason"]:
        if fail.get("all_failed"):
            lines += [f"**Every task failed ({report['tasks']}): nothing was re-aligned.**", ""]
        examples = fail.get("example_by_reason") or {}

        def example(kind: str) -> str:
            e = examples.get(kind)
            if not e:
                return ""
            task = md_code(e["task_id"]).replace("|", "\\|")  # md_text escapes the error's own
            return f"{task}: {md_text(e['error'])}"

        lines += ["| reason | tasks | example |", "|---|---:|---|"]
        lines += [f"| {k} | {v} | {example(k)} |" for k, v in fail["by_reason"].items()]
        lines += ["", "First ones:", ""] + [f"- {md_code(e['task_id'])}: {md_text(e['error'])}" for e in fail["examples"]]
    else:
        lines.append("none")
    if report["output"]:
        lines += ["", "## What reached the output", "", "| what:action | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in report["output"].items() if v]
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in run["stages_s"].items()]
    model_s = sum(r["latency_s"] for r in report["roles"].values())
    lines += [f"| (model time, all roles, summed over concurrent calls) | {model_s:.2f} |", ""]
    return "\n".join(lines)


def write_run_report(path: str | os.PathLike, summary: RunSummary, info: dict[str, Any]) -> tuple[Path, Path]:
    """Write both files atomically; returns their paths."""
    json_path, md_path = report_paths(path)
    report = report_dict(summary, info)
    with atomic_text(json_path) as f:
        f.write(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    with atomic_text(md_path) as f:
        f.write(to_markdown(report))
    return json_path, md_path


def run_table(info: dict[str, Any]) -> Table:
    """The run's own numbers (beside the agent summary): resumed vs new tasks, pace, cache, retries,
    time per stage. ``info`` is :func:`reallod.agent.run_report.run_info`'s dict."""
    table = Table(title="run", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("tasks", f"{info['tasks_total']} ({info['tasks_resumed']} resumed from the journal, "
                           f"{info['tasks_run']} run now{_retried(info)})")
    table.add_row("pace", f"{info['tasks_per_s']:.2f} tasks/s at concurrency {info['concurrency']}")
    calls = info["requests"]
    table.add_row("requests", f"{calls['sent']} answered by the model, {calls['cache_hits']} from the cache"
                              + (f" ({info['cache']})" if info.get("cache") else " (cache off)"))
    if calls["retries"]:
        table.add_row("retries", ", ".join(f"{k} {v}" for k, v in sorted(calls["retries"].items())))
    if calls["gave_up"]:
        table.add_row("gave up", ", ".join(f"{k} {v}" for k, v in sorted(calls["gave_up"].items())))
    table.add_row("stages", "  ".join(f"{k} {v:.1f} s" for k, v in info["stages_s"].items()))
    if info.get("shard"):
        table.add_row("shard", info["shard"])
    table.add_row("journal", str(info["journal"]))
    return table
