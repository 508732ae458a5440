"""A checkpoint or ``best/`` the disk refuses to write is an error naming the folder, the cause and the last
complete checkpoint, which ``--resume`` continues from (it was 'error: unexpected Exception: No space
left on device (os error 28)' or 'unexpected RuntimeError: [enforce fail at inline_container.cc:672]')."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from reallod.cli import main
from reallod.train import best as B
from reallod.train import checkpoint as C
from reallod.train.loop import train

from .helpers import quiet, tiny_config, tiny_raw, write_yaml

FULL = OSError(errno.ENOSPC, "No space left on device")


def _fail_at(monkeypatch, n: int, error: BaseException) -> None:
    """``torch.save`` of the optimizer state fails at the ``n``-th checkpoint, as a full disk makes it."""
    save, calls = torch.save, []

    def failing(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            calls.append(1)
            if len(calls) == n:
                raise error
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing)


@pytest.mark.parametrize("error", [FULL, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")])
def test_a_checkpoint_the_disk_refuses_names_the_last_complete_one(tmp_path, shapes, monkeypatch, error):
    opts = ["schedule.max_steps=3", "checkpoint.every_steps=1"]
    with monkeypatch.context() as m:
        _fail_at(m, 2, error)
        with pytest.raises(C.CheckpointWriteError) as e:
            train(tiny_config(shapes, opts), tmp_path, echo=quiet)
    last = tmp_path / "checkpoints" / C.checkpoint_name(1)
    assert str(e.value).startswith(f"{tmp_path / 'checkpoints' / C.checkpoint_name(2)}.tmp: cannot write the "
                                   f"checkpoint of step 2 ({type(error).__name__}: ")
    assert str(error) in str(e.value)
    assert f"the last complete checkpoint, {last}, is intact" in str(e.value) and "`--resume` continues" in str(e.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [last.name]  # the partial one is removed
    assert train(tiny_config(shapes, opts), tmp_path, resume=True, echo=quiet).step == 3


def test_the_cli_says_it_in_one_line_with_exit_status_1(tmp_path, shapes, monkeypatch, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_raw(shapes, schedule={"max_steps": 1}))
    _fail_at(monkeypatch, 1, FULL)
    with pytest.raises(SystemExit) as e:
        main(["train", str(config), "--work-dir", str(tmp_path / "run")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "unexpected" not in err
    assert "No space left on device" in err and "no checkpoint is complete yet" in err


def test_a_best_the_disk_refuses_leaves_the_former_one(tmp_path):
    C.checkpoint_dir(tmp_path).joinpath(C.checkpoint_name(2)).mkdir(parents=True)
    (C.checkpoint_dir(tmp_path) / C.checkpoint_name(2) / "state.json").write_text(
        json.dumps({"step": 2, "epoch": 0, "batch_in_epoch": 2}))
    B.save(tmp_path, {"metric": "ap50", "value": 0.3, "step": 2}, lambda folder: folder.mkdir(), 2)

    def full(folder):
        folder.mkdir()
        raise FULL

    with pytest.raises(C.CheckpointWriteError, match=r"best\.new: cannot write the new best model \(step 3; .*best "
                                                     r"is intact\) \(OSError: \[Errno 28\] No space left on device\)"
                                                     r"; the last complete checkpoint, .*ckpt-00000002, is intact"):
        B.save(tmp_path, {"metric": "ap50", "value": 0.5, "step": 3}, full, 2)
    assert B.read(tmp_path / "best")["step"] == 2 and not (tmp_path / "best.new").exists()


def test_a_failed_write_on_a_nearly_full_disk_says_so(tmp_path, monkeypatch):
    """torch says of a full disk only "unexpected pos": the free space is named where it is nearly none."""
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    (tmp_path / "checkpoints" / "ckpt-00000002.tmp").mkdir(parents=True)
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2294080 vs 2293972")
    monkeypatch.setattr(C.shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30, 3 * 2**20))
    said = str(C.write_failed(tmp_path / "checkpoints" / "ckpt-00000002.tmp", "the checkpoint", error, tmp_path))
    assert "unexpected pos 2294080 vs 2293972; the disk has 3.0 MiB free: full?)" in said, said
    monkeypatch.setattr(C.shutil, "disk_usage", lambda path: usage(10 * 2**30, 2**30, 9 * 2**30))
    assert "full?" not in str(C.write_failed(tmp_path / "x.tmp", "the checkpoint", error, tmp_path))
