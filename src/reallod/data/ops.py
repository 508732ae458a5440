"""Filter, sample, split and merge Real-Data files: streaming, deterministic, atomic outputs.

Random choices that must not depend on file order (the fraction sample, the train/val split) hash
the image filename with the seed, so an image lands on the same side whatever file it is in, and a
rerun with the same seed gives the same result; sample and split hash with different keys, so their
draws are independent. Merge finds the images that occur more than once in
a first pass that keeps 8 bytes per image, then holds only those records in memory; it refuses
an expression that one file has as a positive and another as a negative of the same pair.

Held records are compact JSON in bytes of their own size (:func:`_held`): ``orjson.dumps`` returns
bytes that keep its whole write buffer, at least 4 KB, whatever the line's length.
"""

from __future__ import annotations

import hashlib
import os
import random
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from reallod.data.convert_common import (
    ConvertStats,
    EmptyRunError,
    SourceCheck,
    refuse_same_file,
    require_records,
    text_key,
    unique_texts,
)
from reallod.data.io import JsonlWriter, is_stream, iter_json, read_numbered_records, same_file
from reallod.data.records import RELATIONS, Pair, Record, filename_hash
from reallod.errors import ConfigError, DataError, first_few


def unit_hash(filename: str, seed: int, purpose: Literal["sample", "split"]) -> float:
    """A number in [0, 1) fixed by (purpose, filename, seed): the image-level coin of sample and split.

    ``purpose`` keys the hash apart, so a ``--fraction`` sample and a split with the same seed are
    independent draws: otherwise a 2% sample would be exactly the 2% validation split.
    """
    key = f"{purpose}:{seed}".encode()
    digest = hashlib.blake2b(filename.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") / 2**64


def _held(record: Record) -> bytes:
    """The record's compact JSON line, in bytes of its own size: what sample and merge keep in memory.

    ``orjson.dumps`` returns bytes that keep its whole write buffer allocated (4 KB for a short line,
    about 8 KB for a 1 KB one), so a held reservoir or merge group took several times the size of its
    lines; a copy is allocated at the line's length, and the line written out is the same."""
    return bytes(memoryview(orjson.dumps(record.to_dict())))


# ----------------------------------------------------------------------------------------------
# filter
# ----------------------------------------------------------------------------------------------


def filter_record(record: Record, *, sources: Sequence[str] | None = None, relation: str | None = None,
                  categories: Sequence[str] | None = None) -> Record | None:
    """Keep the pairs that match every given criterion; ``None`` when no pair is left (pure)."""
    if relation is not None and relation not in RELATIONS:
        raise ConfigError(f"--relation must be one of {', '.join(RELATIONS)}, got {relation!r}")
    wanted_sources = set(sources) if sources else None
    wanted_cats = {text_key(c) for c in categories} if categories else None
    kept: dict[str, list[Pair]] = {}
    for source, items in record.pairs.items():
        if wanted_sources is not None and source not in wanted_sources:
            continue
        pairs = [p for p in items if (relation is None or p.relation == relation)
                 and (wanted_cats is None or text_key(p.category) in wanted_cats)]
        if pairs:
            kept[source] = pairs
    if not kept:
        return None
    return Record(filename=record.filename, height=record.height, width=record.width, pairs=kept,
                  caption=record.caption, extra=record.extra)


def filter_file(src: str | os.PathLike, dst: str | os.PathLike, *, sources: Sequence[str] | None = None,
                relation: str | None = None, categories: Sequence[str] | None = None) -> ConvertStats:
    """Write the matching pairs of ``src`` to ``dst``; images left with no pair are dropped."""
    if relation is not None and relation not in RELATIONS:
        raise ConfigError(f"--relation must be one of {', '.join(RELATIONS)}, got {relation!r}")
    refuse_same_file(src, dst, "filtering would replace the input with the pairs it keeps")
    stats = ConvertStats()
    pairs = 0
    check = SourceCheck(sources)
    with JsonlWriter(dst) as out:
        for _, record in read_numbered_records(src):
            stats.records_in += 1
            check.see(record)
            kept = filter_record(record, sources=sources, relation=relation, categories=categories)
            if kept is None:
                stats.skip("images with no matching pair")
                continue
            out.write_record(kept)
            pairs += kept.num_pairs()
        stats.records_out = out.count
        # raising here drops the output: an earlier file at dst stays
        require_records(stats.records_in, src)
        check.check(src)
        if not stats.records_out:
            wanted = [f"--source {' '.join(sources)}" if sources else "", f"--relation {relation}" if relation else "",
                      f"--category {' / '.join(categories)}" if categories else ""]
            raise EmptyRunError(f"none of the {stats.records_in} records has a pair matching "
                                f"{', '.join(w for w in wanted if w) or 'the criteria'}; nothing written", path=str(src))
    stats.items_out = {"pairs": pairs}
    return stats


# ----------------------------------------------------------------------------------------------
# sample
# ----------------------------------------------------------------------------------------------


def sample_file(src: str | os.PathLike, dst: str | os.PathLike, *, n: int | None = None,
                fraction: float | None = None, seed: int = 0) -> ConvertStats:
    """Random sample of images, in input order, deterministic for a seed.

    ``n``: exactly min(n, total) records by reservoir sampling (memory: the n sampled lines, each held
    at its length by :func:`_held`).
    ``fraction``: each image kept when its filename hash is below ``fraction`` (constant memory;
    about, not exactly, that share).
    """
    if (n is None) == (fraction is None):
        raise ConfigError("give exactly one of -n/--n and --fraction")
    if n is not None and n < 1:  # 0 would write an empty file, which every command refuses
        raise ConfigError(f"-n must be at least 1, got {n}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--fraction must be between 0 and 1 (0 excluded: it keeps no image), got {fraction}")
    refuse_same_file(src, dst, "sampling would replace the input with the sample")
    stats = ConvertStats()
    with JsonlWriter(dst) as out:
        if fraction is not None:
            for _, record in read_numbered_records(src):
                stats.records_in += 1
                if unit_hash(record.filename, seed, "sample") < fraction:
                    out.write_record(record)
        else:
            rng = random.Random(seed)
            reservoir: list[tuple[int, bytes]] = []
            for i, (_, record) in enumerate(read_numbered_records(src)):
                stats.records_in += 1
                if len(reservoir) < n:
                    reservoir.append((i, _held(record)))
                else:
                    j = rng.randrange(i + 1)
                    if j < n:
                        reservoir[j] = (i, _held(record))
            for _, line in sorted(reservoir):
                out.write(line + b"\n")
                out.count += 1
        require_records(stats.records_in, src)  # raising here drops the output: an earlier file stays
        if not out.count:
            asked = f"-n {n}" if n is not None else f"--fraction {fraction} (seed {seed})"
            raise EmptyRunError(f"{asked} keeps none of the {stats.records_in} records; nothing written",
                                path=str(src))
    stats.records_out = out.count
    return stats


# ----------------------------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------------------------


def split_file(src: str | os.PathLike, train: str | os.PathLike, val: str | os.PathLike, *,
               val_fraction: float, seed: int = 0) -> ConvertStats:
    """Image-level train/val split by filename hash: streaming, and every record of an image on one side."""
    if not 0.0 < val_fraction < 1.0:  # 0 or 1 would write an empty file, which every command refuses
        raise ConfigError(f"--val-fraction must be between 0 and 1 (both excluded: a split writes two non-empty "
                          f"files), got {val_fraction}")
    if one_file(train, val):
        how = "" if same_file(train, val) else ("names that differ only in case, one file where the file system "
                                                 "ignores case (macOS, Windows); ")
        raise ConfigError(f"--train {train} and --val {val} are one file ({how}the val records would be lost): "
                          "give two different files")
    for side in (train, val):
        refuse_same_file(src, side, "splitting would replace the input with one side of the split")
    stats = ConvertStats()
    with JsonlWriter(train) as out_train, JsonlWriter(val) as out_val:
        for _, record in read_numbered_records(src):
            stats.records_in += 1
            (out_val if unit_hash(record.filename, seed, "split") < val_fraction else out_train).write_record(record)
        require_records(stats.records_in, src)  # raising here drops both outputs: earlier files stay
        _require_both_sides(out_train, out_val, stats.records_in, val_fraction, seed, src)
        # both complete on disk before either is renamed: a full disk leaves the earlier pair, never a
        # new val beside an old train
        out_train.finish()
        out_val.finish()
    stats.records_out = out_train.count + out_val.count
    stats.items_out = {"train": out_train.count, "val": out_val.count}
    return stats


def one_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether outputs ``a`` and ``b`` are one file: the same file (:func:`same_file`: a link, ``..``, a
    symlinked folder), or two names of one folder that differ only in case (one file where the file system
    ignores case, as macOS's and Windows' do by default)."""
    if same_file(a, b):
        return True
    a, b = Path(a), Path(b)
    return a.name.casefold() == b.name.casefold() and same_file(a.absolute().parent, b.absolute().parent)


def _require_both_sides(train: JsonlWriter, val: JsonlWriter, records_in: int, val_fraction: float, seed: int,
                        src: str | os.PathLike) -> None:
    """Refuse a split with an empty side (too few images for the share): every command refuses an empty
    file. Raised inside the writers' block, it drops both outputs; earlier files stay."""
    for option, out in (("--val", val), ("--train", train)):
        if not out.count:
            raise EmptyRunError(f"--val-fraction {val_fraction} (seed {seed}) puts none of the {records_in} "
                                f"records in {option} {out.path}; nothing written: the split is by image, so "
                                f"{'raise' if option == '--val' else 'lower'} --val-fraction (or try another --seed)",
                                path=str(src))


# ----------------------------------------------------------------------------------------------
# merge
# ----------------------------------------------------------------------------------------------


def _pair_key(pair: Pair) -> tuple:
    return (text_key(pair.category), pair.relation, tuple(tuple(b) for b in pair.bboxes))


def conflicts(a: Pair, b: Pair) -> list[tuple[str, int, str]]:
    """(side in ``b``: "positive" or "negative", index there, expression) for each expression that is a
    positive of one pair and a negative of the other: their union would be an invalid pair."""
    a_pos = {text_key(t) for t in a.positive_expressions}
    a_neg = {text_key(t) for t in a.negative_expressions}
    return ([("negative", i, t) for i, t in enumerate(b.negative_expressions) if text_key(t) in a_pos]
            + [("positive", i, t) for i, t in enumerate(b.positive_expressions) if text_key(t) in a_neg])


def merge_pair(into: Pair, other: Pair) -> None:
    """Union the expressions of two descriptions of the same boxes (order kept, duplicates dropped).

    ``provenance`` stays parallel to ``positive_expressions``: each kept positive keeps the entry of its
    first occurrence (null where that pair had none). Callers check :func:`conflicts` first."""
    keep_provenance = into.provenance is not None or other.provenance is not None
    positives = [*into.positive_expressions, *other.positive_expressions]
    provenance = [*_padded(into), *_padded(other)]
    into.positive_expressions = unique_texts(positives)
    if keep_provenance:
        first: dict[str, Any] = {}
        for text, entry in zip(positives, provenance, strict=True):
            first.setdefault(text_key(text), entry)
        into.provenance = [first[text_key(t)] for t in into.positive_expressions]
    into.negative_expressions = unique_texts([*into.negative_expressions, *other.negative_expressions])
    if other.origin_positive_expressions is not None:
        into.origin_positive_expressions = unique_texts(
            [*(into.origin_positive_expressions or []), *other.origin_positive_expressions])
    for k, v in other.extra.items():
        into.extra.setdefault(k, v)


def _padded(pair: Pair) -> list[Any]:
    """The pair's provenance entry per positive expression (None where it has none)."""
    entries = list(pair.provenance or [])[:len(pair.positive_expressions)]
    return entries + [None] * (len(pair.positive_expressions) - len(entries))


PairIndex = dict[str, dict[tuple, Pair]]
"""Per source, each pair key (:func:`_pair_key`) of a record to its last pair with that key."""

SHOWN_PLACES = 3  # records a merge error names; the rest are counted


def _places(first_at: Sequence[str]) -> str:
    """Where the records merged so far are, for an error message: the first few, and how many more."""
    if not first_at:
        return "its first record"
    return first_few(first_at, SHOWN_PLACES, rest="more records of the image")


def merge_records(first: Record, other: Record, *, first_at: Sequence[str] = (), other_path: str | None = None,
                  other_line: int | None = None, index: PairIndex | None = None) -> Record:
    """One record of an image from two; sizes must agree. ``first`` is modified and returned.

    Pairs of the same source over the same boxes and category are combined, others appended.
    A size conflict, or an expression positive in one and negative in the other for such a pair, names
    both places: ``first_at`` (the places of the records merged into ``first``; the message names the
    first few and counts the rest) in the message, ``other_path:other_line`` in front.

    ``index``: the pair index of ``first``, kept by a caller that merges many records into one and
    passes the same dict each time (empty at first); it is updated in place, so each merge costs the
    pairs of ``other``, not of everything merged so far (rebuilt per merge, an image split over k
    records took k² steps).
    """
    if (first.height, first.width) != (other.height, other.width):
        raise DataError(f"image {first.filename!r} is {other.width}x{other.height} (width x height) here "
                        f"but {first.width}x{first.height} at {_places(first_at)}",
                        path=other_path, line=other_line, field="height/width")
    if index is None:
        index = {}
    for source, items in other.pairs.items():
        mine = first.pairs.setdefault(source, [])
        by_key = index.get(source)
        if by_key is None:
            by_key = index[source] = {_pair_key(p): p for p in mine}
        for i, pair in enumerate(items):
            key = _pair_key(pair)
            match = by_key.get(key)
            if match is None:
                mine.append(pair)
                by_key[key] = pair
                continue
            clash = conflicts(match, pair)
            if clash:
                side, k, text = clash[0]
                other_side = "positive" if side == "negative" else "negative"
                raise DataError(
                    f"{text!r} is a {side} expression here but a {other_side} one of the same pair (same boxes "
                    f"and category) of image {first.filename!r} at {_places(first_at)}: merged, "
                    f"the pair would be invalid; remove it from one side"
                    + (f" ({len(clash) - 1} more such expressions)" if len(clash) > 1 else ""),
                    path=other_path, line=other_line, field=f"pairs.{source}[{i}].{side}_expressions[{k}]")
            merge_pair(match, pair)
    if first.caption is None:
        first.caption = other.caption
    for k, v in other.extra.items():
        first.extra.setdefault(k, v)
    return first


def merge_files(srcs: Sequence[str | os.PathLike], dst: str | os.PathLike) -> ConvertStats:
    """Concatenate Real-Data files, combining the records of an image that occurs more than once.

    Two passes: the first counts filename hashes (8 bytes per record); the second writes unique
    images straight through and holds a duplicated image only until its last record has been read,
    where the combined record is written. Memory grows with the duplicated images only.
    """
    if not srcs:
        raise ConfigError("merge needs at least one input file")
    for src in srcs:  # read twice: the second pass would find a pipe empty and lose its records
        if is_stream(src):
            raise DataError("not a regular file (a pipe or a device): merge reads each input twice; "
                            "save it to a file first (e.g. zcat X.jsonl.gz > X.jsonl)", path=str(src))
    hashes = array("Q")
    for src in srcs:
        for _, obj in iter_json(src):
            name = obj.get("filename") if isinstance(obj, dict) else None
            if isinstance(name, str):
                hashes.append(filename_hash(name))
    values, counts = np.unique(np.frombuffer(hashes, dtype=np.uint64), return_counts=True)
    expected = {int(h): int(c) for h, c in zip(values[counts > 1], counts[counts > 1], strict=True)}
    del hashes, values, counts

    stats = ConvertStats()
    seen: dict[int, int] = {}
    pending: dict[int, list[tuple[bytes, str, int]]] = {}  # compact JSON (_held): a third of a Record's memory
    before = 0
    with JsonlWriter(dst) as out:
        for src in srcs:
            for lineno, record in read_numbered_records(src):
                stats.records_in += 1
                h = filename_hash(record.filename)
                if h not in expected:
                    out.write_record(record)
                    continue
                pending.setdefault(h, []).append((_held(record), str(src), lineno))
                seen[h] = seen.get(h, 0) + 1
                if seen[h] == expected[h]:
                    for merged in _combine(pending.pop(h), stats):
                        out.write_record(merged)
                    del seen[h]
            if stats.records_in == before:
                stats.note(f"input file with no record: {src}")
            before = stats.records_in
        require_records(stats.records_in, srcs)  # raising here drops the output: an earlier file stays
    stats.records_out = out.count
    return stats


def _combine(group: list[tuple[bytes, str, int]], stats: ConvertStats) -> list[Record]:
    """Records of one filename hash → one record per filename (a hash collision keeps names apart).

    Each name keeps its pair index across its merges (linear in its pairs, see :func:`merge_records`)
    and the places of its records, which an error message names (a clash may be with any of them)."""
    by_name: dict[str, tuple[Record, list[str], PairIndex]] = {}
    for data, path, line in group:
        record = Record.from_dict(orjson.loads(data))
        if record.filename in by_name:
            first, places, index = by_name[record.filename]
            merge_records(first, record, first_at=places, other_path=path, other_line=line, index=index)
            places.append(f"{path}:{line}")
            stats.note("records combined into an earlier record of the same image")
        else:
            by_name[record.filename] = (record, [f"{path}:{line}"], {})
    return [r for r, _, _ in by_name.values()]
