"""The end of a large `reallod realign` run: memory and time to assemble the output from the journal.

A run over millions of tasks ends by reading its journal back and writing the Real-Data output from
it: the memory at that moment is the run's peak. This script generates an input of N tasks (a
published task list: 4 tasks per image, 2 objects per image; or, with ``--format records``, Real-Data
records with 2 pairs of 2 expressions each) and a journal holding every task's result as a run writes
it (60% correct, 25% rewritten, 15% wrong, with the calls' steps), then runs ``realign`` over them, in
a fresh process per measurement: every task is found done, so the run only resumes (reads the journal,
recovers the trace) and assembles. Printed per source tree: peak memory (max RSS, and per task above
the interpreter with its imports), time of the output stage (journal read back, output written) and
of the whole run.

    .venv/bin/python benchmarks/realign_assembly.py --tasks 1000000
    # before and after, side by side: the same measurement with the code of another commit
    mkdir /tmp/before && git archive HEAD src | tar -x -C /tmp/before
    .venv/bin/python benchmarks/realign_assembly.py --tasks 1000000 --compare /tmp/before/src

``--json FILE`` appends the figures as one JSON line. The generated files (about 1 GB per million
tasks) are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
VERDICTS = (("correct", 0.60), ("rewritten", 0.85), ("wrong", 1.0))  # cumulative shares


def _step(cycle: int, role: str, decision: dict) -> dict:
    return {"cycle": cycle, "role": role, "attempts": 1, "repaired": False, "prompt_tokens": 812,
            "completion_tokens": 41, "latency_s": 0.912, "decision": decision, "view": None}


def _entry(tid: str, raw: str, rng: random.Random) -> dict:
    """A journal entry as ``journal_entry`` writes it."""
    draw = rng.random()
    verdict = next(v for v, share in VERDICTS if draw < share)
    steps = [_step(1, "reflector", {"verdict": "correct" if verdict == "correct" else "wrong", "missing": "",
                                    "feedback": "the box holds what the expression names"}),
             _step(1, "planner", {"state": verdict, "focus": "none", "question": "", "reason": "as reviewed"})]
    if verdict == "rewritten":
        steps.append(_step(2, "rewriter", {"expression": f"{raw}, rewritten"}))
    return {"task_id": tid, "verdict": verdict, "expression": f"{raw}, rewritten" if verdict == "rewritten" else raw,
            "raw_expression": raw, "cycles": len(steps) - 1, "error": None, "error_kind": None, "notes": [],
            "elapsed_s": 2.7, "steps": steps}


def _tasks(n: int) -> tuple[list[dict], list[str]]:
    """``n`` published tasks in lines of 4 per image (and their ids)."""
    rows, ids = [], []
    for i in range(n):
        image = i // 4
        rows.append({"image_path": f"images/{image // 1000:04d}/{image:08d}.jpg", "height": 480, "width": 640,
                     "raw_expression": f"the object number {i} on the left of the table",
                     "object_locations": {"chosen_object": {"id": i % 2, "category": "cup",
                                                            "bbox": [10 + 200 * (i % 2), 20, 100, 80]},
                                          "other_objects": []},
                     "global_caption": f"a kitchen table with two cups, picture {image}"})
        ids.append(str(i))
    return rows, ids


def _records(n: int) -> tuple[list[dict], list[str]]:
    """Real-Data records of 4 tasks each: 2 pairs of 2 expressions (and the task ids)."""
    rows, ids = [], []
    for r in range((n + 3) // 4):
        pairs = []
        for p in range(2):
            positives = [f"the object number {4 * r + 2 * p + k} on the left of the table" for k in range(2)]
            pairs.append({"bboxes": [[10.0 + 200 * p, 20.0, 110.0 + 200 * p, 100.0]], "category": "cup",
                          "relation": "single", "positive_expressions": positives, "negative_expressions": []})
            ids += [f"{r}/vlm_short/{p}/{k}" for k in range(2)]
        rows.append({"filename": f"images/{r // 1000:04d}/{r:08d}.jpg", "height": 480, "width": 640,
                     "caption": f"a kitchen table with two cups, picture {r}", "pairs": {"vlm_short": pairs}})
    return rows, ids[:n]


def generate(folder: Path, n: int, fmt: str) -> tuple[Path, Path]:
    """The input and the journal of a finished run over it."""
    from reallod.runs.journal import fingerprint_file

    rows, ids = (_tasks if fmt == "tasks" else _records)(n)
    src = folder / "input.jsonl"
    with open(src, "wb") as f:
        f.writelines(orjson.dumps(row) + b"\n" for row in rows)
    raws = [row["raw_expression"] for row in rows] if fmt == "tasks" else \
        [e for row in rows for p in row["pairs"]["vlm_short"] for e in p["positive_expressions"]]
    del rows
    fp = {"config": "benchmark", "input": fingerprint_file(src), "captions": None, "max_cycles": 3, "format": fmt,
          "shard": None}
    journal = folder / "journal.jsonl"
    rng = random.Random(0)
    with open(journal, "wb") as f:
        f.write(orjson.dumps({"journal": 1, "fingerprint": fp, "meta": {"input": str(src), "format": fmt}}) + b"\n")
        for tid, raw in zip(ids, raws, strict=False):
            f.write(orjson.dumps({"task_id": tid, "result": _entry(tid, raw, rng)}) + b"\n")
    return src, journal


def peak_rss() -> int:
    """The process's peak resident memory in bytes (``VmHWM``: unlike ``ru_maxrss``, not carried over
    from the parent that started this process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(folder: Path) -> None:
    """One measurement (in its own process): ``realign`` resuming the finished run, assembling only."""
    from tests.agent.scripted import scripted_roles

    from reallod.agent.realign import RealignOptions, realign

    def no_model(role: str, messages: list) -> str:
        raise AssertionError("the journal holds every task: no model call expected")

    base = peak_rss()
    t0 = time.perf_counter()
    run = realign(RealignOptions(input=folder / "input.jsonl", config="benchmark", out=folder / "out.jsonl",
                                 images=folder, force_resume=True, no_cache=True),
                  roles=scripted_roles(no_model, vlm=False))
    wall = time.perf_counter() - t0
    assert run.info["tasks_run"] == 0, run.info
    peak = peak_rss()
    print(json.dumps({"peak_bytes": peak, "base_bytes": base, "wall_s": wall, "tasks": run.summary.tasks,
                      "output_s": run.info["stages_s"]["output"], "prepare_s": run.info["stages_s"]["prepare"]}))


def measure(src_tree: Path, data: Path, work: Path) -> dict:
    """Run the worker against ``src_tree`` on a fresh copy of the journal (the resume adds to the trace)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    os.link(data / "input.jsonl", work / "input.jsonl")
    shutil.copyfile(data / "journal.jsonl", work / "out.journal.jsonl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src_tree), str(ROOT)])}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(work)], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the run over {src_tree} failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["output"] = work / "out.jsonl"
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--format", choices=("tasks", "records"), default="tasks")
    ap.add_argument("--compare", type=Path, default=None,
                    help="another source tree (its src folder) to measure side by side, e.g. the last commit's")
    ap.add_argument("--tmp", type=Path, default=None, help="where to generate the files (default: the system's)")
    ap.add_argument("--json", default=None, help="append the figures here as one JSON line")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        return worker(args.worker)

    sys.path.insert(0, str(ROOT / "src"))
    trees = {"this tree": ROOT / "src", **({"--compare": args.compare.resolve()} if args.compare else {})}
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="realign-assembly-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        t0 = time.perf_counter()
        generate(data, args.tasks, args.format)
        print(f"{args.tasks:,} tasks ({args.format}) generated in {time.perf_counter() - t0:.0f} s; "
              f"journal {(data / 'journal.jsonl').stat().st_size / 1e6:,.0f} MB")
        figures = {name: measure(tree, data, Path(tmp) / f"run{i}") for i, (name, tree) in enumerate(trees.items())}
        outputs = [f.pop("output").read_bytes() for f in figures.values()]
        same = all(o == outputs[0] for o in outputs)
    print(f"\n| {args.tasks:,} tasks, {args.format} | peak RSS | above imports | per task | output stage | run |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, f in figures.items():
        above = f["peak_bytes"] - f["base_bytes"]
        print(f"| {name} | {f['peak_bytes'] / 1e6:,.0f} MB | {above / 1e6:,.0f} MB | {above / args.tasks:,.0f} B "
              f"| {f['output_s']:.1f} s | {f['wall_s']:.1f} s |")
    if len(outputs) > 1:
        print(f"\noutputs {'byte-identical' if same else 'DIFFER'}")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps({"tasks": args.tasks, "format": args.format, "figures": figures,
                                 "identical": same}) + "\n")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
