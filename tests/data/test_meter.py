"""The data commands' meter: every reader reports the bytes it reads of its input, once (a look at a file's
head is not counted), parallel ranges as each is done, merge's two passes, from-coco's conversion."""

from __future__ import annotations

import gzip
import io
import json
import os
import threading

import pytest

from reallod.data.convert_coco import coco_to_realdata
from reallod.data.io import iter_lines, open_input, read_records, read_whole
from reallod.data.meter import Meter, current_meter, metered, report_read
from reallod.data.ops import filter_file, merge_files
from reallod.data.stats import stats_files
from reallod.data.validate import validate_file


class RecordingMeter(Meter):
    """A test double that keeps what it was told: (what, total, unit) per phase and each advance."""

    active = True

    def __init__(self) -> None:
        self.phases: list[tuple[str, int | None, str]] = []
        self.steps: list[int] = []
        self.stopped = False

    def phase(self, what: str, total: int | None, unit: str = "bytes") -> None:
        self.phases.append((what, total, unit))

    def advance(self, n: int) -> None:
        self.steps.append(n)

    def stop(self) -> None:
        self.stopped = True


def record(i: int) -> dict:
    return {"filename": f"img{i:05d}.jpg", "height": 100, "width": 100, "pairs": {"llm": [{
        "bboxes": [[1, 2, 30, 40]], "category": "dog", "relation": "single",
        "positive_expressions": [f"the dog number {i} lying on the grass"], "negative_expressions": ["a cat"]}]}}


def write_records(path, n: int) -> int:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps(record(i)) + "\n")
    return os.path.getsize(path)


def test_with_nothing_watching_a_reader_is_not_wrapped(tmp_path):
    path = tmp_path / "a.jsonl"
    write_records(path, 3)
    assert not current_meter().active
    report_read(10)  # no meter: nothing to tell, no error
    stream, _ = open_input(path, counted=True)
    with stream:
        assert type(stream.raw) is io.FileIO  # no counting layer between the reader and the file
    with metered(RecordingMeter()):
        stream, _ = open_input(path, counted=True)
        with stream:
            assert type(stream.raw) is not io.FileIO


def test_a_plain_file_and_a_gzip_one_report_their_size_on_disk(tmp_path):
    plain = tmp_path / "a.jsonl"
    size = write_records(plain, 3000)
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        with metered(RecordingMeter()) as meter:
            assert sum(1 for _ in read_records(path)) == 3000
        assert sum(meter.steps) == os.path.getsize(path), path
        assert meter.stopped
    assert sum(meter.steps) < size  # gzip: the compressed bytes, what the file's size on disk is made of
    assert not current_meter().active  # the meter ends with its block


def test_the_look_at_a_files_first_line_is_not_counted(tmp_path):
    path = tmp_path / "a.jsonl"
    size = write_records(path, 50)  # smaller than one read buffer: a counted look would count it all again
    with metered(RecordingMeter()) as meter:
        stats_files([path], workers=1)  # looks at the first line twice before its reading
        filter_file(path, tmp_path / "f.jsonl", sources=["llm"])
    assert sum(meter.steps) == 2 * size


def test_parallel_ranges_report_each_range_as_it_is_done(tmp_path):
    path = tmp_path / "a.jsonl"
    size = write_records(path, 4000)
    with metered(RecordingMeter()) as meter:
        stats_files([path], workers=2, chunk_bytes=size // 6)
    assert sum(meter.steps) == size and len(meter.steps) > 2
    with metered(RecordingMeter()) as meter:
        report = validate_file(path, workers=2, chunk_bytes=size // 6)
    assert report.ok and sum(meter.steps) == size and len(meter.steps) > 2


def test_merge_reads_each_input_twice_and_says_so(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sizes = write_records(a, 100) + write_records(b, 70)
    with metered(RecordingMeter()) as meter:
        merge_files([a, b], tmp_path / "m.jsonl")
    assert sum(meter.steps) == 2 * sizes


def test_read_whole_and_from_coco_report_the_reading_then_the_conversion(tmp_path):
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 50, "width": 50} for i in range(5000)],
            "annotations": [{"id": k, "image_id": k % 5000, "category_id": 1, "bbox": [1, 1, 10, 10]}
                            for k in range(9000)],
            "categories": [{"id": 1, "name": "dog"}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    with metered(RecordingMeter()) as meter:
        assert read_whole(path) == path.read_bytes()
    assert sum(meter.steps) == os.path.getsize(path)
    with metered(RecordingMeter()) as meter:
        coco_to_realdata(path, tmp_path / "out.jsonl")
    assert meter.phases == [("converting", 14000, "boxes + images")]
    read = os.path.getsize(path)
    assert meter.steps[0] == read and sum(meter.steps[1:]) == 14000
    assert len(meter.steps) > 3  # in steps, not all at the end


def test_a_pipe_is_counted_as_it_is_read(tmp_path):
    data = b"".join(json.dumps(record(i)).encode() + b"\n" for i in range(2000))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    with metered(RecordingMeter()) as meter:
        assert sum(1 for _ in iter_lines(fifo)) == 2000
    writer.join()
    assert sum(meter.steps) == len(data)


def test_the_meter_stops_when_the_command_fails(tmp_path):
    with pytest.raises(ZeroDivisionError), metered(RecordingMeter()) as meter:
        raise ZeroDivisionError
    assert meter.stopped and not current_meter().active
