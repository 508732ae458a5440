"""Request limits: per-client admission, work slots, and what an uploaded file may be."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from reallod.demo.limits import (
    Busy,
    ClientGate,
    DemoInputError,
    DemoLimits,
    WorkSlots,
    client_key,
    open_upload,
)
from reallod.errors import ConfigError


def test_a_client_cannot_hold_more_than_its_share():
    gate = ClientGate(per_client=1)
    with gate.admit("10.0.0.1"):
        with pytest.raises(Busy, match="already have 1 request"), gate.admit("10.0.0.1"):
            pass
        with gate.admit("10.0.0.2"):  # another client is not affected
            assert gate.pending("10.0.0.2") == 1
    assert gate.pending("10.0.0.1") == 0
    with gate.admit("10.0.0.1"):  # free again afterwards
        pass


def test_a_failing_request_gives_its_place_back():
    gate = ClientGate(per_client=2)
    with pytest.raises(RuntimeError), gate.admit("a"):
        raise RuntimeError("boom")
    assert gate.pending("a") == 0


def test_work_slots_refuse_after_the_timeout_and_free_on_release():
    slots = WorkSlots(1)
    slots.acquire(1.0)
    started = time.monotonic()
    with pytest.raises(Busy, match="server is busy"):
        slots.acquire(0.2)
    assert time.monotonic() - started >= 0.19
    threading.Timer(0.1, slots.release).start()
    slots.acquire(5.0)  # released by the other thread, as a finished job releases it
    slots.release()


def test_limits_are_checked():
    assert DemoLimits(max_upload_mb=1).max_file_size == 1024 * 1024
    with pytest.raises(ConfigError, match="per_client"):
        DemoLimits(per_client=0)
    with pytest.raises(ConfigError, match="timeout_s"):
        DemoLimits(timeout_s=0)


def test_client_key_uses_the_connection_address_only():
    assert client_key(SimpleNamespace(client=SimpleNamespace(host="192.0.2.7"))) == "192.0.2.7"
    assert client_key(None) == "unknown"


@pytest.fixture
def uploads(tmp_path):
    root = tmp_path / "uploads"
    root.mkdir()
    return root


def test_an_upload_is_decoded_upright_rgb(uploads):
    path = uploads / "a.png"
    Image.new("L", (30, 20), 128).save(path)
    image = open_upload(path, DemoLimits(), [uploads])
    assert image.mode == "RGB" and image.size == (30, 20)


def test_only_files_under_the_upload_roots_are_opened(tmp_path, uploads):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    with pytest.raises(DemoInputError, match="not uploaded to this page"):
        open_upload(outside, DemoLimits(), [uploads])
    with pytest.raises(DemoInputError, match="not uploaded to this page"):
        open_upload(uploads / ".." / "secret.png", DemoLimits(), [uploads])


def test_too_many_pixels_are_refused_from_the_header(uploads):
    path = uploads / "big.png"
    Image.new("RGB", (2000, 1000)).save(path)  # a few kB on disk, 2 MP once decoded
    with pytest.raises(DemoInputError, match=r"2000×1000 = 2,000,000 pixels, above this demo's limit of 1,000,000; use a smaller image"):
        open_upload(path, DemoLimits(max_pixels=1_000_000), [uploads])


def test_not_an_image_and_too_large_files_are_explained(uploads):
    text = uploads / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(DemoInputError, match="not an image this demo can read") as e:
        open_upload(text, DemoLimits(), [uploads])
    assert str(uploads) not in str(e.value)  # no server paths in what the page shows
    big = uploads / "big.jpg"
    big.write_bytes(b"\xff" * (2 * 1024 * 1024))
    with pytest.raises(DemoInputError, match=r"2\.0 MB, above this demo's limit of 1 MB"):
        open_upload(big, DemoLimits(max_upload_mb=1), [uploads])
    with pytest.raises(DemoInputError, match="gone from the server"):
        open_upload(uploads / "missing.png", DemoLimits(), [uploads])


def test_download_folders_keep_only_the_newest_files(tmp_path):
    import os

    from reallod.demo.server import prune

    for i in range(5):
        p = tmp_path / f"d{i}.json"
        p.write_text("{}")
        os.utime(p, (1000 + i, 1000 + i))
    (tmp_path / "other.txt").write_text("kept")
    prune(tmp_path, "*.json", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d3.json", "d4.json", "other.txt"]
