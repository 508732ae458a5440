"""Throughput and peak memory of ``reallod data stats`` / ``validate`` against a list-first baseline.

The baseline reads the way the published training code does: ``json.loads`` every line into a
list, then runs the per-record computation over the list. It runs *the same* per-record code
(:meth:`Stats.add`, :func:`check_record`), so the ratio measures the reading strategy: orjson,
streaming, and worker processes over byte ranges. Ours is measured through the console script,
as a user runs it.

    .venv/bin/python benchmarks/realdata.py --size-mb 64      # quick
    .venv/bin/python benchmarks/realdata.py                   # ~1 GB, O365-base shaped
    .venv/bin/python benchmarks/realdata.py --only ops        # data merge / sample: growth and held memory

The data file is generated once and cached under ``benchmarks/_data/`` (gitignored). Each of the
four measurements runs in its own subprocess; peak memory is the peak of the summed RSS of that
process and all its children (worker processes included), sampled every 20 ms. Summed RSS counts
pages that forked workers share with their parent once per process, so it overstates the real
footprint a little; it is the conservative figure. CPU time (user + system, workers included) is
printed too: on a machine shared with other work the wall-clock ratio moves with their load, the
ratio of CPU time does not (with N free cores, ours can approach N times that ratio in wall time).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "_data"
TARGETS = {"stats": 3.0, "validate": 1.5}
RSS_LIMIT_MB = 300

# ------------------------------------------------------------------------------ data generator

CATEGORIES = (
    "person", "car", "chair", "cup", "bottle", "dog", "cat", "bicycle", "boat", "bench", "bird",
    "umbrella", "handbag", "book", "clock", "vase", "potted plant", "laptop", "cell phone", "tie",
    "traffic light", "truck", "horse", "sheep", "pillow", "lamp", "sneakers", "hat", "glasses",
    "backpack", "street lights", "flag", "helmet", "gloves", "bowl", "trash bin", "sink", "mirror",
)
COLOURS = ("red", "blue", "green", "white", "black", "yellow", "brown", "grey", "orange", "pink",
           "dark", "light", "silver", "golden", "striped", "purple")
ADJECTIVES = ("small", "large", "tall", "short", "old", "new", "wooden", "metal", "plastic", "shiny",
              "empty", "full", "open", "closed", "round", "square", "wet", "dusty", "broken", "folded")
PLACES = ("on the left", "on the right", "in the middle", "in the background", "in the foreground",
          "near the window", "next to the table", "under the tree", "on the street", "behind the fence",
          "at the top of the image", "at the bottom", "beside the door", "on the shelf", "in the corner")
ACTIONS = ("standing", "sitting", "parked", "lying", "hanging", "leaning against the wall", "moving",
           "resting", "facing the camera", "partially hidden", "held by a person", "placed on a tray")
FILLERS = ("with", "and", "a", "the", "of", "that", "is", "which", "has", "its", "some", "two")


def _expression(rng: random.Random, category: str, style: str) -> str:
    """One made-up expression; lengths follow the sources: short 2-6, llm 5-14, long 12-40 words."""
    parts = [rng.choice(("a", "the", "one")), rng.choice(COLOURS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(ADJECTIVES))
    parts.append(category)
    if style == "vlm_short":
        if rng.random() < 0.5:
            parts.append(rng.choice(PLACES))
        return " ".join(parts)
    parts += [rng.choice(ACTIONS), rng.choice(PLACES)]
    extra = rng.randint(0, 4) if style == "llm" else rng.randint(6, 26)
    for _ in range(extra):
        parts.append(rng.choice((*FILLERS, *COLOURS, *ADJECTIVES, *CATEGORIES)))
    return " ".join(parts)


def _pool(rng: random.Random, style: str, n: int = 4000) -> dict[str, list[str]]:
    """Pre-drawn expressions per category (drawing every word for ~10^7 expressions takes minutes)."""
    return {c: list(dict.fromkeys(_expression(rng, c, style) for _ in range(n // len(CATEGORIES))))
            for c in CATEGORIES}


def generate(path: Path, size_mb: int, seed: int = 0) -> None:
    """About ``size_mb`` MiB of valid Real-Data shaped like O365-base.

    ~6 instances per image, each described by the three published sources (vlm_short, vlm_long,
    llm) with ~32 expressions per instance in all (negatives dominate), 1 in 10 images with an
    extra ``multi`` pair grouping two same-category boxes.
    """
    import orjson

    rng = random.Random(seed)
    styles = ("vlm_short", "vlm_long", "llm")
    pools = {s: _pool(rng, s) for s in styles}
    # positives / negatives per source: 1+10, 1+9, 2+9 = 32 per instance on average
    plan = {"vlm_short": (1, 10), "vlm_long": (1, 9), "llm": (2, 9)}
    limit = size_mb << 20
    tmp = path.with_suffix(".tmp")
    written = 0
    n = 0
    with open(tmp, "wb") as f:
        while written < limit:
            w, h = rng.choice(((640, 480), (1024, 768), (800, 600), (1280, 720), (480, 640), (1024, 683)))
            ninst = max(1, min(20, round(rng.gauss(6, 2.5))))
            objects = []
            for _ in range(ninst):
                bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
                x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                objects.append((rng.choice(CATEGORIES), [round(x1, 2), round(y1, 2), round(x1 + bw, 2), round(y1 + bh, 2)]))
            pairs: dict[str, list] = {s: [] for s in styles}
            for category, box in objects:
                for s in styles:
                    npos, nneg = plan[s]
                    pos = rng.sample(pools[s][category], npos)
                    other = rng.choice([c for c in CATEGORIES if c != category])
                    neg = rng.sample(pools[s][other], min(nneg + rng.randint(-2, 2), len(pools[s][other])))
                    pairs[s].append({"bboxes": [box], "category": category, "relation": "single",
                                     "positive_expressions": pos, "negative_expressions": neg})
            if rng.random() < 0.1 and len(objects) >= 2:
                a, b = rng.sample(objects, 2)
                pairs["llm"].append({"bboxes": [a[1], b[1]], "category": a[0], "relation": "multi",
                                     "positive_expressions": [f"two {a[0]} objects"],
                                     "negative_expressions": rng.sample(pools["llm"][b[0]], 5)})
            line = orjson.dumps({"filename": f"objects365/train/obj365_{n:08d}.jpg", "height": h,
                                 "width": w, "pairs": pairs}) + b"\n"
            f.write(line)
            written += len(line)
            n += 1
    os.replace(tmp, path)


# ------------------------------------------------------------------------ merge and sample (--only ops)


def ops_scale(small: int = 250, large: int = 2000, held: int = 20000) -> None:
    """How ``data merge`` grows with the records of one image, and what ``data sample -n`` holds per line.

    Merge: 10 images, each split over k records of one pair; CPU time at ``large`` over ``small``
    records per image is about large/small when linear (8 for the defaults), its square when the work
    grows with k² (64). Sample: traced peak of ``-n held`` minus ``-n 1`` over a file of ``held``
    records, per record, against the mean line length (orjson's bytes kept ≥ 4 KB each). Both are
    ratios measured in this one run, in this process.
    """
    import tempfile
    import tracemalloc

    import orjson

    from reallod.data.ops import merge_files, sample_file

    def split_images(path: Path, k: int) -> None:
        with open(path, "wb") as f:
            for img in range(10):
                for i in range(k):
                    x, y = (i * 7) % 9000, (i * 13) % 9000
                    f.write(orjson.dumps({"filename": f"same/{img}.jpg", "height": 10000, "width": 10000,
                                          "pairs": {"llm": [{"bboxes": [[x, y, x + 40, y + 40 + i % 7]],
                                                             "category": "dog", "relation": "single",
                                                             "positive_expressions": [f"dog {i}"],
                                                             "negative_expressions": [f"cat {i}"]}]}}) + b"\n")

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        seconds = {}
        for k in (small, large):
            split_images(d / f"split{k}.jsonl", k)
            start = time.process_time()
            merge_files([d / f"split{k}.jsonl"], d / "merged.jsonl")
            seconds[k] = time.process_time() - start
        print(f"merge, 10 images x k records: k={small} {seconds[small]:.2f} s, k={large} {seconds[large]:.2f} s "
              f"CPU; ratio {seconds[large] / seconds[small]:.1f}x (linear {large / small:.0f}x, "
              f"quadratic {(large / small) ** 2:.0f}x)")

        src = d / "sample_in.jsonl"
        rng = random.Random(0)
        with open(src, "wb") as f:
            for i in range(held):
                words = " ".join(rng.choice(CATEGORIES) for _ in range(rng.randint(2, 12)))
                f.write(orjson.dumps({"filename": f"img{i:07d}.jpg", "height": 480, "width": 640, "pairs": {
                    "llm": [{"bboxes": [[1.0, 2.0, 30.5, 40.25]], "category": "dog", "relation": "single",
                             "positive_expressions": [f"a dog {words}"], "negative_expressions": [words]}]}})
                        + b"\n")
        peaks = {}
        for n in (1, held):
            tracemalloc.start()
            sample_file(src, d / "sample_out.jsonl", n=n)
            peaks[n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        line = src.stat().st_size / held
        per_record = (peaks[held] - peaks[1]) / held
        print(f"sample -n {held}: {per_record:,.0f} bytes traced per held record of {line:,.0f} bytes "
              f"(ratio {per_record / line:.1f}x; orjson's own bytes kept at least 4,096 each)")


# --------------------------------------------------------------------------------- measurement


def _baseline(mode: str, path: str) -> None:
    """The list-first reader: json.loads every line into a list, then the same per-record code."""
    import json

    from reallod.data.schema import check_record
    from reallod.data.stats import Stats

    with open(path, "rb") as f:
        if mode == "stats":
            records = [json.loads(line) for line in f if line.strip()]
        else:  # with its line, which check_record looks at to skip the Unicode work on printable ASCII
            lines = [line for line in f if line.strip()]
            records = [json.loads(line) for line in lines]
    if mode == "stats":
        stats = Stats()
        for r in records:
            stats.add(r)
        print(stats.images, stats.instances, stats.expressions, stats.pairs)
    else:
        problems = sum(len(check_record(r, line)) for r, line in zip(records, lines, strict=True))
        print(len(records), problems)


class _PeakRss:
    """Peak of the summed RSS of a process tree, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree_rss(self) -> int:
        try:
            import psutil
        except ImportError:
            return _proc_tree_rss(self.pid)
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _proc_tree_rss(pid: int) -> int:
    """Linux without psutil: RSS of ``pid`` and its descendants from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return total


def measure(cmd: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds of the whole process tree, peak summed RSS in bytes, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    sampler = _PeakRss(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers are reaped by the command: included
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return seconds, cpu, peak, out.decode()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the generated file (MiB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="--workers for ours (default: CPU count)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is kept")
    ap.add_argument("--only", choices=("stats", "validate", "ops"), default=None,
                    help="one measurement; ops: data merge's growth and data sample's memory (no big file)")
    ap.add_argument("--baseline", choices=("stats", "validate"), help=argparse.SUPPRESS)
    ap.add_argument("file", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.baseline:  # child process of a baseline measurement
        _baseline(args.baseline, args.file)
        return
    if args.only == "ops":
        ops_scale()
        return

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / f"realdata-{args.size_mb}mb-seed{args.seed}.jsonl"
    if not path.exists():
        t = time.perf_counter()
        print(f"generating {path} ...", flush=True)
        generate(path, args.size_mb, args.seed)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    size = path.stat().st_size
    with open(path, "rb") as f:  # into the page cache, so every run reads from memory
        while f.read(1 << 24):
            pass
    python = sys.executable
    cli = str(Path(python).with_name("reallod"))
    workers = ["--workers", str(args.workers)] if args.workers else []
    kinds = [args.only] if args.only else ["stats", "validate"]
    load_before = os.getloadavg()
    print(f"file: {path.name}, {size / 2**20:,.0f} MiB; CPUs usable: {len(os.sched_getaffinity(0))}; "
          f"load average before: {load_before[0]:.2f}", flush=True)
    results = {}
    for kind in kinds:
        cmds = {
            "baseline": [python, str(Path(__file__).resolve()), "--baseline", kind, str(path)],
            "reallod": [cli, "data", kind, str(path), "--json", *workers,
                        *(["--max-errors", "100"] if kind == "validate" else [])],
        }
        best: dict[str, tuple[float, float, int, str]] = {}
        for _ in range(args.repeat):  # alternate, so both sides see the same spells of load
            for who, cmd in cmds.items():
                run = measure(cmd)
                if who not in best or run[0] < best[who][0]:
                    best[who] = run
        for who, (seconds, cpu, peak, _) in best.items():
            results[(kind, who)] = best[who]
            print(f"  {kind:8} {who:8} {seconds:7.1f} s  {size / 2**20 / seconds:7.1f} MB/s  "
                  f"CPU {cpu:7.1f} s  peak RSS {peak / 2**20:7.0f} MB", flush=True)
        _cross_check(kind, results[(kind, "baseline")][3], results[(kind, "reallod")][3])
    load_after = os.getloadavg()

    print()
    print("| command | baseline MB/s | reallod MB/s | ratio | target | ratio of CPU time | "
          "baseline peak RSS | reallod peak RSS | met |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind in kinds:
        (bs, bcpu, brss, _), (os_, ocpu, orss, _) = results[(kind, "baseline")], results[(kind, "reallod")]
        ratio = bs / os_
        met = ratio >= TARGETS[kind] and orss / 2**20 < RSS_LIMIT_MB
        print(f"| {kind} | {size / 2**20 / bs:.1f} | {size / 2**20 / os_:.1f} | {ratio:.2f}x | "
              f">= {TARGETS[kind]}x, < {RSS_LIMIT_MB} MB | {bcpu / ocpu:.2f}x | {brss / 2**20:,.0f} MB | "
              f"{orss / 2**20:,.0f} MB | {'yes' if met else 'NO'} |")
    print(f"\nfile {size / 2**20:,.0f} MiB; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(on {len(os.sched_getaffinity(0))} CPUs: a load above the CPU count means other work shared them)")


def _cross_check(kind: str, baseline_out: str, ours_out: str) -> None:
    """Both sides must agree on what they computed, or the speed comparison means nothing."""
    import json

    ours = json.loads(ours_out)
    base = baseline_out.split()
    if kind == "stats":
        t = ours["total"]
        got = [t["images"], t["instances"], t["expressions"], t["pairs"]]
    else:
        s = ours["summary"]
        got = [s["records"], s["problems"]]
    if [int(v) for v in base] != got:
        raise SystemExit(f"{kind}: baseline computed {base}, reallod {got}: they must agree")


if __name__ == "__main__":
    main()
