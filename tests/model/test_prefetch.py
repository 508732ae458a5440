"""Images prepared ahead in worker threads: same results in the same order, bounded, and no thread left."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from reallod.model.detect import DetectOptions, run_detect
from reallod.model.prefetch import ahead


def _threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.mark.parametrize("n", [0, 1, 3])
def test_results_come_in_input_order(n):
    def slow_square(x: int) -> tuple[int, str]:
        time.sleep(0.01 * (7 - x))  # later items finish first
        return x * x, threading.current_thread().name

    got = list(ahead(slow_square, range(8), n, name="order-test"))
    assert [v for v, _ in got] == [x * x for x in range(8)]
    assert all(name.startswith("order-test") == (n > 0) for _, name in got)
    assert not _threads("order-test")


def test_at_most_n_items_are_prepared_ahead():
    started: list[int] = []
    lock = threading.Lock()

    def record(x: int) -> int:
        with lock:
            started.append(x)
        return x

    it = ahead(record, range(100), 3, name="bound-test")
    for k, x in enumerate(it):
        assert x == k
        time.sleep(0.005)  # the workers have had time to run ahead as far as they may
        with lock:
            assert len(started) <= k + 1 + 3, started
        if k == 10:
            break
    it.close()
    assert len(started) <= 15 and not _threads("bound-test")


def test_an_error_comes_at_its_item_and_stops_the_threads():
    def fail_at_three(x: int) -> int:
        if x == 3:
            raise ValueError("item 3 is broken")
        return x

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for x in ahead(fail_at_three, range(10), 2, name="error-test"):
            got.append(x)
    assert got == [0, 1, 2]
    assert not _threads("error-test")


def test_detect_with_images_prepared_ahead_writes_the_same_files(tmp_path, tiny_detector, photo):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(4):
        photo.rotate(90 * k, expand=True).save(images / f"p{k}.png")
    (images / "p2b.jpg").write_bytes(b"not a jpeg")  # skipped in both runs, in its place
    Image.new("RGB", (64, 40), "red").save(images / "p9.png")
    summaries = {}
    for n in (0, 2):
        summaries[n] = run_detect(images, tiny_detector, ["a person", "a red square"], progress=False,
                                  options=DetectOptions(out_dir=tmp_path / f"out{n}", prefetch=n), echo=lambda m: None)
    assert summaries[0].processed == summaries[2].processed == 5
    assert [p for p, _ in summaries[2].skipped] == [str(images / "p2b.jpg")]
    for f in sorted((tmp_path / "out0").rglob("*.*")):
        if f.name.startswith("detect.journal"):  # names the files with their times: not the same
            continue
        twin = tmp_path / "out2" / f.relative_to(tmp_path / "out0")
        assert twin.read_bytes() == f.read_bytes(), f.name
    assert not _threads("detect-")
