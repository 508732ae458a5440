"""``reallod agent sft-data``: the agent's traces → one chat dataset per role, for supervised fine-tuning.

Every finished role call of a trace (format 2, which records the values each prompt was rendered with)
becomes one example: the prompt, rendered again from those values with the role's template through
:func:`reallod.agent.roles.render_messages` — the very function the workflow renders with, so what a
student is trained on and what it is later asked cannot drift apart — and the reply, the parsed
decision written as the JSON object a constrained decoder writes (:meth:`DecisionSpec.reply`). VLM
examples carry their view, re-rendered with :func:`reallod.agent.views.make_view` from the task's image
and box and checked against the crop box the trace recorded.

Selection (``--from``):

- ``teacher``: every role call of every finished task (verdict correct, rewritten, wrong or unresolved;
  failed tasks and calls without a usable decision are left out);
- ``gold LABELLED``: only tasks whose final verdict agrees with the gold label (gold correct: the agent
  kept the raw expression; gold wrong: it did not, and a "rewritten" task's final expression matches an
  acceptable expression), and of their rewriter calls only the rewrites that match an acceptable
  expression (content-word F1, as ``agent-eval`` matches them).

Identical examples (same role, prompt, images and reply) are kept once. Examples are split into train
and validation **by image**: all calls about one image fall on one side, so validation measures
images the student never saw.

Layout of ``OUT``: ``ROLE/train.jsonl`` and ``ROLE/val.jsonl`` (one example a line, the ``messages``
layout TRL and ``datasets`` read, with ``images`` for VLM examples), ``images/`` (the VLM views, PNG),
and ``manifest.json`` (sources, selection, templates, counts).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from reallod.agent.agent_eval import Gold, acceptable, load_gold, match_f1
from reallod.agent.decisions import SPECS
from reallod.agent.roles import ROLE_NAMES, load_prompt, render_messages
from reallod.agent.task import ObjectRef
from reallod.agent.trace import TRACE_VERSION, read_trace
from reallod.agent.views import make_view
from reallod.data.io import atomic_text
from reallod.errors import ConfigError, DataError
from reallod.llm.backends.base import map_parts
from reallod.llm.prompts import PromptTemplate
from reallod.runs.image_root import ImageLoader

SFT_FORMAT = 1
SOURCES: tuple[str, ...] = ("teacher", "gold")
SPLITS: tuple[str, ...] = ("train", "val")
MANIFEST = "manifest.json"
FINISHED: tuple[str, ...] = ("correct", "rewritten", "wrong", "unresolved")
LABEL_FIELD = {"reflector": "verdict", "planner": "state"}
"""The decision field that names an example's class, for the counts (the other roles have none)."""


@dataclass(slots=True)
class Example:
    """One role call as a training example."""

    role: str
    messages: list[dict[str, Any]]
    images: list[str]  # paths relative to the dataset folder (VLM examples)
    task_id: str
    image: str  # the task's image, as the trace names it: the unit of the train/val split
    task_verdict: str
    label: str
    cycle: int
    trace: str
    key: str = ""

    def to_json(self, split: str) -> dict[str, Any]:
        row: dict[str, Any] = {"messages": self.messages}
        if self.images:
            row["images"] = self.images
        row.update(role=self.role, task_id=self.task_id, image=self.image, task_verdict=self.task_verdict,
                   label=self.label, cycle=self.cycle, trace=self.trace, split=split)
        return row


@dataclass(slots=True)
class SftReport:
    """What ``sft-data`` read, kept and wrote."""

    out: Path
    traces: list[str] = field(default_factory=list)
    tasks_read: int = 0
    tasks_used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why tasks or calls were left out → count
    duplicates: int = 0
    examples: dict[str, dict[str, int]] = field(default_factory=dict)  # role → split → count
    labels: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)  # role → split → label → n
    task_verdicts: dict[str, Counter[str]] = field(default_factory=dict)  # split → final verdict → tasks
    images: dict[str, int] = field(default_factory=dict)  # split → images
    prompts_changed: int = 0  # prompts that differ from the ones recorded during the run

    def total(self) -> int:
        return sum(sum(s.values()) for s in self.examples.values())

    def to_dict(self) -> dict[str, Any]:
        return {"traces": self.traces, "tasks_read": self.tasks_read, "tasks_used": self.tasks_used,
                "skipped": dict(self.skipped), "duplicates": self.duplicates, "examples": self.examples,
                "labels": {r: {s: dict(c) for s, c in by.items()} for r, by in self.labels.items()},
                "task_verdicts": {s: dict(c) for s, c in self.task_verdicts.items()}, "images": self.images,
                "prompts_changed": self.prompts_changed}


def role_templates(config: str | os.PathLike | None = None) -> dict[str, PromptTemplate]:
    """Each role's template: the packaged ones, or those of an agent config (the student's, whose roles
    may name their own ``prompt`` files)."""
    templates = {name: load_prompt(name) for name in ROLE_NAMES}
    if config is not None:
        from reallod.agent.agent_config import load_agent_config

        cfg = load_agent_config(config)
        for name, rc in cfg.roles.items():
            if rc is not None and rc.prompt is not None:
                templates[name] = load_prompt(name, rc.prompt)
    return templates


def check_trace_header(path: Path, header: dict[str, Any]) -> None:
    """Refuse traces this code cannot build examples from (older or newer formats)."""
    version = header.get("trace")
    if not isinstance(version, int) or version < 2:
        raise DataError(f"trace format {version!r} was written before reallod recorded the values each prompt "
                        "was rendered with, so its prompts cannot be rebuilt from the templates; run the agent "
                        f"again (reallod realign or reallod agent-eval) to get a format-{TRACE_VERSION} trace",
                        path=str(path))
    if version > TRACE_VERSION:
        raise DataError(f"trace format {version} is newer than this reallod reads (up to {TRACE_VERSION}); "
                        "upgrade reallod", path=str(path))


def _image_hash(seed: int, image: str) -> str:
    return hashlib.blake2b(f"{seed}:{image}".encode(), digest_size=8).hexdigest()


def split_images(images: set[str], val_fraction: float, seed: int = 0) -> set[str]:
    """The images of the validation side: ``round(val_fraction × n)`` of them (at least one when
    ``val_fraction`` > 0 and there are two or more images), chosen by a seeded hash of the image name,
    so a split is the same on every machine."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}")
    ordered = sorted(images, key=lambda im: (_image_hash(seed, im), im))
    n_val = round(val_fraction * len(ordered))
    if val_fraction > 0 and len(ordered) >= 2:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    return set(ordered[:n_val])


def _json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


class _Views:
    """Re-renders VLM views from a trace's images, checks their crop boxes, and stores each once."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.loaders: dict[Path, ImageLoader] = {}

    def loader(self, trace: Path, header: dict[str, Any], images: Path | None) -> ImageLoader:
        root = images if images is not None else Path(header.get("images") or trace.parent)
        if root not in self.loaders:
            try:
                self.loaders[root] = ImageLoader(root)
            except DataError as e:
                raise DataError(f"the image root {root} of its VLM calls is gone ({e.message}); pass --images "
                                "with the folder the images are in now", path=str(trace)) from None
        return self.loaders[root]

    def render(self, loader: ImageLoader, trace: Path, task: dict[str, Any], step: dict[str, Any]) -> tuple[str, Any]:
        """(relative path of the stored view, the view as a PIL image)."""
        view = step.get("view") or {}
        name, tid = view.get("name"), task.get("task_id")
        try:
            image = loader.load(str(task["image_path"]))
            box = ObjectRef(**task["chosen"]).union_box()
            img, crop = make_view(image, box, str(name))
        except DataError as e:
            raise DataError(f"task {tid}: cannot re-render the {name} view its VLM call was shown: {e}; pass "
                            "--images with the folder the images are in now", path=str(trace)) from None
        if view.get("crop_box") is not None and list(view["crop_box"]) != list(crop):
            raise DataError(f"task {tid}: the re-rendered {name} view has crop box {crop}, the trace recorded "
                            f"{view['crop_box']}: the image {task['image_path']} is not the one the run saw",
                            path=str(trace))
        png = _png_bytes(img)
        rel = f"images/{hashlib.blake2b(png, digest_size=16).hexdigest()}.png"
        target = self.out / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(png)
            os.replace(tmp, target)
        return rel, img


def _png_bytes(img: Any) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _recorded_prompt(step: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The first ``n`` messages the run sent (a retry appends to them), images as recorded."""
    return list(step.get("messages") or [])[:n]


def _comparable(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with image parts reduced to their type, for comparing a re-rendered prompt with the
    recorded one (the trace keeps an image's view name, crop box and size instead of its pixels)."""
    return map_parts(messages, lambda p: {"type": "image"})


def _dataset_messages(role: str, prompt: list[dict[str, Any]], reply: str) -> list[dict[str, Any]]:
    """The messages of one example as the dataset stores them. VLM examples have every content as a list
    of parts (a column of one type, as ``datasets`` needs; the image part is ``{"type": "image"}`` and
    the pixels are in ``images``); text roles have plain strings."""
    out: list[dict[str, Any]] = []
    for m in [*prompt, {"role": "assistant", "content": reply}]:
        content = m["content"]
        if role == "vlm":
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            else:
                content = [{"type": "image"} if p.get("type") == "image" else
                           {"type": "text", "text": str(p.get("text", ""))} for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def _gold_filter(gold: Gold, task: dict[str, Any], result: dict[str, Any], min_f1: float) -> str | None:
    """Why a task does not agree with its gold label, or None."""
    verdict = result["verdict"]
    if gold.correct:
        return None if verdict == "correct" else "disagrees with gold"
    if verdict == "correct":
        return "disagrees with gold"
    if verdict == "rewritten":
        final = str(result.get("expression") or "")
        if not any(match_f1(final, a) >= min_f1 for a in acceptable(gold, str(task.get("raw_expression") or ""))):
            return "rewrite matches no gold expression"
    return None


def iter_examples(trace: Path, *, templates: dict[str, PromptTemplate], views: _Views, report: SftReport,
                  images: Path | None = None, gold: dict[str, Gold] | None = None, gold_path: Path | None = None,
                  min_f1: float = 0.6) -> Iterator[Example]:
    """The examples of one trace (selected, not yet deduplicated nor split)."""
    if not trace.is_file():
        raise DataError("no such trace file", path=str(trace))
    header, entries = read_trace(trace)
    check_trace_header(trace, header)
    loader: ImageLoader | None = None
    for entry in entries:
        report.tasks_read += 1
        task, result = entry.get("task"), entry.get("result") or {}
        tid = str(entry["task_id"])
        if entry.get("recovered") or not isinstance(task, dict) or "chosen" not in task:
            report.skipped["tasks without prompts (recovered after a crash, or an input problem)"] += 1
            continue
        verdict = result.get("verdict")
        if verdict not in FINISHED:
            report.skipped[f"tasks {verdict or 'without a verdict'}"] += 1
            continue
        g = None
        if gold is not None:
            g = gold.get(tid)
            if g is None:
                raise DataError(f"task {tid} has no gold label in {gold_path}: was this trace made from that "
                                "file? (its header says input "
                                f"{header.get('input')})", path=str(trace))
            if g.raw_expression is not None and g.raw_expression != task.get("raw_expression"):
                raise DataError(f"task {tid}: raw expression {task.get('raw_expression')!r}, but {gold_path} "
                                f"labels task {tid} as {g.raw_expression!r}: this trace was made from another "
                                "input", path=str(trace))
            why = _gold_filter(g, task, result, min_f1)
            if why is not None:
                report.skipped[f"tasks: {why}"] += 1
                continue
        report.tasks_used += 1
        for step in result.get("steps") or []:
            role, decision = step.get("role"), step.get("decision")
            if role not in ROLE_NAMES or not isinstance(decision, dict) or step.get("error"):
                report.skipped["calls without a usable decision"] += 1
                continue
            values = step.get("values")
            if not isinstance(values, dict):
                raise DataError(f"task {tid}: a {role} call without the values its prompt was rendered with "
                                f"(the trace's header says format {header.get('trace')}, but this line is "
                                "older): run the agent again for a complete trace", path=str(trace))
            if role == "rewriter" and g is not None:
                ok = acceptable(g, str(task.get("raw_expression") or ""))
                if not any(match_f1(str(decision.get("expression") or ""), a) >= min_f1 for a in ok):
                    report.skipped["rewrites that match no acceptable expression"] += 1
                    continue
            pictures: list[str] = []
            pil = None
            if role == "vlm":
                if loader is None:
                    loader = views.loader(trace, header, images)
                rel, pil = views.render(loader, trace, task, step)
                pictures.append(rel)
            prompt = render_messages(templates[role], SPECS[role], values, [pil] if pil is not None else None)
            if _comparable(prompt) != _comparable(_recorded_prompt(step, len(prompt))):
                report.prompts_changed += 1
            label_field = LABEL_FIELD.get(role)
            yield Example(role, _dataset_messages(role, prompt, SPECS[role].reply(decision)), pictures, tid,
                          str(task.get("image_path") or ""), str(verdict),
                          str(decision.get(label_field, "")) if label_field else "", int(step.get("cycle") or 0),
                          str(trace))


def _dedupe_key(ex: Example) -> str:
    return hashlib.blake2b(_json_bytes([ex.role, ex.messages, ex.images]), digest_size=16).hexdigest()


def build_sft_data(traces: list[Path], out: Path, *, source: str = "teacher", labelled: Path | None = None,
                   images: Path | None = None, config: str | os.PathLike | None = None, val_fraction: float = 0.2,
                   seed: int = 0, min_f1: float = 0.6, overwrite: bool = False) -> SftReport:
    """Build the datasets of ``traces`` under ``out`` (see the module docstring); returns the counts.

    Refuses an ``out`` that already holds a dataset unless ``overwrite``; writes into a temporary folder
    beside it and renames it into place, so an interrupted build leaves no half dataset."""
    if source not in SOURCES:
        raise ConfigError(f"--from {source!r}: expected teacher or gold")
    if source == "gold" and labelled is None:
        raise ConfigError("--from gold needs the labelled task file: --from gold LABELLED")
    if not traces:
        raise ConfigError("no trace given")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the dataset")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} already exists and is not empty; pass --overwrite to replace it")
        read_manifest(out)  # --overwrite replaces a dataset, never another folder (a teacher run, say)
    inside = [t for t in traces if Path(t).resolve().is_relative_to(out)]
    if inside:
        raise ConfigError(f"--out {out} holds the trace {inside[0]}: give another folder for the dataset")
    templates = role_templates(config)
    gold = load_gold(labelled) if source == "gold" and labelled is not None else None
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        report = SftReport(out, [str(t) for t in traces])
        views = _Views(tmp)
        kept: list[Example] = []
        seen: dict[str, Example] = {}
        for trace in traces:
            for ex in iter_examples(Path(trace), templates=templates, views=views, report=report, images=images,
                                    gold=gold, gold_path=labelled, min_f1=min_f1):
                ex.key = _dedupe_key(ex)
                if ex.key in seen:
                    report.duplicates += 1
                    continue
                seen[ex.key] = ex
                kept.append(ex)
        if not kept:
            why = ", ".join(f"{n} {reason}" for reason, n in report.skipped.most_common()) or "no role calls"
            raise DataError(f"no examples selected ({report.tasks_read} task(s) read; left out: {why})",
                            path=", ".join(str(t) for t in traces))
        val_images = split_images({ex.image for ex in kept}, val_fraction, seed)
        _write(tmp, kept, val_images, report)
        manifest = {"sft_format": SFT_FORMAT, "source": source, "labelled": str(labelled) if labelled else None,
                    "config": str(config) if config else None, "val_fraction": val_fraction, "seed": seed,
                    "templates": {r: hashlib.blake2b(f"{t.system}\n{t.user}".encode(), digest_size=8).hexdigest()
                                  for r, t in templates.items()},
                    "val_images": sorted(val_images), **report.to_dict()}
        with atomic_text(tmp / MANIFEST) as f:
            f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _write(folder: Path, examples: list[Example], val_images: set[str], report: SftReport) -> None:
    rows: dict[tuple[str, str], list[bytes]] = {}
    split_of_task: dict[tuple[str, str], tuple[str, str]] = {}
    for ex in examples:
        split = "val" if ex.image in val_images else "train"
        rows.setdefault((ex.role, split), []).append(orjson.dumps(ex.to_json(split)))
        report.examples.setdefault(ex.role, dict.fromkeys(SPLITS, 0))[split] += 1
        report.labels.setdefault(ex.role, {s: Counter() for s in SPLITS})[split][ex.label or "-"] += 1
        split_of_task[(ex.trace, ex.task_id)] = (split, ex.task_verdict)
    for split, verdict in split_of_task.values():
        report.task_verdicts.setdefault(split, Counter())[verdict] += 1
    for split in SPLITS:
        report.images[split] = len({ex.image for ex in examples if (ex.image in val_images) == (split == "val")})
    for (role, split), lines in rows.items():
        (folder / role).mkdir(exist_ok=True)
        with open(folder / role / f"{split}.jsonl", "wb") as f:
            f.write(b"\n".join(lines) + b"\n")


def read_manifest(data: Path) -> dict[str, Any]:
    """The manifest of a dataset folder; a clear error when ``data`` is not one."""
    path = Path(data) / MANIFEST
    if not path.is_file():
        raise DataError(f"not an sft-data folder (no {MANIFEST}); build one with `reallod agent sft-data`",
                        path=str(data))
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e}", path=str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("sft_format") != SFT_FORMAT:
        raise DataError(f"sft-data format {manifest.get('sft_format') if isinstance(manifest, dict) else None!r}; "
                        f"this reallod reads format {SFT_FORMAT}: rebuild it with `reallod agent sft-data`",
                        path=str(path))
    return manifest


def role_files(data: Path, role: str) -> dict[str, Path]:
    """``{"train": ..., "val": ...}`` of one role (val only when it has examples); a clear error when the
    role has no training examples."""
    if role not in ROLE_NAMES:
        raise ConfigError(f"unknown role {role!r}; roles are {', '.join(ROLE_NAMES)}")
    manifest = read_manifest(data)
    counts = (manifest.get("examples") or {}).get(role) or {}
    files = {s: Path(data) / role / f"{s}.jsonl" for s in SPLITS if counts.get(s)}
    if "train" not in files or not files["train"].is_file():
        have = ", ".join(f"{r} ({c.get('train', 0)} train)" for r, c in (manifest.get("examples") or {}).items())
        raise DataError(f"no training examples for the {role} role (the data has: {have or 'none'})",
                        path=str(data))
    return files


def open_view(data: Path, rel: Any) -> Any:
    """One VLM view of a dataset folder as an RGB image; a path that leaves the folder is refused, not read."""
    from reallod.data.images import open_image, resolve_image

    path = resolve_image(str(data), rel) if isinstance(rel, str) else None
    if path is None:
        raise DataError(f"image path {rel!r} is not a path inside the dataset folder", path=str(data))
    return open_image(path)
