import asyncio
import random

import pytest
from PIL import Image

from reallod.errors import ConfigError
from reallod.llm.backends.base import BackendError, Completion
from reallod.llm.cache import ResponseCache, new_scope
from reallod.llm.retry import EndpointDown, ResilientBackend, RetryPolicy, backoff_delay
from reallod.runs.shard import in_shard, parse_shard, shard_of


def test_shards_partition_ids_exactly():
    ids = [f"img{i}#{j}" for i in range(300) for j in range(3)]
    parts = [[t for t in ids if in_shard(t, (k, 4))] for k in range(1, 5)]
    assert sorted(t for p in parts for t in p) == sorted(ids)
    assert all(150 < len(p) < 300 for p in parts)
    assert shard_of("x", 4) == shard_of("x", 4)


@pytest.mark.parametrize("spec", ["0/4", "5/4", "a/b", "1", "1/0"])
def test_bad_shard_spec(spec):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(spec)


def test_a_shard_count_below_one_is_named_as_such():
    """`3/0` was "K must be between 1 and N"."""
    with pytest.raises(ConfigError, match=r"--shard '3/0': N, the number of shards, must be at least 1"):
        parse_shard("3/0")


def test_backoff_grows_and_honours_retry_after():
    policy = RetryPolicy(base_delay_s=1, max_delay_s=8)
    rng = random.Random(0)
    caps = [max(backoff_delay(a, policy, rng) for _ in range(200)) for a in (1, 2, 3, 4, 6)]
    assert caps[0] <= 1 and 1 < caps[1] <= 2 and 2 < caps[2] <= 4 and caps[4] <= 8
    assert backoff_delay(1, policy, rng, retry_after=5) >= 5


class FlakyBackend:
    """Test double: fails with the given errors, then answers."""

    name = "flaky"
    supports_images = True

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    async def complete(self, messages, **kw):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Completion(f"answer {self.calls}", 3, 2)

    async def aclose(self):
        pass


FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, timeout_s=1)


def test_retries_then_succeeds():
    b = FlakyBackend([BackendError("503", retryable=True, kind="server"),
                      BackendError("429", retryable=True, retry_after=0.01, kind="rate_limit")])
    r = ResilientBackend(b, policy=FAST, seed=0)
    c = asyncio.run(r.complete([{"role": "user", "content": "hi"}]))
    assert c.text == "answer 3" and c.meta["attempts"] == 3
    assert r.stats.retries == {"server": 1, "rate_limit": 1}


def test_gives_up_after_max_attempts_and_on_client_errors():
    b = FlakyBackend([BackendError("500", retryable=True, kind="server")] * 5)
    with pytest.raises(BackendError, match="after 3 attempts") as e:
        asyncio.run(ResilientBackend(b, policy=FAST).complete([]))
    assert b.calls == 3 and e.value.requests == 3  # what the step records as sent
    b = FlakyBackend([BackendError("400 bad request", retryable=False, kind="client")])
    with pytest.raises(BackendError, match="after 1 attempt"):
        asyncio.run(ResilientBackend(b, policy=FAST).complete([]))


def test_timeout_is_retryable():
    class Slow(FlakyBackend):
        async def complete(self, messages, **kw):
            self.calls += 1
            if self.calls == 1:
                await asyncio.sleep(5)
            return Completion("late but fine")

    b = Slow([])
    r = ResilientBackend(b, policy=RetryPolicy(max_attempts=2, base_delay_s=0.001, timeout_s=0.05))
    assert asyncio.run(r.complete([])).text == "late but fine"
    assert r.stats.retries["timeout"] == 1


def test_endpoint_down_is_reported_once():
    b = FlakyBackend([BackendError("connection refused", retryable=True, kind="connection")] * 50)
    r = ResilientBackend(b, policy=RetryPolicy(max_attempts=3, base_delay_s=0.001, down_after=3))
    with pytest.raises(EndpointDown, match="unreachable"):
        asyncio.run(r.complete([]))


def test_cache_replays_per_occurrence_and_keys_images(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    img_a, img_b = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")

    def msgs(img):
        return [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image", "image": img}]}]

    async def run(backend):
        new_scope()
        r = ResilientBackend(backend, policy=FAST, cache=cache, model_id="m")
        return [(await r.complete(msgs(img_a))).text, (await r.complete(msgs(img_a))).text,
                (await r.complete(msgs(img_b))).text]

    first = FlakyBackend([])
    texts = asyncio.run(run(first))
    assert texts == ["answer 1", "answer 2", "answer 3"]  # a repeated call is not replayed within a task
    second = FlakyBackend([])
    assert asyncio.run(run(second)) == texts and second.calls == 0  # a rerun costs nothing
    cache.close()


def _rows_seen_by_another_process(path) -> int:
    import sqlite3

    with sqlite3.connect(path) as other:
        return other.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def test_cache_commits_in_groups_on_commit_and_on_close(tmp_path, monkeypatch):
    from reallod.llm import cache as cache_mod

    monkeypatch.setattr(cache_mod, "COMMIT_AFTER_S", 3600.0)
    monkeypatch.setattr(cache_mod, "COMMIT_EVERY", 5)
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    for i in range(4):
        cache.put(f"k{i}", Completion(f"a{i}", 1, 1, 0.1))
    assert _rows_seen_by_another_process(path) == 0  # not committed yet: a crash now loses them
    cache.put("k4", Completion("a4", 1, 1, 0.1))
    assert _rows_seen_by_another_process(path) == 5  # the fifth put filled the group
    cache.put("k5", Completion("a5", 1, 1, 0.1))
    cache.commit()
    assert _rows_seen_by_another_process(path) == 6
    cache.put("k6", Completion("a6", 1, 1, 0.1))
    cache.close()
    assert _rows_seen_by_another_process(path) == 7
    assert ResponseCache(path).get("k6").text == "a6"


class NumberingBackend(FlakyBackend):
    """Test double: answers each request with a new number after a pause, so identical requests overlap."""

    async def complete(self, messages, **kw):
        self.calls += 1
        n = self.calls
        await asyncio.sleep(0.02)
        if self.errors:
            raise self.errors.pop(0)
        return Completion(f"answer {n}", 3, 2)


def _two_tasks_ask_the_same(backend, cache):
    async def task():
        new_scope()
        return (await ResilientBackend(backend, policy=FAST, cache=cache, model_id="m").complete(
            [{"role": "user", "content": "the same question"}])).text

    async def both():
        return await asyncio.gather(task(), task(), return_exceptions=True)

    return asyncio.run(both())


def test_two_tasks_asking_the_same_at_once_share_one_answer_the_cache_keeps(tmp_path):
    """Both once got an answer and the second replaced the first in the cache, so the task that had used
    the first disagreed with its own rerun."""
    cache = ResponseCache(tmp_path / "c.sqlite")
    backend = NumberingBackend([])
    assert _two_tasks_ask_the_same(backend, cache) == ["answer 1", "answer 1"] and backend.calls == 1
    assert _two_tasks_ask_the_same(FlakyBackend([]), cache) == ["answer 1", "answer 1"]  # the rerun replays it
    # another process stored first: its answer is kept and used
    from reallod.llm.cache import occurrence_key
    key = occurrence_key("k")
    assert cache.put(key, Completion("theirs", 1, 1)).text == "theirs"
    assert cache.put(key, Completion("ours", 1, 1)).text == "theirs" and cache.get(key).text == "theirs"
    # a request that fails fails both, once
    failing = NumberingBackend([BackendError("400 bad request", retryable=False, kind="client")])
    other = ResponseCache(tmp_path / "d.sqlite")
    results = _two_tasks_ask_the_same(failing, other)
    assert [type(r) for r in results] == [BackendError, BackendError] and failing.calls == 1
    assert not cache.in_flight and not other.in_flight
    cache.close()
    other.close()


def test_a_request_that_keeps_losing_its_connection_while_others_are_answered_fails_alone():
    """Connection errors are free while the endpoint answers nobody; one request that breaks its
    connection every time (a prompt that crashes a server worker) was retried for as long as others
    were answered, then stopped the whole run as 'endpoint unreachable', on every rerun."""

    class PoisonBackend(FlakyBackend):
        async def complete(self, messages, **kw):
            self.calls += 1
            await asyncio.sleep(0.002)
            if messages[0]["content"] == "poison":
                raise BackendError("server closed the connection", retryable=True, kind="connection")
            return Completion("fine")

    r = ResilientBackend(PoisonBackend([]), policy=RetryPolicy(max_attempts=3, base_delay_s=0.001,
                                                               max_delay_s=0.004, down_after=3), seed=0)

    async def others():
        for _ in range(100):
            await r.complete([{"role": "user", "content": "fine"}])

    async def main():
        return await asyncio.gather(r.complete([{"role": "user", "content": "poison"}]), others(),
                                    return_exceptions=True)

    poisoned, rest = asyncio.run(main())
    assert isinstance(poisoned, BackendError) and not isinstance(poisoned, EndpointDown), poisoned
    assert "after 3 attempts" in str(poisoned) and rest is None
