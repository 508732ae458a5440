"""Generation of raw expressions for one image: caption, vlm_short, vlm_long, llm, groups, negatives.

One image is one task of the runner (:func:`reallod.runs.drive.drive`); its result is the Real-Data
record of raw expressions (each source's positives and the object's negatives) plus what was dropped
and why. The VLM writes the caption (centred on the scene: the evidence the reflector later trusts),
``vlm_short`` on the highlighted view and ``vlm_long`` with the box outlined; the LLM writes ``llm``
phrases from the caption and every object's normalised box, group expressions (relation ``multi``) and
hard negatives. Without a VLM those steps are reported unavailable and the caption is built from the
annotations, so the LLM steps and the agent still run. A step whose backend fails is skipped and
recorded in the result's ``failures`` (per error kind: calls and one example message), and so is a
reply the step cannot use (:data:`UNUSABLE`: no text, JSON that cannot be read, or a reply cut at the
token limit that is not whole JSON; an answer that says there is nothing, a JSON object without
phrases, is the model's answer, not a failure) and an image that cannot be decoded (:data:`IMAGE_ERROR`:
truncated, corrupt, over ``--max-pixels``): the run goes on, but such an image is not journaled, and an
unusable reply is dropped from the response cache, so a rerun generates the image again, asking the
model again. An unusable reply is first asked again within the run, up to the config's
``retry.max_attempts``. Only run-level errors (an endpoint that is down, a model that cannot load) stop
the run.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from reallod.agent.views import HIGHLIGHT, make_view
from reallod.engine.annotations import AnnObject, ImageAnnotation
from reallod.engine.groups import kept_groups
from reallod.engine.negatives import absent_categories, easy_negatives, fits_image, keep_negatives
from reallod.engine.phrases import Unusable, format_hint, list_schema, read_list, read_phrase, read_text
from reallod.engine.text import accept, category_display, category_hint, clean, fold
from reallod.errors import ConfigError, DataError
from reallod.llm.backends.base import Backend, BackendError, Completion
from reallod.llm.prompts import PromptTemplate
from reallod.llm.replies import forget_reply

STEPS: tuple[str, ...] = ("caption", "vlm_short", "vlm_long", "llm", "group", "hard_negative")
VLM_STEPS: tuple[str, ...] = ("caption", "vlm_short", "vlm_long")
T = TypeVar("T")
IMAGE_ERROR = "image_error"
"""The failure kind of an image whose pixels cannot be loaded: it fails that image only, as a failed model
call does (the header check at startup cannot see a truncated file)."""
UNUSABLE = "unusable_answer"
"""The failure kind of a call whose replies its step could not use, asked again up to ``retry.max_attempts``
(``realign`` names its own so): it fails the image as a failed call does, and the replies are dropped
from the response cache, so that a rerun asks again."""
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "caption": frozenset({"categories"}),
    "vlm_short": frozenset({"category", "hint"}),
    "vlm_long": frozenset({"category", "hint"}),
    "llm": frozenset({"caption", "objects", "category", "hint", "box", "count", "format"}),
    "group": frozenset({"caption", "objects", "category", "hint", "members", "boxes", "count", "format"}),
    "hard_negative": frozenset({"caption", "objects", "category", "hint", "box", "positives", "count", "format"}),
}


@dataclass(slots=True)
class GenerateSettings:
    """How much to generate, and the limits a generation must respect to be kept."""

    llm_expressions: int = 3
    group_expressions: int = 2
    hard_negatives: int = 2
    easy_negatives: int = 2
    max_words_short: int = 12
    max_words_long: int = 48
    max_words_llm: int = 20
    caption_max_tokens: int = 160
    vlm_max_tokens: int = 64
    llm_max_tokens: int = 96
    temperature: float | None = None  # None: the config's, of the rewriter role (LLM steps) and the vlm role
    max_objects: int | None = None  # per image (largest first); None: all

    def describe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def load_prompt(step: str, path: str | Path | None = None) -> PromptTemplate:
    """The packaged prompt of a generation step, or a user's file; unknown placeholders are refused."""
    if path is None:
        text = files("reallod.engine").joinpath("prompts", f"{step}.txt").read_text(encoding="utf-8")
        template = PromptTemplate.parse(f"{step}.txt", text)
    else:  # read as the agent's prompts are: an unreadable or non-UTF-8 file is named
        template = PromptTemplate.read(path)
    name = template.name
    unknown = template.placeholders() - PLACEHOLDERS[step]
    if unknown:
        raise ConfigError(f"prompt {name}: unknown placeholder(s) {', '.join(sorted(unknown))} for step {step}; "
                          f"available: {', '.join(sorted(PLACEHOLDERS[step]))}")
    return template


@dataclass(slots=True)
class Generators:
    """The models of the generation steps: the config's LLM (its rewriter) and VLM (None: no VLM)."""

    llm: Backend
    vlm: Backend | None
    prompts: dict[str, PromptTemplate] = field(default_factory=lambda: {s: load_prompt(s) for s in STEPS})
    scorer: Any = None  # a clip_filter.RegionTextScorer, or None (the filter is off by default)
    threshold: float = 0.0
    llm_max_tokens: int | None = None  # the config rewriter's max_tokens: the LLM steps' limit where higher
    max_attempts: int = 3  # replies asked for per call, an unusable one asked again (the config's retry:)
    llm_temperature: float | None = None  # the config rewriter's and vlm's temperature (None: the server's
    vlm_temperature: float | None = None  # default, e.g. vLLM's from the model's generation_config)

    def unavailable(self) -> list[str]:
        return list(VLM_STEPS) if self.vlm is None else []


def norm_box(box: list[float], width: int, height: int) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in (box[0] / width, box[1] / height, box[2] / width,
                                                   box[3] / height)) + "]"


def named(category: str) -> dict[str, str]:
    """How a prompt names an object's category: as people name it ("glass" for LVIS ``glass_(drink_container)``,
    whose qualifier a model would copy into its phrases), with the dataset's sense as a hint."""
    return {"category": category_display(category), "hint": category_hint(category)}


def annotation_caption(img: ImageAnnotation) -> str:
    """The caption when no VLM is configured: what the annotations say, as plain sentences."""
    counts = Counter(category_display(o.category) for o in img.objects)
    parts = [f"one {cat}" if n == 1 else f"{n} {cat} objects" for cat, n in counts.items()]
    return "The image contains " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


async def _ask(backend: Backend, prompt: PromptTemplate, values: dict[str, Any], counts: Counter[str], step: str,
               failures: dict[str, list[Any]], read: Callable[[Completion, int], T], *,
               image: Image.Image | None = None, schema: dict[str, Any] | None = None, max_tokens: int,
               temperature: float | None, attempts: int) -> T | None:
    """The reply as ``read`` makes it, or None when the call failed or every reply was unusable: recorded
    in ``failures`` (kind → [calls, first message]), since one failed call must not end a long run. An
    unusable reply is asked again in the same conversation, its reason shown to the model, up to
    ``attempts`` replies in all (the config's ``retry.max_attempts``, which the backend's own retries of
    failed requests also follow), and dropped from the response cache: a rerun asks the model again
    instead of replaying it. Run-level errors (a ConfigError) propagate."""
    messages = prompt.render(values, [image] if image is not None else None)
    convo = messages
    for attempt in range(1, attempts + 1):
        counts[f"{step}: calls"] += 1
        try:
            reply = await backend.complete(convo, schema=schema, max_tokens=max_tokens, temperature=temperature)
        except BackendError as e:
            failures.setdefault(e.kind, [0, f"{step}: {e}"])[0] += 1
            return None
        if cut := reply.meta.get("cut_fields"):  # phrases an in-process constrained decoder closed at the limit
            counts[f"{step}: cut at the token limit:dropped"] += len(cut)
        try:
            return read(reply, max_tokens)
        except Unusable as e:
            forget_reply(backend, reply)
            if attempt == attempts:
                failures.setdefault(UNUSABLE, [0, f"{step}: {backend.name}: {e}"])[0] += 1
                return None
            counts[f"{step}: unusable reply:asked again"] += 1
            # the roles alternate, as chat templates require: the reply (even empty), then why it failed
            hint = values.get("format") or "Answer with only the text asked for."
            convo = [*messages, {"role": "assistant", "content": reply.text or ""},
                     {"role": "user", "content": f"That answer cannot be used: {e.tell}. {hint}"}]
    return None


async def generate_image(img: ImageAnnotation, gens: Generators, settings: GenerateSettings,
                         load_image: Callable[[], Image.Image], vocabulary: list[str]) -> dict[str, Any]:
    """The raw-expression record of one image and the counts of what was kept and dropped."""
    counts: Counter[str] = Counter()
    failures: dict[str, list[Any]] = {}
    s, w, h = settings, img.width, img.height
    objects = list(img.objects)
    if s.max_objects is not None and len(objects) > s.max_objects:
        objects = sorted(objects, key=lambda o: -(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))[:s.max_objects]
        counts["objects over --max-objects:skipped"] += len(img.objects) - len(objects)
    present = sorted({o.category for o in img.objects})
    # what negatives must not name: every annotated category, the skipped boxes' too (a crowd of people)
    in_image = sorted({*present, *img.present})
    image: Image.Image | None = None
    if gens.vlm is not None or gens.scorer is not None:
        try:  # before any model call: none is paid for an image that cannot be shown
            image = await asyncio.to_thread(load_image)
        except DataError as e:
            record = {"filename": img.filename, "height": h, "width": w, "pairs": {}}
            return {"record": record, "counts": {}, "unavailable": gens.unavailable(),
                    "failures": {IMAGE_ERROR: [1, str(e)]}}
    llm_temp = s.temperature if s.temperature is not None else gens.llm_temperature
    vlm_temp = s.temperature if s.temperature is not None else gens.vlm_temperature
    llm_tokens = max(s.llm_max_tokens, gens.llm_max_tokens or 0)

    caption, caption_source = None, "annotations"
    if gens.vlm is not None:
        text = await _ask(gens.vlm, gens.prompts["caption"], {"categories": ", ".join(dict.fromkeys(map(category_display, present)))}, counts, "caption",
                          failures, read_text, image=image, max_tokens=s.caption_max_tokens, temperature=vlm_temp,
                          attempts=gens.max_attempts)
        if text is not None:
            caption, caption_source = " ".join(text.split()), "vlm"
    caption = caption or annotation_caption(img)
    listing = "; ".join(f"{category_display(o.category)} {norm_box(o.box, w, h)}" for o in img.objects)

    per_object: list[dict[str, list[str]]] = []
    all_positives: set[str] = set()
    for obj in objects:
        others = [o.category for o in img.objects if o is not obj]
        sources: dict[str, list[str]] = {}
        if gens.vlm is not None:
            view, _ = await asyncio.to_thread(make_view, image, obj.box, HIGHLIGHT)
            for step, max_words in (("vlm_short", s.max_words_short), ("vlm_long", s.max_words_long)):
                reply = await _ask(gens.vlm, gens.prompts[step], named(obj.category), counts, step, failures,
                                   read_phrase, image=view, max_tokens=s.vlm_max_tokens, temperature=vlm_temp,
                                   attempts=gens.max_attempts)
                if reply is None:
                    continue
                text, cut = reply
                if cut:
                    counts[f"{step}: cut at the token limit:dropped"] += 1
                else:
                    sources[step] = accept([clean(text)], obj.category, others, max_words=max_words, seen=set(),
                                           counts=counts, step=step, limit=1)
        if s.llm_expressions > 0:
            phrases = await _ask(gens.llm, gens.prompts["llm"],
                                 {"caption": caption, "objects": listing, **named(obj.category),
                                  "box": norm_box(obj.box, w, h), "count": s.llm_expressions,
                                  "format": format_hint(s.llm_expressions)}, counts, "llm", failures, read_list,
                                 schema=list_schema(s.llm_expressions), max_tokens=llm_tokens, temperature=llm_temp,
                                 attempts=gens.max_attempts)
            if phrases is not None:
                sources["llm"] = accept(phrases, obj.category, others, max_words=s.max_words_llm,
                                        seen=set(), counts=counts, step="llm", limit=s.llm_expressions)
        per_object.append(sources)
        for texts in sources.values():
            all_positives.update(fold(t) for t in texts)
        counts["object"] += 1

    groups = []
    candidates, cut = kept_groups(img.objects, objects) if s.group_expressions > 0 else ([], 0)
    if cut:  # a group phrase covers every instance: not one of those the record dropped
        counts["groups with an object over --max-objects:skipped"] += cut
    partial = [g for g in candidates if g[0] in img.partial]  # nor one the reader skipped (a crowd of them)
    if partial:
        counts["groups with a skipped box:skipped"] += len(partial)
        candidates = [g for g in candidates if g[0] not in img.partial]
    for category, boxes in candidates:
        others = [c for c in present if c != category]
        phrases = await _ask(gens.llm, gens.prompts["group"],
                             {"caption": caption, "objects": listing, **named(category), "members": len(boxes),
                              "boxes": ", ".join(norm_box(b, w, h) for b in boxes), "count": s.group_expressions,
                              "format": format_hint(s.group_expressions)}, counts, "group", failures, read_list,
                             schema=list_schema(s.group_expressions), max_tokens=llm_tokens, temperature=llm_temp,
                             attempts=gens.max_attempts)
        texts = [] if phrases is None else accept(phrases, category, others, max_words=s.max_words_llm,
                                                  seen=set(), counts=counts, step="group", limit=s.group_expressions)
        all_positives.update(fold(t) for t in texts)
        groups.append((category, boxes, texts))

    several = {c for c, n in Counter(o.category for o in img.objects).items() if n > 1} | set(img.partial)
    keep_unambiguous(objects, per_object, groups, several, counts)
    # LVIS lists the categories verified absent; elsewhere, every category not annotated on the image
    absent = absent_categories(vocabulary if img.absent is None else img.absent, in_image)
    pairs: dict[str, list[dict[str, Any]]] = {}
    for k, (obj, sources) in enumerate(zip(objects, per_object, strict=True)):
        positives = [t for texts in sources.values() for t in texts]
        if not positives:
            counts["object without positives:no pair"] += 1
            continue
        negatives: list[str] = []
        seen_neg = {fold(p) for p in positives}
        if s.hard_negatives > 0:
            phrases = await _ask(gens.llm, gens.prompts["hard_negative"],
                                 {"caption": caption, "objects": listing, **named(obj.category),
                                  "box": norm_box(obj.box, w, h), "positives": "; ".join(positives[:6]),
                                  "count": s.hard_negatives,
                                  "format": format_hint(s.hard_negatives)}, counts, "hard_negative", failures,
                                 read_list, schema=list_schema(s.hard_negatives), max_tokens=llm_tokens,
                                 temperature=llm_temp, attempts=gens.max_attempts)
            if phrases is not None:
                others = [o.category for o in img.objects if o is not obj]  # "the helmet on his head": not his
                hard = accept(phrases, obj.category, others, max_words=s.max_words_llm, seen=set(seen_neg),
                              counts=counts, step="hard_negative", limit=s.hard_negatives)
                kept, dropped = keep_negatives(hard, all_positives, in_image, seen_neg)
                counts["hard_negative: fits the image:dropped"] += dropped
                negatives += kept
        easy = easy_negatives(positives, obj.category, absent, s.easy_negatives, key=f"{img.filename}/{k}")
        kept, dropped = keep_negatives(easy, all_positives, in_image, seen_neg)
        counts["easy_negative: fits the image:dropped"] += dropped
        negatives += kept
        counts["negative:kept"] += len(negatives)
        for source, texts in sources.items():
            if texts:
                pairs.setdefault(source, []).append(_pair([obj.box], obj.category, texts, negatives))
                counts[f"{source}:kept"] += len(texts)
    for category, boxes, texts in groups:
        if texts:
            easy = easy_negatives(texts, category, absent, s.easy_negatives, key=f"{img.filename}/group/{category}")
            negatives, dropped = keep_negatives(easy, all_positives, in_image, {fold(t) for t in texts})
            counts["easy_negative: fits the image:dropped"] += dropped
            counts["negative:kept"] += len(negatives)
            pairs.setdefault("llm", []).append(_pair(boxes, category, texts, negatives))
            counts["group:kept"] += len(texts)

    if gens.scorer is not None:
        pairs = await asyncio.to_thread(_filter_pairs, pairs, gens, image, counts)
    record = {"filename": img.filename, "height": h, "width": w, "caption": caption,
              "caption_source": caption_source, "pairs": pairs}
    return {"record": record, "counts": dict(counts), "unavailable": gens.unavailable(), "failures": failures}


def keep_unambiguous(objects: list[AnnObject], per_object: list[dict[str, list[str]]],
                     groups: list[tuple[str, list[list[float]], list[str]]], several: set[str],
                     counts: Counter[str]) -> None:
    """Drop (in place, counted) the positives that refer to no one target alone: a phrase two objects or
    groups were given ("the tall white mast" for both masts: contradictory targets for the detector),
    an object's phrase that names only its category when the image has several of it ("the mast"),
    and a phrase an object got from two sources (it would be re-aligned twice)."""
    holders: Counter[str] = Counter()
    for sources in per_object:
        holders.update({fold(t) for texts in sources.values() for t in texts})
    for _, _, texts in groups:
        holders.update({fold(t) for t in texts})
    for obj, sources in zip(objects, per_object, strict=True):
        seen: set[str] = set()
        for step, texts in sources.items():
            kept = []
            for text in texts:
                key = fold(text)
                if holders[key] > 1:
                    counts[f"{step}: given to several objects:dropped"] += 1
                elif obj.category in several and fits_image(text, set(), [obj.category]):
                    counts[f"{step}: only the category, of which the image has several:dropped"] += 1
                elif key in seen:
                    counts[f"{step}: duplicate of another source:dropped"] += 1
                else:
                    seen.add(key)
                    kept.append(text)
            sources[step] = kept
    for i, (category, boxes, texts) in enumerate(groups):
        kept = [t for t in texts if holders[fold(t)] == 1]
        counts["group: given to several objects:dropped"] += len(texts) - len(kept)
        groups[i] = (category, boxes, kept)


def _pair(boxes: list[list[float]], category: str, positives: list[str], negatives: list[str]) -> dict[str, Any]:
    return {"bboxes": [[round(v, 2) for v in b] for b in boxes], "category": category,
            "relation": "multi" if len(boxes) > 1 else "single", "positive_expressions": list(positives),
            "negative_expressions": list(negatives)}


def _filter_pairs(pairs: dict[str, list[dict[str, Any]]], gens: Generators, image: Image.Image,
                  counts: Counter[str]) -> dict[str, list[dict[str, Any]]]:
    """Drop positives whose region–text similarity is below the threshold (pairs left empty go too)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for source, items in pairs.items():
        for pair in items:
            scores = gens.scorer.scores(image, pair["bboxes"], pair["positive_expressions"])
            kept = [t for t, sc in zip(pair["positive_expressions"], scores, strict=True) if sc >= gens.threshold]
            counts["clip filter:dropped"] += len(pair["positive_expressions"]) - len(kept)
            if kept:
                out.setdefault(source, []).append({**pair, "positive_expressions": kept})
    return out
