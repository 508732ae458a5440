"""Response cache: the same model, messages, images and parameters give the same answer, for free.

Keys hash the model id, the messages (images by their pixel content), the structured-output request
and the generation parameters. Identical calls made again inside one task (a retry after an answer
that did not parse) must not replay the same bad answer, so each key also carries its occurrence
number within the task's scope; a rerun of the task makes the same calls in the same order and so
replays exactly. Stored in SQLite (WAL): safe for several processes on one machine, millions of rows.

One key, one answer: the first answer stored for a key is the one kept and used (two tasks that send
the same request at once, in one process or two, end up with the same answer, and a rerun replays
what each of them used); within a process the second one waits for the first one's answer
(:attr:`ResponseCache.in_flight`) instead of paying for the request again. The one answer a caller
drops (:meth:`ResponseCache.drop`) is the reply that failed its task: a rerun of a failed task asks
again instead of replaying what a broken server said, while a done task replays everything it used.

Writes are committed in groups (a commit per answer cost more CPU than the HTTP request that fetched
it): answers wait in memory and go in one short transaction every :data:`COMMIT_EVERY` answers, after
:data:`COMMIT_AFTER_S`, on :meth:`ResponseCache.commit` and on close. No transaction stays open between
them: a run whose tasks all wait on a slow server must not hold the database's one write lock and stop
every other process sharing the cache from storing theirs. ``realign`` commits before each journal
write, so every task the journal calls done has its answers in the cache even after ``kill -9``; a
crash loses at most the answers of tasks in flight.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from reallod.errors import ConfigError
from reallod.llm.backends.base import Completion
from reallod.llm.backends.packaged import cache_dir
from reallod.llm.memo import IdentityMemo

log = logging.getLogger(__name__)

_scope: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("reallod_cache_scope", default=None)
_global_counts: dict[str, int] = {}
_DIGESTS = IdentityMemo(64)  # a view shared by the tasks of one object is hashed once


def new_scope() -> None:
    """Start counting occurrences afresh for the current task (call at the start of its coroutine)."""
    _scope.set({})


def _image_ref(obj: Any) -> Any:
    """How an image enters a key (orjson's ``default``: called only for what JSON cannot hold)."""
    if hasattr(obj, "tobytes") and hasattr(obj, "size") and hasattr(obj, "mode"):  # PIL image
        # sha256: hardware-accelerated on current CPUs, twice as fast as blake2b on pixel buffers
        digest = _DIGESTS.get(obj, None, lambda: hashlib.sha256(obj.tobytes()).hexdigest()[:32])
        return {"image": digest, "size": list(obj.size), "mode": obj.mode}
    raise TypeError(f"cannot key a request on a {type(obj).__name__}")


def digests_known(images: list[Any]) -> bool:
    """Whether :func:`request_key` can key these images without hashing pixels (fast enough for the loop)."""
    return all(_DIGESTS.has(img, None) for img in images)


def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    payload = {"model": model, "messages": messages, "params": params}
    return hashlib.blake2b(orjson.dumps(payload, default=_image_ref, option=orjson.OPT_SORT_KEYS),
                           digest_size=20).hexdigest()


def occurrence_key(key: str) -> str:
    """The key plus how many times this exact request was already made in the current scope."""
    counts = _scope.get()
    if counts is None:
        counts = _global_counts
    n = counts.get(key, 0)
    counts[key] = n + 1
    return f"{key}:{n}"


COMMIT_EVERY = 256
COMMIT_AFTER_S = 2.0
KEEP_UNWRITTEN = 16 * COMMIT_EVERY  # answers kept for a later commit while the database refuses writes
BUSY_TIMEOUT_S = 10.0  # another process's commit takes milliseconds: waiting longer means trouble


class ResponseCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._unwritten: dict[str, Completion] = {}  # answers put and not yet committed, oldest first
        self._deleted: set[str] = set()  # keys dropped and not yet deleted in the database
        self._last_commit = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit: a statement opens no transaction that outlives it; commits are explicit and short
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                "prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, created REAL)")
        except (sqlite3.Error, OSError) as e:
            raise ConfigError(f"response cache {self.path}: cannot open ({e}); pick another with --cache PATH "
                              "or run with --no-cache") from e
        self.hits = 0
        self.misses = 0
        self.errors = 0
        # keys being answered now (their futures end when the answer is stored), for one event loop
        self.in_flight: dict[str, Any] = {}

    def get(self, key: str) -> Completion | None:
        try:
            with self._lock:
                row = self._read(key)
        except sqlite3.Error as e:  # the cache only saves money: a broken one must not fail tasks
            self._trouble(e)
            row = None
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return Completion(row[0], row[1] or 0, row[2] or 0, 0.0, {"cached": True, "original_latency_s": row[3]})

    def _read(self, key: str) -> tuple | None:
        if (mine := self._unwritten.get(key)) is not None:
            return mine.text, mine.prompt_tokens, mine.completion_tokens, mine.latency_s
        if key in self._deleted:
            return None
        return self._db.execute("SELECT text, prompt_tokens, completion_tokens, latency_s FROM responses "
                                "WHERE key = ?", (key,)).fetchone()

    def put(self, key: str, completion: Completion) -> Completion:
        """Store an answer; returns the one to use: an answer another run stored first for the key wins."""
        try:
            with self._lock:
                if self._read(key) is None:
                    self._unwritten[key] = completion  # after a drop of the key: written after its delete
                    if (len(self._unwritten) >= COMMIT_EVERY
                            or time.monotonic() - self._last_commit >= COMMIT_AFTER_S):
                        self._commit_locked()
                    return completion
        except sqlite3.Error as e:  # disk full, locked too long: the answer is used, kept for the next commit
            self._trouble(e)
            return completion
        return self.get(key) or completion

    def drop(self, key: str) -> None:
        """Forget the answer stored for a key (one that failed its task): the next ask pays for a new one."""
        with self._lock:
            self._unwritten.pop(key, None)
            self._deleted.add(key)

    def commit(self) -> None:
        """Make the answers put so far survive a crash of this process."""
        try:
            with self._lock:
                self._commit_locked()
        except sqlite3.Error as e:
            self._trouble(e)

    def _commit_locked(self) -> None:
        """Write what waits in one transaction, taken as a writer from its start (``IMMEDIATE``: a reader
        turned writer could find its snapshot stale and fail), and ended whatever happens. On failure the
        answers wait for the next commit, the oldest given up past :data:`KEEP_UNWRITTEN`."""
        self._last_commit = time.monotonic()
        if not self._unwritten and not self._deleted:
            return
        rows = [(key, c.text, c.prompt_tokens, c.completion_tokens, c.latency_s, time.time())
                for key, c in self._unwritten.items()]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM responses WHERE key = ?", [(k,) for k in self._deleted])
                self._db.executemany("INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error:
            for key in list(self._unwritten)[:max(0, len(self._unwritten) - KEEP_UNWRITTEN)]:
                del self._unwritten[key]
            raise
        self._unwritten.clear()
        self._deleted.clear()

    def _trouble(self, error: sqlite3.Error) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("response cache %s: %s; going on without it where it fails", self.path, error)

    def close(self) -> None:
        self.commit()
        with self._lock:
            self._db.close()


def default_cache_path() -> Path:
    """Where responses are cached unless ``--cache`` says otherwise: the user's reallod cache folder
    (``$REALLOD_CACHE``, else ``$XDG_CACHE_HOME/reallod``, else ``~/.cache/reallod``), shared by all
    runs of that user so a rerun anywhere costs nothing; local to the machine, as SQLite wants."""
    return cache_dir() / "responses.sqlite"
