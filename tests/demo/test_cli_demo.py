"""``reallod demo model`` and ``reallod demo agent`` as a user starts them: a real process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from reallod.cli import main
from reallod.demo.examples import EXAMPLES_DIR
from tests.agent.fake_openai_server import FakeChatServer, chat_reply, role_of
from tests.demo.api import api_client
from tests.demo.conftest import free_port
from tests.demo.doubles import REWRITTEN, astronaut_script


@contextlib.contextmanager
def serving(args: list[str], port: int, timeout_s: float = 180.0):
    """Run ``python -m reallod ARGS`` until its port answers; stop it with Ctrl-C (SIGINT) afterwards."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reallod", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"reallod {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr.read()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"reallod {' '.join(args)} did not serve on port {port} within {timeout_s:.0f} s")
            time.sleep(0.25)
        yield proc
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        proc.captured = (proc.stdout.read(), proc.stderr.read())  # what a user saw in the terminal
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_demo_model_serves_the_page_until_interrupted(tiny_model_dir):
    from gradio_client import handle_file

    port = free_port()
    with serving(["demo", "model", str(tiny_model_dir), "--device", "cpu", "--server_port", str(port),
                  "--score_thre", "0.4"], port) as proc:
        client = api_client(f"http://127.0.0.1:{port}/")
        try:
            info = client.view_api(print_info=False, return_format="dict")
            threshold = info["named_endpoints"]["/detect"]["parameters"][3]
            assert threshold["parameter_default"] == 0.4  # --score_thre sets the page's slider
            _, _, table, _, status = client.predict(handle_file(str(EXAMPLES_DIR / "coffee.jpg")), "a red cup",
                                                    "parallel", 0.4, api_name="/detect")
        finally:
            client.close()
        assert "1 expression(s)" in status and table["headers"][0] == "expression"
    assert proc.returncode in (0, 130)
    stdout, _ = proc.captured
    assert "pass --share" in stdout and "share=True" not in stdout  # the command's option, not Gradio's code


def test_demo_agent_runs_a_config_against_an_openai_compatible_server():
    from gradio_client import handle_file

    responder = lambda body: chat_reply(astronaut_script(role_of(body), body["messages"]))  # noqa: E731
    port = free_port()
    with FakeChatServer(responder) as llm, serving(
            ["demo", "agent", "--config", "vllm", "--base-url", llm.url, "--server_port", str(port)], port):
        client = api_client(f"http://127.0.0.1:{port}/")
        try:
            verdict, final, log, views, *_ = client.predict(
                handle_file(str(EXAMPLES_DIR / "astronaut.jpg")), "20, 15, 365, 512", "person",
                "An astronaut in an orange spacesuit.", "the man in a blue spacesuit", "", 3, api_name="/realign")
        finally:
            client.close()
        assert (verdict, final) == ("rewritten", REWRITTEN)
        assert len(views) == 1 and "Cycle 3" in log
        sent = [role_of(body) for body in llm.requests]
        assert sent == ["reflector", "planner", "vlm", "reflector", "planner", "rewriter", "reflector"]
        vlm = llm.requests[2]["messages"][-1]["content"]
        assert any(part.get("type") == "image_url" for part in vlm)  # the view went to the server


@pytest.mark.parametrize("args, message", [
    (["demo", "model", "/no/such/model-folder"], "model folder not found"),
    (["demo", "agent", "--config", "no-such-config"], "no such config file"),
])
def test_unusable_arguments_are_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_port_in_use_is_a_clear_error(tiny_model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            main(["demo", "model", str(tiny_model_dir), "--device", "cpu", "--server_port", str(port)])
    assert e.value.code == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
