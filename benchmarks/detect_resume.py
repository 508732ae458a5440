"""`reallod detect` over a large folder: what the job costs besides the model, and what a resume costs.

A job over millions of images lists them, splits them between processes, reads every journal back on a
resume and checks each finished image's files. This script measures that bookkeeping on a generated
folder of tiny JPEGs (1,000 per subfolder), in one run:

- the first run's rate (decode, resize, JSON written, journal), with one fixed answer standing in for
  the model's forward pass, so the figures are the job's own and not the model's;
- a resumed run over the same folder (every image found done, nothing redone), its rate and its ratio
  to the first run's;
- the Python memory at the resumed run's peak, per image (``tracemalloc``), and what that makes for ten
  million images.

    .venv/bin/python benchmarks/detect_resume.py --images 20000

``--json FILE`` appends the figures as one JSON line. Exit status 1 if the resumed run redid anything.
Nothing is downloaded (the model is reallod's tiny random one).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def write_tiny_images(folder: Path, n: int, per_folder: int = 1000) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (120, 30, 30)).save(buf, "JPEG")
    data = buf.getvalue()
    for k in range(n):
        sub = folder / f"part{k // per_folder:05d}"
        if k % per_folder == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{k:08d}.jpg").write_bytes(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--json", default=None, help="append the figures here as one JSON line")
    args = ap.parse_args()
    if args.images < 1:
        sys.exit("error: --images must be at least 1")

    from transformers.utils import logging as hf_logging

    from reallod.model.detect import DetectOptions, run_detect
    from reallod.model.loading import load_detector
    from reallod.model.tiny import save_tiny_detector

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="reallod-detect-resume-"))
    try:
        images = work / "images"
        write_tiny_images(images, args.images)
        detector = load_detector(save_tiny_detector(work / "model", seed=0), device="cpu")
        exprs = ["a red square"]
        from PIL import Image

        with Image.open(next((images / "part00000").iterdir())) as im:
            answer = detector.detect(im.convert("RGB"), exprs)
        detector.detect = lambda *a, **k: answer  # the stand-in for the forward pass: the model is not measured
        options = DetectOptions(out_dir=work / "out", save_vis=False, prefetch=0)

        def run():
            t0 = time.perf_counter()
            summary = run_detect(images, detector, exprs, options=options, progress=False)
            return summary, time.perf_counter() - t0

        first, first_s = run()
        again, resume_s = run()
        tracemalloc.start()
        traced, _ = run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        n = args.images
        row = {"stage": "detect-resume", "images": n, "first_run_s": first_s, "first_images_per_s": n / first_s,
               "resume_s": resume_s, "resume_images_per_s": n / resume_s, "resume_vs_first": first_s / resume_s,
               "resume_peak_bytes_per_image": peak / n, "redone": again.processed + traced.processed}
        print(f"{n} images in {(n + 999) // 1000} folders; one fixed answer stands in for the model's forward pass")
        print(f"first run:   {first.processed} images in {first_s:.1f} s ({n / first_s:,.0f} images/s: decode, "
              "resize, JSON, journal)")
        print(f"resumed run: {again.resumed} images found done in {resume_s:.2f} s ({n / resume_s:,.0f} images/s, "
              f"{first_s / resume_s:.1f}x the first run's rate); {row['redone']} redone")
        print(f"Python memory at the resumed run's peak: {peak / n:,.0f} B per image "
              f"({peak / n * 1e7 / 1e9:.1f} GB for ten million images)")
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if row["redone"] or again.resumed != n:
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
