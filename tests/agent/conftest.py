"""Every agent test gets its own response cache: no test reads another's cached answers, and nothing
is written to the user's ~/.cache/reallod/responses.sqlite (model files still come from there)."""

import pytest

import reallod.agent.runner as runner


@pytest.fixture(autouse=True)
def _private_response_cache(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.mktemp("reallod-cache") / "responses.sqlite"
    monkeypatch.setattr(runner, "default_cache_path", lambda: path)
