"""One task's trace as readable text: what each role was asked, what it answered, what was decided.

``reallod realign --explain TRACE --task ID`` prints this. The text is built from the trace alone (no
model, no image), so it also works on a trace copied from another machine.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any

import orjson

from reallod.agent.trace import find_entry

INDENT = "    "


def explain(trace_path: str | os.PathLike, task_id: str, *, width: int = 100) -> str:
    """The readable account of task ``task_id`` in the trace at ``trace_path``."""
    return format_entry(find_entry(trace_path, task_id), width=width)


def format_entry(entry: dict[str, Any], *, width: int = 100) -> str:
    task, result = entry.get("task") or {}, entry["result"]
    lines = [f"task {entry['task_id']}"]
    chosen = task.get("chosen") or {}
    lines.append(f"  image      {task.get('image_path')}" + (f"  ({task['width']}x{task['height']})"
                                                              if task.get("width") else ""))
    if chosen:
        lines.append(f"  object     {chosen.get('category')}  boxes {_boxes(chosen.get('bboxes'))}")
    if task.get("others"):
        lines.append(f"  others     {len(task['others'])}: " +
                     ", ".join(o.get("category", "?") for o in task["others"][:10])
                     + (" ..." if len(task["others"]) > 10 else ""))
    if task.get("caption"):
        lines.append("  caption    " + _wrap(task["caption"], width, "             ").lstrip())
    if task.get("problem"):
        lines.append(f"  problem    {task['problem']['kind']}: {task['problem']['message']}")
    lines.append(f"  raw        {result.get('raw_expression')!r}")
    lines.append("")
    systems: dict[str, int] = {}  # system prompt → the step that showed it first
    for n, step in enumerate(result.get("steps") or [], 1):
        lines.extend(_step_lines(n, step, width, systems))
    if result.get("evidence"):
        lines.append("evidence gathered")
        lines.extend(f"  - {e}" for e in result["evidence"])
    for note in result.get("notes") or []:
        lines.append(f"note: {note}")
    lines.append(f"verdict    {result['verdict']} after {result.get('cycles', 0)} cycle(s)")
    lines.append(f"expression {result.get('raw_expression')!r} -> {result.get('expression')!r}"
                 if result.get("expression") != result.get("raw_expression")
                 else f"expression {result.get('expression')!r} (unchanged)")
    if result.get("error"):
        lines.append(f"error      [{result.get('error_kind') or 'agent_error'}] {result['error']}")
    return "\n".join(lines)


def _step_lines(n: int, step: dict[str, Any], width: int, systems: dict[str, int]) -> list[str]:
    view = step.get("view") or {}
    head = f"[{n}] cycle {step.get('cycle')} · {step.get('role')}"
    if view:
        head += f" · view {view.get('name')} crop {view.get('crop_box')}"
    if step.get("attempts"):
        head += (f" · {step.get('latency_s', 0):.2f} s · tokens {step.get('prompt_tokens', 0)}+"
                 f"{step.get('completion_tokens', 0)}")
        if step["attempts"] > 1:
            head += f" · {step['attempts']} attempts"
        if step.get("repaired"):
            head += " · repaired"
    out = [head]
    for message in step.get("messages") or []:
        text = _content_text(message.get("content"))
        if message.get("role") == "system" and text in systems:
            out.append(f"  system: (as in [{systems[text]}])")
            continue
        if message.get("role") == "system":
            systems[text] = n
        out.append(f"  {message.get('role')}:")
        out.append(_wrap(text, width, INDENT))
    for rejected in step.get("rejected") or []:
        out.append(f"  rejected attempt {rejected.get('attempt')}: {rejected.get('error')}")
        if rejected.get("raw"):
            out.append(_wrap(str(rejected["raw"]), width, INDENT))
    if step.get("raw_response"):
        out.append("  reply:")
        out.append(_wrap(step["raw_response"], width, INDENT))
    if step.get("decision") is not None:
        out.append(f"  decision: {orjson.dumps(step['decision']).decode()}")
    if step.get("error"):
        out.append(f"  error: {step['error']}")
    out.append("")
    return out


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if part.get("type") == "image":
            size = part.get("size") or (part.get("image") or {}).get("size")
            parts.append(f"<image: {part.get('name') or part.get('view') or 'view'}"
                         + (f" {size[0]}x{size[1]}" if size else "") + ">")
        else:
            parts.append(str(part.get("text", "")))
    return "\n".join(parts)


def _wrap(text: str, width: int, indent: str) -> str:
    """Indent every line; wrap only the long ones (prompt templates are already broken into lines)."""
    return "\n".join((indent + line).rstrip() if len(indent + line) <= width + 20 else
                     textwrap.fill(line, width=width, initial_indent=indent, subsequent_indent=indent)
                     for line in str(text).splitlines())


def _boxes(boxes: Any) -> str:
    if not boxes:
        return "-"
    return " ".join("[" + ", ".join(f"{v:g}" for v in b) + "]" for b in boxes)
