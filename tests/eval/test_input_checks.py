"""`reallod eval` input checks found by an audit: ground-truth fields refused at load (OVDEval areas, ids and
categories; texts the tokenizer leaves no tokens of), outputs over the model's files or the images, a
mistyped --backend, nothing to prompt and missing images refused before the model loads, gzipped OVDEval
subsets, renumbered OVDEval annotation ids, and the lock files a killed sharded run leaves."""

from __future__ import annotations

import copy
import gzip
import json
import shutil
import warnings

import numpy as np
import pytest

from reallod.errors import DataError
from reallod.eval import jobs
from reallod.eval import omnilabel as ol
from reallod.eval import ovdeval as ov
from reallod.eval.common import parse_coco_results
from reallod.eval.resume import journal_files, remove_journals
from reallod.model.token_prompt import DELIMITER_IDS, sanitize, tokenizer_kept
from reallod.runs.journal import lock_journal, lock_path_for
from tests.cli_helpers import run_cli
from tests.eval.synthetic import (
    coco_predictions,
    d3_pickles,
    omnilabel_gt,
    omnilabel_predictions,
    ovdeval_subset,
    write_images,
)

COMMON = ("--device", "cpu", "--batch-size", "2")
NO_TOKENS = ("\u200b", "\u0301", "\ufffd", "\x00 \u200d")




def _subset(gt, name="color"):
    return ov.parse_subset(gt, f"{name}.json", 0, name)


# ------------------------------------------------------------------------------------------ OVDEval GT


@pytest.mark.parametrize("area", [None, [5], "5", -5, float("nan"), float("inf"), True])
def test_an_ovdeval_area_that_is_no_finite_non_negative_number_is_refused_at_load(area):
    gt = ovdeval_subset(0)
    gt["annotations"][1]["area"] = area
    with pytest.raises(DataError, match=r"color\.json: annotations\[1\]\.area: expected a finite number >= 0"):
        _subset(gt)


def test_an_ovdeval_area_left_out_is_width_times_height():
    gt = ovdeval_subset(0)
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in gt["annotations"]]
    without = copy.deepcopy(gt)
    for a in without["annotations"]:
        del a["area"]
    scores = [ov.evaluate(ov.OVDEvalBenchmark([_subset(g)]), parse_coco_results(copy.deepcopy(preds), None)).metrics
              for g in (gt, without)]
    assert scores[0] == scores[1] and scores[0]["color/AP"] == 1.0


@pytest.mark.parametrize("value", ["x", 1.0, [1], None, True])
def test_an_ovdeval_annotation_id_that_is_no_integer_is_refused(value):
    gt = ovdeval_subset(0)
    gt["annotations"][0]["id"] = value
    with pytest.raises(DataError, match=r"color\.json: annotations\[0\]\.id: expected an integer id"):
        _subset(gt)


@pytest.mark.parametrize("value", ["x", 1.5, [1], None])
def test_an_omnilabel_annotation_id_that_is_no_integer_is_refused(value):
    gt = omnilabel_gt(0, 3)
    gt["annotations"][1]["id"] = value
    with pytest.raises(DataError, match=r"gt\.json: annotations\[1\]\.id: expected an integer id"):
        ol.parse_gt(gt, "gt.json")


def test_two_ovdeval_categories_with_one_id_are_refused_naming_the_second():
    gt = ovdeval_subset(0)
    gt["categories"][3]["id"] = gt["categories"][1]["id"]
    with pytest.raises(DataError, match=r"color\.json: categories\[3\]\.id: category id 2 appears twice "
                                        r"\(categories\[1\] has it too\)"):
        _subset(gt)


@pytest.mark.parametrize("key", ["text", "neg_text"])
def test_an_unknown_label_names_the_list_it_is_in(key):
    gt = ovdeval_subset(0)
    gt["images"][2][key] = [*gt["images"][2][key], "purple car"]
    k = len(gt["images"][2][key]) - 1
    with pytest.raises(DataError, match=rf"images\[2\]\.{key}\[{k}\]: label 'purple car' is not the name"):
        _subset(gt)


def _perfect(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"]]


@pytest.mark.parametrize("ids", ["from 0", "repeated"])
def test_ovdeval_annotation_ids_are_renumbered_with_a_note(ids):
    """pycocotools reads a match to id 0 as none, and of two boxes with one id scores one twice: perfect
    predictions would score below 1. Renumbered, they score 1, and the notes say why."""
    gt = ovdeval_subset(0)
    if ids == "from 0":
        for a in gt["annotations"]:
            a["id"] -= 1
    else:
        gt["annotations"][1]["id"] = gt["annotations"][0]["id"]
    result = ov.evaluate(ov.OVDEvalBenchmark([_subset(gt)]), parse_coco_results(_perfect(gt), None))
    assert result.metrics["color/AP"] == 1.0
    said = "1 zero" if ids == "from 0" else "1 repeated"
    assert any(n.startswith(f"color.json: annotation ids renumbered 1..{len(gt['annotations'])}, as pycocotools "
                            f"needs them ({said})") for n in result.notes), result.notes


def test_unique_nonzero_ovdeval_ids_score_as_given_without_a_note():
    gt = ovdeval_subset(3, n_images=8)
    for a in gt["annotations"]:
        a["id"] = 1000 - 7 * a["id"]  # any unique non-zero ids, negative ones included
    sub = _subset(gt)
    prompts = {img.image_id: img.keys for img in sub.images}
    preds = coco_predictions(gt, prompts, seed=3, per_label=8)
    ours = ov.evaluate(ov.OVDEvalBenchmark([sub]), parse_coco_results(copy.deepcopy(preds), None))
    ordered = copy.deepcopy(gt)
    for k, a in enumerate(ordered["annotations"]):
        a["id"] = k + 1
    same = ov.evaluate(ov.OVDEvalBenchmark([_subset(ordered)]), parse_coco_results(copy.deepcopy(preds), None))
    assert ours.metrics == same.metrics and 0 < ours.metrics["color/AP"] < 1
    assert ours.notes == ["NMS-AP over 1 subset(s): color"]
    assert gt["annotations"][0]["id"] == 993  # the caller's ground truth is left as it is


# ------------------------------------------------------------------------------------------ gz subsets


def test_a_gzipped_subset_in_a_folder_is_read(tmp_path):
    (tmp_path / "color.json").write_text(json.dumps(ovdeval_subset(0)))
    (tmp_path / "material.json.gz").write_bytes(gzip.compress(json.dumps(ovdeval_subset(1)).encode()))
    assert [s.name for s in ov.load(tmp_path).subsets] == ["color", "material"]
    assert [s.name for s in ov.load(tmp_path, "material").subsets] == ["material"]


def test_a_subset_both_plain_and_gzipped_is_refused(tmp_path):
    (tmp_path / "color.json").write_text(json.dumps(ovdeval_subset(0)))
    (tmp_path / "color.json.gz").write_bytes(gzip.compress(json.dumps(ovdeval_subset(1)).encode()))
    with pytest.raises(DataError, match=r"color\.json and color\.json\.gz are both subset 'color'"):
        ov.load(tmp_path)


# ------------------------------------------------------------------------------------ texts with no tokens


def test_tokenizer_kept_agrees_with_the_tokenizer(bert_tokenizer):
    texts = [*NO_TOKENS, "\u00ad", "\ue000", "\u2060\u200c", " \u0301\u0300 ", "é", "a\u200b", "\u3000dog", "。",
             "x\ufffd", "\U0001F600", "\u0378"]
    for text in texts:  # tokenized as the model's prompts are (token_prompt.tokenize_expressions)
        ids = [t for t in bert_tokenizer(sanitize(text), add_special_tokens=False)["input_ids"]
               if t not in DELIMITER_IDS]
        assert bool(tokenizer_kept(text)) == bool(ids), (text, ids)


@pytest.mark.parametrize("text", NO_TOKENS)
def test_an_omnilabel_description_with_no_tokens_is_refused_at_load(text):
    gt = omnilabel_gt(0, 3)
    gt["descriptions"][1]["text"] = text
    with pytest.raises(DataError, match=r"gt\.json: descriptions\[1\]\.text: .* has nothing the tokenizer keeps"):
        ol.parse_gt(gt, "gt.json")


@pytest.mark.parametrize("text", NO_TOKENS)
def test_an_ovdeval_category_with_no_tokens_is_refused_at_load(text):
    gt = ovdeval_subset(0)
    gt["categories"][2]["name"] = text
    with pytest.raises(DataError, match=r"color\.json: categories\[2\]\.name: .* has nothing the tokenizer keeps"):
        _subset(gt)


def test_a_d3_sentence_with_no_tokens_is_refused_at_load(tmp_path):
    pytest.importorskip("d_cube")
    import pickle

    from reallod.eval import d3

    d3_pickles(tmp_path, seed=1)
    sentences = pickle.loads((tmp_path / "sentences.pkl").read_bytes())
    first = min(sentences)
    sentences[first]["raw_sent"] = "\u200b"
    (tmp_path / "sentences.pkl").write_bytes(pickle.dumps(sentences))
    with pytest.raises(DataError, match=rf"sentences\.pkl: sentence {first}: raw_sent '\\u200b' has nothing the "
                                        "tokenizer keeps"):
        d3.load(tmp_path)


# ------------------------------------------------------------------------------------------ OmniLabel notes


def test_skip_categories_says_category_predictions_were_left_out_by_it():
    gt = omnilabel_gt(1, 6)
    pred = ol.parse_predictions(omnilabel_predictions(gt, 1))
    categories = {d["id"] for d in gt["descriptions"] if d["anno_info"]["type"] != "object_description"}
    n = int(np.isin(pred.label, list(categories)).sum())
    assert n > 0
    assert not ol.evaluate(ol.parse_gt(gt), pred).notes
    notes = ol.evaluate(ol.parse_gt(gt, skip_categories=True), pred).notes
    assert f"{n} predicted (box, description) rows name a plain category and were left out by --skip-categories" \
        in notes, notes
    assert not any("outside their image's label space" in note for note in notes), notes


# ------------------------------------------------------------------------------ checked before the model


@pytest.fixture
def omni(tmp_path):
    gt = omnilabel_gt(2, 3)
    write_images(tmp_path / "images", gt["images"])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return tmp_path


def _run(root, model, *extra, benchmark="omnilabel", annotations=None):
    return ["eval", benchmark, "--model", model, *COMMON, "--annotations", annotations or root / "gt.json",
            "--images", root / "images", *extra]


@pytest.mark.parametrize("benchmark", ["d3", "ovdeval"])
def test_a_mistyped_backend_is_refused_before_anything_is_read(tmp_path, tiny_model_dir, no_model, monkeypatch,
                                                               capsys, benchmark):
    def refuse(job):
        raise AssertionError("the benchmark was read before --backend was checked")

    monkeypatch.setattr(jobs, "_open_benchmark", refuse)
    (tmp_path / "images").mkdir()
    code, _, err = run_cli(_run(tmp_path, tiny_model_dir, "--backend", "faster_coco_eval", benchmark=benchmark,
                                annotations=tmp_path / "ann"), capsys)
    assert code == 2 and "--backend faster_coco_eval: unknown COCO evaluator (use pycocotools or " \
        "faster-coco-eval)" in err, err


def _model_copy(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    return model


@pytest.mark.parametrize(("option", "target", "said"), [
    ("--metrics-out", "model/config.json", "is --model's file"),
    ("--metrics-out", "model/model.safetensors", "is --model's file"),
    ("--out", "model/preprocessor_config.json", "is --model's file"),
    ("--metrics-out", "weights.safetensors", "is --weights"),
    ("--metrics-out", "tok/vocab.txt", "is --tokenizer's file"),
    ("--metrics-out", "images/img_0.png", "would overwrite an image of the image root --images"),
])
def test_outputs_over_the_model_files_or_an_image_are_refused(omni, tiny_model_dir, no_model, capsys, option,
                                                              target, said):
    model = _model_copy(tiny_model_dir, omni)
    shutil.copy(model / "model.safetensors", omni / "weights.safetensors")
    shutil.copytree(model, omni / "tok")
    before = {p: p.read_bytes() for p in omni.rglob("*") if p.is_file()}
    code, _, err = run_cli(_run(omni, model, "--weights", omni / "weights.safetensors", "--tokenizer", omni / "tok",
                                option, omni / target), capsys)
    assert code == 2 and f"{option} {omni / target}: {said}" in err and err.strip().count("\n") == 0, err
    assert {p: p.read_bytes() for p in omni.rglob("*") if p.is_file()} == before


def test_a_metrics_file_beside_the_model_is_no_harm_to_it(omni, tiny_model_dir, capsys):
    model = _model_copy(tiny_model_dir, omni)
    code, _, err = run_cli(_run(omni, model, "--metrics-out", model / "omnilabel.metrics.json"), capsys)
    assert code == 0 and (model / "omnilabel.metrics.json").is_file(), err


def test_nothing_to_prompt_is_refused_before_the_model_loads(omni, tiny_model_dir, no_model, capsys):
    gt = json.loads((omni / "gt.json").read_text())
    for d in gt["descriptions"]:
        d["anno_info"]["type"] = "object_class"
    (omni / "gt.json").write_text(json.dumps(gt))
    code, _, err = run_cli(_run(omni, tiny_model_dir, "--skip-categories"), capsys)
    assert code == 2 and "no image has a description or label to prompt (--skip-categories leaves out the plain " \
        "categories" in err, err


def test_missing_images_are_counted_before_the_model_loads(omni, tiny_model_dir, no_model, capsys):
    gt = json.loads((omni / "gt.json").read_text())
    gt["images"][2]["file_name"] = "../outside.png"
    (omni / "gt.json").write_text(json.dumps(gt))
    (omni / "images" / "img_0.png").unlink()
    code, _, err = run_cli(_run(omni, tiny_model_dir), capsys)
    assert code == 2 and f"--images {omni / 'images'}: 2 of the 3 images to prompt are not there (first: " \
        "'img_0.png', '../outside.png';" in err and err.strip().count("\n") == 0, err


def test_an_ovdeval_area_is_refused_before_the_model_loads(tmp_path, tiny_model_dir, no_model, capsys):
    sub = ovdeval_subset(0, n_images=2)
    sub["annotations"][0]["area"] = None
    write_images(tmp_path / "images", sub["images"])
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "color.json").write_text(json.dumps(sub))
    code, _, err = run_cli(_run(tmp_path, tiny_model_dir, benchmark="ovdeval", annotations=tmp_path / "ann"), capsys)
    assert code == 2 and "color.json: annotations[0].area: expected a finite number >= 0" in err, err


# ------------------------------------------------------------------------------------------ lock files


def test_removing_journals_removes_the_lock_files_no_process_holds(tmp_path):
    """A two-process run killed outright leaves each journal's lock file; the one-process resume that
    finishes removes them with the journals, but not one another process holds."""
    out = tmp_path / "preds.json"
    for rank in (0, 1, 2):
        journal = tmp_path / f"preds.journal.rank{rank}.jsonl"
        journal.write_text("{}\n")
        lock_path_for(journal).write_text("4242 elsewhere\n")  # its holder killed
    held = lock_journal(tmp_path / "preds.journal.rank2.jsonl")
    try:
        remove_journals(out)
        assert journal_files(out) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.journal.rank2.jsonl.lock"]
    finally:
        held.release()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("tokenizer", "said"), [
    ("nobody/no-such-tokenizer", "offline: HF_HUB_OFFLINE is set"),
    ("./no-such-folder", "tokenizer folder not found"),
])
def test_a_tokenizer_that_cannot_be_found_is_named_as_the_option(omni, tiny_model_dir, no_model, monkeypatch, capsys,
                                                                 tokenizer, said):
    """The error named the value alone (``nobody/no-such-tokenizer: ...``), which reads as MODEL's; detect
    said ``--tokenizer``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(_run(omni, tiny_model_dir, "--tokenizer", tokenizer), capsys)
    assert code == 2 and err.startswith(f"error: --tokenizer {tokenizer}: ") and said in err, err


def test_an_image_not_the_size_its_ground_truth_gives_is_named(omni, tiny_model_dir, capsys):
    """A copy of the set resized to save space was scored without a word: its boxes, in the small image's
    pixels, against the ground truth's, so its AP was wrong."""
    from PIL import Image

    gt = json.loads((omni / "gt.json").read_text())
    first = gt["images"][0]
    path = omni / "images" / first["file_name"]
    with Image.open(path) as im:
        im.resize((first["width"] // 2, first["height"] // 2)).save(path)
    said = (f"1 image(s) are not the size the ground truth gives: {first['file_name']} is "
            f"{first['width'] // 2}x{first['height'] // 2} (width x height), the ground truth says "
            f"{first['width']}x{first['height']}; their boxes are predicted in the image's pixels")
    with pytest.warns(UserWarning) as caught:
        code, _, err = run_cli(_run(omni, tiny_model_dir, "--out", omni / "preds.json"), capsys)
    assert code == 0, err
    assert [str(w.message) for w in caught if said in str(w.message)], [str(w.message) for w in caught]
    Image.new("RGB", (first["width"], first["height"])).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(_run(omni, tiny_model_dir, "--out", omni / "again.json"), capsys)
    assert code == 0 and not [w for w in caught if "not the size the ground truth" in str(w.message)]


def test_ctrl_c_while_scoring_says_every_image_is_kept_and_the_rerun_scores(omni, tiny_model_dir, capsys,
                                                                            monkeypatch):
    """Ctrl-C after the last image, while the predictions were written or scored, said only
    "interrupted"."""
    finish = jobs._finish

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "_finish", pressed)
    out = omni / "preds.json"
    code, _, err = run_cli(_run(omni, tiny_model_dir, "--out", out), capsys)
    assert code == 130, err
    assert "interrupted while writing or scoring: every image is predicted and kept in" in err
    assert journal_files(out)
    monkeypatch.setattr(jobs, "_finish", finish)
    code, _, err = run_cli(_run(omni, tiny_model_dir, "--out", out), capsys)
    assert code == 0, err
    assert (omni / "preds.metrics.json").is_file() and not journal_files(out)
