"""The agent page in headless Chromium: upload, draw the box, fill the form, watch the agent work."""

from __future__ import annotations

import re

import pytest

from reallod.demo.examples import EXAMPLES_DIR
from tests.demo.browser import screenshot
from tests.demo.doubles import EVIDENCE, REWRITTEN

ASTRONAUT = EXAMPLES_DIR / "astronaut.jpg"  # 512 × 512


@pytest.fixture
def agent_page(page, agent_demo):
    page.goto(agent_demo.url)
    page.wait_for_selector("#realign-button")
    return page


def _click_image(page, x: float, y: float) -> None:
    """Click the displayed image at pixel (x, y) of the 512 × 512 photograph."""
    box = page.locator("#agent-image img").bounding_box()
    page.mouse.click(box["x"] + x * box["width"] / 512, box["y"] + y * box["height"] / 512)


def test_draw_the_box_fill_the_form_and_watch_the_cycles(agent_page):
    page = agent_page
    page.set_input_files("#agent-image input[type=file]", str(ASTRONAUT))
    page.wait_for_selector("#agent-image img")
    page.wait_for_timeout(300)  # let the picture settle before clicking on it
    _click_image(page, 20, 15)
    page.wait_for_function("document.querySelector('#box-hint').innerText.includes('opposite corner')")
    # Gradio ignores a click that arrives while the previous click's event is still settling
    # (trigger_mode "once"), as a person clicking fast would see; click again until it registers.
    for _ in range(5):
        page.wait_for_timeout(300)
        _click_image(page, 365, 500)
        try:
            page.wait_for_function("document.querySelector('#box textarea').value !== ''", timeout=5000)
            break
        except Exception:
            continue
    page.wait_for_function("document.querySelector('#box textarea').value !== ''")
    x1, y1, x2, y2 = (float(v) for v in re.findall(r"[\d.]+", page.input_value("#box textarea")))
    assert abs(x1 - 20) <= 3 and abs(y1 - 15) <= 3 and abs(x2 - 365) <= 3 and abs(y2 - 500) <= 3
    page.wait_for_selector("#box-preview img")  # the highlight view of the chosen box
    page.fill("#category textarea", "person")
    page.fill("#caption textarea", "A smiling astronaut in an orange spacesuit stands in front of a flag.")
    page.fill("#raw-expression textarea", "the man in a blue spacesuit")
    page.fill("#others textarea", "helmet: 277, 343, 512, 512")
    page.click("#realign-button")
    # while the agent works, the page shows the calls made so far
    page.wait_for_function("document.querySelector('#verdict textarea').value.startsWith('running')")
    page.wait_for_function("document.querySelector('#cycle-log').innerText.includes('Cycle 2')")
    assert page.input_value("#verdict textarea").startswith("running")
    page.wait_for_function("document.querySelector('#verdict textarea').value === 'rewritten'")
    assert page.input_value("#final-expression textarea") == REWRITTEN
    log = page.inner_text("#cycle-log")
    assert log.index("Cycle 1") < log.index("Cycle 2") < log.index("Cycle 3")
    assert "vlm (object crop)" in log and "Verdict: rewritten" in log
    assert EVIDENCE in page.inner_text("#evidence")
    assert page.locator("#vlm-views img").count() >= 1
    assert page.get_attribute("#trace-download a", "href").endswith(".trace.jsonl")
    screenshot(page, "agent-page")


def test_an_example_fills_the_form(agent_page):
    page = agent_page
    page.locator("table tbody tr").nth(1).click()  # the coffee cup
    page.wait_for_selector("#agent-image img")
    assert page.input_value("#category textarea") == "cup"
    assert page.input_value("#box textarea") == "172, 17, 410, 305"
    assert "spoon: 325, 66, 425, 326" in page.input_value("#others textarea")
    page.wait_for_selector("#box-preview img")
    page.click("#realign-button")
    page.wait_for_function("document.querySelector('#verdict textarea').value === 'rewritten'")


def test_a_bad_box_is_explained_in_the_page(agent_page):
    page = agent_page
    page.set_input_files("#agent-image input[type=file]", str(ASTRONAUT))
    page.wait_for_selector("#agent-image img")
    page.fill("#box textarea", "600, 10, 700, 50")
    page.wait_for_function("document.querySelector('#box-hint').innerText.includes('outside')")
    page.fill("#category textarea", "person")
    page.fill("#caption textarea", "An astronaut.")
    page.fill("#raw-expression textarea", "the astronaut")
    page.click("#realign-button")
    page.locator(".toast-body", has_text="outside the 512×512 image").wait_for()
    assert "Traceback" not in page.content()
