"""The Real-Model page in headless Chromium: upload, type, detect, read the results, download."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from reallod.demo.examples import EXAMPLES_DIR
from tests.demo.browser import screenshot

COFFEE = EXAMPLES_DIR / "coffee.jpg"


def _boxes(status: str) -> int:
    return int(re.search(r"(\d+) box\(es\)", status).group(1))


def _picture(page, selector: str) -> Image.Image:
    src = page.get_attribute(selector, "src")
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


@pytest.fixture
def model_page(page, model_demo):
    page.goto(model_demo.url)
    page.wait_for_selector("#detect-button")
    return page


def test_upload_type_detect_and_read_the_results(model_page, tmp_path):
    page = model_page
    page.set_input_files("#image-input input[type=file]", str(COFFEE))
    page.wait_for_selector("#image-input img")
    page.fill("#expressions textarea", "the red cup\nthe metal spoon")
    page.fill("#threshold input[type=number]", "0.5")
    page.press("#threshold input[type=number]", "Enter")
    page.click("#detect-button")
    page.wait_for_function("document.querySelector('#status').innerText.includes('box(es)')")
    status = page.inner_text("#status")
    assert "2 expression(s)" in status and "scoring at least 0.50" in status
    n = _boxes(status)
    assert n > 0
    legend = page.inner_text("#legend")
    assert "the red cup" in legend and "the metal spoon" in legend
    assert "the red cup" in page.inner_text("#boxes")
    # the drawn picture is the uploaded photograph with boxes on it
    drawn, original = _picture(page, "#result-image img"), Image.open(COFFEE).convert("RGB")
    assert drawn.size == original.size and drawn.tobytes() != original.tobytes()
    screenshot(page, "model-page")

    # the JSON download holds the boxes that are shown
    with page.expect_download() as info:
        page.click("#json-download a")
    doc = json.loads(info.value.path().read_text())
    assert doc["expressions"] == ["the red cup", "the metal spoon"] and len(doc["bboxes"]) == n

    # a higher threshold redraws the same result with fewer boxes (no new model run)
    first_src = page.get_attribute("#result-image img", "src")
    page.fill("#threshold input[type=number]", "0.8")
    page.press("#threshold input[type=number]", "Enter")
    page.locator("#threshold input[type=number]").blur()
    page.wait_for_function("document.querySelector('#status').innerText.includes('at least 0.80')")
    assert _boxes(page.inner_text("#status")) < n
    assert page.get_attribute("#result-image img", "src") != first_src


def test_an_example_preloads_the_image_and_the_expressions(model_page):
    page = model_page
    page.locator("table tbody tr").first.click()  # the astronaut example
    page.wait_for_selector("#image-input img")
    assert "the woman in an orange spacesuit" in page.input_value("#expressions textarea")
    page.click("#detect-button")
    page.wait_for_function("document.querySelector('#status').innerText.includes('box(es)')")
    assert "4 expression(s)" in page.inner_text("#status")
    assert "the space shuttle model" in page.inner_text("#legend")


def test_errors_are_shown_in_the_page(model_page, tmp_path):
    page = model_page
    page.click("#detect-button")  # nothing uploaded
    page.locator(".toast-body", has_text="upload an image first").wait_for()
    page.set_input_files("#image-input input[type=file]", str(COFFEE))
    page.wait_for_selector("#image-input img")
    page.click("#detect-button")  # no expressions
    page.locator(".toast-body", has_text="enter at least one expression").wait_for()
    notes = tmp_path / "notes.png"
    notes.write_text("this is not a picture")
    page.locator("#image-input button[aria-label='Remove Image']").click()
    page.set_input_files("#image-input input[type=file]", str(notes))
    page.fill("#expressions textarea", "a cup")
    page.click("#detect-button")
    page.locator(".toast-body", has_text="not an image this demo can read").wait_for()
    assert "Traceback" not in page.content()
    screenshot(page, "model-errors")


def test_an_upload_over_the_size_limit_is_refused_in_the_page(page, small_upload_demo):
    page.goto(small_upload_demo.url)
    page.wait_for_selector("#detect-button")
    page.set_input_files("#image-input input[type=file]", str(COFFEE))
    page.locator(".toast-body", has_text="exceed the maximum allowed size").wait_for()
    assert page.locator("#image-input img").count() == 0
