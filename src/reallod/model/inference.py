"""Language-based inference: image + expressions → per-expression boxes and scores.

``parallel`` mode (the benchmarks' mode) gives every expression its own prompt. The image backbone
and the input projections do not depend on the text, so they run once per image; their outputs are
replayed, expanded over a batch of prompts, inside the unchanged transformers forward pass, which
runs the text encoder, the fusion encoder and the decoder for the whole batch at once. ``concat`` mode
joins the expressions into as few prompts as the text limit allows and goes through the same path.

Scores follow MMDetection's grounding head in its benchmark setting: the sigmoid of the token logits,
averaged over the expression's tokens (``score_reduce="mean"``), per query; each expression keeps its
top-k queries. The published Real-Model demos call MMDetection with ``tokens_positive=-1,
custom_entities=False`` instead, where a box scores the maximum sigmoid over *all* tokens of the
prompt ([CLS], the expression, ".", [SEP]); ``score_over="all-tokens"`` reproduces their numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from reallod.errors import ConfigError, DataError
from reallod.model import token_prompt as P
from reallod.model.detections import Detections
from reallod.model.nms import cxcywh_to_xyxy, nms

if TYPE_CHECKING:
    from PIL import Image

Mode = Literal["parallel", "concat"]
ScoreOver = Literal["expression-tokens", "all-tokens"]
SCORE_OVER: tuple[str, ...] = ("expression-tokens", "all-tokens")


@dataclass
class Detector:
    """Everything inference needs, on one device and dtype."""

    model: Any  # MMGroundingDinoForObjectDetection | GroundingDinoForObjectDetection
    tokenizer: Any  # BertTokenizer with the bert-base-uncased vocabulary
    image_processor: Any  # GroundingDinoImageProcessorPil
    device: torch.device
    dtype: torch.dtype  # what it runs in: bf16/fp16 over float32 weights is autocast (mixed_precision)
    source: str = ""  # where it was loaded from (folder or hub id, + the weights file that replaced its own)
    stamp: list = field(default_factory=list)  # which weights (loading.weights_stamp): what resumes compare

    @property
    def max_text_len(self) -> int:
        return int(self.model.config.max_text_len)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detect(self, image: Image.Image, expressions: list[str], options: InferenceOptions | None = None,
               **kwargs: Any) -> Detections:
        """Detect every expression in one PIL image (see :func:`detect`)."""
        return detect(self, image, expressions, options, **kwargs)


@dataclass
class InferenceOptions:
    """How to turn one image and its expressions into detections."""

    mode: Mode = "parallel"
    batch_size: int = 8  # prompts per forward pass (backbone features are shared across them)
    topk: int = 300  # boxes kept per expression
    score_thr: float = 0.0  # drop boxes below this score
    nms_iou: float | None = None  # class-wise (per-expression) NMS IoU threshold; None = off
    score_reduce: Literal["mean", "max"] = "mean"  # over the expression's tokens
    # "all-tokens": a box scores the max over every token of its prompt, special tokens and "." included
    # (the published demos' rule, MMDetection's tokens_positive=-1); parallel mode only
    score_over: ScoreOver = "expression-tokens"
    reuse_backbone: bool = True  # False: a full forward pass per batch (the naive reference)
    on_long: P.LongPolicy = "truncate"

    def __post_init__(self) -> None:
        # named as the CLI user sees them (--mode) and as a library caller sets them (InferenceOptions.mode)
        if self.mode not in ("parallel", "concat"):
            raise ConfigError(f"--mode (InferenceOptions.mode) must be 'parallel' or 'concat', not {self.mode!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size (InferenceOptions.batch_size) must be >= 1, not {self.batch_size}")
        if self.topk < 1:
            raise ConfigError(f"--topk (InferenceOptions.topk) must be >= 1, not {self.topk}")
        if not 0.0 <= self.score_thr <= 1.0:
            raise ConfigError(f"InferenceOptions.score_thr must be in [0, 1], not {self.score_thr}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ConfigError(f"--nms-iou (InferenceOptions.nms_iou) must be in (0, 1], not {self.nms_iou}")
        if self.score_reduce not in ("mean", "max"):
            raise ConfigError(f"InferenceOptions.score_reduce must be 'mean' or 'max', not {self.score_reduce!r}")
        if self.score_over not in SCORE_OVER:
            raise ConfigError(f"--score-over (InferenceOptions.score_over) must be one of {', '.join(SCORE_OVER)}, "
                              f"not {self.score_over!r}")
        if self.score_over == "all-tokens" and self.mode != "parallel":
            raise ConfigError("--score-over all-tokens (the published demos' rule) needs parallel mode (--mode "
                              "parallel): in one prompt of several expressions every box would score the same for "
                              "each of them")


# ---------------------------------------------------------------------------------------------
# backbone reuse
# ---------------------------------------------------------------------------------------------


class _ReplayBackbone(nn.Module):
    """Stands in for ``model.model.backbone``: returns cached features expanded to the batch size."""

    def __init__(self, position_embedding: nn.Module, features: list, positions: list) -> None:
        super().__init__()
        self.position_embedding = position_embedding  # the forward uses it for the extra levels
        self._features = features
        self._positions = positions

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
        b = pixel_values.shape[0]
        feats = [(f.expand(b, *f.shape[1:]), m.expand(b, *m.shape[1:])) for f, m in self._features]
        return feats, [p.expand(b, *p.shape[1:]) for p in self._positions]  # fresh list: the caller appends


class _ReplayProjection(nn.Module):
    """Stands in for one ``input_proj_vision`` level: returns its cached output, expanded."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self._output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._output.expand(x.shape[0], *self._output.shape[1:])


@torch.inference_mode()
def encode_image(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
                 ) -> tuple[list, list, list[torch.Tensor]]:
    """The text-independent part for one image: backbone features, position embeddings, projections."""
    core = model.model
    features, positions = core.backbone(pixel_values, pixel_mask)
    projections = [core.input_proj_vision[level](source) for level, (source, _) in enumerate(features)]
    for level in range(len(features), core.config.num_feature_levels):
        source = features[-1][0] if level == len(features) else projections[-1]
        projections.append(core.input_proj_vision[level](source))
    return list(features), list(positions), projections


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.Lock:
    """The lock under which a model runs its forward passes here. :func:`replay_image` swaps modules
    inside the model, so calls from several threads (the demo's requests) must take turns on it."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


@contextlib.contextmanager
def replay_image(model: nn.Module, encoded: tuple[list, list, list[torch.Tensor]]) -> Iterator[None]:
    """Within the block, ``model(...)`` reuses ``encoded`` instead of running backbone and projections.

    It changes the model for every thread: hold :func:`model_lock` around it."""
    core = model.model
    features, positions, projections = encoded
    backbone, projs = core.backbone, core.input_proj_vision
    core.backbone = _ReplayBackbone(backbone.position_embedding, features, positions)
    core.input_proj_vision = nn.ModuleList([_ReplayProjection(p) for p in projections])
    try:
        yield
    finally:
        core.backbone, core.input_proj_vision = backbone, projs


# ---------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------


def plan_prompts(detector: Detector, expressions: Sequence[str], options: InferenceOptions) -> P.PromptPlan:
    tokens = P.tokenize_expressions(expressions, detector.tokenize)
    plan = P.plan_parallel if options.mode == "parallel" else P.plan_concat
    return plan(tokens, detector.max_text_len, on_long=options.on_long, expressions=expressions)


def resized_size(size: Any, height: int, width: int) -> tuple[int, int] | None:
    """The (height, width) the Grounding-DINO image processor resizes a ``height`` × ``width`` image to under
    its ``size`` rule (its own arithmetic, so this agrees with it); None for a rule it does not know."""
    from transformers.image_transforms import get_size_with_aspect_ratio
    from transformers.image_utils import get_image_size_for_max_height_width

    rule = {k: v for k, v in dict(size or {}).items() if v}
    if {"shortest_edge", "longest_edge"} <= set(rule):
        return get_size_with_aspect_ratio((height, width), rule["shortest_edge"], rule["longest_edge"])
    if {"max_height", "max_width"} <= set(rule):
        return get_image_size_for_max_height_width((height, width), rule["max_height"], rule["max_width"])
    if {"height", "width"} <= set(rule):
        return int(rule["height"]), int(rule["width"])
    return None


def feature_strides(config: Any) -> list[int] | None:
    """The strides of the feature maps the detector's encoder takes: the Swin stages it uses (patch size ×
    2 per stage after the first), then each extra level half the last; None for another backbone."""
    backbone = getattr(config, "backbone_config", None)
    patch, stages = getattr(backbone, "patch_size", None), getattr(backbone, "out_features", None)
    patch = patch[0] if isinstance(patch, (list, tuple)) and patch else patch
    if not isinstance(patch, int) or not stages or not all(re.fullmatch(r"stage\d+", s) for s in stages):
        return None
    strides = [patch * 2 ** (int(s[5:]) - 1) for s in stages]
    for _ in range(int(getattr(config, "num_feature_levels", len(strides))) - len(strides)):
        strides.append(strides[-1] * 2)
    return strides


def input_problem(config: Any, height: int, width: int) -> str | None:
    """Why the detector cannot take a resized image of ``height`` × ``width`` pixels, or None. Each feature
    map has ceil(side / stride) positions a side (Swin pads to its patches, each merge and extra level
    rounds up); the projections' group norm (32 groups) needs more than one value per group, and the
    two-stage encoder picks ``num_queries`` of all the positions."""
    if min(height, width) < 1:
        return "a side would be under one pixel"
    strides = feature_strides(config)
    if strides is None:
        return None
    maps = [math.ceil(height / s) * math.ceil(width / s) for s in strides]
    if int(getattr(config, "d_model", 256)) // 32 * min(maps) <= 1:
        return f"its {strides[-1]}-pixel feature map would be a single value, too little for the model's group norm"
    queries = int(getattr(config, "num_queries", 0))
    if getattr(config, "two_stage", False) and sum(maps) < queries:
        return f"it gives {sum(maps)} image positions, fewer than the model's {queries} queries"
    return None


def processor_file(detector: Detector) -> str:
    """Where the detector's image processor settings come from, for messages."""
    model = detector.source.split(" + ")[0]
    return f"{model}/preprocessor_config.json" if model else "the image processor's settings"


def prepare_pixels(detector: Detector, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU half of :func:`preprocess` (decode-side work: convert, resize, normalise, pad).

    Safe to run in a worker thread while the device works on another image. On a CUDA detector the
    tensors are pinned, so :func:`to_device` can copy them without blocking the host. An image the
    model cannot take once resized (a strip thousands of times longer than wide) is a ``DataError``;
    the processor failing on any other is its settings' fault: a ``ConfigError`` naming them.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    proc = detector.image_processor
    width, height = image.size
    resized = resized_size(getattr(proc, "size", None), height, width) if getattr(proc, "do_resize", True) else None
    if resized is not None and (why := input_problem(getattr(detector.model, "config", None), *resized)):
        shown = "" if min(resized) < 1 else f": resized to {resized[1]}×{resized[0]}, {why}"
        raise DataError(f"image is {width}×{height}: too thin to resize to the model's input"
                        + (shown or f" ({why})"))
    try:
        enc = proc(images=[image], return_tensors="pt")
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{processor_file(detector)}: the image processor fails on a {width}×{height} image "
                          f"({' '.join(str(e).split())[:200]}); fix its settings") from e
    pixel_values, pixel_mask = enc["pixel_values"], enc["pixel_mask"]
    if detector.device.type == "cuda":
        pixel_values, pixel_mask = pixel_values.pin_memory(), pixel_mask.pin_memory()
    return pixel_values, pixel_mask


def to_device(detector: Detector, pixels: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared (CPU) pixels → the detector's device and its weights' dtype; asynchronous when pinned."""
    pixel_values, pixel_mask = pixels
    non_blocking = detector.device.type == "cuda"
    return (pixel_values.to(detector.device, non_blocking=non_blocking).to(weights_dtype(detector.model)),
            pixel_mask.to(detector.device, non_blocking=non_blocking))


def weights_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def mixed_precision(detector: Detector) -> contextlib.AbstractContextManager:
    """A bf16/fp16 detector over float32 weights runs under autocast: matrix products and convolutions
    in half precision, box arithmetic, reference points and sampling grids in float32. A model cast to
    bf16 whole gives boxes on a grid of 2.6 px at 1333 px, and places the encoder's reference points
    past column 128 half a cell off (bf16 holds integers only there), so
    :func:`reallod.model.loading.load_detector` keeps the weights in float32."""
    if detector.dtype in (torch.float16, torch.bfloat16) and weights_dtype(detector.model) == torch.float32:
        return torch.autocast(detector.device.type, dtype=detector.dtype)
    return contextlib.nullcontext()


def preprocess(detector: Detector, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL image → (pixel_values (1, 3, H, W), pixel_mask (1, H, W)) on the detector's device/dtype."""
    return to_device(detector, prepare_pixels(detector, image))


def _batches(prompts: Sequence[P.Prompt], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of similar length (less padding in the text encoder and fusion layers).

    Prompts are ordered by token count (stable, so equal lengths keep their order) before they are cut
    into batches; a batch is padded only to its own longest prompt.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.inference_mode()
def run_prompts(detector: Detector, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                prompts: Sequence[P.Prompt], options: InferenceOptions
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per prompt, on the host in float32: (logits (Q, T), boxes (Q, 4) normalised cxcywh), T = its length."""
    model = detector.model
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(prompts)
    non_blocking = detector.device.type == "cuda"
    results = []
    with model_lock(model), mixed_precision(detector):
        encoded = encode_image(model, pixel_values, pixel_mask) if options.reuse_backbone else None
        for indices in _batches(prompts, options.batch_size):
            batch = [prompts[i] for i in indices]
            ids, mask = P.batch_ids(batch)
            input_ids = torch.tensor(ids, dtype=torch.long).to(detector.device, non_blocking=non_blocking)
            attention_mask = torch.tensor(mask, dtype=torch.long).to(detector.device, non_blocking=non_blocking)
            b, width = len(batch), input_ids.shape[1]
            kwargs = dict(pixel_values=pixel_values.expand(b, -1, -1, -1), pixel_mask=pixel_mask.expand(b, -1, -1),
                          input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=torch.zeros_like(input_ids))
            with replay_image(model, encoded) if encoded is not None else contextlib.nullcontext():
                result = model(**kwargs)
            # Kept on the device, cut to the batch's own text width (the model pads its logits to
            # max_text_len): nothing waits for the device until every batch of the image is queued.
            results.append((indices, batch, result.logits[:, :, :width].float(), result.pred_boxes.float()))
    for indices, batch, logits, boxes in results:  # one device→host copy per batch, not one per expression
        logits, boxes = logits.cpu(), boxes.cpu()
        for row, (i, p) in enumerate(zip(indices, batch, strict=True)):
            out[i] = (logits[row, :, :len(p.input_ids)], boxes[row])
    return out  # type: ignore[return-value]


def detect(detector: Detector, image: Image.Image, expressions: Sequence[str],
           options: InferenceOptions | None = None, *, prepared: tuple[torch.Tensor, torch.Tensor] | None = None,
           **overrides) -> Detections:
    """Boxes for each expression in one image, in original-image pixels (xyxy).

    ``prepared``: the image's :func:`prepare_pixels`, computed ahead (e.g. in a worker thread).
    """
    if options is None:
        options = InferenceOptions(**overrides)
    elif overrides:
        options = dataclasses.replace(options, **overrides)
    expressions = P.check_expressions(list(expressions))
    plan = plan_prompts(detector, expressions, options)
    pixel_values, pixel_mask = to_device(detector, prepared) if prepared is not None else preprocess(detector, image)
    outputs = run_prompts(detector, pixel_values, pixel_mask, plan.prompts, options)
    width, height = image.size
    per_expression = select(plan.prompts, outputs, (height, width), options)
    meta: dict[str, Any] = {"mode": options.mode}
    if options.score_over != "expression-tokens":
        meta["score_over"] = options.score_over
    if plan.truncated:
        meta["truncated_expressions"] = plan.truncated
    return to_detections(per_expression, expressions, (height, width), meta)


def select(prompts: Sequence[P.Prompt], outputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
           image_size: tuple[int, int], options: InferenceOptions
           ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per expression index: (boxes xyxy pixels (k, 4), scores (k,)) after top-k, NMS and threshold."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    result: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for prompt, (logits, boxes) in zip(prompts, outputs, strict=True):
        probs = logits.sigmoid()
        xyxy = cxcywh_to_xyxy(boxes.cpu()) * scale  # already on the host (run_prompts): no copy
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        for (s, e), expr in zip(prompt.spans, prompt.expression_ids, strict=True):
            if options.score_over == "all-tokens":  # every position of the prompt: [CLS] ... . [SEP]
                scores = probs.amax(-1).cpu()
            else:
                token_probs = probs[:, s:e]
                scores = (token_probs.mean(-1) if options.score_reduce == "mean" else token_probs.amax(-1)).cpu()
            k = min(options.topk, len(scores))
            top = scores.topk(k).indices  # sorted, descending
            b, sc = xyxy[top], scores[top]
            if options.nms_iou is not None:
                keep = nms(b, sc, options.nms_iou)  # this expression's boxes alone
                b, sc = b[keep], sc[keep]
            if options.score_thr > 0:
                ok = sc >= options.score_thr
                b, sc = b[ok], sc[ok]
            result[expr] = (b, sc)
    return result


def to_detections(per_expression: dict[int, tuple[torch.Tensor, torch.Tensor]], expressions: Sequence[str],
                  image_size: tuple[int, int], meta: dict) -> Detections:
    parts = [(i, *per_expression[i]) for i in sorted(per_expression)]
    if not parts:
        return Detections.empty(list(expressions), image_size=image_size, meta=meta)
    boxes = np.concatenate([b.numpy() for _, b, _ in parts]).reshape(-1, 4)
    scores = np.concatenate([s.numpy() for _, _, s in parts])
    labels = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, _, s in parts])
    return Detections(boxes, scores, labels, list(expressions), image_size=image_size, meta=meta)
