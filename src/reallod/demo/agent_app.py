"""The Real-Agent page: one object, one expression, and the workflow re-aligning it cycle by cycle.

The page builds a :class:`~reallod.agent.task.Task` from the form and runs it with
``reallod.agent.workflow.run_task`` and the roles of an agent config (``load_agent_config`` +
``build_roles``), exactly what ``reallod realign`` runs per task. While it runs, the calls appear as
they are made (see :mod:`reallod.demo.agent_watch`); at the end the page shows the workflow's own
steps, the views the VLM was shown, the evidence, the verdict, and offers the task's trace, which
``reallod realign --explain`` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from reallod.agent import workflow
from reallod.agent.agent_config import AgentConfig
from reallod.agent.explain import explain
from reallod.agent.roles import Roles
from reallod.agent.task import ObjectRef, Task, TaskResult
from reallod.agent.trace import TraceWriter
from reallod.agent.views import HIGHLIGHT, make_view
from reallod.demo.agent_watch import CallLog, evidence_markdown, live_markdown, observe, result_markdown
from reallod.demo.components import gr, shown_in_page, uploaded_image
from reallod.demo.examples import agent_examples
from reallod.demo.forms import (
    MAX_CATEGORY_CHARS,
    box_from_clicks,
    check_text,
    format_box,
    format_others,
    parse_box,
    parse_others,
)
from reallod.demo.limits import Busy, ClientGate, DemoInputError, DemoLimits, client_key, open_upload
from reallod.demo.server import RunningDemo, ServerOptions, launch, prune, upload_roots

POLL_S = 0.1  # how often the page looks for new calls while the task runs
KEEP_TRACES = 64


class AgentPage:
    """The handlers of the page, holding the roles (shared by all requests) and the limits."""

    def __init__(self, roles: Roles, limits: DemoLimits, *, config_name: str, max_cycles: int = 3,
                 max_cycles_limit: int = 6) -> None:
        self.roles = roles
        self.limits = limits
        self.config_name = config_name
        self.max_cycles = max_cycles
        self.max_cycles_limit = max(max_cycles_limit, max_cycles)
        self.gate = ClientGate(limits.per_client)
        self._slots: asyncio.Semaphore | None = None  # created on the server's event loop
        self.traces = Path(tempfile.mkdtemp(prefix="reallod-demo-agent-"))
        self._files_lock = threading.Lock()
        self.roots = upload_roots()
        self._ids = itertools.count(1)

    def task_from_form(self, image_path: str | None, box_text: str, category: str, caption: str,
                       expression: str, others_text: str) -> tuple[Task, Any]:
        """The task the form describes, and its decoded image; bad fields raise DemoInputError."""
        if not image_path:
            raise DemoInputError("upload an image first (or pick one of the examples)")
        image = open_upload(image_path, self.limits, self.roots)
        box = parse_box(box_text, image.width, image.height)
        others = parse_others(others_text, image.width, image.height)
        task = Task(
            task_id=f"demo-{next(self._ids)}", image_path=Path(image_path).name, height=image.height,
            width=image.width,
            raw_expression=check_text(expression, "expression to check", self.limits.max_expression_chars),
            chosen=ObjectRef(check_text(category, "category of the object", MAX_CATEGORY_CHARS), [box]),
            others=[ObjectRef(c, [b]) for c, b in others],
            caption=check_text(caption, "caption (what a VLM said about the image)", self.limits.max_text_chars))
        return task, image

    def _cycles(self, value: Any) -> int:
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise DemoInputError(f"cycles must be a whole number, not {value!r}") from None
        if not 1 <= n <= self.max_cycles_limit:
            raise DemoInputError(f"cycles must be between 1 and {self.max_cycles_limit}, not {n}")
        return n

    async def realign(self, image_path: str | None, box_text: str, category: str, caption: str,
                      expression: str, others_text: str, max_cycles: float, request: gr.Request):
        """Run the workflow on the form's task; yield the page's outputs as the calls come in."""
        cycles = self._cycles(max_cycles)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.concurrency)
        with self.gate.admit(client_key(request)):
            deadline = time.monotonic() + self.limits.timeout_s
            # decoding a large upload takes a while: off the event loop every page shares
            task, image = await asyncio.to_thread(self.task_from_form, image_path, box_text, category, caption,
                                                  expression, others_text)
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Busy(f"the server is busy: no free slot within {self.limits.timeout_s:g} s, "
                           "try again later") from None
            try:
                log = CallLog()
                run = asyncio.ensure_future(workflow.run_task(task, observe(self.roles, log),
                                                              load_image=lambda: image, max_cycles=cycles))
                try:
                    seen = -1
                    while not run.done():
                        if log.version != seen:
                            seen = log.version
                            yield self._live(log)
                        if time.monotonic() > deadline:
                            raise DemoInputError(f"the agent took longer than this demo's {self.limits.timeout_s:g} s "
                                                 "limit; try fewer cycles")
                        await asyncio.wait({run}, timeout=POLL_S)
                    result = run.result()
                finally:
                    if not run.done():
                        run.cancel()
            finally:
                self._slots.release()
        yield await asyncio.to_thread(self._final, task, result, log)

    def _live(self, log: CallLog) -> tuple[Any, ...]:
        cycle = log.calls[-1].cycle if log.calls else 1
        return (f"running… (cycle {cycle})", "", live_markdown(log), log.views(),
                evidence_markdown(log.evidence()), None, "")

    def _final(self, task: Task, result: TaskResult, log: CallLog) -> tuple[Any, ...]:
        trace = self._write_trace(task, result)
        return (result.verdict, result.expression, result_markdown(result), log.views(),
                evidence_markdown(result.evidence), str(trace), explain(trace, task.task_id))

    def _write_trace(self, task: Task, result: TaskResult) -> Path:
        with self._files_lock:  # results are written from worker threads
            prune(self.traces, "*.trace.jsonl", KEEP_TRACES - 1)
        path = self.traces / f"{task.task_id}-{time.strftime('%Y%m%d-%H%M%S')}.trace.jsonl"
        with TraceWriter(path, {"source": "reallod demo agent", "config": self.config_name,
                                "roles": self.roles.describe()}) as writer:
            writer.write(task, result)
        return path

    def preview(self, image_path: str | None, box_text: str) -> tuple[Any, str]:
        """The whole image with the box outlined (the VLM's highlight view), or why there is none."""
        if not image_path:
            return None, "Upload an image, then type the box or click two opposite corners of the object."
        try:
            image = open_upload(image_path, self.limits, self.roots)
            if not (box_text or "").strip():
                return None, (f"Image {image.width}×{image.height}: type the box or click two opposite "
                              "corners of the object.")
            box = parse_box(box_text, image.width, image.height)
        except DemoInputError as e:
            return None, f"⚠ {e}"
        view, _ = make_view(image, box, HIGHLIGHT)
        return view, f"Box [{format_box(box)}] on the {image.width}×{image.height} image."

    def click(self, corner: list[float] | None, evt: gr.SelectData) -> tuple[Any, Any, str]:
        """Two clicks on the image set the box: the first and the opposite corner."""
        index = evt.index
        if not isinstance(index, (list, tuple)) or len(index) < 2:
            return corner, gr.skip(), "Click on the image to place a corner."
        point = [float(index[0]), float(index[1])]
        if corner is None:
            return point, gr.skip(), f"First corner at ({point[0]:g}, {point[1]:g}): now click the opposite corner."
        return None, format_box(box_from_clicks(corner, point)), "Box set from your two clicks."

    async def close(self) -> None:
        shutil.rmtree(self.traces, ignore_errors=True)
        await self.roles.aclose()


def build_agent_app(roles: Roles, *, config_name: str, limits: DemoLimits | None = None, max_cycles: int = 3,
                    debug: bool = False) -> tuple[Any, AgentPage]:
    """The page (a ``gr.Blocks``) and its handlers; the API name of a run is ``/realign``."""
    limits = limits or DemoLimits()
    page = AgentPage(roles, limits, config_name=config_name, max_cycles=max_cycles)
    examples = agent_examples()
    described = ", ".join(f"{n}: `{b}`" for n, b in roles.describe().items() if b) + (
        "" if roles.vlm else ", vlm: none (its actions are reported unavailable)")
    with gr.Blocks(title="Real-Agent demo", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(
            "# Real-Agent: re-align an expression to its object\n"
            f"Config `{config_name}` ({described}). Give an object (its box and category), a caption of the "
            "image, and an expression to check; the agent reflects, plans, asks the VLM about a view or "
            "rewrites, cycle by cycle, with the same workflow as `reallod realign`.", elem_id="intro")
        corner = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = uploaded_image(type="filepath", image_mode=None, label="Image (click two corners to set the box)",
                                      sources=["upload", "clipboard"], elem_id="agent-image")
                box = gr.Textbox(label="Box x1, y1, x2, y2 (pixels)", placeholder="20, 15, 365, 512",
                                 elem_id="box")
                hint = gr.Markdown(elem_id="box-hint")
                preview = gr.Image(label="The object (highlight view)", type="pil", format="png", interactive=False,
                                   elem_id="box-preview", height=260)
                category = gr.Textbox(label="Category", placeholder="person", elem_id="category")
                caption = gr.Textbox(label="Caption (evidence: what a VLM said about the image)", lines=3,
                                     elem_id="caption")
                expression = gr.Textbox(label="Raw expression to check", elem_id="raw-expression")
                others = gr.Textbox(label="Other objects (optional), one per line: category: x1, y1, x2, y2",
                                    lines=2, elem_id="others")
                cycles = gr.Slider(1, page.max_cycles_limit, value=max_cycles, step=1, label="Cycles",
                                   elem_id="cycles")
                run = gr.Button("Re-align", variant="primary", elem_id="realign-button")
                gr.Examples([[str(e.image), format_box(e.box), e.category, e.caption, e.expression,
                              format_others(e.others)] for e in examples],
                            inputs=[image, box, category, caption, expression, others], label="Examples")
            with gr.Column():
                with gr.Row():
                    verdict = gr.Textbox(label="Verdict", interactive=False, elem_id="verdict")
                    final = gr.Textbox(label="Final expression", interactive=False, elem_id="final-expression")
                gr.Markdown("#### Cycles")
                steps = gr.Markdown(elem_id="cycle-log")
                views = gr.Gallery(label="What the VLM was shown", columns=3, height=240, elem_id="vlm-views")
                gr.Markdown("#### Evidence gathered")
                evidence = gr.Markdown(elem_id="evidence")
                trace = gr.File(label="Trace (reallod realign --explain reads it)", elem_id="trace-download")
                with gr.Accordion("Every prompt and reply", open=False):
                    account = gr.Textbox(label="Every prompt and reply", show_label=False, lines=16, max_lines=40, interactive=False,
                                         elem_id="account")
        image.select(shown_in_page(page.click, debug=debug), [corner], [corner, box, hint], api_visibility="private")
        for trigger in (image.change, box.change):
            trigger(shown_in_page(page.preview, debug=debug), [image, box], [preview, hint], api_visibility="private")
        run.click(shown_in_page(page.realign, debug=debug),
                  [image, box, category, caption, expression, others, cycles],
                  [verdict, final, steps, views, evidence, trace, account], api_name="realign",
                  concurrency_limit=limits.queue_size)
    return blocks, page


def roles_from_config(config: str | Path, *, base_url: str | None = None, llm_base_url: str | None = None,
                      vlm_base_url: str | None = None) -> tuple[AgentConfig, Roles]:
    """The config and its roles, built once for the page (models load here, not per request)."""
    from reallod.agent.agent_config import build_roles, load_agent_config

    cfg = load_agent_config(config, base_url=base_url, llm_base_url=llm_base_url, vlm_base_url=vlm_base_url)
    return cfg, build_roles(cfg)


def serve_agent_demo(roles: Roles, options: ServerOptions, *, config_name: str, max_cycles: int = 3,
                     limits: DemoLimits | None = None, block: bool = True) -> RunningDemo:
    """Build and serve the page; with ``block`` (the CLI) return only when the server stops."""
    limits = limits or DemoLimits()
    blocks, page = build_agent_app(roles, config_name=config_name, limits=limits, max_cycles=max_cycles,
                                   debug=options.debug)

    def cleanup() -> None:
        # Its own thread: the caller may be inside an event loop (a notebook, Playwright's sync API).
        def close() -> None:
            # A client bound to the server's (now closed) loop may refuse; the process ends anyway.
            with contextlib.suppress(Exception):
                asyncio.run(page.close())

        closer = threading.Thread(target=close, name="reallod-demo-close")
        closer.start()
        closer.join(timeout=10)

    return launch(blocks, options, limits, block=block, cleanup=cleanup)
