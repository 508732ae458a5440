"""``reallod agent agreement``: how often a model's decisions equal the teacher's, on an sft-data split.

Each example of the split (by default ``val``: images the student never saw) is asked again, exactly as
stored — the prompt the role's template renders, with the view for VLM examples — through the role of an
agent config (its backend, with constrained decoding where the backend has it), and the decision is set
against the teacher's: the reflector's verdict, the planner's state (and focus when uncertain) must be
equal; a rewrite or a VLM answer must match the teacher's by content words (F1 ≥ 0.6, as agent-eval
matches rewrites). Run it with the base model's config and with the student's to see what the
fine-tuning bought.

The stored prompts were rendered with the templates the dataset was built with (``manifest.json``
records a hash of each role's); a config whose role renders with another template would be measured on
prompts it never sends, so it is refused, naming both templates and the ``sft-data --config`` command
that rebuilds the data with the config's own.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reallod.agent.agent_eval import match_f1
from reallod.agent.decisions import SPECS, DecisionError
from reallod.agent.roles import Role
from reallod.errors import ConfigError, DataError, Interrupted, ReallodError
from reallod.finetune.sft_data import SPLITS, open_view, read_manifest, role_files, template_hash
from reallod.finetune.trainer import split_lines
from reallod.llm.backends.base import BackendError, map_parts
from reallod.llm.endpoints import harden_backends


@dataclass
class Agreement:
    role: str
    split: str
    examples: int = 0
    equal: int = 0
    unusable: int = 0  # replies that did not parse as a decision (counted as not equal)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)  # (teacher, model) → n
    seconds: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.equal / self.examples if self.examples else None

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "split": self.split, "examples": self.examples, "equal": self.equal,
                "rate": self.rate, "unusable": self.unusable, "seconds": round(self.seconds, 2),
                "confusion": {f"{t} -> {m}": n for (t, m), n in sorted(self.confusion.items())}}


def same_decision(role: str, teacher: dict[str, Any], model: dict[str, Any]) -> bool:
    """Whether two decisions of ``role`` agree (see the module docstring)."""
    if role == "reflector":
        return teacher["verdict"] == model["verdict"]
    if role == "planner":
        return teacher["state"] == model["state"] and (teacher["state"] != "uncertain"
                                                       or teacher["focus"] == model["focus"])
    key = "expression" if role == "rewriter" else "answer"
    return match_f1(str(teacher.get(key) or ""), str(model.get(key) or "")) >= 0.6


def _label(role: str, decision: dict[str, Any] | None) -> str:
    if decision is None:
        return "(unusable)"
    if role == "reflector":
        return decision["verdict"]
    if role == "planner":
        return decision["state"] + (f"/{decision['focus']}" if decision["state"] == "uncertain" else "")
    return "match"


def _prompt(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """The stored prompt as backend messages: image parts get their pictures back."""
    pictures = iter(images)
    out = map_parts(messages[:-1], lambda p: {"type": "image", "image": next(pictures)},
                    lambda p: {"type": "text", "text": p.get("text", "")})
    for m in out:
        if isinstance(m["content"], list) and all(p["type"] == "text" for p in m["content"]):
            m["content"] = "\n".join(p["text"] for p in m["content"])  # a text message stored as parts
    return out


def _read_rows(path: Path, role: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(example, the teacher's decision) of each line; a line that is neither is an error naming it,
    found before any model loads."""
    spec = SPECS[role]
    rows = []
    for lineno, line in split_lines(path):
        try:
            row = json.loads(line)
            reply = row["messages"][-1]["content"]
            teacher, _ = spec.parse(reply if isinstance(reply, str) else reply[0]["text"])
        except (ValueError, KeyError, TypeError, IndexError, DecisionError) as e:
            raise DataError(f"not an sft-data example of the {role} role: {e}", path=str(path), line=lineno) from None
        rows.append((row, teacher))
    return rows


def check_template(data: Path, manifest: dict[str, Any], cfg: Any, role_name: str) -> None:
    """Refuse a config whose ``role_name`` renders with another template than the dataset's examples.

    Not a warning: the rate would be that of prompts the config never sends, reported as the config's.
    Measuring a base model on the student's prompts stays possible by giving its role the same ``prompt:``."""
    from reallod.agent.roles import load_prompt

    built = (manifest.get("templates") or {}).get(role_name)
    rc = cfg.roles[role_name]
    if built is None or template_hash(load_prompt(role_name, rc.prompt)) == built:
        return
    ours = f"its template {rc.prompt}" if rc.prompt else f"the packaged {role_name}.txt"
    theirs = (f"the templates of the config {manifest['config']}" if manifest.get("config")
              else f"the packaged {role_name}.txt")
    raise ConfigError(f"{cfg.path}: roles.{role_name} renders its prompts with {ours}, but the {role_name} examples "
                      f"of {data} were rendered with {theirs} (template hash {built} in its manifest.json): "
                      "the model would be measured on prompts this config never sends. Rebuild the data with "
                      f"this config's templates: {_rebuild_command(manifest, cfg.path)}, or set "
                      f"roles.{role_name}.prompt to the template the data was built with")


def _rebuild_command(manifest: dict[str, Any], config: Path) -> str:
    """The sft-data command that rebuilds a dataset from its traces and selection with ``config``'s templates."""
    traces = " ".join(str(t) for t in manifest.get("traces") or []) or "TRACE..."
    select = f" --from gold {manifest['labelled']}" if manifest.get("source") == "gold" else ""
    split = "".join(f" --{k.replace('_', '-')} {manifest[k]}" for k in ("val_fraction", "seed") if k in manifest)
    return f"reallod agent sft-data {traces}{select} --config {config}{split} --out NEW_DIR"


async def _measure(role: Role, rows: list[tuple[dict[str, Any], dict[str, Any]]], data: Path,
                   rep: Agreement, concurrency: int, bar: Any) -> None:
    """Ask every row, ``concurrency`` at a time (a vLLM server answers many at once: one after the other,
    thousands of examples took hours); counted as each answer comes (the counts do not depend on order)."""
    spec = SPECS[rep.role]
    limit = asyncio.Semaphore(concurrency)

    async def ask(number: int, row: dict[str, Any], teacher: dict[str, Any]) -> None:
        async with limit:
            images = [open_view(data, rel) for rel in row.get("images") or []]
            try:
                completion = await role.backend.complete(_prompt(row["messages"], images), schema=spec.schema,
                                                         max_tokens=role.max_tokens, temperature=role.temperature)
            except BackendError as e:
                advice = ("; check that the server is running and the base URL is right (--base-url)"
                          if e.kind == "connection" else "")
                raise ReallodError(f"the {rep.role} role's model failed on example {number} "
                                   f"({e.kind}: {e}){advice}") from None
        rep.seconds += completion.latency_s
        try:
            decision, _ = spec.parse(completion.text)
        except DecisionError:
            decision = None
            rep.unusable += 1
        rep.examples += 1
        equal = decision is not None and same_decision(rep.role, teacher, decision)
        rep.equal += equal
        rep.confusion[(_label(rep.role, teacher), "match" if equal and rep.role in ("rewriter", "vlm")
                       else _label(rep.role, decision) if rep.role in ("reflector", "planner") else "differs")] += 1
        bar.update(1)

    tasks = [asyncio.ensure_future(ask(k + 1, row, teacher)) for k, (row, teacher) in enumerate(rows)]
    try:
        await asyncio.gather(*tasks)
    finally:  # the first failure (or Ctrl-C) cancels the others: no request is left running
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def measure_agreement(data: Path, role_name: str, config: str | Path, *, split: str = "val",
                      limit: int | None = None, base_url: str | None = None, llm_base_url: str | None = None,
                      vlm_base_url: str | None = None, progress: bool = False) -> Agreement:
    """Ask the ``split`` examples of ``role_name`` through that role of ``config`` (as many at once as its
    ``concurrency``); count agreement. The base URLs point the config's openai roles at a server, as in
    ``realign``; ``progress`` shows a bar on stderr."""
    from reallod.agent.agent_config import build_role, load_agent_config

    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: expected train or val")
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")
    files = role_files(Path(data), role_name)
    if split not in files:
        raise DataError(f"no {split} examples for the {role_name} role", path=str(data))
    rows = _read_rows(files[split], role_name)
    cfg = load_agent_config(config, base_url=base_url, llm_base_url=llm_base_url, vlm_base_url=vlm_base_url,
                            required=(role_name,))  # the other roles are not asked: they may be left out
    check_template(Path(data), read_manifest(Path(data)), cfg, role_name)
    role = build_role(cfg, role_name)
    # the config's retries (a 429 told to wait, a server error) as in a run; no response cache: it measures
    backends, _ = harden_backends({role_name: role.backend}, retry=cfg.retry)
    role = replace(role, backend=backends[role_name])
    rep = Agreement(role_name, split)
    asked = rows[:limit] if limit else rows
    from tqdm import tqdm

    async def go() -> None:
        try:
            await _measure(role, asked, Path(data), rep, cfg.concurrency, bar)
        finally:
            await role.backend.aclose()

    with tqdm(total=len(asked), desc=f"agreement {role_name}", unit="example", file=sys.stderr,
              disable=not progress) as bar:
        try:
            asyncio.run(go())
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted: {rep.examples} of {len(asked)} example(s) asked, {rep.equal} equal "
                              "the teacher's so far; nothing is kept: the measure starts over when run again "
                              "(--limit N asks fewer)") from None
    return rep
