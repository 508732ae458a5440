"""What ``reallod agent finetune`` may delete and resume onto: ``--overwrite`` replaces a fine-tune only (never
a ``--base`` inside ``--out``, nor a file or folder a fine-tune does not write), ``sft-data`` keeps out of a
fine-tune folder, and a resume refuses a dataset rebuilt in place with other examples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reallod.errors import ConfigError, Interrupted
from reallod.finetune import trainer as trainer_mod
from reallod.finetune.sft_data import build_sft_data, read_manifest
from reallod.finetune.trainer import finetune, prepare_out
from tests.finetune.test_finetune import _interrupt_at, opts


class _Loaded(Exception):
    """The base model was about to load: every check before it passed."""


def _no_model(*a, **kw):
    raise _Loaded


def finished_finetune(out: Path) -> Path:
    """A folder as a finished text fine-tune leaves it (what tests/finetune/test_finetune.py's runs write)."""
    out.mkdir(parents=True)
    (out / "finetune.json").write_text(json.dumps({"status": "finished", "settings": {}}))
    for name in ("README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "training_args.bin", "chat_template.jinja", "processor_config.json"):
        (out / name).write_text("{}")
    return out


def test_overwrite_never_deletes_a_base_inside_out(teacher_data, tiny_lm, tmp_path, monkeypatch) -> None:
    """`--base stu/merged --out stu --overwrite` deleted merged/, then wrote an adapter naming a base that no
    longer existed."""
    out = finished_finetune(tmp_path / "student")
    shutil.copytree(tiny_lm, out / "merged")
    monkeypatch.setattr(trainer_mod, "load_base", _no_model)
    for overwrite in (True, False):
        with pytest.raises(ConfigError, match=rf"--base .*student/merged lies inside --out {out}, .* choose another "
                                              "--out"):
            finetune(opts(teacher_data, out / "merged", out, overwrite=overwrite))
    (out / "model.gguf").write_bytes(b"GGUF")  # a GGUF file's folder is the base
    with pytest.raises(ConfigError, match=r"--base .* lies inside --out"):
        finetune(opts(teacher_data, out / "model.gguf", out, overwrite=True))
    assert (out / "merged" / "config.json").is_file() and (out / "model.gguf").is_file()
    with pytest.raises(_Loaded):  # the same base elsewhere: replaced
        finetune(opts(teacher_data, tiny_lm, tmp_path / "other"))


def test_overwrite_refuses_what_a_finetune_does_not_write(teacher_data, tiny_lm, tmp_path, monkeypatch) -> None:
    """An sft-data folder or a student.yaml placed in OUT was deleted with it."""
    out = finished_finetune(tmp_path / "student")
    (out / "merged").mkdir()
    (out / "checkpoints").mkdir()
    monkeypatch.setattr(trainer_mod, "load_base", _no_model)
    shutil.copytree(teacher_data, out / "sft")
    (out / "student.yaml").write_text("roles: {}\n")
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    for name in ("link", "sft", "student.yaml"):
        with pytest.raises(ConfigError, match=rf"--overwrite would delete {out / name}, which a fine-tune does not "
                                              rf"write .* move it out of {out} or give another --out"):
            finetune(opts(teacher_data, tiny_lm, out, overwrite=True))
        entry = out / name
        assert entry.exists()
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    with pytest.raises(_Loaded):  # only a fine-tune's own files: it goes on to replace them
        finetune(opts(teacher_data, tiny_lm, out, overwrite=True))


def test_sft_data_refuses_an_out_inside_a_finetune(teacher_run, tmp_path) -> None:
    """`finetune --overwrite` replaces a fine-tune folder whole: a dataset inside one would go with it."""
    student = finished_finetune(tmp_path / "student")
    for out in (student / "sft", student / "checkpoints" / "sft"):
        with pytest.raises(ConfigError, match=rf"--out {out} lies inside the fine-tune folder {student}"):
            build_sft_data([teacher_run / "teacher.trace.jsonl"], out)
        assert not out.exists()


def test_a_resume_refuses_a_dataset_rebuilt_from_a_grown_trace(teacher_run, tiny_lm, tmp_path, monkeypatch) -> None:
    """sft-data --overwrite at the same path from the same trace grown longer: the traces, held-out photos and
    templates are those the run started on, the examples are not; the run resumed onto them."""
    lines = (teacher_run / "teacher.trace.jsonl").read_bytes().splitlines()
    half = b"\n".join([lines[0], *lines[1::2]]) + b"\n"  # every other task: all four photos
    trace, data, out = tmp_path / "run.trace.jsonl", tmp_path / "sft", tmp_path / "student"
    trace.write_bytes(half)
    build_sft_data([trace], data, val_fraction=0.25)
    with monkeypatch.context() as m:
        _interrupt_at(m, 1, "kill")
        with pytest.raises(Interrupted):
            finetune(opts(data, tiny_lm, out))
    before = read_manifest(data)
    trace.write_bytes(b"\n".join(lines) + b"\n")
    build_sft_data([trace], data, val_fraction=0.25, overwrite=True)
    after = read_manifest(data)
    assert trainer_mod._manifest_view(after) == trainer_mod._manifest_view(before)
    assert after["examples"]["reflector"] != before["examples"]["reflector"]
    monkeypatch.setattr(trainer_mod, "load_base", _no_model)
    with pytest.raises(ConfigError, match=rf"{out} holds an unfinished fine-tune of another dataset: the reflector "
                                          rf"examples of {data} changed since it started .* pass --overwrite"):
        finetune(opts(data, tiny_lm, out))
    trace.write_bytes(half)  # rebuilt as it was: the same examples, so it resumes
    build_sft_data([trace], data, val_fraction=0.25, overwrite=True)
    with pytest.raises(_Loaded):
        finetune(opts(data, tiny_lm, out))


def test_a_run_of_an_older_reallod_resumes_on_as_many_examples(teacher_data, tiny_lm, tmp_path) -> None:
    """finetune.json written before the data hash: its example counts (kept and too long) must still add up to
    the dataset's."""
    out = tmp_path / "student"
    out.mkdir()
    o = opts(teacher_data, tiny_lm, out)
    manifest = read_manifest(teacher_data)
    n = sum(manifest["examples"]["reflector"].values())

    def started_on(train: int) -> None:
        (out / "finetune.json").write_text(json.dumps({
            "status": "training", "settings": o.settings(), "data_manifest": trainer_mod._manifest_view(manifest),
            "examples": {"train": train, "val": 2}, "skipped_too_long": 1}))

    started_on(n - 3)
    assert prepare_out(o, manifest) == (None, False)
    started_on(n - 2)
    with pytest.raises(ConfigError, match="unfinished fine-tune of another dataset"):
        prepare_out(o, manifest)
