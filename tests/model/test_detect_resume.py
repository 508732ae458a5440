"""`reallod detect` over a folder, killed part-way: the same command again detects only the images not yet
written, and the folder ends up as one uninterrupted run leaves it."""

from __future__ import annotations

import pytest

from reallod.model.detect_journal import (
    JOURNAL_NAME,
    DetectSummary,
    earlier_journal_name,
    journal_entry,
    open_journal,
)
from reallod.runs.journal import JournalBusy
from reallod.runs.launch import Place
from tests.cli_helpers import CUDA_OOM_SAID, cuda_out_of_memory, run_cli
from tests.runs.test_journal_lock import busy, held


def _args(images, model, out, texts="an astronaut . a flag ."):
    return ["detect", str(images), str(model), "--texts", texts, "--out-dir", str(out), "--device", "cpu",
            "--topk", "5"]


def _files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != JOURNAL_NAME}


def test_a_killed_run_goes_on_where_it_stopped(capsys, five_images, tiny_model_dir, tmp_path, calls):
    whole = tmp_path / "whole"
    code, _, err = run_cli(_args(five_images, tiny_model_dir, whole), capsys)
    assert code == 0, err
    out = tmp_path / "out"
    calls[:], calls.stop_at = [], 3
    code, _, err = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 130
    assert f"interrupted: 2 of 5 images written to {out}; rerun the same command" in err
    assert sorted(_files(out)) == ["preds/p0.json", "preds/p1.json", "vis/p0.jpg", "vis/p1.jpg"]

    calls[:], calls.stop_at = [], None
    code, stdout, err = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 0, err
    assert len(calls) == 3  # p2, p3 and sub/p4 only
    assert "5 images (2 done by an earlier run)" in stdout and "5 JSON" in stdout
    assert _files(out) == _files(whole)

    calls[:] = []  # everything is done: nothing to detect
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0 and calls == []


def test_out_of_gpu_memory_keeps_the_images_written_and_names_the_batch_size(capsys, five_images, tiny_model_dir,
                                                                             tmp_path, calls):
    """The commonest GPU failure is an error of the setup, not of reallod: one line (exit 2) says what ran
    out, at which image and batch size, and what is kept; a smaller --batch-size goes on from there."""
    whole = tmp_path / "whole"
    assert run_cli(_args(five_images, tiny_model_dir, whole), capsys)[0] == 0
    out = tmp_path / "out"
    calls[:], calls.stop_at, calls.stop_with = [], 3, cuda_out_of_memory()
    code, _, err = run_cli(_args(five_images, tiny_model_dir, out), capsys)
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (f"error: {CUDA_OOM_SAID} (detecting {five_images / 'p2.jpg'} with --batch-size 8); 2 of 5 "
                           f"images are written to {out}: rerun the same command with a smaller --batch-size to go on "
                           "from there")
    calls[:], calls.stop_at = [], None
    code, _, err = run_cli([*_args(five_images, tiny_model_dir, out), "--batch-size", "1"], capsys)
    assert code == 0, err
    assert len(calls) == 3 and _files(out) == _files(whole)


def test_another_error_in_detection_is_not_taken_for_a_full_gpu(capsys, five_images, tiny_model_dir, tmp_path, calls):
    calls.stop_at, calls.stop_with = 1, RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")
    code, _, err = run_cli(_args(five_images, tiny_model_dir, tmp_path / "out"), capsys)
    assert code == 1 and "unexpected RuntimeError: cuDNN error" in err and "batch-size" not in err


def test_other_settings_or_a_missing_file_mean_detecting_again(capsys, five_images, tiny_model_dir, tmp_path,
                                                              calls):
    out = tmp_path / "out"
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    (out / "vis" / "p1.jpg").unlink()
    calls[:] = []
    assert run_cli(_args(five_images, tiny_model_dir, out), capsys)[0] == 0
    assert len(calls) == 1 and (out / "vis" / "p1.jpg").is_file()  # only the image whose picture was gone

    calls[:] = []
    code, stdout, err = run_cli(_args(five_images, tiny_model_dir, out, texts="a helmet"), capsys)
    assert code == 0, err
    assert "written by a run with other settings (changed: --texts); every image is detected again" in err
    assert len(calls) == 5 and "earlier run" not in stdout

    calls[:] = []
    code, _, err = run_cli([*_args(five_images, tiny_model_dir, out, texts="a helmet"), "--batch-size", "1"], capsys)
    assert code == 0 and calls == []  # the batch size is not a setting the files depend on


def test_writes_behind_the_device_are_kept_only_once_on_disk(five_images, tiny_detector, tmp_path, calls):
    """With images prepared ahead and files written behind (the CUDA default), Ctrl-C leaves writes in
    flight: an image counts as done only once its files are written, and the rerun completes the rest."""
    from reallod.errors import Interrupted
    from reallod.model.detect import DetectOptions, run_detect

    def run(out):
        return run_detect(five_images, tiny_detector, ["an astronaut"], progress=False, echo=lambda m: None,
                          options=DetectOptions(out_dir=out, prefetch=2))

    run(tmp_path / "whole")
    calls[:], calls.stop_at = [], 4
    with pytest.raises(Interrupted, match=r"interrupted: [0-3] of 5 images written"):
        run(tmp_path / "out")
    calls[:], calls.stop_at = [], None
    summary = run(tmp_path / "out")
    assert summary.resumed + summary.processed == 5 and len(calls) == summary.processed >= 2
    assert _files(tmp_path / "out") == _files(tmp_path / "whole")


def test_weights_retrained_into_the_same_folder_mean_detecting_again(capsys, five_images, tiny_model_dir, tmp_path,
                                                                     calls):
    """The model keeps its path when a checkpoint is written over it: the weight files' size and time
    tell the runs apart."""
    import os
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "out"
    assert run_cli(_args(five_images, model, out), capsys)[0] == 0
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    calls[:] = []
    code, _, err = run_cli(_args(five_images, model, out), capsys)
    assert code == 0 and len(calls) == 5 and "other settings" in err


def test_a_second_run_on_the_same_out_dir_leaves_the_running_ones_journals_alone(tmp_path):
    """A run with other settings once set the running run's entries aside (writing the earlier journal)
    and read its journal before it was refused: it is refused first now, touching none of its files."""
    out = tmp_path / "out"
    (out / "preds").mkdir(parents=True)
    (out / "preds" / "p0.json").write_text("{}")
    entry = journal_entry((out / "preds" / "p0.json", None), out, str(tmp_path / "images"), [1, 2])
    journal, aside = out / JOURNAL_NAME, out / earlier_journal_name(Place())
    said = []
    with held(journal, {"expressions": ["a flag"]}, [("p0.jpg", entry)]) as running:
        before = journal.read_bytes()
        for settings in ({"expressions": ["a helmet"]}, {"expressions": ["a flag"]}):
            with pytest.raises(JournalBusy, match=rf"detect\.journal\.jsonl: {busy(running)}"):
                open_journal(out, Place(), settings, str(tmp_path / "images"), {"p0.jpg": "p0.jpg"},
                             DetectSummary(), said.append, names=lambda name: ("preds/p0.json", None))
            assert journal.read_bytes() == before and not aside.exists() and said == []


def test_settings_files_edited_since_mean_detecting_again(capsys, five_images, tiny_model_dir, tmp_path, calls):
    """The tokenizer and image processor files are read at load: edited between a kill and its resume,
    they would give the rest of the images other predictions. An older reallod's journal, which did not
    note them, is still resumed."""
    import json
    import shutil

    import orjson

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    tokenizer = shutil.copytree(tiny_model_dir, tmp_path / "tokenizer")
    out = tmp_path / "out"
    args = [*_args(five_images, model, out), "--tokenizer", str(tokenizer)]
    assert run_cli(args, capsys)[0] == 0
    for path in (tokenizer / "tokenizer_config.json", model / "preprocessor_config.json"):
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, "edited": True}))
        calls[:] = []
        code, _, err = run_cli(args, capsys)
        assert code == 0 and len(calls) == 5, err
        assert "(changed: MODEL's config, image processor or tokenizer files (edited since))" in err
        calls[:] = []
        assert run_cli(args, capsys)[0] == 0 and calls == []

    journal = out / JOURNAL_NAME
    header, *entries = journal.read_bytes().splitlines()
    old = orjson.loads(header)
    del old["fingerprint"]["files"]
    journal.write_bytes(b"\n".join([orjson.dumps(old), *entries]) + b"\n")
    calls[:] = []
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and calls == [] and "other settings" not in err, err
    assert "5 done by an earlier run" in stdout
