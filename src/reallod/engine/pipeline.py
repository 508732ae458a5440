"""``reallod generate`` and ``reallod pipeline``: annotations → raw expressions → re-aligned Real-Data.

Each stage resumes like ``realign`` does, through the same run session (:mod:`reallod.runs.session`:
response cache, journal, retries, progress): generation journals one result per image
(``OUT.generated.journal.jsonl``) and a rerun skips the images it holds; re-alignment is
:func:`reallod.agent.realign.realign` itself on the generated file (its own journal); assembly is a
cheap streaming pass, redone each time. A generation journal's task ids are positions among the images
the annotations keep, so the options that choose those images (``--keep-crowd``, ``--min-box-area``)
are never resumed across, not even with ``--force-resume``; of the config, it fingerprints only the
models generation calls (the rewriter's and the VLM's). A pipeline killed at any moment resumes at the
stage and the task where it stopped: the generated file is rewritten from the journal in input order,
byte for byte the same. The re-alignment journal names its input by the annotations the generated file
comes from and the generation journal that wrote it (not the file's bytes), so a rerun with a larger
``--limit``, which only appends records, resumes too, while a generation started over (its journal
deleted) is another input.

A stage that yields nothing (every expression dropped, a shard without images) is no error: its
summary says what was dropped and why, every file is written (empty where there is nothing), and the
next stage runs on nothing. Images whose model calls failed, or whose file cannot be decoded, are not
journaled, so a rerun generates them again. The pipeline does not wait for them: its generated file
holds one line per image, an empty record where an image has no expressions (yet), so generating a
failed image later fills its line and shifts no re-alignment task (task ids are record positions); the
rerun re-aligns only its expressions, and assembly drops records without expressions. Each stage's
event loop closes the backends' connections it opened (:meth:`reallod.agent.roles.Roles.aclose`); the
next stage opens its own.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from reallod.agent.assemble import check_policy
from reallod.agent.realign import RealignOptions, RealignRun, check_cache_options, realign, shared_files
from reallod.agent.roles import Roles
from reallod.agent.run_report import report_paths
from reallod.agent.run_roles import harden, roles_fingerprint
from reallod.agent.trace import trace_path_for
from reallod.data.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_HINT
from reallod.data.io import JsonlWriter, check_writable, same_file, written_over
from reallod.engine.annotations import ImageAnnotation, ReadOptions, check_image_files, read_annotations
from reallod.engine.finish import finish
from reallod.engine.generate import IMAGE_ERROR, UNUSABLE, GenerateSettings, Generators, generate_image
from reallod.errors import ConfigError, ReallodError, first_few
from reallod.llm.endpoints import model_id
from reallod.runs.image_root import ImageLoader
from reallod.runs.journal import (
    JournalMismatch,
    check_journaled_output,
    fingerprint,
    fingerprint_file,
    iter_journal,
    journal_path_for,
    read_header,
)
from reallod.runs.progress import RunMonitor
from reallod.runs.session import open_session
from reallod.runs.settings_diff import diff_settings
from reallod.runs.shard import in_shard, parse_shard


@dataclass(slots=True)
class GenerateOptions:
    annotations: Path
    images: Path
    config: str
    out: Path
    classes: Path | None = None  # OpenImages class descriptions
    skip_crowd: bool = True
    min_area: float = 0.0
    # boxes past the image border clamped (counted), not refused; not fingerprinted: without it such
    # annotations are refused, so a journal begun without it was begun on the same boxes
    clamp_boxes: bool = False
    settings: GenerateSettings = field(default_factory=GenerateSettings)
    clip_model: str | None = None  # path or hub id; None: no filter
    clip_threshold: float = 0.2
    max_pixels: int = DEFAULT_MAX_PIXELS  # the largest image decoded (VLM steps, the CLIP filter)
    limit: int | None = None  # images
    shard: str | None = None
    concurrency: int | None = None
    base_url: str | None = None
    llm_base_url: str | None = None
    vlm_base_url: str | None = None
    cache: Path | None = None
    no_cache: bool = False
    force_resume: bool = False


@dataclass(slots=True)
class GenerateRun:
    out: Path
    journal: Path
    images: int
    resumed: int
    ran: int
    counts: Counter[str]
    unavailable: list[str]
    wall_s: float
    fingerprint: dict[str, Any] = field(default_factory=dict)  # the generation journal's, and its "run" id
    failed: int = 0  # images of this run that failed (model calls, image file): not journaled, a rerun retries them
    failures: dict[str, list[Any]] = field(default_factory=dict)  # error kind → [failed calls, one message]
    failed_images: list[str] = field(default_factory=list)  # their file names, in input order
    annotated: int = 0  # images of the annotations that kept a box (before --shard and --limit)
    skipped: dict[str, int] = field(default_factory=dict)  # what reading the annotations dropped: reason → n

    @property
    def records(self) -> int:
        """Records written to the generated file (0: every image's expressions were dropped)."""
        return self.counts["record:written"]

    def failure_line(self) -> str:
        """How many images failed, which, and why: failed calls per error kind (images whose file cannot be
        decoded: :data:`IMAGE_ERROR`; replies that could not be used: :data:`UNUSABLE`), with one message each."""
        kinds = "; ".join(f"{kind} {n} {'image(s)' if kind == IMAGE_ERROR else 'call(s)'}, e.g. {example}"
                          for kind, (n, example) in sorted(self.failures.items()))
        why = [w for w, has in (("their image cannot be decoded", IMAGE_ERROR in self.failures),
                                ("the model's replies could not be used", UNUSABLE in self.failures),
                                ("their model calls failed", set(self.failures) - {IMAGE_ERROR, UNUSABLE})) if has]
        names = first_few(self.failed_images, 5)
        return f"{self.failed} image(s) not generated ({names}): {' or '.join(why)} ({kinds})"


class GenerationFailed(ReallodError):
    """Images whose model calls failed (the server errs, the model cannot answer, its replies cannot be
    used): nothing, or not everything, was generated. The images are not journaled, so the same command retries them."""

    exit_code = 1


def check_generated(run: GenerateRun, *, pipeline: bool = False) -> None:
    """Raise :class:`GenerationFailed` when every image this run tried failed, or, after a pipeline
    (``pipeline``), when any did: the others were re-aligned and written, and the exit status says the
    output is not complete yet."""
    if run.failed and (pipeline or not run.ran):
        what = "the others are re-aligned and written" if pipeline else "nothing was generated"
        raise GenerationFailed(f"{run.failure_line()}; {what}: rerun the same command to retry them")


def build_roles_for(opts: GenerateOptions) -> tuple[Roles, str, int, int]:
    """(roles, agent name, max cycles, concurrency) from the agent config."""
    from reallod.agent.agent_config import build_roles, load_agent_config

    cfg = load_agent_config(opts.config, base_url=opts.base_url, llm_base_url=opts.llm_base_url,
                            vlm_base_url=opts.vlm_base_url)
    return build_roles(cfg), cfg.name, cfg.max_cycles, opts.concurrency or cfg.concurrency


def check_options(opts: GenerateOptions) -> None:
    """Refuse, before any work, options that contradict each other: one of them would be ignored."""
    check_cache_options(opts.cache, opts.no_cache)


def image_id(index: int) -> str:
    return f"image/{index}"


def generation_fingerprint(roles: Roles) -> str:
    """The models generation calls: the rewriter's (the LLM steps) and the VLM's. The agent's other roles,
    and every role's prompt and sampling, are re-alignment's: changing them leaves generation as it was.
    (The rewriter's max_tokens, where above the LLM steps' own, raises their token limit: a reply that fit
    the lower one is the same, and one cut at it was not kept, so a journal resumes across it.)"""
    return fingerprint({"llm": model_id(roles.rewriter.backend),
                        "vlm": model_id(roles.vlm.backend) if roles.vlm is not None else None})


FILTERS = ("skip_crowd", "min_area")
"""The settings that choose which images the annotations keep: a journal's task ids are positions among
them, so a journal is never resumed across a change of these (not even with ``--force-resume``)."""

OPTION_NAMES = {
    "skip_crowd": "--keep-crowd", "min_area": "--min-box-area", "llm_expressions": "--llm-expressions",
    "group_expressions": "--group-expressions", "hard_negatives": "--hard-negatives",
    "easy_negatives": "--easy-negatives", "max_objects": "--max-objects",
    "config": "the config's rewriter or vlm model", "classes": "--classes (its content)",
    "clip": "--clip-model or --clip-threshold", "shard": "--shard",
}
"""What the user changes, by fingerprint or setting key (the other settings are the API's: named as keys)."""


def generation_settings(opts: GenerateOptions) -> dict[str, Any]:
    """What generation was asked for (hashed into the journal's fingerprint, kept whole in its header)."""
    return {**opts.settings.describe(), "skip_crowd": opts.skip_crowd, "min_area": opts.min_area}


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each setting that differs, by its option, with both values: ``--llm-expressions (was 3, now 1)``."""
    out = []
    for key, was, now in diff_settings(old, new):
        if key == "skip_crowd":  # the option says the opposite
            was, now = not was, not now
        out.append(f"{OPTION_NAMES.get(key, f'the setting {key}')} (was {was!r}, now {now!r})")
    return out


def check_resume(path: Path, fp: dict[str, Any], settings: dict[str, Any], roles: Roles, *,
                 force: bool) -> dict[str, Any]:
    """The fingerprint to open the generation journal ``path`` with; refuses, naming the options that
    changed, a journal written with other settings (unless ``force``) or other :data:`FILTERS` (always).

    A journal of an older reallod fingerprinted every role of the config: one from the same config resumes."""
    try:
        header = read_header(path)
    except (OSError, ReallodError):  # none yet, or not a journal: opening it says so
        return fp
    before = header.get("fingerprint")
    if not isinstance(before, dict) or next(iter_journal(path), None) is None:
        return fp  # no image finished: the journal starts over with these settings (Journal.open)
    if before.get("config") == roles_fingerprint(roles):
        fp = {**fp, "config": before["config"]}
    if before.get("annotations") != fp["annotations"] or before.get("settings") == fp["settings"]:
        return fp  # another input (the journal refuses it itself), or the same settings
    meta = header.get("meta")
    old = meta.get("settings") if isinstance(meta, dict) else None
    if isinstance(old, dict):
        changed, filters = _changes(old, settings), any(old.get(k) != settings[k] for k in FILTERS)
    else:  # an older journal keeps a hash only: --keep-crowd or --min-box-area may be what changed
        changed, filters = ["generation options (this journal, from an older reallod, does not say which)"], True
    changed += [OPTION_NAMES[k] for k in ("config", "classes", "clip", "shard") if before.get(k) != fp.get(k)]
    what = f"{path}: this journal was started with other {', '.join(changed)}"
    if filters:
        raise JournalMismatch(f"{what}; --keep-crowd and --min-box-area choose which images are generated (the "
                              "journal holds them by position), so it cannot be resumed, not even with "
                              "--force-resume: rerun with the original options, give another --out, or delete "
                              "the journal to start over")
    if not force:
        raise JournalMismatch(f"{what}; rerun with the original options, pass --force-resume to continue "
                              "anyway, or delete the journal to start over")
    return fp


def selected_images(images: list[ImageAnnotation], shard: tuple[int, int] | None,
                    limit: int | None) -> list[tuple[str, ImageAnnotation]]:
    """The shard's images (by file name: a shard never splits an image), then the first ``limit``."""
    out = [(image_id(i), img) for i, img in enumerate(images) if in_shard(f"image:{img.filename}", shard)]
    return out if limit is None else out[:limit]


def generate(opts: GenerateOptions, *, roles: Roles | None = None, monitor: RunMonitor | None = None,
             scorer: Any = None, hold_places: bool = False) -> GenerateRun:
    """Write the raw-expression Real-Data for the annotated images (resumable; see the module doc).

    ``roles`` replaces the config's (tests pass scripted ones; the pipeline shares its own with the
    re-alignment stage: their connections are closed at the end of this stage's loop and reopened by
    the next); ``scorer`` replaces ``clip_model``; ``hold_places`` writes one line per image (the
    pipeline's layout: :func:`write_generated`)."""
    t0 = time.perf_counter()
    if opts.limit is not None and opts.limit < 0:
        raise ConfigError("--limit must not be negative")
    if opts.concurrency is not None and opts.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    check_options(opts)
    shard = parse_shard(opts.shard)
    journal_path = journal_path_for(opts.out)
    refuse_output(opts.out, "--out", {**kept_files(opts), "the generation journal": journal_path}, opts.images)
    anns = read_annotations(opts.annotations, opts.images, classes=opts.classes,
                            options=ReadOptions(skip_crowd=opts.skip_crowd, min_area=opts.min_area,
                                                clamp_boxes=opts.clamp_boxes,
                                                check_images=False))  # only those to generate: below
    todo_all = selected_images(anns.images, shard, opts.limit)
    concurrency = opts.concurrency or 8
    if roles is None:
        roles, _, _, concurrency = build_roles_for(opts)
    if scorer is None and opts.clip_model:
        from reallod.engine.clip_filter import RegionTextScorer

        scorer = RegionTextScorer.load(opts.clip_model)
    settings = generation_settings(opts)
    fp = {"config": generation_fingerprint(roles), "annotations": fingerprint_file(opts.annotations),
          "classes": fingerprint_file(opts.classes) if opts.classes else None,
          "settings": fingerprint(settings),
          "clip": [opts.clip_model if scorer is not None else None, opts.clip_threshold if scorer is not None else None],
          "shard": f"{shard[0]}/{shard[1]}" if shard else None}  # as parsed: " 1/2" is 1/2
    fp = check_resume(journal_path, fp, settings, roles, force=opts.force_resume)
    loader = ImageLoader(opts.images, max_pixels=opts.max_pixels, hint=MAX_PIXELS_HINT)
    monitor = monitor or RunMonitor()
    # "run" tells this generation journal from one deleted and started again (other expressions)
    meta = {"annotations": str(opts.annotations), "stage": "generate", "run": uuid.uuid4().hex,
            "settings": settings}
    with open_session(journal_path, fp, meta=meta, cache_path=opts.cache, no_cache=opts.no_cache,
                      force=opts.force_resume, unit="image(s)", stage="Generation") as session:
        journal = session.journal
        started = (journal.header.get("meta") or {}).get("run")  # this journal's, when it was begun
        hardened, _ = harden(roles, cache=session.cache, endpoint_limit=concurrency)
        gens = Generators(llm=hardened.rewriter.backend, vlm=hardened.vlm.backend if hardened.vlm else None,
                          scorer=scorer, threshold=opts.clip_threshold,
                          llm_max_tokens=hardened.rewriter.max_tokens, max_attempts=roles.retry.max_attempts,
                          llm_temperature=roles.rewriter.temperature,
                          vlm_temperature=roles.vlm.temperature if roles.vlm else None)
        unavailable = gens.unavailable()
        todo = [(tid, img) for tid, img in todo_all if tid not in journal.done]
        check_image_files((img for _, img in todo), str(opts.annotations), opts.images)  # before any model call
        # of this run's images only: those of a larger --limit before are in the journal, not in the output
        resumed = journal.resumed = len(todo_all) - len(todo)
        failed: dict[str, list[Any]] = {}
        failed_ids: set[str] = set()

        async def work(item: tuple[str, ImageAnnotation]) -> dict[str, Any]:
            img = item[1]
            return await generate_image(img, gens, opts.settings, lambda: loader.load(img.filename), anns.vocabulary)

        async def handle(item: tuple[str, ImageAnnotation], entry: dict[str, Any], elapsed: float) -> None:
            if entry["failures"]:  # not journaled: the next run generates this image again
                failed_ids.add(item[0])
                for kind, (n, example) in entry["failures"].items():
                    failed.setdefault(kind, [0, example])[0] += n
                monitor.task_done("failed")
                return
            await journal.append(item[0], {**entry, "elapsed_s": round(elapsed, 4)})
            monitor.task_done("generated")

        ran = session.run(todo, work, handle, concurrency=concurrency, monitor=monitor, total=len(todo_all),
                          aclose=hardened.aclose)  # this loop's connections, closed on this loop
    counts = write_generated(journal_path, [tid for tid, _ in todo_all], opts.out,
                             hold_places=dict(todo_all) if hold_places else None)
    skipped = anns.skipped_in(lambda name: in_shard(f"image:{name}", shard)) if shard else anns.skipped
    counts.update({f"annotations: {reason}:skipped": n for reason, n in skipped.items()})
    if clamped := sum(img.clamped for _, img in todo_all):  # this run's images' (--clamp-boxes)
        counts["annotations: boxes outside the image:clamped"] = clamped
    failed_images = [img.filename for tid, img in todo if tid in failed_ids]
    return GenerateRun(opts.out, journal_path, len(todo_all), resumed, ran - len(failed_ids), counts, unavailable,
                       time.perf_counter() - t0, {**fp, "run": started}, len(failed_ids), failed, failed_images,
                       len(anns.images), dict(anns.skipped))


def write_generated(journal_path: Path, order: list[str], out: Path, *,
                    hold_places: dict[str, ImageAnnotation] | None = None) -> Counter[str]:
    """The generated records in input order (atomic), and the summed counts of every image.

    Memory holds one byte offset per image, not the records: a first pass indexes the journal, the
    second reads each entry where it lies. Input order makes the output the same whatever order the
    images finished in, and a larger ``--limit`` only appends images after the ones already there.
    With ``hold_places`` (task id → image) an image not generated or without expressions is written as
    a record without pairs, so every image keeps its line whatever a later run generates for it."""
    offsets: dict[str, int] = {}
    with open(journal_path, "rb") as f:
        f.readline()  # the header
        while True:
            at = f.tell()
            line = f.readline()
            if not line.endswith(b"\n"):
                break  # end (a partial last line was cut when the journal was opened)
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # skipped as the journal's own reader skips it
            if isinstance(obj, dict) and isinstance(obj.get("task_id"), str):
                offsets.setdefault(obj["task_id"], at)
        counts: Counter[str] = Counter()
        with JsonlWriter(out) as writer:
            for tid in order:
                record = None
                if tid not in offsets:
                    counts["image not generated"] += 1
                else:
                    f.seek(offsets[tid])
                    entry = orjson.loads(f.readline())["result"]
                    counts.update(entry.get("counts") or {})
                    if entry["record"]["pairs"]:
                        record = entry["record"]
                    elif hold_places is None:
                        counts["image without expressions:not written"] += 1
                    else:
                        counts["image without expressions:empty record"] += 1
                if record is not None:
                    writer.write_record(record)
                    counts["record:written"] += 1
                elif hold_places is not None:
                    img = hold_places[tid]
                    writer.write_record({"filename": img.filename, "height": img.height, "width": img.width,
                                         "pairs": {}})
    return counts


# ---------------------------------------------------------------------------------------------
# the whole pipeline
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PipelineOptions:
    generate: GenerateOptions
    unresolved: str = "negative"  # what becomes of expressions the agent judged wrong and could not fix
    max_cycles: int | None = None
    report: Path | None = None


@dataclass(slots=True)
class PipelineRun:
    out: Path
    generated: GenerateRun
    realigned: RealignRun
    assembled: Counter[str]
    paths: dict[str, str]


def stage_paths(out: Path) -> tuple[Path, Path]:
    """(generated raw expressions, re-aligned records): intermediate files next to the output."""
    stem = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(f"{stem}.generated.jsonl"), out.with_name(f"{stem}.realigned.jsonl")


def _refuse_overwrite(opts: PipelineOptions, gen_path: Path, realigned_path: Path) -> None:
    """Refuse, before any work, an ``--out`` or ``--report`` over an input or a stage's file (the
    annotations would be lost, a stage's journal would stop resuming), or one that cannot be written: both
    are written last, after every model call. The stage files, named after ``--out``, are checked too."""
    g = opts.generate
    kept = kept_files(g)
    stages = {"the generated file": gen_path, "the generation journal": journal_path_for(gen_path),
              "the re-aligned file": realigned_path, "the re-alignment journal": journal_path_for(realigned_path),
              "the re-alignment trace": trace_path_for(realigned_path)}
    for stage, path in stages.items():
        what = written_over(path, kept, g.images)
        if what:
            raise ConfigError(f"--out {g.out}: {stage} {path} would overwrite {what}: give another --out")
    named = {**kept, **stages}
    refuse_output(g.out, "--out", named, g.images)
    for path in report_paths(opts.report) if opts.report is not None else ():
        what = written_over(path, {**named, "the --out output": g.out}, g.images)
        if what:
            written = "" if same_file(path, opts.report) else f" with {path}"
            raise ConfigError(f"--report {opts.report} would overwrite {what}{written}: give another --report")
        check_writable(path, option="--report")


def kept_files(opts: GenerateOptions) -> dict[str, Path | None]:
    """The files a run reads or shares that no output of it may replace (what each is → its path): the
    annotations, the classes file, the agent config and the response caches."""
    return {"the annotations": opts.annotations, "the classes file": opts.classes,
            **shared_files(opts.config, opts.cache)}


def refuse_output(path: Path, option: str, named: dict[str, Path | None], images: Path) -> None:
    """Refuse, before any work, an output ``path`` that would replace one of ``named`` or an image of the
    image root, or that cannot be written (a folder there): it is written after every model call."""
    check_journaled_output(path, option)
    what = written_over(path, named, images)
    if what:
        raise ConfigError(f"{option} {path} would overwrite {what}: give another {option}")
    check_writable(path, option=option)


def check_pipeline_options(opts: PipelineOptions) -> None:
    """Refuse, before any work, the options re-alignment would refuse only once generation ran (every
    generation call made)."""
    check_policy(opts.unresolved)
    if opts.max_cycles is not None and opts.max_cycles < 1:
        raise ConfigError("--max-cycles must be at least 1")


def pipeline(opts: PipelineOptions, *, roles: Roles | None = None,
             monitors: Callable[[str], RunMonitor | None] | None = None, scorer: Any = None) -> PipelineRun:
    """generate → realign → assemble, every stage resumable; the models are loaded once.

    ``monitors(stage)`` gives each stage ("generate", "realign") its own progress monitor."""
    monitors = monitors or (lambda stage: None)
    g = opts.generate
    gen_path, realigned_path = stage_paths(g.out)
    check_options(g)
    check_pipeline_options(opts)
    _refuse_overwrite(opts, gen_path, realigned_path)
    name, max_cycles, concurrency = str(g.config), opts.max_cycles, g.concurrency
    if roles is None:
        roles, name, cfg_cycles, concurrency = build_roles_for(g)
        max_cycles = max_cycles or cfg_cycles
    gen_opts = GenerateOptions(**{**{k: getattr(g, k) for k in g.__slots__}, "out": gen_path,
                                  "concurrency": concurrency})
    generated = generate(gen_opts, roles=roles, monitor=monitors("generate"), scorer=scorer, hold_places=True)
    if generated.failed and not generated.resumed:
        check_generated(generated)  # nothing was ever generated: nothing to re-align
    # the generated file is Real-Data (records without pairs hold the places of images without
    # expressions), named by what it was generated from, by which generation journal, in which layout:
    # a larger --limit appends records, an image generated later fills its own line, and both still
    # resume; a generation started over is another input
    source = fingerprint({k: generated.fingerprint.get(k) for k in ("annotations", "classes", "shard", "run")})
    realigned = realign(RealignOptions(input=gen_path, config=name, out=realigned_path, images=g.images,
                                       max_cycles=max_cycles, unresolved=opts.unresolved,  # type: ignore[arg-type]
                                       concurrency=concurrency, cache=g.cache, no_cache=g.no_cache,
                                       force_resume=g.force_resume, report=opts.report, format="records",
                                       max_pixels=g.max_pixels,
                                       input_id=f"generated, one line per image, from {source}"),
                        roles=roles, monitor=monitors("realign"))
    assembled = finish(realigned_path, g.out)
    paths = {"generated": str(gen_path), "realigned": str(realigned_path), "out": str(g.out),
             "trace": str(realigned.trace), "journal": str(realigned.journal)}
    return PipelineRun(g.out, generated, realigned, assembled, paths)
