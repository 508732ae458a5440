"""D³: ours against ddd-dataset + pycocotools run the official way, on pickles built here."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import warnings
from collections import defaultdict

import numpy as np
import pytest

from reallod.errors import DataError
from reallod.eval import d3
from reallod.eval.common import parse_coco_results
from tests.eval.synthetic import coco_predictions, d3_pickles

d_cube = pytest.importorskip("d_cube")


@pytest.fixture(scope="module")
def pickles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d3") / "d3_pkl"
    raw = d3_pickles(folder, seed=0, n_groups=4, images_per_group=4)
    return folder, raw


def _official(folder, tmp_path, preds, renumber=True):
    """The release's flow: convert2coco → json on disk → COCO / loadRes / COCOeval, per setting."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    pred_path = tmp_path / "pred.json"
    pred_path.write_text(json.dumps(preds))
    dd = d_cube.D3("", str(folder))
    out = {}
    for setting, mode in d3.SETTINGS:
        dd.convert2coco(str(tmp_path / setting), anti_mode=mode)  # the same ground truth for both settings
        gt = json.loads((tmp_path / setting / "coco_annotations.json").read_text())
        if renumber:
            for i, a in enumerate(gt["annotations"]):
                a["id"] = i + 1
        gt_path = tmp_path / f"{setting}.json"
        gt_path.write_text(json.dumps(gt))
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(gt_path))
            ev = COCOeval(coco, coco.loadRes(str(pred_path)), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # the official analysis script's partition by description length
        aps = ev.eval["precision"][:, :, :, 0, -1]
        names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
        by_len, counts = defaultdict(list), defaultdict(int)
        for i, name in enumerate(names):
            v = aps[:, :, i]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the mean of nothing: NaN, skipped below
                value = v[v > -1].mean()
            if not np.isnan(value):
                by_len[len(name.split(" "))].append(value)
                counts[len(name.split(" "))] += 1
        top = max(counts) if counts else 0
        parts = {}
        for label, lo, hi in (("short", 1, 3), ("mid", 4, 6), ("long", 7, 9), ("very-long", 10, top)):
            c = sum(counts[n] for n in range(lo, hi + 1))
            parts[label] = sum([sum(by_len[n]) for n in range(lo, hi + 1)]) / c if c else None
        out[setting] = (ev.stats, parts)
    return out


@pytest.mark.parametrize("inter", [False, True])
def test_equals_ddd_dataset_plus_pycocotools(pickles, tmp_path, inter):
    folder, _ = pickles
    bench = d3.load(folder, inter=inter)
    preds = coco_predictions(bench.gts["FULL"], bench.prompts, seed=1)
    ours = d3.evaluate(bench, parse_coco_results(preds, None)).metrics
    ref = _official(folder, tmp_path, preds)
    for setting, (stats, parts) in ref.items():
        assert ours[f"{setting}/AP"] == stats[0] and ours[f"{setting}/AP50"] == stats[1]
        assert ours[f"{setting}/AP75"] == stats[2]
        for label, value in parts.items():
            assert ours[f"{setting}/AP-{label}"] == value, (setting, label)
    assert 0 < ours["FULL/AP"] < 1 and ours["ABS/AP"] is not None


def test_annotation_ids_are_renumbered_from_one(pickles, tmp_path):
    folder, _ = pickles
    bench = d3.load(folder)
    assert [a["id"] for a in bench.gts["FULL"]["annotations"]][:3] == [1, 2, 3]
    # perfect predictions score 1 once renumbered; left from 0, pycocotools misses the box with id 0
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in bench.gts["FULL"]["annotations"]]
    ours = d3.evaluate(bench, parse_coco_results(perfect, None)).metrics
    assert ours["FULL/AP"] == pytest.approx(1.0, abs=1e-12)
    raw = _official(folder, tmp_path, perfect, renumber=False)
    assert raw["FULL"][0][0] < ours["FULL/AP"]


def test_prompts_intra_and_inter(pickles):
    folder, raw = pickles
    intra, inter = d3.load(folder), d3.load(folder, inter=True)
    img = intra.images[0]
    group = raw["groups"][raw["images"][img["id"]]["group_id"]]
    assert intra.prompts[img["id"]] == sorted(group["inner_sent_id"])
    assert inter.prompts[img["id"]] == sorted(raw["sentences"])
    texts = intra.eval_images()[0].texts
    assert texts == [raw["sentences"][s]["raw_sent"] for s in sorted(group["inner_sent_id"])]
    assert intra.gts == inter.gts  # only the prompts differ between the settings
    assert intra.absence == {s for s, v in raw["sentences"].items() if v["is_negative"]}


def test_faster_coco_eval_backend_agrees(pickles):
    folder, _ = pickles
    bench = d3.load(folder)
    pred = parse_coco_results(coco_predictions(bench.gts["FULL"], bench.prompts, seed=2), None)
    a = d3.evaluate(bench, pred).metrics
    b = d3.evaluate(bench, pred, backend="faster-coco-eval").metrics
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] is None and b[k] is None) or a[k] == pytest.approx(b[k], abs=1e-12), k


def test_bad_input(pickles, tmp_path):
    folder, _ = pickles
    bench = d3.load(folder)
    good = {"image_id": bench.images[0]["id"], "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}
    for entry, message in [({**good, "image_id": 9999}, "image 9999 is not in"),
                           ({**good, "category_id": 555}, "sentence) id 555 is not in"),
                           ({**good, "bbox": [0, 0, 5, -1]}, "negative width or height"),
                           ({**good, "score": float("inf")}, "finite"),
                           ({**good, "score": True}, "expected a number, got True"),  # numpy reads it as 1.0
                           ({**good, "bbox": [0, 0, True, 5]}, "4 numbers")]:
        path = tmp_path / "p.json"
        path.write_text(json.dumps([good, entry]))
        with pytest.raises(DataError, match="predictions\\[1\\]") as err:
            d3.evaluate(bench, d3.load_predictions(path), path=str(path))
        assert message in str(err.value)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "sentences.pkl").write_bytes(b"")
    with pytest.raises(DataError, match=r"missing annotations\.pkl, images\.pkl, groups\.pkl"):
        d3.load(tmp_path / "partial")
    with pytest.raises(DataError, match="folder of annotation pickles"):
        d3.load(tmp_path / "p.json")
    broken = tmp_path / "broken"  # it named the folder: which of four pickles?
    shutil.copytree(folder, broken)
    (broken / "images.pkl").write_bytes(b",random bytes")
    with pytest.raises(DataError, match=r"broken/images\.pkl: D³ annotations: cannot read the pickles"):
        d3.load(broken)


def test_a_sentence_without_words_is_named(tmp_path):
    """A sentence of only '?' or '.' passed the reading and stopped the model run later, naming nothing."""
    import pickle

    folder = tmp_path / "d3_pkl"
    d3_pickles(folder, seed=1, n_groups=2, images_per_group=1)
    sentences = pickle.loads((folder / "sentences.pkl").read_bytes())
    first = next(iter(sentences))
    sentences[first]["raw_sent"] = " ? . "
    (folder / "sentences.pkl").write_bytes(pickle.dumps(sentences))
    with pytest.raises(DataError, match=rf"sentences\.pkl: sentence {first}: raw_sent ' \? \. ' has no words"):
        d3.load(folder)


@pytest.mark.parametrize(("name", "damage", "said"), [
    ("images.pkl", lambda entries, first: entries[first].pop("file_name"), r"entry 0 \(id \d+\): no 'file_name'"),
    ("sentences.pkl", lambda entries, first: entries[first].pop("raw_sent"), r"entry 0 \(id \d+\): no 'raw_sent'"),
    ("images.pkl", lambda entries, first: entries.__setitem__(first, "x"), r"entry 0: expected a dict, got str"),
])
def test_an_entry_of_a_pickle_without_its_keys_is_named_with_its_file(tmp_path, name, damage, said):
    """The package's reading said "unexpected pickle contents (KeyError: 'file_name')" of the folder."""
    import pickle

    folder = tmp_path / "d3_pkl"
    d3_pickles(folder, seed=1, n_groups=2, images_per_group=1)
    entries = pickle.loads((folder / name).read_bytes())
    damage(entries, next(iter(entries)))
    (folder / name).write_bytes(pickle.dumps(entries))
    with pytest.raises(DataError, match=rf"d3_pkl/{re.escape(name)}: {said}"):
        d3.load(folder)
    (folder / name).write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match=rf"d3_pkl/{re.escape(name)}: D³ annotations: expected a dict of entries"):
        d3.load(folder)
