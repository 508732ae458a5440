"""``reallod agent-eval``: how good is the agent itself? (The number the paper never reported.)

Input: a published-style task list (JSON list or JSONL) whose tasks each carry a gold label::

    {..., "raw_expression": "the blue coffee mug",
     "gold": {"correct": false, "expression": "the red espresso cup"}}   # expression: optional, str or list

The agent runs over the tasks like ``reallod realign`` (same runner, cache, journal); then, per task,
its final verdict is set against the gold label:

- the confusion matrix of gold (raw expression correct / wrong) × final verdict;
- precision of kept expressions: of what the agent keeps (raw expressions it judged correct, and its
  rewrites), how much is right: a kept raw expression is right when gold says it is correct; a rewrite
  is right when it matches an acceptable expression (the raw one when gold says it is correct, and the
  gold expressions) — rewrites with nothing to compare to are counted as unjudged, not guessed;
- rewrite fix rate: of the wrong raw expressions, how many the agent replaced by a right one (a wrong
  one it rewrote with no gold expression to compare to is left out, counted as unjudged);
- cost per task: calls, requests, tokens, seconds. Requests and tokens are what the model was asked:
  replies the response cache gave (a rerun's) are counted apart, as cache hits.

A task whose run failed (a missing image, a backend that never answered usably) made no judgement: it
is counted in the confusion matrix's ``failed`` column and by reason, and left out of every score
(a failed wrong expression is not "caught"). When every task failed, no score is given at all and the
report says so, so a broken setup never reads as a good agent.

Two expressions match when their content words overlap with an F1 of at least ``match_f1`` (default
0.6), see :func:`match_f1`.

Only a labelled task list is taken: a Real-Data records file is refused before the run (its tasks get
ids like ``0/llm/0/0`` that no line-numbered label can name), and so is a ``--report`` that would
overwrite the labelled input or the run's files. When no labelled task is scored (every result
unlabelled or missing, or every task failed) the CLI exits with status 1.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from reallod.agent.inputs import _iter_task_items, detect_format
from reallod.agent.realign import RealignOptions, RealignRun, check_report, realign
from reallod.agent.roles import Roles
from reallod.agent.run_report import report_paths
from reallod.agent.task import VERDICTS, model_cost
from reallod.agent.trace import trace_path_for
from reallod.data.io import atomic_text
from reallod.data.words import words
from reallod.errors import DataError, ReallodError
from reallod.runs.journal import iter_journal, journal_path_for
from reallod.runs.session import RunInterrupted

_STOP = frozenset(["a", "an", "the", "of", "in", "on", "at", "to", "with", "and", "or", "is", "are", "its", "his", "her", "their", "this", "that", "there"])


@dataclass(frozen=True, slots=True)
class Gold:
    correct: bool
    expressions: tuple[str, ...] = ()
    raw_expression: str | None = None  # the labelled task's, to check that a run was made on this file


def acceptable(gold: Gold, raw_expression: str) -> list[str]:
    """The expressions a rewrite may match to be right: the raw one when gold says it is correct, and
    the gold expressions."""
    return ([raw_expression] if gold.correct and raw_expression else []) + list(gold.expressions)


def load_gold(path: str | Path) -> dict[str, Gold]:
    """Task id → gold label; a task without a usable ``gold`` is refused with file, line and field."""
    out: dict[str, Gold] = {}
    for index, line, item in _iter_task_items(path):
        if item is None and line is not None:  # how the reader hands over a line that is no JSON
            raise DataError("not valid JSON", path=str(path), line=line)
        where = {"path": str(path), "line": line, "field": "gold" if line is not None else f"[{index}].gold"}
        gold = item.get("gold") if isinstance(item, dict) else None
        if not isinstance(gold, dict) or not isinstance(gold.get("correct"), bool):
            raise DataError('expected "gold": {"correct": true|false, "expression": optional}', **where)
        exprs = gold.get("expression", gold.get("expressions"))
        if exprs is None:
            exprs = []
        if isinstance(exprs, str):
            exprs = [exprs]
        if not isinstance(exprs, list) or not all(isinstance(e, str) and e.strip() for e in exprs):
            raise DataError("gold expression must be a non-empty string or a list of them", **where)
        raw = item.get("raw_expression")
        out[str(index)] = Gold(gold["correct"], tuple(exprs), raw if isinstance(raw, str) else None)
    if not out:
        raise DataError("no labelled tasks", path=str(path))
    return out


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in _STOP]


def match_f1(a: str, b: str) -> float:
    """Token F1 of the content words (:func:`words` less a few English function words) of two
    expressions; with no content word on either side, 1.0 only when all their words are equal."""
    wa, wb = content_words(a), content_words(b)
    if not wa and not wb:
        return float(words(a) == words(b))
    if wa == wb:
        return 1.0
    if not wa or not wb:
        return 0.0
    common = sum((Counter(wa) & Counter(wb)).values())
    if not common:
        return 0.0
    p, r = common / len(wa), common / len(wb)
    return 2 * p * r / (p + r)


@dataclass(slots=True)
class EvalReport:
    tasks: int = 0
    confusion: dict[str, Counter[str]] = field(default_factory=lambda: {"correct": Counter(), "wrong": Counter()})
    kept_raw: int = 0
    kept_raw_right: int = 0
    rewrites: int = 0
    rewrites_right: int = 0
    rewrites_unjudged: int = 0
    gold_wrong: int = 0
    fix_unjudged: int = 0  # gold-wrong raw expressions rewritten with no gold expression to compare to
    fixed: int = 0  # gold-wrong raw expressions replaced by a right rewrite
    caught: int = 0  # gold-wrong raw expressions the agent did not keep as they were
    calls: int = 0
    requests: int = 0  # sent to the model (retries included); not the replies the response cache gave
    prompt_tokens: int = 0  # of those requests
    completion_tokens: int = 0
    cache_hits: int = 0  # requests the response cache answered: no model time, no cost now
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    unlabelled_results: int = 0
    missing_results: int = 0
    failed: int = 0  # tasks whose run failed: in the confusion matrix, left out of the scores
    failures: Counter[str] = field(default_factory=Counter)  # error kind → failed tasks
    failure_examples: dict[str, tuple[str, str]] = field(default_factory=dict)  # error kind → (task id, error)

    @property
    def all_failed(self) -> bool:
        return self.tasks > 0 and self.failed == self.tasks

    @property
    def kept_precision(self) -> float | None:
        judged = self.kept_raw + self.rewrites - self.rewrites_unjudged
        return (self.kept_raw_right + self.rewrites_right) / judged if judged else None

    @property
    def scored(self) -> int:
        """Labelled tasks with a judgement to score (neither failed nor missing from the run)."""
        return self.tasks - self.failed

    @property
    def fix_judged(self) -> int:
        """Gold-wrong raw expressions whose fix could be judged (a rewrite with nothing to compare to
        is neither a fix nor a miss)."""
        return self.gold_wrong - self.fix_unjudged

    @property
    def fix_rate(self) -> float | None:
        return self.fixed / self.fix_judged if self.fix_judged else None

    def per_task(self) -> dict[str, float]:
        n = max(self.tasks, 1)
        return {"calls": self.calls / n, "requests": self.requests / n, "prompt_tokens": self.prompt_tokens / n,
                "completion_tokens": self.completion_tokens / n, "cache_hits": self.cache_hits / n,
                "seconds": self.seconds / n, "model_seconds": self.model_seconds / n}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["confusion"] = {g: {v: c.get(v, 0) for v in VERDICTS} for g, c in self.confusion.items()}
        d["failures"] = dict(self.failures.most_common())
        d["failure_examples"] = {k: {"task_id": t, "error": e} for k, (t, e) in self.failure_examples.items()}
        d["all_failed"] = self.all_failed
        d["scored"] = self.scored
        d.update(kept_precision=self.kept_precision, fix_rate=self.fix_rate, per_task=self.per_task(),
                 kept_raw_precision=self.kept_raw_right / self.kept_raw if self.kept_raw else None,
                 wrong_caught_rate=self.caught / self.gold_wrong if self.gold_wrong else None)
        return d


def evaluate(gold: Mapping[str, Gold], results: Mapping[str, Mapping[str, Any]], *,
             min_f1: float = 0.6) -> EvalReport:
    """Score journal results against gold labels (pure)."""
    rep = EvalReport()
    rep.unlabelled_results = len(set(results) - set(gold))
    for tid, g in gold.items():
        r = results.get(tid)
        if r is None:
            rep.missing_results += 1
            continue
        rep.tasks += 1
        verdict = r["verdict"]
        rep.confusion["correct" if g.correct else "wrong"][verdict] += 1
        _add_cost(rep, r)
        if verdict == "failed":  # no judgement was made: left out of the scores
            rep.failed += 1
            kind = r.get("error_kind") or "agent_error"
            rep.failures[kind] += 1
            rep.failure_examples.setdefault(kind, (tid, str(r.get("error") or "(no reason recorded)")))
            continue
        accepted = acceptable(g, r.get("raw_expression") or "")
        if verdict == "correct":
            rep.kept_raw += 1
            rep.kept_raw_right += g.correct
        elif verdict == "rewritten":
            rep.rewrites += 1
            right = any(match_f1(r.get("expression") or "", a) >= min_f1 for a in accepted if a)
            if not any(accepted):
                rep.rewrites_unjudged += 1
                rep.fix_unjudged += not g.correct
            elif right:
                rep.rewrites_right += 1
                rep.fixed += not g.correct
        if not g.correct:
            rep.gold_wrong += 1
            rep.caught += verdict != "correct"
    return rep


def _add_cost(rep: EvalReport, r: Mapping[str, Any]) -> None:
    """The task's calls and what the model was asked: a step's attempts and tokens count every request,
    its ``cached`` (when the response cache answered any) those the model was not asked."""
    for step in r.get("steps") or []:
        if not step.get("attempts"):
            continue  # a VLM reported unavailable made no call
        rep.calls += 1
        (asked, tok_in, tok_out), (hits, hit_in, hit_out) = model_cost(step)
        rep.requests += asked
        rep.prompt_tokens += tok_in
        rep.completion_tokens += tok_out
        rep.cache_hits += hits
        rep.cached_prompt_tokens += hit_in
        rep.cached_completion_tokens += hit_out
        rep.model_seconds += float(step.get("latency_s") or 0.0)  # a cached reply took none
    rep.seconds += float(r.get("elapsed_s") or 0.0)


def check_eval_report(report: str | os.PathLike, labelled: Path, out: Path | None) -> None:
    """Refuse, before the run, a ``--report`` whose files could not be written or would overwrite the
    labelled input (its gold labels) or the run's output, trace or journal under ``--out``."""
    kept = {"the labelled input": Path(labelled)}
    if out is not None:
        kept.update({"the --out output": Path(out), "the run's trace": trace_path_for(out),
                     "the run's journal": journal_path_for(out)})
    check_report(report, kept)


def check_labelled_tasks(labelled: Path, fmt: str | None = None) -> None:
    """Refuse a Real-Data records file: its tasks' ids (``0/llm/0/0``) never meet the line-numbered
    gold labels, so every label would go unscored."""
    if (fmt or detect_format(labelled)) == "records":
        raise DataError('a Real-Data records file (lines with "pairs"): agent-eval takes a labelled task list, '
                        'the published task-list format (raw_expression, object_locations, global_caption; '
                        'see docs/agent.md, "Inputs") with "gold": {"correct": true|false, "expression": '
                        'optional} on every task', path=str(labelled))


class NothingScored(ReallodError):
    """agent-eval scored no labelled task: a score of nothing must not read as success (exit status 1)."""

    exit_code = 1


def check_scored(rep: EvalReport) -> None:
    """Raise :class:`NothingScored` when no labelled task got a judgement (call it after showing the
    report; every task failing is said by the run's own check first)."""
    if rep.scored:
        return
    raise NothingScored(f"no labelled task was scored: {rep.missing_results} labelled task(s) had no result "
                        f"in the run, {rep.unlabelled_results} result(s) had no gold label, {rep.failed} "
                        "task(s) failed")


def agent_eval(labelled: Path, opts: RealignOptions, *, roles: Roles | None = None,
               min_f1: float = 0.6, report: str | os.PathLike | None = None) -> tuple[EvalReport, RealignRun]:
    """Run the agent over ``labelled`` (with ``opts``; ``opts.out`` None: a temporary folder) and score it.

    ``report`` (``--report``, written by the caller with :func:`write_eval_report`) is checked first,
    with the input, so that a report that cannot be written costs no model call."""
    if report is not None:
        check_eval_report(report, labelled, opts.out)
    check_labelled_tasks(labelled, opts.format)
    gold = load_gold(labelled)
    with tempfile.TemporaryDirectory(prefix="reallod-agent-eval-") as tmp:
        out = opts.out if opts.out is not None else Path(tmp) / "realigned.jsonl"
        try:
            run = realign(replace(opts, input=labelled, out=out), roles=roles)
        except KeyboardInterrupt as e:
            if opts.out is not None:
                raise  # the journal under --out says what is safe
            raise RunInterrupted("agent-eval ran in a temporary folder (no --out), so nothing was kept; "
                                 "pass --out to make a run resumable") from e
        results = dict(iter_journal(run.journal)) if run.journal else {}
    return evaluate(gold, results, min_f1=min_f1), run


def eval_markdown(rep: EvalReport) -> str:
    """The report as Markdown (``--report``)."""
    d = rep.to_dict()

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = ["# reallod agent-eval", "", f"{rep.tasks} labelled task(s)"
             + (f", {rep.failed} of them failed (left out of the scores)." if rep.failed else "."), ""]
    if rep.missing_results or rep.unlabelled_results:
        lines += [f"{rep.missing_results} labelled task(s) had no result in the run and "
                  f"{rep.unlabelled_results} result(s) had no gold label: neither is scored.", ""]
    if rep.all_failed:
        lines += [f"**Every task failed ({rep.failed} of {rep.tasks}): the agent judged nothing, so there is "
                  "no score. Fix the cause below (often the image root: --images) and run again.**", ""]
    elif not rep.scored:
        lines += ["**No labelled task was scored: the run's task ids do not meet the labels (was it made on "
                  "another file?), so there is no score.**", ""]
    lines += ["## Final verdict vs gold", "", "| gold \\ verdict | " + " | ".join(VERDICTS) + " |",
              "|---|" + "---:|" * len(VERDICTS)]
    for g in ("correct", "wrong"):
        lines.append(f"| raw {g} | " + " | ".join(str(d["confusion"][g][v]) for v in VERDICTS) + " |")
    pt = d["per_task"]
    lines += ["", "## Scores", "",
              f"- precision of kept expressions: {pct(rep.kept_precision)} "
              f"({rep.kept_raw_right + rep.rewrites_right} right of {rep.kept_raw + rep.rewrites - rep.rewrites_unjudged} "
              f"judged; {rep.rewrites_unjudged} rewrite(s) unjudged)",
              f"- precision of raw expressions kept as correct: {pct(d['kept_raw_precision'])}",
              f"- wrong raw expressions not kept as they were: {pct(d['wrong_caught_rate'])}",
              f"- rewrite fix rate (wrong raw expressions replaced by a right one): {pct(rep.fix_rate)} "
              f"({rep.fixed} of {rep.fix_judged} judged; {rep.fix_unjudged} rewrite(s) with no gold expression "
              "unjudged)",
              *_failure_lines(rep),
              "", "## Cost per task", "",
              f"- calls {pt['calls']:.2f}, requests to the model {pt['requests']:.2f}, tokens {pt['prompt_tokens']:.0f} "
              f"in / {pt['completion_tokens']:.0f} out, {pt['seconds']:.2f} s wall ({pt['model_seconds']:.2f} s model)",
              *_cache_lines(rep), ""]
    return "\n".join(lines)


def _cache_lines(rep: EvalReport) -> list[str]:
    """What the response cache answered (a rerun's replies): not part of the cost above."""
    if not rep.cache_hits:
        return []
    return [f"- from the response cache, not counted above: {rep.cache_hits} request(s) in all, tokens "
            f"{rep.cached_prompt_tokens} in / {rep.cached_completion_tokens} out (--no-cache asks the model again)"]


def _failure_lines(rep: EvalReport) -> list[str]:
    if not rep.failed:
        return []
    lines = ["", "## Failed tasks by reason", "", "| reason | tasks | example |", "|---|---:|---|"]
    for kind, count in rep.failures.most_common():
        tid, err = rep.failure_examples.get(kind, ("", ""))
        lines.append(f"| {kind} | {count} | `{tid}`: {err.replace('|', chr(92) + '|')} |")
    return lines


def write_eval_report(rep: EvalReport, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the scores to ``path`` as JSON and Markdown, each atomically (``--report FILE``: the files are
    named as realign's run report, see :func:`reallod.agent.run_report.report_paths`); returns their paths."""
    json_path, md_path = report_paths(path)
    with atomic_text(json_path) as f:
        f.write(orjson.dumps(rep.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    with atomic_text(md_path) as f:
        f.write(eval_markdown(rep))
    return json_path, md_path
