"""Engine tests get a private response cache (like the agent's) and the scripted generation models."""

import pytest

import reallod.agent.runner as runner
import reallod.engine.pipeline as pipeline


@pytest.fixture(autouse=True)
def _private_response_cache(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.mktemp("reallod-cache") / "responses.sqlite"
    monkeypatch.setattr(runner, "default_cache_path", lambda: path)
    monkeypatch.setattr(pipeline, "default_cache_path", lambda: path)
