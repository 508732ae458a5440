"""A readable report of a run: per task, the views the VLM was given, the expression before and after,
and the verdict, as HTML and Markdown (``index.html`` / ``index.md``) plus one PNG card per task.

Views are not stored in the trace; they are re-rendered with :func:`views.make_view` from the task's
image and the view name the trace recorded, and the crop box is checked against the recorded one so a
report never shows a different crop than the model saw. Every task also gets a context picture (the
whole image with the object outlined), marked as such when no model was shown it.
"""

from __future__ import annotations

import html
import os
import re
import textwrap
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from reallod.agent.run_report import md_code, md_text
from reallod.agent.task import ObjectRef
from reallod.agent.trace import read_trace
from reallod.agent.views import HIGHLIGHT, make_view
from reallod.data.io import atomic_text
from reallod.errors import DataError
from reallod.runs.image_root import ImageLoader

THUMB = 320  # longest side of a picture in the report, pixels
DEFAULT_MAX_TASKS = 200
VERDICT_COLOURS = {"correct": "#1a7f37", "rewritten": "#0969da", "wrong": "#cf222e", "unresolved": "#9a6700",
                   "failed": "#6e7781"}


@dataclass(slots=True)
class Picture:
    file: str  # relative to the report folder
    caption: str


@dataclass(slots=True)
class TaskPage:
    task_id: str
    verdict: str
    cycles: int
    raw: str
    final: str
    category: str
    image_path: str
    pictures: list[Picture] = field(default_factory=list)
    qa: list[tuple[str, str, str]] = field(default_factory=list)  # (view, question or prompt, answer)
    notes: list[str] = field(default_factory=list)
    feedback: str = ""  # the last reflection's reason
    card: str | None = None


def write_report(trace_path: str | os.PathLike, out_dir: str | os.PathLike, *, images: ImageLoader | None = None,
                 max_tasks: int = DEFAULT_MAX_TASKS, tasks: Container[str] | None = None) -> Path:
    """Write the report of (the first ``max_tasks`` tasks of) a trace; returns ``index.html``. ``tasks``:
    only those task ids (a run's own: its trace keeps every task its journal holds, those of an earlier
    run with a larger ``--limit`` too)."""
    header, entries = read_trace(trace_path)
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    if images is None:
        images = ImageLoader(header.get("images") or Path(trace_path).parent)
    pages: list[TaskPage] = []
    total = 0
    for entry in entries:
        if tasks is not None and entry.get("task_id") not in tasks:
            continue
        total += 1
        if len(pages) < max_tasks:
            pages.append(_page(len(pages), entry, images, out))
    with atomic_text(out / "index.html") as f:
        f.write(render_html(pages, header, total))
    with atomic_text(out / "index.md") as f:
        f.write(render_markdown(pages, header, total))
    return out / "index.html"


def _page(n: int, entry: dict[str, Any], images: ImageLoader, out: Path) -> TaskPage:
    task, result = entry.get("task") or {}, entry["result"]
    chosen = task.get("chosen") or {}
    page = TaskPage(entry["task_id"], result["verdict"], int(result.get("cycles") or 0),
                    str(result.get("raw_expression") or ""), str(result.get("expression") or ""),
                    str(chosen.get("category") or ""), str(task.get("image_path") or ""))
    if result.get("error"):
        page.notes.append(f"error: {result['error']}")
    page.notes.extend(result.get("notes") or [])
    stem = f"{n:04d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', entry['task_id'])}"
    image = None
    if chosen.get("bboxes") and page.image_path:
        try:
            image = images.load(page.image_path)
        except DataError as e:
            page.notes.append(f"image not shown: {e}")
    box = ObjectRef(**chosen).union_box() if chosen.get("bboxes") else None
    rendered: list[Image.Image] = []
    shown_views = set()
    labels: list[str] = []
    for step in result.get("steps") or []:
        view = step.get("view") or {}
        if step.get("role") == "reflector" and step.get("decision"):
            page.feedback = str(step["decision"].get("feedback") or "")
        if step.get("role") != "vlm" or not view.get("name"):
            continue
        answer = (step.get("decision") or {}).get("answer") or step.get("error") or ""
        page.qa.append((view["name"], _question(step), answer))
        if image is None or not step.get("attempts") or box is None:
            continue
        try:
            img, crop = make_view(image, box, view["name"])
        except DataError as e:
            page.notes.append(f"view {view['name']} not re-rendered: {e}")
            continue
        if view.get("crop_box") is not None and list(view["crop_box"]) != list(crop):
            page.notes.append(f"view {view['name']}: re-rendered crop {crop} differs from the recorded "
                              f"{view['crop_box']}; not shown")
            continue
        shown_views.add(view["name"])
        rendered.append(img)
        labels.append(f"VLM view: {view['name']}")
        page.pictures.append(_save(img, out, f"{stem}_{len(page.pictures)}_{view['name']}.jpg",
                                   f"given to the VLM: {view['name']} (crop {crop})"))
    if image is not None and box is not None and HIGHLIGHT not in shown_views:
        img, _ = make_view(image, box, HIGHLIGHT)
        rendered.insert(0, img)
        labels.insert(0, "context (no model saw it)")
        page.pictures.insert(0, _save(img, out, f"{stem}_context.jpg",
                                      "the object in its image (context for this report; no model was shown it)"))
    card = render_card(page, rendered, labels)
    card.save(out / "img" / f"{stem}_card.png")
    page.card = f"img/{stem}_card.png"
    return page


def _question(step: dict[str, Any]) -> str:
    for message in step.get("messages") or []:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if p.get("type") == "text").strip()
    return ""


def _thumb(img: Image.Image, size: int = THUMB) -> Image.Image:
    img = img.copy()
    img.thumbnail((size, size))
    return img


def _save(img: Image.Image, out: Path, name: str, caption: str) -> Picture:
    _thumb(img).save(out / "img" / name, quality=88)
    return Picture(f"img/{name}", caption)


def render_card(page: TaskPage, pictures: list[Image.Image], labels: list[str] | None = None, *,
                min_width: int = 640) -> Image.Image:
    """One PNG per task: the pictures in a row (each labelled), then verdict and expressions."""
    font = ImageFont.load_default(size=18)
    bold = ImageFont.load_default(size=22)
    small = ImageFont.load_default(size=14)
    thumbs = [_thumb(p, 300) for p in pictures[:3]]
    labels = (labels or [])[: len(thumbs)]
    row_h = max((t.height for t in thumbs), default=0) + (20 if labels else 0)
    lines: list[tuple[str, Any, str]] = [
        (f"{page.verdict.upper()}  ·  task {page.task_id}  ·  {page.category}  ·  {page.cycles} cycle(s)", bold,
         VERDICT_COLOURS.get(page.verdict, "#000000"))]
    for label, text in (("before", page.raw), ("after", page.final)):
        for k, chunk in enumerate(textwrap.wrap(text, 85) or [""]):
            lines.append((f"{label + ':' if k == 0 else '':8}{chunk}", font, "#000000"))
    if page.feedback:
        for k, chunk in enumerate(textwrap.wrap(f"reflector: {page.feedback}", 95)[:2]):
            lines.append(("  " + chunk if k else chunk, font, "#444444"))
    for view, _, answer in page.qa[:3]:
        for k, chunk in enumerate(textwrap.wrap(f"VLM on {view}: {answer}", 95)[:2]):
            lines.append(("  " + chunk if k else chunk, font, "#444444"))
    for note in page.notes[:2]:
        lines.append((textwrap.shorten(note, 100), font, "#6e7781"))
    pad, line_h = 16, 28
    width = max(min_width, pad + sum(t.width + pad for t in thumbs),
                *(pad * 2 + int(f.getlength(text)) for text, f, _ in lines))
    card = Image.new("RGB", (width, pad * 3 + row_h + line_h * len(lines)), "white")
    draw = ImageDraw.Draw(card)
    x = pad
    for i, t in enumerate(thumbs):
        card.paste(t, (x, pad))
        if i < len(labels):
            draw.text((x, pad + t.height + 3), labels[i], font=small, fill="#555555")
        x += t.width + pad
    y = pad * 2 + row_h
    for text, f, colour in lines:
        draw.text((pad, y), text, font=f, fill=colour)
        y += line_h
    return card


def render_html(pages: list[TaskPage], header: dict[str, Any], total: int) -> str:
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>reallod realign report</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}figure{display:inline-block;"
           "margin:0 1em 1em 0;vertical-align:top;max-width:340px}figcaption{font-size:85%;color:#555}"
           ".task{border-top:1px solid #ccc;padding-top:1em}.verdict{font-weight:bold}</style></head><body>",
           "<h1>reallod realign report</h1>",
           f"<p>input <code>{e(str(header.get('input')))}</code> · config <code>{e(str(header.get('config')))}"
           f"</code> · {total} task(s)" + (f", the first {len(pages)} shown" if len(pages) < total else "")
           + "</p><ul>"]
    for n, p in enumerate(pages):
        out.append(f"<li><a href='#t{n}'>{e(p.task_id)}</a> <span style='color:"
                   f"{VERDICT_COLOURS.get(p.verdict, '#000')}'>{e(p.verdict)}</span> {e(p.raw)}</li>")
    out.append("</ul>")
    for n, p in enumerate(pages):
        colour = VERDICT_COLOURS.get(p.verdict, "#000")
        out.append(f"<div class='task' id='t{n}'><h2>task {e(p.task_id)}</h2>")
        out.append(f"<p><span class='verdict' style='color:{colour}'>{e(p.verdict)}</span> after {p.cycles} "
                   f"cycle(s) · {e(p.category)} in <code>{e(p.image_path)}</code></p>")
        for pic in p.pictures:
            out.append(f"<figure><img src='{e(pic.file)}' alt='{e(pic.caption)}'><figcaption>{e(pic.caption)}"
                       "</figcaption></figure>")
        out.append(f"<p>before: <b>{e(p.raw)}</b><br>after: <b>{e(p.final)}</b></p>")
        if p.feedback:
            out.append(f"<p>last reflection: {e(p.feedback)}</p>")
        if p.qa:
            out.append("<ul>" + "".join(f"<li>VLM on {e(v)}: <i>{e(q)}</i> → {e(a)}</li>" for v, q, a in p.qa)
                       + "</ul>")
        for note in p.notes:
            out.append(f"<p style='color:#6e7781'>{e(note)}</p>")
        out.append("</div>")
    out.append("</body></html>\n")
    return "\n".join(out)


def render_markdown(pages: list[TaskPage], header: dict[str, Any], total: int) -> str:
    """The report as Markdown. Every text from the input, the models or the server is escaped
    (:func:`md_text`: renderers pass raw HTML through) and kept on one line, as ``index.html`` escapes it."""
    t = md_text
    out = ["# reallod realign report", "",
           f"input {md_code(header.get('input'))} · config {md_code(header.get('config'))} · {total} task(s)"
           + (f", the first {len(pages)} shown" if len(pages) < total else ""), ""]
    for p in pages:
        out += [f"## task {t(p.task_id)}", "", f"**{t(p.verdict)}** after {p.cycles} cycle(s) · {t(p.category)} in "
                f"{md_code(p.image_path)}", ""]
        out += [f"![{t(pic.caption)}]({pic.file})" for pic in p.pictures]
        out += ["", f"- before: **{t(p.raw)}**", f"- after: **{t(p.final)}**"]
        out += [f"- last reflection: {t(p.feedback)}"] if p.feedback else []
        out += [f"- VLM on {t(v)}: {t(a)}" for v, _, a in p.qa]
        out += [f"- {t(note)}" for note in p.notes]
        out.append("")
    return "\n".join(out)
