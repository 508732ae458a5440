"""What a run did, in numbers: tasks per verdict, cycles, calls and tokens per role, tools, errors.

:func:`summarize` folds result dicts (as the trace stores them) into a :class:`RunSummary`; it is pure,
so the same numbers come from a live run or from a trace read back later. :func:`render` turns a
summary into rich tables for the terminal; failed tasks are shown by reason, with one example each.
A run in which every task failed re-aligned nothing: the commands print the summary, then raise
:class:`AllTasksFailed` (:func:`check_some_succeeded`), so a script sees a non-zero exit status.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table

from reallod.agent.task import VERDICTS, model_cost
from reallod.errors import ReallodError

MAX_ERROR_EXAMPLES = 20


class AllTasksFailed(ReallodError):
    """Every task of a run failed (a wrong image root, a model that answers nothing usable...): the
    output holds no re-aligned expression. The CLI exits with status 1 (2 is for runs that could not
    start or stopped)."""

    exit_code = 1


@dataclass(slots=True)
class RoleStats:
    calls: int = 0  # role calls that reached a backend (a VLM reported unavailable is not a call)
    attempts: int = 0  # requests sent to the model, the backend's retries included
    cached: int = 0  # requests the response cache answered (a rerun's): no model time or tokens counted
    repaired: int = 0  # replies that needed json-repair
    failed: int = 0  # calls that ended without a usable decision
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


@dataclass(slots=True)
class RunSummary:
    tasks: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    cycles: Counter[int] = field(default_factory=Counter)
    roles: dict[str, RoleStats] = field(default_factory=dict)
    tools: Counter[str] = field(default_factory=Counter)  # vlm:<view>, vlm:<view> unavailable, rewrite
    errors: Counter[str] = field(default_factory=Counter)  # error kind → failed tasks
    error_examples: list[tuple[str, str]] = field(default_factory=list)  # (task id, error), the first ones
    reason_examples: dict[str, tuple[str, str]] = field(default_factory=dict)  # error kind → its first (id, error)
    wall_s: float = 0.0
    assembly: Counter[str] = field(default_factory=Counter)  # "<verdict>:<action>" → expressions, ...

    def add(self, result: dict[str, Any]) -> None:
        """Count one task's result (a trace ``result`` dict)."""
        self.tasks += 1
        self.verdicts[result["verdict"]] += 1
        self.cycles[int(result.get("cycles") or 0)] += 1
        if result["verdict"] == "failed":
            kind = result.get("error_kind") or "agent_error"
            self.errors[kind] += 1
            example = (result["task_id"], result.get("error") or "(no reason recorded)")
            if len(self.error_examples) < MAX_ERROR_EXAMPLES:
                self.error_examples.append(example)
            self.reason_examples.setdefault(kind, example)
        for step in result.get("steps") or []:
            role, view = step["role"], (step.get("view") or {}).get("name")
            unavailable = not step.get("attempts") and str(step.get("error") or "").startswith("unavailable")
            if role == "vlm":
                self.tools[f"vlm:{view}" + (" unavailable" if unavailable else "")] += 1
            elif role == "rewriter":
                self.tools["rewrite"] += 1
            if unavailable:
                continue
            stats = self.roles.setdefault(role, RoleStats())
            (asked, tok_in, tok_out), (hits, _, _) = model_cost(step)
            stats.calls += 1
            stats.attempts += asked
            stats.cached += hits
            stats.repaired += bool(step.get("repaired"))
            stats.failed += bool(step.get("error"))
            stats.prompt_tokens += tok_in
            stats.completion_tokens += tok_out
            stats.latency_s += float(step.get("latency_s") or 0.0)

    @property
    def all_failed(self) -> bool:
        """Whether there were tasks and every one failed (none at all is not a failure)."""
        return self.tasks > 0 and self.verdicts["failed"] == self.tasks

    def failure_lines(self) -> list[str]:
        """One line per reason, most frequent first: ``KIND: N task(s), e.g. ID: ERROR``."""
        lines = []
        for kind, count in self.errors.most_common():
            tid, err = self.reason_examples.get(kind, ("?", "(no example kept)"))
            lines.append(f"{kind}: {count} task(s), e.g. {tid}: {err}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cycles"] = {str(k): v for k, v in sorted(self.cycles.items())}
        return d


def check_some_succeeded(summary: RunSummary, *, what: str = "the run") -> None:
    """Raise :class:`AllTasksFailed` when every task of ``summary`` failed (call it once the summary
    has been shown: the message names the reasons again, briefly)."""
    if not summary.all_failed:
        return
    reasons = "; ".join(summary.failure_lines()[:3])
    raise AllTasksFailed(f"every task of {what} failed ({summary.tasks} of {summary.tasks}), so nothing was "
                         f"re-aligned: {reasons}")


def summarize(results: Iterable[dict[str, Any]], *, wall_s: float = 0.0,
              assembly: Counter[str] | None = None) -> RunSummary:
    summary = RunSummary(wall_s=wall_s, assembly=Counter(assembly or {}))
    for result in results:
        summary.add(result)
    return summary


def render(summary: RunSummary, *, out: str | None = None, trace: str | None = None,
           report: str | None = None) -> Group:
    """Rich tables: verdicts, cycles, roles, tools, errors, what reached the output."""
    n = max(summary.tasks, 1)
    verdicts = Table(title=f"{summary.tasks} task(s) in {summary.wall_s:.1f} s", title_justify="left")
    verdicts.add_column("verdict")
    verdicts.add_column("tasks", justify="right")
    verdicts.add_column("share", justify="right")
    for v in (*VERDICTS, *sorted(set(summary.verdicts) - set(VERDICTS))):
        verdicts.add_row(v, str(summary.verdicts[v]), f"{100 * summary.verdicts[v] / n:.0f}%")

    cycles = Table(title="cycles used", title_justify="left")
    cycles.add_column("cycles")
    cycles.add_column("tasks", justify="right")
    for c, count in sorted(summary.cycles.items()):
        cycles.add_row(str(c), f"{count}  {'█' * max(1, round(20 * count / n))}")

    roles = Table(title="calls per role (tries: requests sent to the model, retries included; cached: those the "
                        "response cache answered; fixed: replies json-repair mended; tokens and secs: the model's)",
                  title_justify="left")
    for col in ("role", "calls", "tries", "cached", "fixed", "failed", "tok in", "tok out", "secs"):
        roles.add_column(col, justify="left" if col == "role" else "right")
    totals = RoleStats()
    for name, s in sorted(summary.roles.items()):
        roles.add_row(name, str(s.calls), str(s.attempts), str(s.cached), str(s.repaired), str(s.failed),
                      str(s.prompt_tokens), str(s.completion_tokens), f"{s.latency_s:.1f}")
        for f in ("calls", "attempts", "cached", "repaired", "failed", "prompt_tokens", "completion_tokens",
                  "latency_s"):
            setattr(totals, f, getattr(totals, f) + getattr(s, f))
    roles.add_row("all", str(totals.calls), str(totals.attempts), str(totals.cached), str(totals.repaired),
                  str(totals.failed), str(totals.prompt_tokens), str(totals.completion_tokens),
                  f"{totals.latency_s:.1f}", style="bold")

    parts: list[Any] = [verdicts, cycles, roles]
    if summary.tools:
        tools = Table(title="tool calls", title_justify="left")
        tools.add_column("tool")
        tools.add_column("calls", justify="right")
        for name, count in sorted(summary.tools.items()):
            tools.add_row(name, str(count))
        parts.append(tools)
    if summary.errors:
        parts.append(failures_table(summary))
    if summary.assembly:
        output = Table(title="what reached the output", title_justify="left")
        output.add_column("what:action")
        output.add_column("count", justify="right")
        for key, count in sorted(summary.assembly.items()):
            if count:
                output.add_row(key, str(count))
        parts.append(output)
    paths = [f"{label}: {p}" for label, p in (("output", out), ("trace", trace), ("report", report)) if p]
    if paths:
        parts.append("\n".join(paths))
    return Group(*parts)


def failures_table(summary: RunSummary) -> Table:
    """Failed tasks by reason, most frequent first, with one example (task id and error) each."""
    title = "failed tasks by reason (one example each)"
    if summary.all_failed:
        title = f"EVERY TASK FAILED ({summary.tasks}): " + title
    errors = Table(title=title, title_justify="left")
    errors.add_column("reason")
    errors.add_column("tasks", justify="right")
    errors.add_column("example task")
    errors.add_column("error", overflow="fold")
    for kind, count in summary.errors.most_common():
        tid, err = summary.reason_examples.get(kind, ("", ""))
        errors.add_row(kind, str(count), tid, err)
    return errors
