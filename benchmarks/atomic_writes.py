"""Many small files written into one flat folder, as ``reallod detect`` writes ``OUT/preds`` and
``OUT/vis`` for a folder of images: the cost of each atomic write (temporary file, rename) and of the
sweep that removes the temporary files of killed writers.

The sweep lists the folder. It once ran before every file, which made N files into one folder cost
N listings of up to N names (quadratic: hours at a million images); it now runs once per folder and
process. Both are measured in one run on the same machine, the old one by forgetting the folder swept
before each file, and the ratio is printed:

    .venv/bin/python benchmarks/atomic_writes.py --files 20000

``--json FILE`` appends the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from reallod.data import io as data_io


def write_files(folder: Path, n: int, *, sweep_each: bool) -> float:
    """Seconds to write ``n`` small JSON files into ``folder``; ``sweep_each``: the sweep before every file."""
    folder.mkdir()
    t0 = time.perf_counter()
    for i in range(n):
        if sweep_each:
            data_io._SWEPT.clear()
        with data_io.AtomicWriter(folder / f"{i:08d}.json") as w:
            w.write(b'{"boxes": [], "scores": [], "labels": []}')
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        once = write_files(Path(tmp) / "once", args.files, sweep_each=False)
        each = write_files(Path(tmp) / "each", args.files, sweep_each=True)
    out = {"files": args.files, "once_files_per_s": round(args.files / once, 1),
           "each_files_per_s": round(args.files / each, 1), "speedup": round(each / once, 2)}
    print(f"{args.files} files into one folder: {out['once_files_per_s']} files/s sweeping once, "
          f"{out['each_files_per_s']} files/s sweeping before each file: {out['speedup']}x", file=sys.stdout)
    if args.json is not None:
        with args.json.open("a") as f:
            f.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
