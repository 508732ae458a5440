"""Two CPU processes (gloo) through the same entry point: both train, one checkpoint is written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reallod.train import checkpoint as C

from .helpers import tiny_raw, write_yaml

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_two_processes_with_gloo_write_one_checkpoint(tmp_path):
    raw = tiny_raw(tmp_path / "shapes", schedule={"epochs": 1, "max_steps": 3},
                   train={"cpu": True, "threads": 1, "batch_size": 2})
    config = write_yaml(tmp_path / "tiny.yaml", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "-m", "reallod", "train", str(config), "--work-dir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "2 process(es)" in out and "batch 2/process × 2 × accum 1 = 4" in out
    assert out.count("trained to step 3") == 1  # only the main process reports
    ckpts = C.list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["ckpt-00000003"]
    final = ckpts[0]
    assert sorted(p.name for p in final.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    # 12 images, 2 per process: an epoch is 3 steps of 4 images, so this run saw the whole epoch once.
    state = json.loads((final / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 1, 0)
    weights = load_file(str(final / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


FAILING_SAVE = '''
import errno, os, sys
import torch
save = torch.save
def failing(obj, f, *args, **kwargs):  # the disk of one process is full
    if os.environ["RANK"] == os.environ["FAIL_RANK"] and str(f).endswith(os.environ["FAIL_FILE"]):
        raise OSError(errno.ENOSPC, "No space left on device")
    return save(obj, f, *args, **kwargs)
torch.save = failing
from reallod.cli import main
main(sys.argv[1:])
'''


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
@pytest.mark.parametrize(("rank", "file"), [(0, "optimizer.pt"), (1, "rng-1.pt")])
def test_a_checkpoint_one_process_cannot_write_stops_every_process_with_its_reason(tmp_path, rank, file):
    """The process that failed names the cause; the other stops with it at the same point (it died with
    'unexpected RuntimeError: Connection closed by peer', or waited at the next synchronisation)."""
    raw = tiny_raw(tmp_path / "shapes", schedule={"epochs": 1, "max_steps": 2},
                   train={"cpu": True, "threads": 1, "batch_size": 2})
    config = write_yaml(tmp_path / "tiny.yaml", raw)
    script = tmp_path / "failing_save.py"
    script.write_text(FAILING_SAVE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAIL_RANK": str(rank), "FAIL_FILE": file,
           "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "--monitor-interval", "5",  # torchrun ends the other process once one failed: let it say why first
         str(script), "train", str(config), "--work-dir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0
    assert len(errors) == 2, errors
    assert any("cannot write the checkpoint of step 2 (OSError: [Errno 28] No space left on device)" in e
               for e in errors), errors
    assert any("writing the checkpoint of step 2 failed in 1 other process(es)" in e for e in errors), errors
    assert not any("unexpected" in e for e in errors), errors
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


NOTING_DETECT = '''
import json, os, sys
from reallod.train import evaluate
detect = evaluate.detect_queries
def noting(detector, queries, **kwargs):  # which held-out images this process detects (a file each: their
    import torch.distributed as td  # stderr interleaves), and how long it would wait for the others
    import torch
    group = td.distributed_c10d._get_default_group()
    timeout = group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    with open(os.path.join(os.environ["NOTES"], "rank-" + os.environ["RANK"]), "w") as f:
        json.dump({"images": sorted({q.image for q in queries}), "timeout_s": timeout}, f)
    return detect(detector, queries, **kwargs)
evaluate.detect_queries = noting
from reallod.cli import main
main(sys.argv[1:])
'''


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_every_process_detects_a_share_of_the_held_out_images_and_the_scores_are_one_processs(tmp_path):
    """The main process evaluated alone while the others waited: N times the time, and a wait longer than
    NCCL's timeout (ten minutes) ended the run."""
    import csv

    import numpy as np

    from reallod.model.loading import load_detector
    from reallod.train.evaluate import detect_queries, eval_queries, load_eval_records, pooled_ap

    raw = tiny_raw(tmp_path / "shapes", schedule={"epochs": 1, "max_steps": 3},
                   train={"cpu": True, "threads": 1, "batch_size": 2, "dist_timeout_s": 1234}, eval={"every_steps": 3})
    config = write_yaml(tmp_path / "tiny.yaml", raw)
    script = tmp_path / "noting_detect.py"
    script.write_text(NOTING_DETECT)
    notes = tmp_path / "notes"
    notes.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), "NOTES": str(notes)}
    proc = subprocess.run(
        [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         str(script), "train", str(config), "--work-dir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes_of = {p.name.removeprefix("rank-"): json.loads(p.read_text()) for p in notes.iterdir()}
    shares = {rank: note["images"] for rank, note in notes_of.items()}
    assert {note["timeout_s"] for note in notes_of.values()} == {1234}  # train.dist_timeout_s
    val = tmp_path / "shapes" / "val.jsonl"
    records = load_eval_records(val, val.parent)
    assert len(records) == 3 and set(shares) == {"0", "1"}
    assert len(shares["0"]) == 2 and len(shares["1"]) == 1  # every second image, from its rank on
    assert sorted(shares["0"] + shares["1"]) == sorted(path for _, path in records)
    with open(tmp_path / "run" / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [3]
    # one process detecting every image with the checkpoint's weights scores the same
    detector = load_detector(tmp_path / "run" / "checkpoints" / "ckpt-00000003" / "model", device="cpu")
    queries = eval_queries(records, negatives_per_image=raw["eval"].get("negatives_per_image", 3))
    alone = pooled_ap(queries, detect_queries(detector, queries))
    for key in ("ap", "ap50", "ap_pos", "ap50_pos"):
        assert np.isclose(float(rows[0][key]), alone[key], rtol=1e-6, atol=1e-9, equal_nan=True), (key, rows, alone)
