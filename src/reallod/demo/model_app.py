"""The Real-Model page: upload an image, type expressions, see each expression's boxes.

One handler runs the detector (``Detector.detect``, the code ``reallod detect`` uses) and keeps the
result; moving the threshold slider only redraws it. The JSON download holds the boxes at or above
the threshold, in the format of ``reallod detect``'s prediction files.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd  # a gradio dependency: the table component takes a DataFrame

from reallod.demo.components import gr, shown_in_page, uploaded_image
from reallod.demo.examples import detect_examples
from reallod.demo.forms import TABLE_HEADERS, detection_rows, legend_html, parse_expressions
from reallod.demo.limits import ClientGate, DemoInputError, DemoLimits, WorkSlots, client_key, open_upload
from reallod.demo.server import RunningDemo, ServerOptions, launch, prune, upload_roots
from reallod.errors import out_of_memory, release_after_oom
from reallod.model.detections import Detections
from reallod.model.draw import draw_detections, palette
from reallod.model.inference import Detector, InferenceOptions, ScoreOver

TOPK = 100  # boxes kept per expression: more than anyone reads on a page
MAX_DRAWN = 100
KEEP_DOWNLOADS = 64  # JSON files kept in the page's download folder (oldest removed first)


@dataclass
class Shown:
    """What the page last computed: redrawn at another threshold without running the model."""

    image_path: str
    detections: Detections
    seconds: float


class ModelPage:
    """The handlers of the page, holding the detector and the limits."""

    def __init__(self, detector: Detector, limits: DemoLimits, *, palette_name: str = "coco",
                 score_over: ScoreOver = "expression-tokens") -> None:
        InferenceOptions(score_over=score_over)  # a bad value fails here, not on the first request
        self.detector = detector
        self.score_over = score_over
        self.limits = limits
        self.palette_name = palette_name
        self.gate = ClientGate(limits.per_client)
        self.slots = WorkSlots(limits.concurrency)
        self.pool = cf.ThreadPoolExecutor(max_workers=limits.concurrency, thread_name_prefix="reallod-detect")
        self.downloads = Path(tempfile.mkdtemp(prefix="reallod-demo-model-"))
        self._files_lock = threading.Lock()
        self.roots = upload_roots()

    def detect(self, image_path: str | None, text: str, mode: str, threshold: float,
               request: gr.Request) -> tuple[Any, ...]:
        """Run the detector on the uploaded image for every expression."""
        if not image_path:
            raise DemoInputError("upload an image first (or pick one of the examples)")
        expressions = parse_expressions(text, self.limits)
        if mode not in ("parallel", "concat"):
            raise DemoInputError(f"mode must be parallel or concat, not {mode!r}")
        if mode != "parallel" and self.score_over == "all-tokens":
            raise DemoInputError("this demo scores boxes over all prompt tokens (as the published demos do), "
                                 "which needs parallel mode: pick parallel")
        threshold = _threshold(threshold)
        with self.gate.admit(client_key(request)):
            deadline = time.monotonic() + self.limits.timeout_s
            image = open_upload(image_path, self.limits, self.roots)
            options = InferenceOptions(mode=mode, topk=TOPK, score_over=self.score_over)  # type: ignore[arg-type]
            self.slots.acquire(deadline - time.monotonic())
            try:
                future = self.pool.submit(self._run, image, expressions, options)
            except BaseException:
                self.slots.release()
                raise
            try:
                detections, seconds = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except cf.TimeoutError:
                raise DemoInputError(f"the detector took longer than this demo's {self.limits.timeout_s:g} s "
                                     "limit; try fewer expressions or a smaller image") from None
            except Exception as e:  # one large request filled the GPU: say so; the next one gets its memory back
                if (what := out_of_memory(e)) is None:
                    raise
                release_after_oom(e)  # the request's activations, held by the error's frames
                raise DemoInputError(f"the {self.detector.device} device ran out of memory for this request "
                                     f"({what}); try fewer expressions or a smaller image") from None
        shown = Shown(image_path, detections, seconds)
        return (*self._render(shown, threshold), shown)

    def _run(self, image: Any, expressions: list[str], options: InferenceOptions) -> tuple[Detections, float]:
        try:
            started = time.perf_counter()
            detections = self.detector.detect(image, expressions, options)
            return detections, time.perf_counter() - started
        finally:
            self.slots.release()

    def redraw(self, threshold: float, shown: Shown | None) -> tuple[Any, ...]:
        """Draw the last result again at another threshold (no model call)."""
        if shown is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return self._render(shown, _threshold(threshold))

    def _render(self, shown: Shown, threshold: float) -> tuple[Any, ...]:
        dets = shown.detections
        image = open_upload(shown.image_path, self.limits, self.roots)
        drawn = draw_detections(image, dets, score_thr=threshold, palette_name=self.palette_name,
                                max_boxes=MAX_DRAWN)
        kept = dets.above(threshold)
        counts = [int((kept.labels == i).sum()) for i in range(len(dets.expressions))]
        colours = palette(self.palette_name, max(1, len(dets.expressions)))[:len(dets.expressions)]
        table = pd.DataFrame(detection_rows(dets, threshold), columns=TABLE_HEADERS)
        status = (f"{len(dets.expressions)} expression(s), {len(kept)} box(es) scoring at least {threshold:.2f} "
                  f"({dets.meta.get('mode', '?')} mode, {shown.seconds:.2f} s on {self.detector.device})")
        if dets.meta.get("truncated_expressions"):
            status += f"; {len(dets.meta['truncated_expressions'])} expression(s) shortened to fit the text limit"
        return drawn, legend_html(dets.expressions, colours, counts), table, self._write_json(kept, threshold, shown), status

    def _write_json(self, kept: Detections, threshold: float, shown: Shown) -> str:
        doc = kept.to_dict()
        doc["meta"] = {**doc.get("meta", {}), "score_thr": threshold, "image": Path(shown.image_path).name}
        with self._files_lock:  # requests run in several threads
            prune(self.downloads, "*.json", KEEP_DOWNLOADS - 1)
            fd, path = tempfile.mkstemp(prefix="detections-", suffix=".json", dir=self.downloads)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return path

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.downloads, ignore_errors=True)


def _threshold(value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise DemoInputError(f"the threshold must be a number between 0 and 1, not {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise DemoInputError(f"the threshold must be between 0 and 1, not {t:g}")
    return t


def build_model_app(detector: Detector, *, limits: DemoLimits | None = None, score_thr: float = 0.3,
                    debug: bool = False, score_over: ScoreOver = "expression-tokens") -> tuple[Any, ModelPage]:
    """The page (a ``gr.Blocks``) and its handlers; scripts call ``/detect`` (redrawing is page-only).

    ``score_over="all-tokens"`` scores boxes as the published Real-Model demos do (see
    :class:`reallod.model.inference.InferenceOptions`)."""
    limits = limits or DemoLimits()
    page = ModelPage(detector, limits, score_over=score_over)
    scoring = (" Boxes score the maximum over all prompt tokens, as the published Real-Model demos do "
               "(parallel mode only)." if score_over == "all-tokens" else "")
    examples = detect_examples()
    with gr.Blocks(title="Real-Model demo", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(
            "# Real-Model: find the objects an expression describes\n"
            f"Model `{Path(detector.source).name or detector.source}` on {detector.device}. Upload an image, "
            "enter what to look for (one expression per line), and press **Detect**. *parallel* mode gives "
            "every expression its own prompt (the benchmark mode); *concat* puts them in one prompt. "
            f"Limits: {limits.max_upload_mb:g} MB, {limits.max_pixels / 1e6:g} MP, "
            f"{limits.max_expressions} expressions, {limits.timeout_s:g} s per request." + scoring,
            elem_id="intro")
        shown = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = uploaded_image(type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard"],
                                      elem_id="image-input")
                text = gr.Textbox(label="Expressions, one per line", lines=4, max_lines=12,
                                  placeholder="the dog without a leash\nthe leftmost red cup", elem_id="expressions")
                with gr.Row():
                    mode = gr.Radio(["parallel", "concat"], value="parallel", label="Mode", elem_id="mode")
                    threshold = gr.Slider(0.0, 1.0, value=score_thr, step=0.01, label="Score threshold",
                                          elem_id="threshold")
                run = gr.Button("Detect", variant="primary", elem_id="detect-button")
                gr.Examples([[str(e.image), "\n".join(e.expressions)] for e in examples], inputs=[image, text],
                            label="Examples")
            with gr.Column():
                result = gr.Image(label="Detections", type="pil", format="png", interactive=False,
                                  elem_id="result-image")
                status = gr.Markdown(elem_id="status")
                legend = gr.HTML(label="Expressions and their colours", elem_id="legend")
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Boxes (pixels, xyxy)", interactive=False,
                                     elem_id="boxes")
                download = gr.File(label="Detections (JSON)", elem_id="json-download")
        outputs = [result, legend, table, download, status]
        run.click(shown_in_page(page.detect, debug=debug), [image, text, mode, threshold], [*outputs, shown],
                  api_name="detect", concurrency_limit=limits.queue_size)
        threshold.release(shown_in_page(page.redraw, debug=debug), [threshold, shown], outputs,
                          api_visibility="private", concurrency_limit=limits.queue_size)
    return blocks, page


def serve_model_demo(detector: Detector, options: ServerOptions, *, limits: DemoLimits | None = None,
                     score_thr: float = 0.3, block: bool = True,
                     score_over: ScoreOver = "expression-tokens") -> RunningDemo:
    """Build and serve the page; with ``block`` (the CLI) return only when the server stops."""
    limits = limits or DemoLimits()
    blocks, page = build_model_app(detector, limits=limits, score_thr=score_thr, debug=options.debug,
                                   score_over=score_over)
    return launch(blocks, options, limits, block=block, cleanup=page.close)
