"""Small synthetic benchmark data built in the tests: OmniLabel GT + predictions, images on disk.

Predictions are drawn near the ground-truth boxes (jittered copies, so IoUs spread over the
thresholds) plus random boxes, with scores on a coarse grid so that ties happen.
"""

from __future__ import annotations

import numpy as np

WORDS = ("red", "small", "dog", "on", "the", "left", "wooden", "chair", "next", "to", "a", "tall", "man",
         "holding", "blue", "umbrella", "near", "window")


def _text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=n_words))


def _box(rng: np.random.Generator, w: int, h: int) -> list[float]:
    x, y = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
    return [round(x, 1), round(y, 1), round(rng.uniform(8, w - x), 1), round(rng.uniform(8, h - y), 1)]


def omnilabel_gt(seed: int = 0, n_images: int = 12, *, crowd: bool = True, zero_id: bool = False,
                 size: tuple[int, int] = (160, 120)) -> dict:
    rng = np.random.default_rng(seed)
    w, h = size
    images = [{"id": 10 + 3 * i, "file_name": f"img_{i}.png", "width": w, "height": h} for i in range(n_images)]
    descriptions, annotations = [], []
    next_descr, next_ann = 1, 0 if zero_id else 1
    for img in images:
        ids = []
        for _ in range(int(rng.integers(1, 6))):
            kind = "object_description" if rng.random() < 0.7 else "object_class"
            n_words = int(rng.choice([1, 2, 3, 5, 7, 9, 12]))
            descriptions.append({"id": next_descr, "text": _text(rng, n_words), "image_ids": [img["id"]],
                                 "anno_info": {"type": kind}})
            ids.append(next_descr)
            next_descr += 1
        for _ in range(int(rng.integers(0, 6))):
            refs = sorted(set(rng.choice(ids, size=int(rng.integers(1, 3))).tolist()))
            if rng.random() < 0.3:
                refs = refs[:1]
            annotations.append({"id": next_ann, "image_id": img["id"], "bbox": _box(rng, w, h),
                                "description_ids": refs, "iscrowd": int(crowd and rng.random() < 0.1)})
            next_ann += 1
    # a description shared by two images, refers to a box in one only
    if n_images >= 2:
        descriptions.append({"id": next_descr, "text": "the thing", "image_ids": [images[0]["id"], images[1]["id"]],
                             "anno_info": {"type": "object_description"}})
        annotations.append({"id": next_ann, "image_id": images[0]["id"], "bbox": _box(rng, w, h),
                            "description_ids": [next_descr], "iscrowd": 0})
    return {"images": images, "descriptions": descriptions, "annotations": annotations}


def omnilabel_predictions(gt: dict, seed: int = 0, *, per_pair: int = 8, random_boxes: int = 4) -> list[dict]:
    rng = np.random.default_rng(seed + 1000)
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    out = []
    for d in gt["descriptions"]:
        for image_id in d["image_ids"]:
            w, h = sizes[image_id]
            boxes = [a["bbox"] for a in by_image.get(image_id, []) if d["id"] in a["description_ids"]]
            others = [a["bbox"] for a in by_image.get(image_id, [])]
            cands = []
            for b in boxes + others[:2]:
                for _ in range(per_pair // 2):
                    j = rng.normal(0, 0.12, 4) * [b[2], b[3], b[2], b[3]]
                    cands.append([b[0] + j[0], b[1] + j[1], max(1.0, b[2] + j[2]), max(1.0, b[3] + j[3])])
            cands += [_box(rng, w, h) for _ in range(random_boxes)]
            for b in cands:
                out.append({"image_id": image_id, "bbox": [round(v, 2) for v in b], "description_ids": [d["id"]],
                            "scores": [float(rng.choice(np.arange(0.05, 1.0, 0.05)).round(2))]})
    # boxes naming two descriptions at once
    for k in range(0, len(out) - 1, 7):
        a, b = out[k], out[k + 1]
        if a["image_id"] == b["image_id"] and a["description_ids"] != b["description_ids"]:
            a["description_ids"] = a["description_ids"] + b["description_ids"]
            a["scores"] = a["scores"] + [round(a["scores"][0] * 0.5, 3)]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------- D³


def d3_pickles(folder, seed: int = 0, *, n_groups: int = 3, images_per_group: int = 3,
               size: tuple[int, int] = (160, 120)) -> dict:
    """Write the four D³ pickles (the release's layout, as ``d_cube.D3`` reads it); return the raw dicts."""
    import pickle
    from pathlib import Path

    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    w, h = size
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sentences, groups, images, annotations = {}, {}, {}, {}
    sent_id, img_id, ann_id = 1, 0, 0
    for g in range(n_groups):
        inner = []
        for k in range(int(rng.integers(3, 5))):
            negative = k == 0 or rng.random() < 0.2
            n_words = int(rng.choice([2, 3, 5, 8, 11]))
            text = _text(rng, n_words) + (" without a hat" if negative else "")
            sentences[sent_id] = {"id": sent_id, "raw_sent": text, "is_negative": negative, "anno_id": [],
                                  "group_id": [g]}
            inner.append(sent_id)
            sent_id += 1
        groups[g] = {"id": g, "group_name": f"group_{g}", "scene": f"scene_{g % 2}", "img_id": [],
                     "inner_sent_id": inner, "outer_sent_id": []}
    all_sents = list(sentences)
    for g, group in groups.items():
        for _ in range(images_per_group):
            images[img_id] = {"id": img_id, "file_name": f"{group['group_name']}/img_{img_id}.png", "height": h,
                              "width": w, "anno_id": [], "group_id": g}
            group["img_id"].append(img_id)
            for _ in range(int(rng.integers(0, 4))):
                x, y, bw, bh = (int(v) for v in _box(rng, w, h))
                m = np.zeros((h, w), dtype=np.uint8, order="F")
                m[y:y + bh, x:x + bw] = 1
                rle = mask_utils.encode(m)
                refs = sorted(set(rng.choice(group["inner_sent_id"], size=int(rng.integers(1, 3))).tolist()))
                if rng.random() < 0.3:  # also referred to by another scenario's description
                    refs.append(int(rng.choice([s for s in all_sents if s not in group["inner_sent_id"]])))
                annotations[ann_id] = {"id": ann_id, "image_id": img_id, "group_id": g, "sent_id": refs,
                                       "segmentation": [rle], "area": [int(mask_utils.area(rle))],
                                       "bbox": np.array([[x, y, bw, bh]], dtype=np.float64), "iscrowd": 0}
                images[img_id]["anno_id"].append(ann_id)
                for s in refs:
                    sentences[s]["anno_id"].append(ann_id)
                ann_id += 1
            img_id += 1
    for name, obj in (("sentences", sentences), ("groups", groups), ("images", images), ("annotations", annotations)):
        with open(folder / f"{name}.pkl", "wb") as f:
            pickle.dump(obj, f)
    return {"sentences": sentences, "groups": groups, "images": images, "annotations": annotations}


def coco_predictions(gt: dict, prompts: dict[int, list[int]], seed: int = 0, per_label: int = 6) -> list[dict]:
    """COCO result entries near the ground-truth boxes of each (image, category) plus random boxes."""
    rng = np.random.default_rng(seed + 2000)
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    boxes: dict[tuple[int, int], list] = {}
    for a in gt["annotations"]:
        boxes.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    out = []
    for image_id, cats in prompts.items():
        w, h = sizes[image_id]
        for c in cats:
            cands = []
            for b in boxes.get((image_id, c), []):
                for _ in range(per_label // 2):
                    j = rng.normal(0, 0.12, 4) * [b[2], b[3], b[2], b[3]]
                    cands.append([b[0] + j[0], b[1] + j[1], max(1.0, b[2] + j[2]), max(1.0, b[3] + j[3])])
            cands += [_box(rng, w, h) for _ in range(per_label // 2)]
            for b in cands:
                out.append({"image_id": image_id, "category_id": c, "bbox": [round(float(v), 2) for v in b],
                            "score": float(rng.choice(np.arange(0.05, 1.0, 0.05)).round(2))})
    return out


def write_images(root, images: list[dict]) -> None:
    """A real photograph (scikit-image ships it offline), resized to each image's recorded size."""
    from pathlib import Path

    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    for k, img in enumerate(images):
        path = Path(root) / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photos[k % len(photos)]).resize((img["width"], img["height"])).save(path)


# ---------------------------------------------------------------------------------------------- OVDEval


def ovdeval_subset(seed: int = 0, n_images: int = 6, size: tuple[int, int] = (160, 120),
                   labels: tuple[str, ...] = ("red car", "blue car", "green car", "white car", "black car")) -> dict:
    """A COCO json in OVDEval's layout: per image ``text`` (labels present) and ``neg_text`` (hard negatives)."""
    rng = np.random.default_rng(seed)
    w, h = size
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(labels)]
    images, annotations = [], []
    for i in range(n_images):
        pos = sorted(set(rng.choice(len(labels), size=int(rng.integers(1, 3))).tolist()))
        neg = [k for k in range(len(labels)) if k not in pos][: int(rng.integers(1, 3))]
        images.append({"id": i + 1, "file_name": f"img_{i}.png", "width": w, "height": h,
                       "text": [labels[k] for k in pos], "neg_text": [labels[k] for k in neg]})
        for k in pos:
            for _ in range(int(rng.integers(1, 3))):
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": k + 1,
                                    "bbox": [int(v) for v in _box(rng, w, h)], "iscrowd": 0,
                                    "area": 0})
    for a in annotations:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    return {"images": images, "annotations": annotations, "categories": categories}
