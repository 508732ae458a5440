"""The training dataset over one or more Real-Data files, each with its image root and sampling ratio.

Each file is scanned once: lines that are not usable records are counted by reason and left out,
the byte offsets of the others are kept (gzip files cannot be seeked: their usable lines are kept in
memory, decompressed, as one buffer that DataLoader workers share with the process that forked them),
and the category names are collected as the ``category`` source's negatives.
An item is read, cleaned, augmented and turned into a prompt on demand.

An epoch is a list of (file, record) indices: a file with ratio r contributes each record r times
(a fractional part is a random subset drawn per epoch), shuffled with (seed, epoch). Every sample is
keyed by (epoch, position, index) and draws all its randomness from a generator seeded by that key
and the run's seed, so an epoch is reproducible whatever the worker count and after a resume.
An image that cannot be read, is larger than the pixel budget (``data.max_pixels``, ``--max-pixels``) or
is of another size than its record (and not a resized copy: its boxes would land elsewhere) is replaced
by another record of the same file, drawn from the same key (and counted). At setup, before the model
is built, :func:`check_image_root` reads the image headers of a few records spread over each file: a
file most of whose images are missing or of another size is refused then (a wrong image root), not
found out record by record while training.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import torch
from PIL import Image

from reallod.data.images import DEFAULT_MAX_PIXELS, open_header, open_image, upright_size
from reallod.data.io import in_folder, is_gzip_file, iter_lines
from reallod.data.records import Record
from reallod.data.validate import BOM
from reallod.errors import ConfigError, DataError
from reallod.train import augment as A
from reallod.train.sampling import TextOptions, TextSample, build_text_sample
from reallod.train.targets import all_boxes, apply_geometry, clean_record, record_targets

if TYPE_CHECKING:
    from reallod.train.config import TrainConfig

IMAGE_MEAN = (0.485, 0.456, 0.406)  # the Grounding-DINO image processor's (ImageNet) normalisation
IMAGE_STD = (0.229, 0.224, 0.225)
MAX_IMAGE_RETRIES = 20
IMAGE_ROOT_SAMPLE = 32  # records per training file whose images are looked at during setup
MAX_PIXELS_HINT = "raise --max-pixels or data.max_pixels if it is genuine"  # training's two ways to set the budget
Key = tuple[int, int, int]  # (epoch, position in the epoch, dataset index)


@dataclass(frozen=True)
class DataFile:
    """One Real-Data file: where it is, where its images are, how often an epoch visits each record."""

    path: str
    images: str
    ratio: float = 1.0


@dataclass
class FileIndex:
    spec: DataFile
    line_numbers: np.ndarray  # of the usable lines
    offsets: np.ndarray  # byte offsets of the usable lines: in the file, or in ``blob`` (one more: its end)
    blob: bytearray | None  # the usable lines themselves, back to back (gzip files)
    skipped: Counter = field(default_factory=Counter)  # reason -> lines left out
    categories: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)  # text sources its records have (data.source_probs keys)
    skipped_at: list[int] = field(default_factory=list)  # the first lines left out (one more than named)
    pairs_dropped: int = 0  # pairs of kept records with no usable box (degenerate, inverted, outside)
    pairs_dropped_at: list[int] = field(default_factory=list)  # the first lines that had one (as skipped_at)

    def __len__(self) -> int:
        return len(self.line_numbers)

    def read(self, i: int) -> bytes:
        if self.blob is not None:
            return bytes(memoryview(self.blob)[int(self.offsets[i]):int(self.offsets[i + 1])])
        with open(self.spec.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            return f.readline().removeprefix(BOM)


def _plain_lines(path: str) -> Iterator[tuple[int, int, bytes]]:
    with open(path, "rb") as f:
        lineno = 0
        while True:
            offset = f.tell()
            line = f.readline()
            if not line:
                return
            lineno += 1
            if line.strip():
                yield lineno, offset, line


def data_file_problem(path: str, what: str = "training") -> str | None:
    """Why ``path`` cannot be a ``what`` (training, evaluation) data file; None when it can."""
    if os.path.isfile(path):
        return None
    if os.path.exists(path):
        return ("not a regular file (a folder, a pipe or a device): training reads its records again by their "
                "place in the file; give a file")
    return f"{what} data file not found"


def check_data_paths(cfg: TrainConfig) -> None:
    """Every ``data.train`` file and image root, and ``eval``'s, exists (``{work_dir}`` already replaced): a
    :class:`FieldError` naming the field, before a run writes anything in its work dir (found while the data
    is indexed, it left the work dir's TensorBoard files behind). Paths in ``data.synthetic.dir`` are the run's
    to make."""
    from reallod.train.config import FieldError

    made = Path(cfg.data.synthetic.dir) if cfg.data.synthetic is not None else None
    entries = [(f"data.train.{i}", f.file, f.images, "training") for i, f in enumerate(cfg.data.train)]
    if cfg.eval.file is not None and cfg.eval.images is not None:
        entries.append(("eval", cfg.eval.file, cfg.eval.images, "evaluation"))
    def to_be_made(path: str) -> bool:
        return made is not None and in_folder(Path(path), made)

    for name, file, images, what in entries:
        if not to_be_made(file) and (why := data_file_problem(file, what)):
            raise FieldError(f"{name}.file", f"{file}: {why}")
        if not to_be_made(images) and not os.path.isdir(images):
            raise FieldError(f"{name}.images", f"{images}: image root not found")


def index_file(spec: DataFile) -> FileIndex:
    """Scan one file: usable lines, skipped lines by reason, category names."""
    if why := data_file_problem(spec.path):
        raise DataError(why, path=spec.path)
    if not os.path.isdir(spec.images):
        raise DataError("image root not found (data.train[].images)", path=spec.images)
    gz = is_gzip_file(spec.path)
    numbers, offsets = [], []
    blob = bytearray() if gz else None
    skipped: Counter = Counter()
    categories: set[str] = set()
    sources: set[str] = set()
    source = ((n, 0, line) for n, line in iter_lines(spec.path)) if gz else _plain_lines(spec.path)
    skipped_at: list[int] = []
    pairs_dropped, pairs_dropped_at = 0, []
    for lineno, offset, line in source:
        if lineno == 1:
            line = line.removeprefix(BOM)
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            skipped["bad_json"] += 1
            if len(skipped_at) <= LINES_NAMED:  # one more: there are more than those named
                skipped_at.append(lineno)
            continue
        record, reason = clean_record(obj, line)
        if record is None:
            skipped[reason or "invalid"] += 1
            if len(skipped_at) <= LINES_NAMED:  # one more: there are more than those named
                skipped_at.append(lineno)
            continue
        if dropped := _pairs_in(obj) - sum(len(items) for items in record.pairs.values()):
            pairs_dropped += dropped
            if len(pairs_dropped_at) <= LINES_NAMED:
                pairs_dropped_at.append(lineno)
        numbers.append(lineno)
        if blob is not None:
            offsets.append(len(blob))
            blob += line
        else:
            offsets.append(offset)
        sources.update(record.pairs)
        for _, _, pair in record.iter_pairs():
            if pair.category and len(categories) < 100_000:
                categories.add(pair.category)
    if blob is not None:
        offsets.append(len(blob))
    return FileIndex(spec, np.asarray(numbers, dtype=np.int64), np.asarray(offsets, dtype=np.int64), blob, skipped,
                     categories, sources, skipped_at, pairs_dropped, pairs_dropped_at)


LINES_NAMED = 3  # lines a summary names per kind of problem: enough to find them, `data validate` lists all


def _pairs_in(obj: dict[str, Any]) -> int:
    """The pairs a usable record's line holds (its sources' lists, as the schema checked them)."""
    return sum(len(items) for items in obj["pairs"].values())


def epoch_plan(sizes: Sequence[int], ratios: Sequence[float], seed: int, epoch: int) -> np.ndarray:
    """Global dataset indices visited in ``epoch``, shuffled; file i contributes ``ratio_i × size_i`` of them."""
    rng = np.random.default_rng([seed, epoch, 7])
    parts, start = [], 0
    for size, ratio in zip(sizes, ratios, strict=True):
        idx = np.arange(start, start + size)
        whole, frac = int(ratio), ratio - int(ratio)
        chunk = [idx] * whole
        if frac > 0:
            chunk.append(rng.permutation(idx)[: round(frac * size)])
        parts.extend(chunk)
        start += size
    plan = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return plan[rng.permutation(len(plan))]


def shard(plan: np.ndarray, num_replicas: int, rank: int) -> np.ndarray:
    """This process's share: the plan padded (from its start) to a multiple of the process count, strided."""
    if len(plan) == 0:
        return plan
    total = -(-len(plan) // num_replicas) * num_replicas
    padded = np.concatenate([plan, plan[: total - len(plan)]]) if total > len(plan) else plan
    return padded[rank::num_replicas]


class TrainDataset(torch.utils.data.Dataset):
    """Items keyed by (epoch, position, index): image tensor, normalised boxes, prompt, labels."""

    def __init__(self, files: Sequence[FileIndex], tokenize: Callable[[str], list[int]], text: TextOptions,
                 augment: A.AugmentOptions, seed: int = 0, *, mean: Sequence[float] = IMAGE_MEAN,
                 std: Sequence[float] = IMAGE_STD, train: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.files = list(files)
        self.tokenize, self.text, self.aug, self.seed, self.train = tokenize, text, augment, seed, train
        self.max_pixels = max_pixels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.starts = np.cumsum([0] + [len(f) for f in self.files])
        self.vocabulary = sorted({c for f in self.files for c in f.categories})
        if len(self) == 0:
            raise DataError("no usable training records in " + ", ".join(f.spec.path for f in self.files)
                            + " (" + _skipped_text(self.files) + ")")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def epoch_plan(self, epoch: int) -> np.ndarray:
        return epoch_plan([len(f) for f in self.files], [f.spec.ratio for f in self.files], self.seed, epoch)

    def locate(self, index: int) -> tuple[FileIndex, int]:
        k = int(np.searchsorted(self.starts, index, side="right") - 1)
        return self.files[k], index - int(self.starts[k])

    def record(self, index: int) -> tuple[Record, str]:
        fidx, i = self.locate(index)
        line = int(fidx.line_numbers[i])
        try:
            raw = fidx.read(i)
            record, _ = clean_record(orjson.loads(raw), raw)
        except orjson.JSONDecodeError:
            record = None
        if record is None:  # it passed the same check when it was indexed
            raise DataError("the file changed while training: this line no longer holds the record it held",
                            path=fidx.spec.path, line=line)
        return record, str(Path(fidx.spec.images) / record.filename)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        epoch, position, index = key
        failures: list[str] = []
        for attempt in range(MAX_IMAGE_RETRIES):
            rng = np.random.default_rng([self.seed, epoch, position, index, attempt])
            record, path = self.record(index)
            try:
                image = open_image(path, self.max_pixels, hint=MAX_PIXELS_HINT)
                if not fits_record(image.size, record):
                    raise DataError(f"image is {image.width}×{image.height}, its record says {record.width}×"
                                    f"{record.height} ({_NOT_RESIZED})", path=path)
            except DataError as e:
                failures.append(str(e))
                index = self.replacement(index, rng)
                continue
            sample = self.make_sample(record, image, rng)
            sample["failed_images"] = failures
            sample["key"] = (epoch, position, index)
            return sample
        raise DataError(f"{MAX_IMAGE_RETRIES} images in a row could not be read; is the image root right? "
                        f"last: {failures[-1]}")

    def replacement(self, index: int, rng: np.random.Generator) -> int:
        """Another record of the same file, so that each file keeps its share (``ratio``) of an epoch; of any
        file when that one has no other."""
        fidx, i = self.locate(index)
        if len(fidx) > 1:
            return index - i + (i + 1 + int(rng.integers(len(fidx) - 1))) % len(fidx)
        if len(self) > 1:
            return (index + 1 + int(rng.integers(len(self) - 1))) % len(self)
        return index

    def make_sample(self, record: Record, image: Image.Image, rng: np.random.Generator) -> dict[str, Any]:
        """``image`` is the record's, or a resized copy (:func:`fits_record`): the boxes are scaled to it."""
        targets = record_targets(record)
        boxes, owner = all_boxes(targets)
        scale = np.array([image.width / record.width, image.height / record.height] * 2)
        boxes = boxes * scale
        if self.train:
            aug = A.augment(image, boxes, rng, self.aug)
        else:
            img, b = A.eval_resize(image, boxes, self.aug)
            aug = A.Augmented(img, b, np.arange(len(boxes)), False)
        targets = apply_geometry(targets, aug.boxes, owner, aug.keep, aug.flipped, self.aug.swap_left_right)
        text = build_text_sample(targets, rng, self.tokenize, self.text, self.vocabulary)
        return to_tensors(aug.image, text, self.mean, self.std)


def to_tensors(image: Image.Image, text: TextSample, mean: torch.Tensor, std: torch.Tensor) -> dict[str, Any]:
    """Normalised CHW float tensor; boxes as cx, cy, w, h relative to this (unpadded) image."""
    width, height = image.size
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    pixels = (pixels - mean) / std
    b = torch.as_tensor(text.boxes, dtype=torch.float32).reshape(-1, 4)
    cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height,
                          (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height], dim=-1)
    return {"pixel_values": pixels, "input_ids": list(text.input_ids),
            "labels": {"class_labels": torch.as_tensor(text.class_labels, dtype=torch.long),
                       "boxes": cxcywh.clamp(0, 1)},
            "phrases": text.phrases, "source": text.source}


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad images (bottom/right, with a pixel mask) and prompts (with [PAD] = 0 and an attention mask)."""
    h = max(s["pixel_values"].shape[1] for s in samples)
    w = max(s["pixel_values"].shape[2] for s in samples)
    t = max(len(s["input_ids"]) for s in samples)
    n = len(samples)
    pixel_values = torch.zeros(n, 3, h, w)
    pixel_mask = torch.zeros(n, h, w, dtype=torch.long)
    input_ids = torch.zeros(n, t, dtype=torch.long)
    attention_mask = torch.zeros(n, t, dtype=torch.long)
    for i, s in enumerate(samples):
        _, sh, sw = s["pixel_values"].shape
        pixel_values[i, :, :sh, :sw] = s["pixel_values"]
        pixel_mask[i, :sh, :sw] = 1
        ids = s["input_ids"]
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, :len(ids)] = 1
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "input_ids": input_ids,
            "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids),
            "labels": [s["labels"] for s in samples],
            "failed_images": [f for s in samples for f in s.get("failed_images", [])],
            "sources": [s["source"] for s in samples], "keys": [s.get("key") for s in samples]}


class EpochBatches(torch.utils.data.Sampler):
    """Batches of keys for one process: the epoch plan, sharded, cut into batches, from a start batch on."""

    def __init__(self, dataset: TrainDataset, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, not {batch_size}")
        self.dataset, self.batch_size, self.num_replicas, self.rank = dataset, batch_size, num_replicas, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def batches_per_epoch(self) -> int:
        per_rank = -(-len(self.dataset.epoch_plan(0)) // self.num_replicas)
        return -(-per_rank // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start)

    def __iter__(self) -> Iterator[list[Key]]:
        plan = self.dataset.epoch_plan(self.epoch)
        positions = shard(np.arange(len(plan)), self.num_replicas, self.rank)
        for b in range(self.start, -(-len(positions) // self.batch_size)):
            chunk = positions[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.epoch, int(p), int(plan[p])) for p in chunk]


_MISSING, _OTHER_SIZE = "missing", "of another size than their record (not resized copies)"
_ROOT_HINTS = {_MISSING: "is data.train[].images the folder this file's filenames are relative to?",
               _OTHER_SIZE: "a record's width/height must be its image's own (upright: EXIF orientation applied)."}
_NOT_RESIZED = "not a resized copy either: its boxes would land elsewhere"


def fits_record(size: tuple[int, int], record: Record) -> bool:
    """The image is of its record's size, or a copy resized keeping the aspect ratio (to within the pixel of
    rounding), to which the boxes are scaled. Any other size (sides swapped by an EXIF rotation the record
    did not see, another crop) would put them in the wrong place."""
    (width, height), rw, rh = size, record.width, record.height
    return abs(width * rh - height * rw) <= (rw + rh) / 2


def check_image_root(fidx: FileIndex, sample: int = IMAGE_ROOT_SAMPLE) -> None:
    """Refuse a file whose images, in ``sample`` records spread over it (headers only, nothing decoded), are
    mostly missing or mostly of another size than their records (:func:`fits_record`). A wrong ``images``
    root would otherwise pass setup, and training replace every image of the file by another record (the
    file contributing nothing) or stop mid-run after too many misses in a row."""
    picks = np.unique(np.linspace(0, len(fidx) - 1, min(sample, len(fidx))).round().astype(int))
    problems: dict[str, list[str]] = {}
    for i in picks:
        try:
            record, _ = clean_record(orjson.loads(fidx.read(int(i))))
        except orjson.JSONDecodeError:  # the file changed since it was indexed: training will say so
            continue
        if record is None:
            continue
        path = str(Path(fidx.spec.images) / record.filename)
        try:
            with open_header(path) as im:
                size = upright_size(im)
        except FileNotFoundError:
            problems.setdefault(_MISSING, []).append(path)
            continue
        except (OSError, SyntaxError, ValueError):  # not an image: counted when training meets it
            continue
        if not fits_record(size, record):
            problems.setdefault(_OTHER_SIZE, []).append(
                f"{path} is {size[0]}×{size[1]}, its record says {record.width}×{record.height}")
    if sum(map(len, problems.values())) * 2 > len(picks):
        found = "; ".join(f"{len(v)} {kind} (e.g. {v[0]})" for kind, v in problems.items())
        raise DataError(f"of {len(picks)} images checked (records spread over the file; image root "
                        f"{fidx.spec.images}): {found}: " + " ".join(_ROOT_HINTS[k] for k in problems),
                        path=fidx.spec.path)


def _skipped_text(files: Sequence[FileIndex]) -> str:
    total: Counter = Counter()
    for f in files:
        total.update(f.skipped)
    return ", ".join(f"{n} {k}" for k, n in sorted(total.items())) or "nothing skipped"


def skipped_summary(files: Sequence[FileIndex]) -> str:
    """One part per file: usable records, lines left out by reason and pairs dropped, each with the first
    lines where (`reallod data validate FILE` lists every one and says why)."""
    def lines(at: list[int]) -> str:
        named = at[:LINES_NAMED]
        return f" (line{'s' if len(at) > 1 else ''} {', '.join(map(str, named))}{', ...' if len(at) > len(named) else ''})"

    parts = []
    for f in files:
        text = f"{f.spec.path}: {len(f)} records"
        if f.skipped:
            text += f", skipped {_skipped_text([f])}" + lines(f.skipped_at)
        if f.pairs_dropped:
            text += (f", {f.pairs_dropped} pair(s) without a usable box (degenerate, inverted or outside the image) "
                     "dropped" + lines(f.pairs_dropped_at))
        if f.skipped or f.pairs_dropped:
            text += f"; `reallod data validate {f.spec.path}` says why"
        parts.append(text)
    return "; ".join(parts)

