"""Running ``reallod agent finetune`` again on its ``--out``: a second run while one is at work is refused
naming it (both trained and saved into one folder, the first to finish deleting the other's checkpoints),
a resume from the checkpoint of an epoch's last step is the uninterrupted run (it lost that epoch's
validation loss and its adapter differed), and the same command on a finished fine-tune says it is done
(exit status 0; it was refused as if other settings)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from reallod.errors import ConfigError, Interrupted
from reallod.finetune import trainer as trainer_mod
from reallod.finetune.trainer import finetune
from reallod.runs.journal import JournalBusy
from tests.cli_helpers import run_cli
from tests.finetune.test_finetune import _interrupt_at, opts


class _Loaded(Exception):
    """The base model was about to load: every check before it passed."""


def test_a_second_run_on_a_locked_out_is_refused_naming_the_first(teacher_data, tiny_lm, tmp_path,
                                                                  monkeypatch) -> None:
    out = tmp_path / "student"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from reallod.runs.journal import lock_journal; "
         f"lock_journal({str(out / 'finetune.json')!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"

        def no_model(*a, **kw):
            raise AssertionError("the base model was loaded")

        with monkeypatch.context() as m:
            m.setattr(trainer_mod, "load_base", no_model)
            with pytest.raises(JournalBusy, match=rf"{out}: another fine-tune \(pid {holder.pid}\) is running on "
                                                  r"this --out; wait for it to finish, or choose another --out"):
                finetune(opts(teacher_data, tiny_lm, out))
        assert [p.name for p in out.iterdir()] == ["finetune.json.lock"]  # nothing written beside the lock
    finally:
        holder.kill()
        holder.wait()

    def loaded_while_held(*a, **kw):  # the lock is this run's now, and held while it runs
        with pytest.raises(JournalBusy, match=rf"another fine-tune \(pid {os.getpid()}\) is running"):
            finetune(opts(teacher_data, tiny_lm, out))
        raise _Loaded

    monkeypatch.setattr(trainer_mod, "load_base", loaded_while_held)
    with pytest.raises(_Loaded):
        finetune(opts(teacher_data, tiny_lm, out))
    assert list(out.iterdir()) == []  # released (its file removed) when the run ended


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no except of the code under test)."""


def test_a_resume_from_an_epochs_last_step_is_the_uninterrupted_run(teacher_data, tiny_lm, tmp_path,
                                                                     monkeypatch) -> None:
    """Killed right after the checkpoint of an epoch's last step (transformers saves it before the epoch's
    validation): the resumed run never validated that epoch, and its next epoch drew other dropout."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    data = tmp_path / "sft"  # a few examples of the teacher's: 3 steps an epoch, a short validation
    shutil.copytree(teacher_data, data)
    for split, keep in (("train", 6), ("val", 2)):
        path = data / "reflector" / f"{split}.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))
    epoch = 3
    kw = {"batch_size": 2, "max_steps": epoch + 1, "save_steps": epoch, "logging_steps": 100}
    ref = finetune(opts(data, tiny_lm, tmp_path / "ref", **kw))
    assert [v["epoch"] for v in ref.val_losses] == [1, round((epoch + 1) / epoch, 4)]

    real = trainer_mod._trainer

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == epoch:
                raise _Killed

    def killed_after_the_epochs_checkpoint(*a, **k):
        t = real(*a, **k)
        t.add_callback(KillAfterSave())
        return t

    for how in ("kill", "ctrl-c"):  # Ctrl-C at an epoch's last step saves, then skips the validation
        out = tmp_path / how
        with monkeypatch.context() as m:
            if how == "kill":
                m.setattr(trainer_mod, "_trainer", killed_after_the_epochs_checkpoint)
                with pytest.raises(_Killed):
                    finetune(opts(data, tiny_lm, out, **kw))
            else:
                _interrupt_at(m, epoch, "ctrl-c")
                with pytest.raises(Interrupted, match=f"stopped at step {epoch}"):
                    finetune(opts(data, tiny_lm, out, **kw))
        res = finetune(opts(data, tiny_lm, out, **kw))
        assert res.resumed_from is not None and res.resumed_from.endswith(f"checkpoint-{epoch}")
        assert res.val_losses == ref.val_losses, how
        assert json.loads((out / "finetune.json").read_text())["val_losses"] == ref.val_losses
        a, b = load_file(tmp_path / "ref" / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), how


def test_the_same_command_on_a_finished_finetune_says_it_is_done(teacher_data, tiny_lm, tmp_path, capsys) -> None:
    """A scheduler reruns a job whose kill landed as the process exited: it was refused (exit status 2,
    'pass --overwrite'), so the job failed though its fine-tune was there."""
    out = tmp_path / "student"
    cmd = ["agent", "finetune", teacher_data, "--role", "reflector", "--base", tiny_lm, "--out", out,
           "--max-steps", "1", "--batch-size", "2", "--no-progress"]
    code, first, err = run_cli(cmd, capsys)
    assert code == 0, err
    record = (out / "finetune.json").read_text()
    (out / "checkpoints" / "checkpoint-1").mkdir(parents=True)  # what a kill while deleting them left
    code, again, err = run_cli(cmd, capsys)
    assert code == 0, err
    assert f"{out} holds this fine-tune finished already" in err and "nothing to train" in err
    said = [[line for line in text.splitlines() if not line.startswith("{")] for text in (first, again)]
    assert said[1][:3] == said[0][:3] and said[1][0].startswith("1 step(s) on")  # the steps and losses it had
    assert "adapter: " in again
    assert (out / "finetune.json").read_text() == record and not (out / "checkpoints").exists()
    for flag, value, named in (("--learning-rate", "0.001", "learning_rate"), ("--max-steps", "2", "max_steps")):
        changed = [*cmd, flag, value]
        code, _, err = run_cli(changed, capsys)
        assert code == 2 and f"holds a finished fine-tune with other settings ({named}; see" in err, err
        assert "pass --overwrite" in err and "Traceback" not in err
    code, _, err = run_cli([*cmd, "--merge"], capsys)
    assert code == 2 and "other settings (merge; see" in err, err
    assert (out / "finetune.json").read_text() == record


def test_a_finished_record_of_an_older_reallod_is_not_taken_for_this_command(teacher_data, tiny_lm,
                                                                             tmp_path) -> None:
    """Its record holds no training length: whether it trained as long as asked is unknown."""
    out = tmp_path / "student"
    out.mkdir()
    o = opts(teacher_data, tiny_lm, out)
    (out / "finetune.json").write_text(json.dumps({"status": "finished", "settings": o.settings()}))
    with pytest.raises(ConfigError, match=r"finished fine-tune with other settings \(epochs, max_steps; see"):
        finetune(o)

