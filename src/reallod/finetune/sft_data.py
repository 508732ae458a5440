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
and validation **by image file** (the task's image path resolved against the trace's image root, so
two traces that name one photo differently agree): all calls about one photo fall on one side, so
validation measures images the student never saw. A photo's side follows from a seeded hash of its file
name alone (:func:`split_images`), so a dataset rebuilt from traces that grew keeps every photo on its
side; a split that would leave no training example is refused.

A trace entry whose fields lack the shape the agent writes is an error naming the trace, the line, the
task and the field; a call whose recorded decision the reply parser would not have given (a missing or
invalid ``verdict``, say) is left out and counted, as calls without a decision are: its reply would carry
a made-up label.

A step whose recorded values lack a placeholder of the template is an error, not a prompt with a
literal ``$name`` in it. Each distinct view (image file, box, view name) is rendered and stored once;
examples are spooled to disk per role while the traces are read and routed to their split afterwards,
so memory holds a dedupe key per example and a few fields per task, not the examples.

Layout of ``OUT``: ``ROLE/train.jsonl`` and ``ROLE/val.jsonl`` (one example a line, the ``messages``
layout TRL and ``datasets`` read, with ``images`` for VLM examples), ``images/`` (the VLM views, PNG),
and ``manifest.json`` (sources, selection, templates, counts).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from reallod.agent.agent_eval import Gold, acceptable, load_gold, match_f1
from reallod.agent.decisions import SPECS, DecisionError
from reallod.agent.roles import ROLE_NAMES, load_prompt, render_messages
from reallod.agent.task import ObjectRef
from reallod.agent.trace import TRACE_VERSION, read_numbered_trace
from reallod.agent.views import make_view
from reallod.data.io import atomic_text
from reallod.data.meter import unmetered
from reallod.errors import ConfigError, DataError
from reallod.finetune.run_file import is_finetune
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
NONE_VALUES = {"caption": "caption"}
"""Values the workflow takes from a task field that may be None (placeholder → task field): the trace
records only str/int/float values, so such a value is missing from a step whose task has None there,
and the run rendered it as empty text."""
VIEW_NAME = re.compile(r"[0-9a-f]{32}\.png")
"""The file names of the views sft-data stores in ``images/``."""


@dataclass(slots=True)
class Example:
    """One role call as a training example."""

    role: str
    messages: list[dict[str, Any]]
    images: list[str]  # paths relative to the dataset folder (VLM examples)
    task_id: str
    image: str  # the task's image, as the trace names it
    file: str  # that image resolved against the trace's image root: the unit of the train/val split
    task_verdict: str
    label: str
    cycle: int
    trace: str
    key: str = ""

    def to_json(self, split: str | None) -> dict[str, Any]:
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
    used: list[tuple[str, str, str]] = field(default_factory=list, repr=False)
    """(image file, image as the trace names it, final verdict) of every used task, whether or not its
    examples survive deduplication: the split's units and the per-split verdict counts."""

    def total(self) -> int:
        return sum(sum(s.values()) for s in self.examples.values())

    def to_dict(self) -> dict[str, Any]:
        return {"traces": self.traces, "tasks_read": self.tasks_read, "tasks_used": self.tasks_used,
                "skipped": dict(self.skipped), "duplicates": self.duplicates, "examples": self.examples,
                "labels": {r: {s: dict(c) for s, c in by.items()} for r, by in self.labels.items()},
                "task_verdicts": {s: dict(c) for s, c in self.task_verdicts.items()}, "images": self.images,
                "prompts_changed": self.prompts_changed}


def template_hash(template: PromptTemplate) -> str:
    """What the manifest records of each role's template (``templates``): ``agent agreement`` refuses a
    config whose template hashes otherwise."""
    return hashlib.blake2b(f"{template.system}\n{template.user}".encode(), digest_size=8).hexdigest()


def role_templates(config: str | os.PathLike | None = None) -> dict[str, PromptTemplate]:
    """Each role's template: the packaged ones, or those of an agent config (the student's, whose roles
    may name their own ``prompt`` files)."""
    templates = {name: load_prompt(name) for name in ROLE_NAMES}
    if config is not None:
        from reallod.agent.agent_config import load_agent_config

        cfg = load_agent_config(config, required=())  # only its prompts are read
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
    """The images of the validation side: those whose seeded hash, read as a number in [0, 1), is below
    ``val_fraction``. An image's side depends on its own name alone, so the same on every machine, and
    adding images never moves one from train to validation (nor back). One exception, for small sets:
    with two or more images and ``val_fraction`` > 0, a side the rule leaves empty takes the image
    nearest to it (the lowest hash goes to validation, the highest to training)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}")
    if val_fraction == 0:
        return set()
    rank = {im: int(_image_hash(seed, im), 16) for im in images}
    ordered = sorted(images, key=lambda im: (rank[im], im))
    val = {im for im in ordered if rank[im] / 2**64 < val_fraction}
    if len(ordered) >= 2 and not val:
        val = {ordered[0]}
    elif len(ordered) >= 2 and len(val) == len(ordered):
        val.discard(ordered[-1])
    return val


def _json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def image_root(trace: Path, header: dict[str, Any], images: Path | None) -> Path:
    """The folder a trace's image paths are relative to: ``--images``, else the one the run recorded."""
    return images if images is not None else Path(header.get("images") or trace.parent)


def image_file(root: Path, rel: str) -> str:
    """A task's image as one file, whatever the trace called it (``a.jpg`` under ``examples/images``,
    ``images/a.jpg`` under ``examples``, a symbolic link): the unit of the train/val split."""
    return str(root.joinpath(*PurePosixPath(rel.replace("\\", "/")).parts).resolve())


class _Views:
    """Re-renders VLM views from a trace's images, checks their crop boxes, and stores each once.

    A view is rendered and PNG-encoded once per (image file, box, view name): the tasks of one object
    ask for the same few views again and again, and encoding dominated the build."""

    def __init__(self, out: Path, cache_size: int = 16384) -> None:
        self.out = out
        self.loaders: dict[Path, ImageLoader] = {}
        self.stored: OrderedDict[tuple[str, tuple[float, ...], str], tuple[str, list[int]]] = OrderedDict()
        self.cache_size = cache_size  # entries are a path and a box: small; a miss only re-renders

    def loader(self, trace: Path, root: Path) -> ImageLoader:
        if root not in self.loaders:
            try:
                self.loaders[root] = ImageLoader(root)
            except DataError as e:
                raise DataError(f"the image root {root} of its VLM calls is gone ({e.message}); pass --images "
                                "with the folder the images are in now", path=str(trace)) from None
        return self.loaders[root]

    def render(self, loader: ImageLoader, shape: _Shape, task: dict[str, Any], step: dict[str, Any],
               file: str, box: list[float]) -> str:
        """The path of the stored view of ``box``, relative to the dataset folder; ``shape`` says which
        trace line asked for it, for the errors."""
        view = step.get("view") or {}
        name, tid = str(view.get("name")), task.get("task_id")
        try:
            key = (file, tuple(box), name)
            if key in self.stored:
                self.stored.move_to_end(key)
            else:
                img, crop = make_view(loader.load(str(task["image_path"])), box, name)
                self.stored[key] = (self._store(_png_bytes(img)), list(crop))
                if len(self.stored) > self.cache_size:
                    self.stored.popitem(last=False)
        except DataError as e:
            raise DataError(f"task {tid}: cannot re-render the {name} view its VLM call was shown: {e}; pass "
                            "--images with the folder the images are in now", path=str(shape.trace),
                            line=shape.line) from None
        rel, crop = self.stored[key]
        if view.get("crop_box") is not None and list(view["crop_box"]) != crop:
            raise DataError(f"task {tid}: the re-rendered {name} view has crop box {crop}, the trace recorded "
                            f"{view['crop_box']}: the image {task['image_path']} is not the one the run saw",
                            path=str(shape.trace), line=shape.line)
        return rel

    def _store(self, png: bytes) -> str:
        rel = f"images/{hashlib.blake2b(png, digest_size=16).hexdigest()}.png"
        target = self.out / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(png)
            os.replace(tmp, target)
        return rel


def _view_placeholder() -> Any:
    """What the prompt's image part holds: the dataset keeps the view as a file in ``images/`` and only
    ``{"type": "image"}`` in its messages, so the prompt needs the part's place, not the pixels."""
    from PIL import Image

    return Image.new("RGB", (1, 1))


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
    """The examples of one trace (selected, not yet deduplicated nor split). A field that does not have
    the shape the agent writes is an error naming the trace, the line, the task and the field."""
    if not trace.is_file():
        raise DataError("a folder, not a trace file" if trace.is_dir() else "no such trace file", path=str(trace))
    header, entries = read_numbered_trace(trace, on_torn=lambda _: report.skipped.update([TORN_LINE]))
    check_trace_header(trace, header)
    root = image_root(trace, header, images)
    loader: ImageLoader | None = None
    for lineno, entry in entries:
        report.tasks_read += 1
        tid = entry["task_id"]
        shape = _Shape(trace, lineno, tid)
        if isinstance(tid, bool) or not isinstance(tid, (str, int)):
            raise shape.error("task_id", "a string or an integer", tid)
        tid = str(tid)
        task, result = entry.get("task"), shape.expect(entry.get("result"), dict, "result", "an object or null")
        shape.expect(task, dict, "task", "an object or null")
        result = result or {}
        if entry.get("recovered") or not isinstance(task, dict) or "chosen" not in task:
            report.skipped["tasks without prompts (recovered after a crash, or an input problem)"] += 1
            continue
        verdict = shape.expect(result.get("verdict"), str, "result.verdict", "a string")
        if verdict not in FINISHED:
            report.skipped[f"tasks {verdict or 'without a verdict'}"] += 1
            continue
        g = None
        if gold is not None:
            g = gold.get(tid)
            if g is None:
                raise DataError(f"task {tid} has no gold label in {gold_path}: was this trace made from that "
                                "file? (its header says input "
                                f"{header.get('input')})", path=str(trace), line=lineno)
            if g.raw_expression is not None and g.raw_expression != task.get("raw_expression"):
                raise DataError(f"task {tid}: raw expression {task.get('raw_expression')!r}, but {gold_path} "
                                f"labels task {tid} as {g.raw_expression!r}: this trace was made from another "
                                "input", path=str(trace), line=lineno)
            why = _gold_filter(g, task, result, min_f1)
            if why is not None:
                report.skipped[f"tasks: {why}"] += 1
                continue
        image = task.get("image_path")
        if not isinstance(image, str) or not image:
            raise shape.error("task.image_path", "the path of the task's image", image)
        steps = shape.expect(result.get("steps"), list, "result.steps", "a list of steps") or []
        report.tasks_used += 1
        file = image_file(root, image)
        report.used.append((file, image, str(verdict)))
        for i, step in enumerate(steps):
            where = f"result.steps[{i}]"
            if not isinstance(step, dict):
                raise shape.error(where, "an object (one role call)", step)
            role, decision = step.get("role"), step.get("decision")
            if not isinstance(role, str) or role not in ROLE_NAMES or not isinstance(decision, dict) \
                    or step.get("error"):
                report.skipped["calls without a usable decision"] += 1
                continue
            values = step.get("values")
            if not isinstance(values, dict):
                raise DataError(f"task {tid}: a {role} call without the values its prompt was rendered with "
                                f"(the trace's header says format {header.get('trace')}, but this line is "
                                "older): run the agent again for a complete trace", path=str(trace), line=lineno,
                                field=f"{where}.values")
            _check_step(shape, where, step, values)
            missing = missing_values(templates[role], task, values)
            if missing:
                raise DataError(f"task {tid}: a {role} call whose recorded values lack {', '.join(missing)}, which "
                                f"the template {templates[role].name} uses: the prompt would hold the literal "
                                f"${missing[0]}; run the agent again for a complete trace, or render with a "
                                "template without it (--config)", path=str(trace), line=lineno,
                                field=f"{where}.values")
            if not recorded_decision(role, decision):
                # a reply needs every field as the teacher gave it: a filled-in default would be a made-up label
                report.skipped[UNPARSED_DECISION] += 1
                continue
            if role == "rewriter" and g is not None:
                ok = acceptable(g, str(task.get("raw_expression") or ""))
                if not any(match_f1(str(decision.get("expression") or ""), a) >= min_f1 for a in ok):
                    report.skipped["rewrites that match no acceptable expression"] += 1
                    continue
            pictures: list[str] = []
            if role == "vlm":
                box = _union_box(shape, task.get("chosen"))
                if loader is None:
                    loader = views.loader(trace, root)
                pictures.append(views.render(loader, shape, task, step, file, box))
            values = {**{k: "" for k in NONE_VALUES if k not in values}, **values}
            prompt = render_messages(templates[role], SPECS[role], values,
                                     [_view_placeholder()] if pictures else None)
            if _comparable(prompt) != _comparable(_recorded_prompt(step, len(prompt))):
                report.prompts_changed += 1
            label_field = LABEL_FIELD.get(role)
            yield Example(role, _dataset_messages(role, prompt, SPECS[role].reply(decision)), pictures, tid,
                          image, file, str(verdict),
                          str(decision.get(label_field, "")) if label_field else "", int(step.get("cycle") or 0),
                          str(trace))


TORN_LINE = "tasks whose trace line is cut short (its run killed while writing it, or still running)"
"""Why a plain trace's last line, torn, is left out (counted: it was left out without a word)."""

UNPARSED_DECISION = "calls whose decision lacks a field or has an invalid one (no made-up labels)"
"""Why a call whose recorded decision the reply parser would not have given is left out (counted)."""


def recorded_decision(role: str, decision: dict[str, Any]) -> bool:
    """Whether ``decision`` is one the role's reply parser gives (what the workflow records): every field
    there and already as the parser writes it. A reply built from another would fill a missing or invalid
    field with a default (``"verdict": "correct"``): a label the teacher never gave."""
    try:
        parsed = SPECS[role].normalise(decision)
    except DecisionError:
        return False
    return all(key in decision and decision[key] == value for key, value in parsed.items())


class _Shape:
    """Where a trace entry is (file, line, task), for errors naming a field that lacks the shape the agent
    writes: an ``unexpected TypeError`` named none of them."""

    def __init__(self, trace: Path, line: int, task_id: Any) -> None:
        self.trace, self.line, self.task_id = trace, line, task_id

    def error(self, field: str, expected: str, value: Any) -> DataError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
        return DataError(f"task {self.task_id}: expected {expected}, got {shown}: not a trace entry as the agent "
                         "writes it; fix the line or run the agent again for a complete trace",
                         path=str(self.trace), line=self.line, field=field)

    def expect(self, value: Any, kind: type, field: str, expected: str) -> Any:
        """``value`` if it is None or a ``kind``, else the error."""
        if value is not None and not isinstance(value, kind):
            raise self.error(field, expected, value)
        return value


def _check_step(shape: _Shape, where: str, step: dict[str, Any], values: dict[str, Any]) -> None:
    """Refuse a role call whose fields sft-data reads lack the shape the agent writes them in."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise shape.error(f"{where}.values.{key}", "a string or a number", value)
    cycle = step.get("cycle")
    if cycle is not None and (isinstance(cycle, bool) or not isinstance(cycle, int)):
        raise shape.error(f"{where}.cycle", "an integer", cycle)
    messages = shape.expect(step.get("messages"), list, f"{where}.messages", "a list of messages") or []
    for j, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        parts = content if isinstance(content, list) else []
        if not isinstance(content, (str, list)) or "role" not in m or not all(isinstance(p, dict) for p in parts):
            raise shape.error(f"{where}.messages[{j}]", "a message with a text or a list of parts", m)
    if step.get("role") == "vlm":
        view = step.get("view")
        if not isinstance(view, dict) or not isinstance(view.get("name"), str):
            raise shape.error(f"{where}.view", "the view the VLM was shown (an object with its name)", view)
        shape.expect(view.get("crop_box"), list, f"{where}.view.crop_box", "a box [x1, y1, x2, y2]")


def _union_box(shape: _Shape, chosen: Any) -> list[float]:
    """The box around a task's chosen object (what its VLM views are rendered around)."""
    boxes = chosen.get("bboxes") if isinstance(chosen, dict) else None
    if not isinstance(boxes, list) or not boxes or not all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in b) for b in boxes):
        raise shape.error("task.chosen.bboxes", "a list of [x1, y1, x2, y2] boxes", boxes)
    return ObjectRef(str(chosen.get("category")), boxes).union_box()


def missing_values(template: PromptTemplate, task: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The template's placeholders that a step's recorded values do not fill (``format`` comes from
    :func:`render_messages`; a :data:`NONE_VALUES` value is missing by right when its task field is
    None). Rendering leaves such a placeholder as literal ``$name`` text, which a student must not learn."""
    given = {"format", *values, *(k for k, f in NONE_VALUES.items() if task.get(f) is None)}
    return sorted(template.placeholders() - given)


def _dedupe_key(ex: Example) -> str:
    return hashlib.blake2b(_json_bytes([ex.role, ex.messages, ex.images]), digest_size=16).hexdigest()


def build_sft_data(traces: list[Path], out: Path, *, source: str = "teacher", labelled: Path | None = None,
                   images: Path | None = None, config: str | os.PathLike | None = None, val_fraction: float = 0.2,
                   seed: int = 0, min_f1: float = 0.6, overwrite: bool = False) -> SftReport:
    """Build the datasets of ``traces`` under ``out`` (see the module docstring); returns the counts.

    Refuses an ``out`` that already holds a dataset unless ``overwrite``, and with it one that holds
    anything sft-data did not write; writes into a temporary folder beside it and renames it into
    place, so an interrupted build leaves no half dataset."""
    if source not in SOURCES:
        raise ConfigError(f"--from {source!r}: expected teacher or gold")
    if source == "gold" and labelled is None:
        raise ConfigError("--from gold needs the labelled task file: --from gold LABELLED")
    if not traces:
        raise ConfigError("no trace given")
    seen: dict[Path, Path] = {}  # resolved → as given
    for t in map(Path, traces):  # its tasks would be read twice, counted twice
        if (first := seen.setdefault(t.resolve(), t)) is not t:
            also = f" (also as {first})" if first != t else ""
            raise ConfigError(f"the trace {t} is given twice{also}: give each trace once")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the dataset")
    inside = [t for t in traces if Path(t).resolve().is_relative_to(out)]
    if inside:
        raise ConfigError(f"--out {out} holds the trace {inside[0]}: give another folder for the dataset")
    holder = next((f for f in (out, *out.parents) if is_finetune(f)), None)
    if holder is not None:
        raise ConfigError(f"--out {out} lies inside the fine-tune folder {holder}, which holds only what "
                          "`reallod agent finetune` writes there (its --overwrite replaces it whole): choose an "
                          "--out outside it")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} already exists and is not empty; pass --overwrite to replace it")
        read_manifest(out)  # --overwrite replaces a dataset, never another folder (a teacher run, say)
        foreign = _foreign_entry(out)
        if foreign is not None:
            raise ConfigError(f"--overwrite would delete {foreign}, which sft-data did not write (a student "
                              f"saved inside the dataset, say): move it out of {out} or give another --out")
    templates = role_templates(config)
    with unmetered():  # the progress bar is of the traces
        gold = load_gold(labelled) if source == "gold" and labelled is not None else None
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        report = SftReport(out, [str(t) for t in traces])
        views = _Views(tmp)
        seen: set[str] = set()
        with _Spool(tmp / ".spool") as spool:
            for trace in traces:
                for ex in iter_examples(Path(trace), templates=templates, views=views, report=report,
                                        images=images, gold=gold, gold_path=labelled, min_f1=min_f1):
                    ex.key = _dedupe_key(ex)
                    if ex.key in seen:
                        report.duplicates += 1
                        continue
                    seen.add(ex.key)
                    spool.add(ex)
            if not spool.roles:
                why = ", ".join(f"{n} {reason}" for reason, n in report.skipped.most_common()) or "no role calls"
                raise DataError(f"no examples selected ({report.tasks_read} task(s) read; left out: {why})",
                                path=", ".join(str(t) for t in traces))
            val_files = split_files({file for file, _, _ in report.used}, val_fraction, seed)
            check_split(spool, val_files, val_fraction, seed)
            _write(tmp, spool, val_files, report)
        manifest = {"sft_format": SFT_FORMAT, "source": source, "labelled": str(labelled) if labelled else None,
                    "config": str(config) if config else None, "val_fraction": val_fraction, "seed": seed,
                    "templates": {r: template_hash(t)
                                  for r, t in templates.items()},
                    "val_images": sorted({image for file, image, _ in report.used if file in val_files}),
                    **report.to_dict()}
        with atomic_text(tmp / MANIFEST) as f:
            f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _foreign_entry(out: Path) -> Path | None:
    """The first entry of a dataset folder that sft-data does not write (its ``manifest.json``,
    ``ROLE/{train,val}.jsonl`` and ``images/HASH.png``), or None: what ``--overwrite`` must not delete."""
    splits = {f"{s}.jsonl" for s in SPLITS}
    for entry in sorted(out.iterdir()):
        if entry.name == MANIFEST and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name not in {*ROLE_NAMES, "images"} or entry.is_symlink() or not entry.is_dir():
            return entry
        for inner in sorted(entry.iterdir()):
            ours = VIEW_NAME.fullmatch(inner.name) if entry.name == "images" else inner.name in splits
            if not ours or inner.is_symlink() or not inner.is_file():
                return inner
    return None


def split_files(files: set[str], val_fraction: float, seed: int = 0) -> set[str]:
    """The image files of the validation side: :func:`split_images` of their file names, so a photo keeps
    its side wherever its folder lies and whatever other images a later dataset adds (photos of one name
    in different folders share a side)."""
    by_name: dict[str, set[str]] = {}
    for f in files:
        by_name.setdefault(os.path.basename(f), set()).add(f)
    return {f for name in split_images(set(by_name), val_fraction, seed) for f in by_name[name]}


def check_split(spool: _Spool, val_files: set[str], val_fraction: float, seed: int) -> None:
    """Refuse a split that leaves no training example (one image, held out), before anything is written."""
    if spool.files - val_files:
        return
    held = sorted(os.path.basename(f) for f in spool.files)
    raise ConfigError(f"--val-fraction {val_fraction} (--seed {seed}) holds out every image that has examples "
                      f"({len(held)}: {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}), which would leave no "
                      "training example: lower --val-fraction (0 trains on all), or add traces of more images")


class _Spool:
    """The kept examples, one line each in a file per role while the traces are read (the split needs
    every image first), so they need not all be held in memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.roles: dict[str, Any] = {}  # role → open spool file
        self.files: set[str] = set()  # the image files of the examples

    def __enter__(self) -> _Spool:
        self.folder.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self.roles.values():
            f.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def add(self, ex: Example) -> None:
        if ex.role not in self.roles:
            self.roles[ex.role] = open(self.folder / f"{ex.role}.jsonl", "wb")  # noqa: SIM115
        self.files.add(ex.file)
        self.roles[ex.role].write(orjson.dumps([ex.file, ex.to_json(None)]) + b"\n")

    def read(self, role: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(image file, row without its split) of each example of ``role``, in the order they came."""
        self.roles[role].flush()
        with open(self.folder / f"{role}.jsonl", "rb") as f:
            for line in f:
                file, row = orjson.loads(line)
                yield file, row


def _write(folder: Path, spool: _Spool, val_files: set[str], report: SftReport) -> None:
    """Route the spooled examples to ``ROLE/{train,val}.jsonl``; count examples, labels, images and the
    final verdicts of every used task (also those whose examples were all duplicates) per split."""
    for role in spool.roles:
        files: dict[str, Any] = {}
        try:
            for file, row in spool.read(role):
                split = "val" if file in val_files else "train"
                row["split"] = split
                if split not in files:
                    (folder / role).mkdir(exist_ok=True)
                    files[split] = open(folder / role / f"{split}.jsonl", "wb")  # noqa: SIM115
                files[split].write(orjson.dumps(row) + b"\n")
                report.examples.setdefault(role, dict.fromkeys(SPLITS, 0))[split] += 1
                report.labels.setdefault(role, {s: Counter() for s in SPLITS})[split][row["label"] or "-"] += 1
        finally:
            for f in files.values():
                f.close()
    by_split: dict[str, set[str]] = {s: set() for s in SPLITS}
    for file, _, verdict in report.used:
        split = "val" if file in val_files else "train"
        by_split[split].add(file)
        report.task_verdicts.setdefault(split, Counter())[verdict] += 1
    report.images = {s: len(f) for s, f in by_split.items()}


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
