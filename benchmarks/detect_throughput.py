"""`reallod detect` over a folder: images/s and image×expressions/s, naive loop vs parallel vs concat.

The job the CLI runs (``reallod.model.detect.run_detect``: decode, detect, JSON and picture per image),
over a generated folder of photographs, with the variants in one run on the same machine:

- ``naive``: one full forward pass per expression, one image after another (plain transformers usage);
- ``parallel-bs8-inline``: backbone once per image, 8 prompts per pass, decoding and writing in turn;
- ``parallel-bs8`` / ``parallel-bsN``: the same with decoding ahead and writing behind in worker threads
  (``DetectOptions.prefetch=2``, the default on CUDA);
- ``concat``: all expressions in as few prompts as the text limit allows.

    .venv/bin/python benchmarks/detect_throughput.py --model tiny --images 8 --expressions 10     # seconds
    .venv/bin/python benchmarks/detect_throughput.py --device cuda --images 50 --expressions 50 \\
        --size 800,1333 --batch-sizes 8,25,50 --naive-images 5

``--model`` is ``tiny`` (reallod.model.tiny), ``swin-t`` (the published MM-GDINO-T layout, random
weights) or a model folder. The naive loop runs over ``--naive-images`` images only (it is slow);
every figure is a rate, so the variants compare. The variants alternate over ``--rounds`` slices of
the images, so a change in the machine's load affects them alike. ``--json FILE`` appends a JSON line
for a variant as soon as it has run over a slice (its figures over the slices it has run so far:
``round`` of ``rounds``; the last line of a variant holds its final figures), so a run stopped part-way
keeps what it measured, and one summary line at the end (``best_parallel``: the fastest of every
parallel variant, inline or not). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lod_inference import expressions

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "cat", "hubble_deep_field")


def write_images(folder: Path, n: int, size: tuple[int, int] = (640, 480)) -> None:
    """n JPEG photographs (scikit-image ships them offline), resized to ``size``."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for name in PHOTOS:
        fn = getattr(data, name, None)
        if fn is not None:
            a = fn()
            arrays.append(a if a.ndim == 3 else None)
    arrays = [a[..., :3] for a in arrays if a is not None]
    for i in range(n):
        Image.fromarray(arrays[i % len(arrays)]).resize(size).save(folder / f"img_{i:03d}.jpg", quality=90)


def model_folder(kind: str, work: Path) -> Path:
    if kind == "tiny":
        from reallod.model.tiny import save_tiny_detector

        return save_tiny_detector(work / "tiny", seed=0)
    if kind == "swin-t":
        from transformers import MMGroundingDinoForObjectDetection
        from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
            GroundingDinoImageProcessorPil,
        )

        from reallod.model.convert_checkpoint import variant_config
        from reallod.model.hf_folder import save_tokenizer
        from reallod.model.tiny import load_vocab_tokenizer

        out = work / "swin-t"
        torch.manual_seed(0)
        MMGroundingDinoForObjectDetection(variant_config("tiny", max_text_len=256)).save_pretrained(str(out))
        save_tokenizer(load_vocab_tokenizer(), out)
        GroundingDinoImageProcessorPil().save_pretrained(str(out))
        return out
    return Path(kind)


def emit(path: str | None, row: dict) -> None:
    """Append one figure to ``--json`` at once (whole lines: a run stopped later keeps it)."""
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def best_parallel(rows) -> dict:
    """The fastest parallel variant (image × expressions/s), decoding inline or in worker threads alike."""
    return max((r for r in rows if r["variant"].startswith("parallel-")), key=lambda r: r["img_expr_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--model", default="tiny", help="tiny, swin-t or a model folder")
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)  # a folder built already (gpu_check)
    ap.add_argument("--size", default=None, help="SHORT,LONG resize (default: the model's preprocessor)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--expressions", type=int, default=10)
    ap.add_argument("--batch-sizes", default="8,25", help="parallel-mode batch sizes to run (comma-separated)")
    ap.add_argument("--naive-images", type=int, default=2, help="images the naive loop runs over")
    ap.add_argument("--rounds", type=int, default=3, help="slices the variants alternate over")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="append the figures here as JSON lines")
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging

    from reallod.model.detect import DetectOptions, run_detect
    from reallod.model.inference import InferenceOptions
    from reallod.model.loading import load_detector, resolve_device

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size = tuple(int(v) for v in args.size.split(",")) if args.size else None
    exprs = expressions(args.expressions)
    has_prefetch = any(f.name == "prefetch" for f in dataclasses.fields(DetectOptions))
    work = Path(tempfile.mkdtemp(prefix="reallod-detect-bench-"))
    try:
        rounds = max(1, min(args.rounds, args.images))
        for r in range(rounds):  # the variants alternate over these slices, so machine load hits them alike
            write_images(work / "images" / f"r{r}", len(range(r, args.images, rounds)))
            write_images(work / "naive" / f"r{r}", len(range(r, args.naive_images, rounds)))
        write_images(work / "warm", 1)
        folder = Path(args.model_dir) if args.model_dir else model_folder(args.model, work)
        det = load_detector(folder, device=str(device), dtype=args.dtype, image_size=size)
        params = sum(p.numel() for p in det.model.parameters()) / 1e6
        print(f"model: {args.model} ({params:.1f}M parameters, random weights); device {device} "
              f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), {args.dtype}; "
              f"{args.images} images 640x480 × {len(exprs)} expressions; resize "
              f"{size or 'model default'}; torch {torch.__version__}")

        warmed: set = set()
        sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        variants = [("naive", "naive", InferenceOptions(reuse_backbone=False, batch_size=1), 0),
                    (f"parallel-bs{sizes[0]}-inline", "images", InferenceOptions(batch_size=sizes[0]), 0),
                    *[(f"parallel-bs{b}", "images", InferenceOptions(batch_size=b), 2) for b in sizes],
                    ("concat", "images", InferenceOptions(mode="concat"), 2)]
        totals = {name: [0, 0.0] for name, *_ in variants}

        def run(name: str, images: Path, inference: InferenceOptions, prefetch: int | None) -> None:
            extra = {"prefetch": prefetch} if has_prefetch and prefetch is not None else {}
            opts = DetectOptions(out_dir=work / "out" / name / images.name, **extra)  # a fresh folder: no resume
            if name not in warmed:  # allocator, kernels, threads: every variant with its own shapes, untimed
                run_detect(work / "warm", det, exprs, options=opts, inference=inference, progress=False)
                warmed.add(name)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            summary = run_detect(images, det, exprs, options=opts, inference=inference, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            totals[name][0] += summary.processed
            totals[name][1] += time.perf_counter() - t0

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        by: dict[str, dict] = {}
        for r in range(rounds):
            for name, folder, inference, prefetch in variants:
                if any((work / folder / f"r{r}").iterdir()):
                    run(name, work / folder / f"r{r}", inference, prefetch)
                    n, dt = totals[name]
                    by[name] = {"stage": "detect", "variant": name, "device": str(device), "dtype": args.dtype,
                                "images": n, "expressions": len(exprs), "seconds": dt, "images_per_s": n / dt,
                                "img_expr_per_s": n * len(exprs) / dt,
                                "prefetch": prefetch if has_prefetch else None, "round": r + 1, "rounds": rounds}
                    emit(args.json, by[name])
                    print(f"{name:<22} {n:>4} images {dt:8.2f} s  {n / dt:8.2f} images/s  "
                          f"{n * len(exprs) / dt:9.1f} image×expressions/s  (slices 1-{r + 1} of {rounds})",
                          flush=True)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        best = best_parallel(by.values())
        summary = {"stage": "detect-summary", "device": str(device), "dtype": args.dtype,
                   "parallel_vs_naive": best["img_expr_per_s"] / by["naive"]["img_expr_per_s"],
                   "best_parallel": best["variant"],
                   "overlap_gain": by[f"parallel-bs{sizes[0]}"]["img_expr_per_s"]
                   / by[f"parallel-bs{sizes[0]}-inline"]["img_expr_per_s"],
                   "concat_vs_naive": by["concat"]["img_expr_per_s"] / by["naive"]["img_expr_per_s"],
                   "rounds": rounds, "peak_mem_mib": peak}
        print(f"parallel ({best['variant']}) vs naive: {summary['parallel_vs_naive']:.2f}x image×expressions/s "
              f"(target >= 3x); decoding/writing in worker threads vs in turn: {summary['overlap_gain']:.2f}x; "
              f"concat vs naive: {summary['concat_vs_naive']:.2f}x")
        emit(args.json, summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
