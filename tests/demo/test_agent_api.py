"""The agent page through its API (gradio_client): results, live updates, limits."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from reallod.agent.explain import explain
from reallod.agent.trace import find_entry
from reallod.agent.views import OBJECT_CROP, make_view
from reallod.demo.examples import EXAMPLES_DIR
from tests.demo.api import api_client
from tests.demo.conftest import free_port
from tests.demo.doubles import EVIDENCE, REWRITTEN, astronaut_roles

ASTRONAUT = EXAMPLES_DIR / "astronaut.jpg"
CAPTION = "A smiling astronaut in an orange spacesuit stands in front of a flag."


@pytest.fixture(scope="module")
def client(agent_demo):
    c = api_client(agent_demo.url)
    yield c
    c.close()


def _args(box="20, 15, 365, 512", category="person", caption=CAPTION, expression="the man in a blue spacesuit",
          others="helmet: 277, 343, 512, 512", cycles=3):
    from gradio_client import handle_file

    return (handle_file(str(ASTRONAUT)), box, category, caption, expression, others, cycles)


def test_realign_shows_each_cycle_the_views_the_evidence_and_the_verdict(client):
    job = client.submit(*_args(), api_name="/realign")
    verdict, final, log, views, evidence, trace, account = job.result(timeout=60)
    assert (verdict, final) == ("rewritten", REWRITTEN)
    assert log.index("**Cycle 1**") < log.index("**Cycle 2**") < log.index("**Cycle 3**")
    assert "**vlm** (object crop)" in log and "**Verdict: rewritten** after 3 cycle(s)" in log
    assert EVIDENCE in evidence and "[object crop] Q: What colour is the suit?" in evidence
    (view,) = views
    assert view["caption"] == "cycle 2 · object crop"
    crop, _ = make_view(Image.open(ASTRONAUT).convert("RGB"), [20, 15, 365, 512], OBJECT_CROP)
    shown = np.asarray(Image.open(view["image"]).convert("RGB"), dtype=np.int16)
    assert shown.shape == np.asarray(crop).shape
    assert np.abs(shown - np.asarray(crop, dtype=np.int16)).mean() < 3  # the gallery re-encodes (webp)
    # the trace is a real trace file: realign --explain reads it
    task_id = account.splitlines()[0].removeprefix("task ")
    entry = find_entry(trace, task_id)
    assert entry["result"]["verdict"] == "rewritten" and entry["task"]["others"][0]["category"] == "helmet"
    assert explain(trace, task_id) == account
    # the page was updated while the agent worked, call by call
    updates = job.outputs()
    running = [u for u in updates if str(u[0]).startswith("running")]
    assert len(running) >= 3 and updates[-1][0] == "rewritten"
    calls = [u[2].count("- **") for u in running]
    assert calls == sorted(calls) and calls[-1] > calls[0]


@pytest.mark.parametrize("change, message", [
    ({"box": "600, 10, 700, 50"}, "outside the 512×512 image"),
    ({"box": "1, 2, 3"}, "four numbers"),
    ({"caption": "   "}, "enter the caption"),
    ({"category": ""}, "enter the category"),
    ({"expression": ""}, "enter the expression to check"),
    ({"others": "helmet 1 2 3 4"}, "other objects, line 1"),
])
def test_bad_fields_come_back_as_messages(client, change, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(*_args(**change), api_name="/realign")


def test_one_client_gets_one_request_at_a_time(client):
    from gradio_client.exceptions import AppError
    from gradio_client.utils import Status

    first = client.submit(*_args(), api_name="/realign")
    deadline = time.monotonic() + 30
    while first.status().code not in (Status.PROCESSING, Status.ITERATING) and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(AppError, match=r"already have 1 request\(s\) in progress"):
        client.predict(*_args(), api_name="/realign")
    assert first.result(timeout=60)[0] == "rewritten"  # the first one is not disturbed
    assert client.predict(*_args(), api_name="/realign")[0] == "rewritten"  # and then it is free again


def test_an_agent_slower_than_the_limit_is_stopped():
    from gradio_client.exceptions import AppError

    from reallod.demo.agent_app import serve_agent_demo
    from reallod.demo.limits import DemoLimits
    from reallod.demo.server import ServerOptions

    with serve_agent_demo(astronaut_roles(0.5), ServerOptions(server_port=free_port()), config_name="slow",
                          limits=DemoLimits(timeout_s=1.0), block=False) as running:
        c = api_client(running.url)
        try:
            started = time.monotonic()
            with pytest.raises(AppError, match=r"longer than this demo's 1 s limit"):
                c.predict(*_args(), api_name="/realign")
            assert time.monotonic() - started < 10
        finally:
            c.close()
