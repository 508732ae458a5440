"""A model run over a benchmark killed part-way resumes from its journal: the images done are not run again,
and the predictions are those of one uninterrupted run."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from reallod.errors import DataError
from reallod.eval.common import EvalImage, Predictions
from reallod.eval.predict import RunOptions, predict
from reallod.eval.resume import (
    EvalInterrupted,
    PredictionJournal,
    journal_files,
    own_journal,
    remove_journals,
)
from reallod.model.inference import InferenceOptions
from reallod.runs.journal import JournalBusy, JournalMismatch
from tests.runs.test_journal_lock import busy, held

SETTINGS = {"benchmark": "omnilabel", "annotations": "0123", "model": {"model": "tiny", "dtype": "fp32"}}
OPTIONS = RunOptions(inference=InferenceOptions(batch_size=2, topk=5), progress=False)


class CountingDetector:
    """Test double around the real tiny detector: counts its calls, and presses Ctrl-C at call ``stop_at``."""

    def __init__(self, detector, stop_at: int | None = None) -> None:
        self.detector, self.stop_at, self.calls = detector, stop_at, 0

    def __getattr__(self, name: str):  # the image processor, the device...: the detector's own
        return getattr(self.detector, name)

    def detect(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.detector.detect(*args, **kwargs)


@pytest.fixture
def bench(tmp_path):
    """Six images (one without texts: never run), as a benchmark lists them."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for k in range(6):
        Image.fromarray((rng.random((60 + 8 * k, 90, 3)) * 255).astype("uint8")).save(root / f"{k}.png")
        texts = [] if k == 4 else ["a dog", "a red cup"][: 1 + k % 2]
        images.append(EvalImage(100 + k, f"{k}.png", texts, [7, 9][: len(texts)], part=k % 2))
    return images, root


def _same(a: Predictions, b: Predictions) -> None:
    for name in ("image_id", "label", "score", "bbox", "part"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _ctrl_c_at(call: int, bench, detector, out) -> str:
    """A journaled run that Ctrl-C stops at the detector's ``call``-th call; its message."""
    images, root = bench
    journal = PredictionJournal(out, SETTINGS)
    with pytest.raises(EvalInterrupted) as stopped:
        predict(images, CountingDetector(detector, stop_at=call), root, OPTIONS, journal=journal)
    journal.close()
    return str(stopped.value)


def test_a_killed_run_resumes_where_it_stopped(bench, tiny_detector, tmp_path):
    images, root = bench
    whole = predict(images, tiny_detector, root, OPTIONS)
    out = tmp_path / "preds.json"

    said = _ctrl_c_at(4, bench, tiny_detector, out)
    assert re.fullmatch(r"interrupted: 3 of 5 images done, kept in .*preds\.journal\.jsonl; rerun .*", said), said

    journal = PredictionJournal(out, SETTINGS)
    assert sorted(journal.done) == [0, 1, 2]
    counting = CountingDetector(tiny_detector)
    resumed = predict(images, counting, root, OPTIONS, journal=journal)
    journal.close()
    assert counting.calls == 2  # images 3 and 5: 4 has no texts, 0-2 were kept
    _same(resumed, whole)
    assert len(resumed) > 0 and set(resumed.part.tolist()) == {0, 1}

    assert journal_files(out) == [own_journal(out, 0, 1)]
    remove_journals(out)
    assert journal_files(out) == []


def test_without_a_journal_ctrl_c_says_nothing_is_kept(bench, tiny_detector):
    images, root = bench
    with pytest.raises(EvalInterrupted, match="give --out"):
        predict(images, CountingDetector(tiny_detector, stop_at=1), root, OPTIONS)


def test_journals_of_other_processes_count_whatever_their_number(bench, tiny_detector, tmp_path):
    """Process 1 of a two-process run finished its images (1, 3, 5); a one-process rerun runs the others."""
    images, root = bench
    out = tmp_path / "preds.json"
    whole = predict(images, tiny_detector, root, OPTIONS)
    rank1 = PredictionJournal(out, SETTINGS, rank=1, world_size=2, mine={1, 3, 5})
    by_image = {i: whole.take(np.flatnonzero(whole.image_id == images[i].image_id)) for i in (1, 3, 5)}
    for i, rows in by_image.items():
        rank1.add(i, rows)
    rank1.close()
    assert rank1.path.name == "preds.journal.rank1.jsonl"

    journal = PredictionJournal(out, SETTINGS)
    assert sorted(journal.done) == [1, 3, 5]
    counting = CountingDetector(tiny_detector)
    _same(predict(images, counting, root, OPTIONS, journal=journal), whole)
    journal.close()
    assert counting.calls == 2  # images 0 and 2


def test_a_journal_of_other_settings_is_refused_and_named(bench, tiny_detector, tmp_path):
    out = tmp_path / "preds.json"
    _ctrl_c_at(2, bench, tiny_detector, out)
    other = {**SETTINGS, "model": {"model": "tiny", "dtype": "bf16"}}
    with pytest.raises(JournalMismatch, match=r"preds\.journal\.jsonl: .*other settings: --dtype \(was 'fp32', "
                       r"now 'bf16'\); .*delete the journal"):
        PredictionJournal(out, other)


def test_a_journal_of_an_older_version_says_so(bench, tiny_detector, tmp_path):
    """Its header has no layout: 'rerun with that run's settings' would not resume it."""
    import orjson

    out = tmp_path / "preds.json"
    _ctrl_c_at(2, bench, tiny_detector, out)
    path = next(tmp_path.glob("preds.journal*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    header = orjson.loads(lines[0])
    header["fingerprint"].pop("layout")
    path.write_bytes(orjson.dumps(header) + b"\n" + b"".join(lines[1:]))
    with pytest.raises(JournalMismatch, match=r"an older version of reallod.*delete the journal to start over"):
        PredictionJournal(out, SETTINGS)


def test_a_journal_that_holds_no_image_gives_way_to_new_settings(tmp_path):
    out = tmp_path / "preds.json"
    PredictionJournal(out, SETTINGS).close()  # stopped before its first image
    journal = PredictionJournal(out, {**SETTINGS, "annotations": "4567"})
    journal.close()
    assert journal.done == {}


def test_an_interrupt_during_an_images_own_write_still_counts_it(tmp_path, monkeypatch):
    """SIGTERM in the fsync of an image's write left it on disk but out of the count ('0 of 80 kept'):
    the count is taken when the image is handed over."""
    from reallod.eval import resume as resume_mod
    from reallod.runs.journal import read_journal

    monkeypatch.setattr(resume_mod, "FLUSH_EVERY_S", 0.0)  # every image is written at once
    journal = PredictionJournal(tmp_path / "preds.json", SETTINGS)
    real_write = journal._journal._locked_write

    def written_then_interrupted(data):
        real_write(data)
        raise KeyboardInterrupt

    monkeypatch.setattr(journal._journal, "_locked_write", written_then_interrupted)
    rows = Predictions(np.zeros(1, np.int64), np.ones(1, np.int64), np.full(1, 0.5), np.ones((1, 4)), np.zeros(1))
    with pytest.raises(KeyboardInterrupt):
        journal.add(0, rows)
    journal.close()
    assert journal.kept == 1 == len(read_journal(journal.path)[1])
    assert "interrupted: 1 of 3 images done" in str(EvalInterrupted.of(journal, 3))


def test_a_torn_last_line_is_cut_and_its_image_run_again(bench, tiny_detector, tmp_path):
    images, root = bench
    out = tmp_path / "preds.json"
    _ctrl_c_at(3, bench, tiny_detector, out)
    with open(own_journal(out, 0, 1), "ab") as f:
        f.write(b'{"task_id": "2", "result": {"label": [7')  # a crash in the middle of a write
    journal = PredictionJournal(out, SETTINGS)
    assert sorted(journal.done) == [0, 1]
    counting = CountingDetector(tiny_detector)
    _same(predict(images, counting, root, OPTIONS, journal=journal), predict(images, tiny_detector, root, OPTIONS))
    journal.close()
    assert counting.calls == 3


def test_the_settings_tell_weights_written_over_the_same_folder_apart(tmp_path, tiny_model_dir):
    import os
    import shutil
    from types import SimpleNamespace

    from reallod.eval.jobs import EvalJob, resume_settings
    from reallod.eval.predict import ModelSpec

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (tmp_path / "gt.json").write_text("{}")
    job = EvalJob("omnilabel", tmp_path / "gt.json", model=ModelSpec(str(model), device="cpu"), images=tmp_path,
                  run=OPTIONS)
    bench = SimpleNamespace(name="omnilabel", describe={"skip_categories": False})
    before = resume_settings(job, bench)
    assert resume_settings(job, bench) == before
    assert resume_settings(EvalJob(**{**vars(job), "run": RunOptions(
        inference=InferenceOptions(batch_size=1, topk=5))}), bench) == before  # the batch size is free
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert resume_settings(job, bench)["model"] != before["model"]
    (tmp_path / "gt.json").write_text('{"images": []}')
    assert resume_settings(job, bench)["annotations"] != before["annotations"]


def test_a_local_model_is_the_same_however_its_path_is_typed(tmp_path, tiny_model_dir, monkeypatch):
    """--model ./m and --model /abs/m (or a symlink to it) are one model: a resume is not refused."""
    import os
    import shutil
    from types import SimpleNamespace

    from reallod.eval.jobs import EvalJob, resume_settings
    from reallod.eval.predict import ModelSpec

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    os.symlink(tmp_path / "model", tmp_path / "link")
    (tmp_path / "gt.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    bench = SimpleNamespace(name="omnilabel", describe={"skip_categories": False})

    def settings(model: str, weights: str | None = None) -> dict:
        return resume_settings(EvalJob("omnilabel", tmp_path / "gt.json", model=ModelSpec(model, weights=weights),
                                       images=tmp_path, run=OPTIONS), bench)

    typed = settings("./model", "model/model.safetensors")
    assert typed == settings(str(tmp_path / "model"), str(tmp_path / "model" / "model.safetensors"))
    assert typed == settings("link", "./link/model.safetensors")
    assert typed["model"]["model"] == str(tmp_path / "model")


def test_a_refused_journal_names_each_option_that_changed(bench, tiny_detector, tmp_path):
    out = tmp_path / "preds.json"
    settings = {**SETTINGS, "model": {"model": "/m", "dtype": "fp32", "stamp": [["/m/a", 1, 2]]},
                "inference": {"mode": "parallel", "topk": 100}}
    images, root = bench
    journal = PredictionJournal(out, settings)
    with pytest.raises(EvalInterrupted):
        predict(images, CountingDetector(tiny_detector, stop_at=2), root, OPTIONS, journal=journal)
    journal.close()
    other = {**settings, "inference": {"mode": "concat", "topk": 50}}
    with pytest.raises(JournalMismatch) as err:
        PredictionJournal(out, other)
    assert "other settings: --mode (was 'parallel', now 'concat'); --topk (was 100, now 50); rerun" in str(err.value)
    other = {**settings, "annotations": "9999", "model": {"model": "/n", "dtype": "fp32", "stamp": [["/n/a", 1, 2]]}}
    with pytest.raises(JournalMismatch) as err:
        PredictionJournal(out, other)
    assert "other settings: --annotations (its content); --model (was '/m', now '/n'); rerun" in str(err.value)


def test_a_journal_holding_a_score_that_is_not_a_number_is_refused(bench, tiny_detector, tmp_path):
    """An earlier version journaled a model's NaN score as null, read back as NaN and scored silently."""
    import orjson

    out = tmp_path / "preds.json"
    _ctrl_c_at(3, bench, tiny_detector, out)
    path = own_journal(out, 0, 1)
    lines = path.read_bytes().splitlines()
    header, first = lines[0], orjson.loads(lines[1])
    assert first["result"]["score"], first
    first["result"]["score"][0] = None
    path.write_bytes(b"\n".join([header, orjson.dumps(first), *lines[2:]]) + b"\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: image 0 \(in the benchmark's order\) holds a "
                                        "score or box that is not a finite number.*delete the journal"):
        PredictionJournal(out, SETTINGS)
    with pytest.raises(DataError):  # refused again: the refusal left no lock behind in this process
        PredictionJournal(out, SETTINGS)


@pytest.mark.parametrize("images", [[], [("0", {"label": [1], "score": [0.5], "bbox": [[0, 0, 1, 1]]})]])
def test_a_second_eval_on_the_same_out_leaves_the_running_ones_journal_alone(tmp_path, images):
    """A run with other settings once deleted the journal of a running eval it could not use (one holding
    no image yet) before it was refused: it is refused first now, the journal as the running eval left it."""
    out = tmp_path / "preds.json"
    path = own_journal(out, 0, 1)
    with held(path, SETTINGS, images) as running:
        before = path.read_bytes()
        for settings in ({**SETTINGS, "annotations": "4567"}, SETTINGS):
            with pytest.raises(JournalBusy, match=rf"preds\.journal\.jsonl: {busy(running)}"):
                PredictionJournal(out, settings)
            assert path.read_bytes() == before


def _journaled(out, index: int) -> tuple[list[bytes], int]:
    """The journal's lines, and which one holds image ``index``."""
    import orjson

    lines = own_journal(out, 0, 1).read_bytes().splitlines()
    return lines, next(k for k, line in enumerate(lines[1:], 1) if orjson.loads(line)["task_id"] == str(index))


def _n_scores(entry):
    return len(entry["result"]["score"])


@pytest.mark.parametrize("damage", [
    lambda e: e["result"].pop("score"),  # was: unexpected KeyError: 'score'
    lambda e: e.update(task_id="one"),  # was: unexpected ValueError: invalid literal for int()
    lambda e: e["result"]["score"].__setitem__(0, "x"),  # was: could not convert string to float
    lambda e: e.pop("result"),  # passed over before too
    lambda e: e.update(task_id=[1]),
    lambda e: e["result"].update(bbox=[[0, 0, 1]] * _n_scores(e)),
    lambda e: e["result"].update(label=[1.5] * _n_scores(e)),
    lambda e: e["result"].update(score=0.5),
], ids=["no-score", "task-one", "score-x", "no-result", "task-list", "bbox-3", "label-float", "score-number"])
def test_a_journal_line_with_a_bad_field_is_passed_over_as_a_torn_one(bench, tiny_detector, tmp_path, damage):
    """A line edited or damaged stopped the resume with a bare exception; it is passed over as a torn line is
    (its image predicted again, the others kept), and the journal reads back afterwards."""
    import orjson

    images, root = bench
    out = tmp_path / "preds.json"
    _ctrl_c_at(4, bench, tiny_detector, out)
    lines, k = _journaled(out, 1)
    entry = orjson.loads(lines[k])
    damage(entry)
    own_journal(out, 0, 1).write_bytes(b"\n".join([*lines[:k], orjson.dumps(entry), *lines[k + 1:]]) + b"\n")

    journal = PredictionJournal(out, SETTINGS)
    assert sorted(journal.done) == [0, 2]
    counting = CountingDetector(tiny_detector)
    _same(predict(images, counting, root, OPTIONS, journal=journal), predict(images, tiny_detector, root, OPTIONS))
    journal.close()
    assert counting.calls == 3  # 1 again, 3 and 5
    again = PredictionJournal(out, SETTINGS)
    again.close()
    assert sorted(again.done) == [0, 1, 2, 3, 5]


def test_an_image_replaced_since_it_was_journaled_is_predicted_again(bench, tiny_detector, tmp_path):
    """A resume kept the predictions of an image replaced under the same name; each entry holds the image
    file's size and time as read, and one made from another file is predicted again (and kept then)."""
    import os

    from reallod.eval.predict import image_stamp

    images, root = bench
    out = tmp_path / "preds.json"

    def journal() -> PredictionJournal:
        return PredictionJournal(out, SETTINGS, source=lambda i: image_stamp(root, images[i]))

    first = journal()
    with pytest.raises(EvalInterrupted):
        predict(images, CountingDetector(tiny_detector, stop_at=4), root, OPTIONS, journal=first)
    first.close()
    path = root / images[1].file_name
    Image.open(path).rotate(90, expand=True).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # whatever the clock's grain

    resumed = journal()
    assert sorted(resumed.done) == [0, 2]
    counting = CountingDetector(tiny_detector)
    _same(predict(images, counting, root, OPTIONS, journal=resumed), predict(images, tiny_detector, root, OPTIONS))
    resumed.close()
    assert counting.calls == 3  # 1 again, 3 and 5
    again = journal()
    again.close()
    assert sorted(again.done) == [0, 1, 2, 3, 5]  # the new predictions of image 1 were kept


def test_the_model_settings_are_those_it_loads_with(tmp_path, tiny_model_dir):
    """--image-size and --max-text-len as typed (usually none) hid an edited preprocessor_config.json or
    config.json: the settings are those in effect, and the settings files' content."""
    import json
    import shutil
    from types import SimpleNamespace

    from reallod.eval.jobs import EvalJob, resume_settings
    from reallod.eval.predict import ModelSpec

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (tmp_path / "gt.json").write_text("{}")
    bench = SimpleNamespace(name="omnilabel", describe={"skip_categories": False})

    def settings(**spec) -> dict:
        return resume_settings(EvalJob("omnilabel", tmp_path / "gt.json", model=ModelSpec(str(model), **spec),
                                       images=tmp_path, run=OPTIONS), bench)

    before = settings()
    assert before["model"]["image_size"] == "128,224" and before["model"]["max_text_len"] == 256
    assert settings(image_size=(128, 224), max_text_len=256) == before  # the same model, typed or not
    assert settings(max_text_len=128)["model"]["max_text_len"] == 128
    proc = model / "preprocessor_config.json"
    proc.write_text(json.dumps({**json.loads(proc.read_text()), "size": {"shortest_edge": 64, "longest_edge": 96}}))
    now = settings()
    assert now["model"]["image_size"] == "64,96"
    assert now["model"]["files"][str(proc)] != before["model"]["files"][str(proc)]
    assert {k: v for k, v in now["model"]["files"].items() if k != str(proc)} == \
        {k: v for k, v in before["model"]["files"].items() if k != str(proc)}
    assert set(before["model"]["files"]) == {str(model / n) for n in (
        "config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")}


def test_a_hub_model_pushed_to_since_is_named_with_both_commits():
    """A model loaded by hub id has its commit in the fingerprint (``loading.files_stamp``)."""
    from reallod.eval.resume import changes

    def fp(commit: str) -> dict:
        return {"layout": 2, "model": {"model": "org/detector", "files": {"org/detector@revision": commit}}}

    assert changes(fp("a" * 40), fp("b" * 40)) == ["org/detector on the hub (commit was aaaaaaaaaaaa, now bbbbbbbbbbbb)"]
