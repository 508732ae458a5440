"""`reallod detect` as several processes over one folder (torchrun / accelerate launch): each image is
detected by exactly one of them, the folder ends up as one process leaves it, and any later run — with
any number of processes — trusts a journal only for files still as it wrote them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from reallod.model.detect import DetectOptions, run_detect
from reallod.runs.launch import Place

ROOT = Path(__file__).resolve().parents[2]


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith("detect.journal")}


def _run(images, detector, out, place=None, texts=("an astronaut", "a flag")):
    return run_detect(images, detector, list(texts), progress=False, echo=lambda m: None, place=place,
                      options=DetectOptions(out_dir=out, prefetch=0))


def test_processes_share_the_images_and_any_number_resumes_them(five_images, tiny_detector, tmp_path, calls):
    whole = tmp_path / "whole"
    assert _run(five_images, tiny_detector, whole).processed == 5
    out = tmp_path / "out"
    calls.clear()
    shares = [_run(five_images, tiny_detector, out, Place(rank, 2, rank)) for rank in (0, 1)]
    assert len(calls) == 5 and sorted(s.images for s in shares) == sorted(s.processed for s in shares)
    assert sum(s.images for s in shares) == 5 and min(s.images for s in shares) >= 1
    assert _outputs(out) == _outputs(whole)
    assert sorted(p.name for p in out.glob("detect.journal*")) == ["detect.journal.rank0.jsonl",
                                                                    "detect.journal.rank1.jsonl"]

    calls.clear()  # one process now: everything is there
    again = _run(five_images, tiny_detector, out)
    assert calls == [] and again.resumed == 5 and again.preds == again.pictures == 5

    (out / "preds" / "p3.json").unlink()
    calls.clear()  # three processes: only the missing image, by the process it falls to
    thirds = [_run(five_images, tiny_detector, out, Place(rank, 3, rank)) for rank in range(3)]
    assert len(calls) == 1 and sum(s.processed for s in thirds) == 1 and sum(s.resumed for s in thirds) == 4
    assert _outputs(out) == _outputs(whole)


def test_a_run_resumed_on_more_processes_loses_no_finished_image(five_images, tiny_detector, tmp_path, calls):
    """Two processes, then three: each rewrites its journal as it starts, and must keep the entries of images
    that are now another process's, or a process starting later finds them gone and detects them again."""
    out = tmp_path / "out"
    for rank in (0, 1):
        _run(five_images, tiny_detector, out, Place(rank, 2, rank))
    calls.clear()
    shares = [_run(five_images, tiny_detector, out, Place(rank, 3, rank)) for rank in range(3)]
    assert calls == [] and sum(s.resumed for s in shares) == 5


def test_files_written_over_by_another_run_are_not_taken_from_an_old_journal(five_images, tiny_detector, tmp_path,
                                                                              calls):
    """Two processes write with settings A; one process writes over every file with settings B (its own
    journal starts afresh, the two others stay); two processes with A again must not trust those two
    journals: every file now holds B's boxes."""
    out = tmp_path / "out"
    for rank in (0, 1):
        _run(five_images, tiny_detector, out, Place(rank, 2, rank))
    _run(five_images, tiny_detector, out, texts=("a helmet",))
    calls.clear()
    shares = [_run(five_images, tiny_detector, out, Place(rank, 2, rank)) for rank in (0, 1)]
    assert len(calls) == 5 and sum(s.resumed for s in shares) == 0
    whole = tmp_path / "whole"
    _run(five_images, tiny_detector, whole)
    assert _outputs(out) == _outputs(whole)


def test_a_process_with_no_image_is_not_an_error(five_images, tiny_detector, tmp_path, calls):
    one = five_images / "p0.jpg"  # a single file: one process of two has nothing to do
    shares = [_run(one, tiny_detector, tmp_path / "out", Place(rank, 2, rank)) for rank in (0, 1)]
    assert sorted(s.images for s in shares) == [0, 1] and len(calls) == 1


def test_torchrun_two_processes_write_what_one_writes(five_images, tiny_model_dir, tmp_path):
    """The CLI under torchrun (CPU, one thread per process as in the reference run): same files, and a
    one-process rerun finds them all done."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def detect(out, launcher=()):
        cmd = [sys.executable, *launcher, "-m", "reallod", "detect", str(five_images), str(tiny_model_dir),
               "--texts", "an astronaut . a flag .", "--out-dir", str(out), "--device", "cpu", "--topk", "5"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    detect(tmp_path / "one")
    stdout = detect(tmp_path / "two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
    said = sorted(line.split(":")[0] for line in stdout.splitlines() if line.startswith("process "))
    assert said == ["process 0 of 2", "process 1 of 2"], stdout
    assert _outputs(tmp_path / "two") == _outputs(tmp_path / "one")
    assert "5 images (5 done by an earlier run)" in detect(tmp_path / "two")
