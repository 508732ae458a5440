"""The Real-Model page through its API (gradio_client), as a script would use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from reallod.data.images import open_image
from reallod.demo.examples import EXAMPLES_DIR
from reallod.demo.forms import TABLE_HEADERS
from reallod.model.detections import Detections, compare
from reallod.model.inference import InferenceOptions
from tests.demo.api import api_client
from tests.demo.conftest import free_port

COFFEE = EXAMPLES_DIR / "coffee.jpg"


@pytest.fixture(scope="module")
def client(model_demo):
    c = api_client(model_demo.url)
    yield c
    c.close()


def test_server_is_bound_to_loopback(model_demo):
    assert model_demo.url.startswith("http://127.0.0.1:")
    assert model_demo.share_url is None


@pytest.mark.parametrize("mode", ["parallel", "concat"])
def test_detect_returns_the_detectors_boxes(client, tiny_detector, mode):
    from gradio_client import handle_file

    drawn, legend, table, json_path, status = client.predict(
        handle_file(str(COFFEE)), "the red cup\nthe metal spoon\n\nthe red cup", mode, 0.5, api_name="/detect")
    doc = json.loads(Path(json_path).read_text())
    got = Detections.from_dict(doc)
    assert got.expressions == ["the red cup", "the metal spoon"]  # blank line and repeat dropped
    assert doc["meta"]["score_thr"] == 0.5 and doc["meta"]["mode"] == mode
    image = open_image(COFFEE)
    want = tiny_detector.detect(image, got.expressions, InferenceOptions(mode=mode, topk=100)).above(0.5)
    assert len(got) == len(want) > 0
    assert compare(got, want, atol=0.01).within(0.01)
    assert (got.scores >= 0.5).all()
    assert table["headers"] == TABLE_HEADERS and len(table["data"]) == len(got)
    assert {row[0] for row in table["data"]} <= set(got.expressions)
    assert f"{len(got)} box(es) scoring at least 0.50" in status and f"({mode} mode" in status
    assert "the red cup" in legend and "the metal spoon" in legend
    picture = Image.open(drawn)
    assert picture.size == image.size
    assert picture.convert("RGB").tobytes() != image.tobytes()  # boxes were drawn


def test_a_higher_threshold_keeps_fewer_boxes(client):
    from gradio_client import handle_file

    low = client.predict(handle_file(str(COFFEE)), "the red cup", "parallel", 0.2, api_name="/detect")
    high = client.predict(handle_file(str(COFFEE)), "the red cup", "parallel", 0.8, api_name="/detect")
    assert len(low[2]["data"]) > len(high[2]["data"])


@pytest.mark.parametrize("text, message", [
    ("   \n", "enter at least one expression"),
    ("\n".join(f"thing {i}" for i in range(9)), "at most 8 per request"),
])
def test_bad_expressions_come_back_as_messages(client, text, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(COFFEE)), text, "parallel", 0.3, api_name="/detect")


def test_files_that_are_not_usable_images_are_refused(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    notes = tmp_path / "notes.png"
    notes.write_text("this is not a picture")
    with pytest.raises(AppError, match="not an image this demo can read"):
        client.predict(handle_file(str(notes)), "a cup", "parallel", 0.3, api_name="/detect")
    big = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000)).save(big)
    with pytest.raises(AppError, match=r"2,000,000 pixels, above this demo's limit of 1,000,000"):
        client.predict(handle_file(str(big)), "a cup", "parallel", 0.3, api_name="/detect")


def test_a_slow_request_times_out_and_keeps_its_slot_until_it_ends(tiny_detector):
    """The timeout frees the user; the computation still holds the one work slot until it ends."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from reallod.demo.limits import DemoLimits
    from reallod.demo.model_app import serve_model_demo
    from reallod.demo.server import ServerOptions
    from tests.demo.doubles import SlowDetector

    limits = DemoLimits(timeout_s=1.0, concurrency=1, per_client=1)
    with serve_model_demo(SlowDetector(tiny_detector, 3.0), ServerOptions(server_port=free_port()),
                          limits=limits, block=False) as running:
        c = api_client(running.url)
        try:
            with pytest.raises(AppError, match=r"longer than this demo's 1 s limit"):
                c.predict(handle_file(str(COFFEE)), "a cup", "parallel", 0.3, api_name="/detect")
            with pytest.raises(AppError, match="server is busy"):
                c.predict(handle_file(str(COFFEE)), "a cup", "parallel", 0.3, api_name="/detect")
        finally:
            c.close()


def test_a_request_that_fills_the_gpu_is_told_so_and_the_next_one_is_served(tiny_detector):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from reallod.demo.model_app import serve_model_demo
    from reallod.demo.server import ServerOptions
    from tests.cli_helpers import CUDA_OOM_SAID
    from tests.demo.doubles import FullGPUDetector

    full = FullGPUDetector(tiny_detector, 3)
    with serve_model_demo(full, ServerOptions(server_port=free_port()), block=False) as running:
        c = api_client(running.url)
        try:
            with pytest.raises(AppError) as e:
                c.predict(handle_file(str(COFFEE)), "a cup . a mug . a table", "parallel", 0.3, api_name="/detect")
            assert str(e.value) == (f"the cpu device ran out of memory for this request ({CUDA_OOM_SAID}); try fewer "
                                    "expressions or a smaller image")
            assert len(full.held) == 1 and full.held[0]() is None  # the error's frames no longer hold it
            assert "box(es)" in c.predict(handle_file(str(COFFEE)), "a cup", "parallel", 0.3, api_name="/detect")[-1]
        finally:
            c.close()


def test_uploads_over_the_size_limit_are_refused_by_the_server(small_upload_demo):
    import httpx
    from gradio_client import handle_file

    c = api_client(small_upload_demo.url)
    try:
        with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client checks first
            c.predict(handle_file(str(COFFEE)), "a cup", "parallel", 0.3, api_name="/detect")
    finally:
        c.close()
    # a script that skips the client's check meets the server's
    with COFFEE.open("rb") as f:
        r = httpx.post(small_upload_demo.url + "gradio_api/upload", files={"files": ("coffee.jpg", f, "image/jpeg")})
    assert r.status_code == 413


def test_a_request_naming_a_server_file_is_refused(model_demo, tmp_path):
    """A raw API call that names a file on the server instead of uploading one gets an error, not the file."""
    import httpx

    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(secret)
    for path in (str(secret), str(COFFEE)):  # neither uploaded; the second is even a bundled example
        r = httpx.post(model_demo.url + "gradio_api/call/detect",
                       json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "a cup", "parallel", 0.3]})
        assert r.status_code == 200
        events = httpx.get(model_demo.url + f"gradio_api/call/detect/{r.json()['event_id']}", timeout=60).text
        assert "event: error" in events and "event: complete" not in events
