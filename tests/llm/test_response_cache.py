"""The response cache shared by several runs: one run waiting on a slow server must not keep the others
from storing their answers, and a write the database refuses is tried again, never left half done."""

from __future__ import annotations

import sqlite3
import time

from reallod.llm import cache as cache_module
from reallod.llm.backends.base import Completion
from reallod.llm.cache import ResponseCache


def _stored(path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, text FROM responses").fetchall())


def test_a_run_with_answers_not_yet_committed_does_not_block_another(tmp_path):
    """Run A stored an answer and then waited on a slow server; run B's answers waited 30 s for A's open
    transaction, then were never stored for the rest of its run."""
    path = tmp_path / "c.sqlite"
    a, b = ResponseCache(path), ResponseCache(path)  # two connections lock as two processes do
    a.put("a:0", Completion("answer A"))
    started = time.monotonic()
    for i in range(3):
        b.put(f"b:{i}", Completion(f"answer B{i}"))
        b.commit()
    assert time.monotonic() - started < 5 and b.errors == 0
    assert _stored(path) == {"b:0": "answer B0", "b:1": "answer B1", "b:2": "answer B2"}
    assert a.get("a:0").text == "answer A"  # its own answer, before its commit
    a.close()
    b.close()
    assert _stored(path)["a:0"] == "answer A"


def test_the_first_answer_stored_wins_across_runs(tmp_path):
    path = tmp_path / "c.sqlite"
    a, b = ResponseCache(path), ResponseCache(path)
    a.put("k:0", Completion("first"))
    a.commit()
    assert b.put("k:0", Completion("second")).text == "first"
    b.close()
    a.close()
    assert _stored(path) == {"k:0": "first"}


def test_a_commit_the_database_refuses_is_tried_again_later(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "BUSY_TIMEOUT_S", 0.1)
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    cache.put("k:0", Completion("kept"))
    cache.commit()
    assert cache.errors == 1 and not cache._db.in_transaction  # refused, and nothing left open
    assert cache.get("k:0").text == "kept"
    other.execute("ROLLBACK")
    cache.put("k:1", Completion("next"))
    cache.commit()
    assert _stored(path) == {"k:0": "kept", "k:1": "next"}
    cache.close()


def test_an_answer_dropped_then_asked_again_is_replaced(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    cache.put("k:0", Completion("broken"))
    cache.commit()
    cache.drop("k:0")
    assert cache.get("k:0") is None
    cache.put("k:0", Completion("fixed"))
    cache.close()
    assert _stored(path) == {"k:0": "fixed"}
