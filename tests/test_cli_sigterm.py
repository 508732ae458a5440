"""SIGTERM stops a command as Ctrl-C does: a scheduler's preemption, or torchrun stopping its other
workers, leaves a long job resumable with its work kept, and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: a SIGTERM that is not handled ends it, not the test run."""
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)


def test_sigterm_raises_what_ctrl_c_raises_and_the_handler_is_put_back():
    proc = _python("import os, signal, time\n"
                   "from reallod.cli import sigterm_as_ctrl_c\n"
                   "try:\n"
                   "    with sigterm_as_ctrl_c():\n"
                   "        os.kill(os.getpid(), signal.SIGTERM)\n"
                   "        time.sleep(5)\n"
                   "except KeyboardInterrupt:\n"
                   "    print('interrupted', signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "interrupted True", proc.stderr


def test_with_ctrl_c_ignored_sigterm_still_ends_the_process():
    proc = _python("import os, signal, time\n"
                   "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                   "from reallod.cli import sigterm_as_ctrl_c\n"
                   "with sigterm_as_ctrl_c():\n"
                   "    os.kill(os.getpid(), signal.SIGTERM)\n"
                   "    time.sleep(5)\n"
                   "print('still running')\n")
    assert proc.returncode == -signal.SIGTERM and "still running" not in proc.stdout


def test_a_detect_run_stopped_by_sigterm_keeps_its_images_and_resumes(tmp_path, tiny_model_dir):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(60):
        Image.fromarray((rng.random((150, 200, 3)) * 255).astype("uint8")).save(images / f"p{k:02d}.jpg")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "reallod", "detect", str(images), str(tiny_model_dir), "--texts", "an astronaut",
           "--out-dir", str(out), "--device", "cpu", "--topk", "3", "--no-save-vis"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not len(list((out / "preds").glob("*.json"))) >= 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: " in err and f"images written to {out}; rerun the same command" in err
    done = int(err.split("interrupted: ")[1].split(" of ")[0])
    assert 2 <= done < 60

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"60 images ({done} done by an earlier run)" in again.stdout
    assert len(list((out / "preds").glob("*.json"))) == 60


def test_an_eval_run_stopped_by_sigterm_keeps_its_images_and_resumes(tmp_path, tiny_model_dir):
    """A scheduler preempting `reallod eval`: exit 130 with the images kept in the journal; the same command
    again runs the rest only and writes the predictions, with no journal left."""
    import json

    from tests.eval import synthetic as syn

    gt = syn.omnilabel_gt(1, n_images=240)  # longer than the journal's 2 s between writes, however fast
    syn.write_images(tmp_path / "images", gt["images"])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out = tmp_path / "preds.json"
    journal = tmp_path / "preds.journal.jsonl"
    cmd = [sys.executable, "-m", "reallod", "eval", "omnilabel", "--model", str(tiny_model_dir), "--device", "cpu",
           "--annotations", str(tmp_path / "gt.json"), "--images", str(tmp_path / "images"), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not (
            journal.is_file() and journal.read_bytes().count(b"\n") >= 2):  # the header and one image at least
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: " in err and "kept in" in err and not out.exists()
    kept = int(err.split("interrupted: ")[1].split(" of ")[0])
    assert 1 <= kept < 240

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.is_file() and not journal.exists()
    assert {p["image_id"] for p in json.loads(out.read_text())} <= {img["id"] for img in gt["images"]}
