"""harden(): one wrapper per backend, one request limit per endpoint, cache keys without the URL."""

from __future__ import annotations

import asyncio

from reallod.agent.roles import Roles, make_role
from reallod.agent.run_roles import harden
from reallod.llm.backends.base import Completion
from reallod.llm.cache import ResponseCache, new_scope
from reallod.llm.endpoints import model_id
from reallod.llm.policy import RetryPolicy


class CountingBackend:
    """Test double: answers after a short wait and counts the requests in flight at its server."""

    supports_images = False

    def __init__(self, server: dict, base_url: str, model: str = "m") -> None:
        self.server, self.base_url, self.model = server, base_url, model
        self.name = f"openai:{model}@{base_url}"
        self.params: dict = {}
        self.timeout_s = 5.0

    async def complete(self, messages, **kw):
        self.server["now"] += 1
        self.server["peak"] = max(self.server["peak"], self.server["now"])
        await asyncio.sleep(0.01)
        self.server["now"] -= 1
        return Completion("ok")

    async def aclose(self):
        pass


def test_one_limit_per_endpoint_across_roles():
    server = {"now": 0, "peak": 0}
    a, b = CountingBackend(server, "http://h:1/v1"), CountingBackend(server, "http://h:1/v1", "other")
    roles = Roles(reflector=make_role("reflector", a), planner=make_role("planner", b), rewriter=make_role("rewriter", a),
                  retry=RetryPolicy(max_attempts=2, base_delay_s=0.0))
    hardened, endpoints = harden(roles, endpoint_limit=2)
    assert hardened.reflector.backend is hardened.rewriter.backend  # a shared backend stays shared
    assert len(endpoints.wrappers) == 2 and hardened.reflector.backend.policy.timeout_s == 5.0

    async def go():
        calls = [hardened.get(r).backend.complete([{"role": "user", "content": str(i)}])
                 for i in range(12) for r in ("reflector", "planner")]
        await asyncio.gather(*calls)

    asyncio.run(go())
    assert server["peak"] == 2 and endpoints.totals().calls == 24 and endpoints.in_flight() == 0


def test_cache_key_ignores_the_server_address(tmp_path):
    one, two = CountingBackend({"now": 0, "peak": 0}, "http://a:1/v1"), CountingBackend({"now": 0, "peak": 0}, "http://b:2/v1")
    assert model_id(one) == model_id(two)
    cache = ResponseCache(tmp_path / "c.sqlite")

    def roles(backend):
        return harden(Roles(reflector=make_role("reflector", backend), planner=make_role("planner", backend),
                            rewriter=make_role("rewriter", backend)), cache=cache)

    async def ask(hardened):
        new_scope()
        return await hardened.reflector.backend.complete([{"role": "user", "content": "same"}])

    (r1, e1), (r2, e2) = roles(one), roles(two)
    asyncio.run(ask(r1))
    asyncio.run(ask(r2))
    assert e1.totals().calls == 1 and e2.totals().cache_hits == 1
    cache.close()


def test_a_broken_cache_costs_calls_not_tasks(tmp_path):
    import pytest

    from reallod.errors import ConfigError

    cache = ResponseCache(tmp_path / "c.sqlite")
    cache._db.close()  # as if the disk went away: every query now fails
    backend = CountingBackend({"now": 0, "peak": 0}, "http://a:1/v1")
    hardened, endpoints = harden(Roles(reflector=make_role("reflector", backend), planner=make_role("planner", backend),
                                       rewriter=make_role("rewriter", backend)), cache=cache)
    assert asyncio.run(hardened.reflector.backend.complete([{"role": "user", "content": "x"}])).text == "ok"
    assert cache.errors == 2 and endpoints.totals().calls == 1  # get and put failed, the call went through
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--no-cache"):
        ResponseCache(tmp_path / "file" / "c.sqlite")
