"""The two ways :class:`OpenAIBackend` posts a chat request: ``aiohttp`` (default) or the ``openai`` client.

Why two: with 64 requests in flight, the official client spends about 0.7 ms of CPU on each (its
httpx connection pool scans every idle connection per request; even on its aiohttp transport each
request and reply is converted between httpx and aiohttp objects), aiohttp alone about 0.1 ms. A run
with 64 tasks in flight sends hundreds of requests a second, so that difference decides whether the
agent or the model server is the bottleneck (``benchmarks/agent_throughput.py`` measures both).
vLLM's and SGLang's own serving benchmarks post to OpenAI-compatible servers with aiohttp for the
same reason. ``http_client: openai`` keeps the official client for those who prefer it.

Both return the reply's JSON and raise :class:`HTTPStatusError` for an HTTP error status, or
:class:`BackendError` for timeouts, connection failures and unreadable bodies, alike: failing to
connect is kind ``connection``; a connection the server took and then closed without replying (a
prompt that crashes a worker) is kind ``connection`` too, caused by :class:`NoReply` (the server is
there: the retry layer charges it to the request instead of waiting for an outage to end); a reply
cut short or unreadable is kind ``server``.

A connection pool belongs to the event loop it was opened on, and every run (``asyncio.run``) is a
loop of its own (the data engine's pipeline runs two: generation, then re-alignment, with the same
backends). So each transport opens its pool on first use in a loop, and ``aclose`` closes it on that
loop, at the end of the run that opened it; the next run opens a fresh one. Closed exactly once, on
its own loop: no "Unclosed client session" at exit.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from typing import Any, Protocol

import orjson

from reallod.llm.backends.base import BackendError

TRANSPORTS: tuple[str, ...] = ("aiohttp", "openai")
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class HTTPStatusError(Exception):
    """The server answered with an error status; ``message`` is its error text."""

    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        self.status = status
        self.message = _error_text(body)
        self.body = body[:4000].decode("utf-8", "replace")  # whole, for telling what the server rejected
        self.headers = headers  # case-insensitive mapping (Retry-After)
        super().__init__(f"HTTP {status}: {self.message}")


class NoReply(Exception):
    """The server took the connection, then closed (or reset) it without replying: it is not
    unreachable, but it answered nothing."""


class NotTheAPI(Exception):
    """The server answered a request with a web page (HTML), not the API's JSON: a web UI, a login page or
    a proxy at the base URL. Every request gets the same: the run stops (:mod:`reallod.llm.retry`)."""


def parse_reply(name: str, raw: bytes) -> dict[str, Any]:
    """A 200 reply's JSON; one that is no JSON is a :class:`BackendError` saying what came instead."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        start = raw[:120].decode("utf-8", "replace").strip()
        if start[:1] == "<":  # retried 3 times a task, every task, as "unexpected character ... column 1"
            raise BackendError(f"{name}: the server answered with a web page, not the API's JSON ({start!r}...)",
                               retryable=False, kind="server") from NotTheAPI(start)
        raise BackendError(f"{name}: unreadable reply: {e} (it starts {start[:60]!r})", retryable=True,
                           kind="server") from e


def no_reply(error: BaseException) -> NoReply:
    """``error`` (a connection closed before any reply) as the cause of a :class:`BackendError`."""
    marker = NoReply(f"{type(error).__name__}: {error}")
    marker.__cause__ = error
    return marker


class Transport(Protocol):
    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def _error_text(raw: bytes) -> str:
    """The message of an error body (OpenAI's ``error.message``, SGLang's, FastAPI's), else its start."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:500].decode("utf-8", "replace").strip()
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    if isinstance(obj, dict):  # SGLang's flat {"object": "error", "message": ...}; FastAPI's {"detail": ...}
        for key in ("message", "detail"):
            if isinstance(obj.get(key), str) and obj[key].strip():
                return obj[key]
    return orjson.dumps(obj).decode()[:500]


class AiohttpTransport:
    """One aiohttp session per event loop, created on first use (a session belongs to its loop)."""

    def __init__(self, name: str, base_url: str, api_key: str, timeout_s: float) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "Authorization": f"Bearer {api_key}"}
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _session_for_loop(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and self._loop is loop and not session.closed:
            return session
        # No await between the check above and the new session below: tasks starting together on a
        # new loop must share one session, not each make one (all but the last would never be closed).
        old, old_loop = session, self._loop
        self._loop = loop
        self._session = session = aiohttp.ClientSession(
            # No pool limit here: the runner bounds requests per endpoint (--endpoint-limit).
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False),
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(), proxy=env_proxy(self.base_url), raise_for_status=False)
        if old is not None and not old.closed and old_loop is not None and old_loop.is_closed():
            await old.close()  # left open by a run that was not closed: its sockets went with its loop
        return session

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import aiohttp

        session = await self._session_for_loop()
        try:
            async with session.post(self.base_url + path, data=orjson.dumps(body)) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise HTTPStatusError(response.status, raw, response.headers)
        except TimeoutError as e:  # aiohttp's ServerTimeoutError is one too
            raise BackendError(f"{self.name}: timed out after {self.timeout_s:g} s", retryable=True,
                               kind="timeout") from e
        except aiohttp.ClientPayloadError as e:  # the body was cut short: the server is up, this reply broke
            raise BackendError(f"{self.name}: reply cut short: {e}", retryable=True, kind="server") from e
        except aiohttp.ClientConnectorError as e:  # no connection made (refused, DNS, TLS)
            raise BackendError(f"{self.name}: cannot connect: {type(e).__name__}: {e}", retryable=True,
                               kind="connection") from e
        except aiohttp.ClientConnectionError as e:  # connected, then closed (or reset) without a reply
            raise BackendError(f"{self.name}: connection closed without a reply: {type(e).__name__}: {e}",
                               retryable=True, kind="connection") from no_reply(e)
        except OSError as e:
            raise BackendError(f"{self.name}: cannot connect: {type(e).__name__}: {e}", retryable=True,
                               kind="connection") from e
        except aiohttp.ClientError as e:  # malformed HTTP from the server
            raise BackendError(f"{self.name}: bad HTTP reply: {type(e).__name__}: {e}", retryable=True,
                               kind="server") from e
        return parse_reply(self.name, raw)

    async def aclose(self) -> None:
        session, loop, self._session = self._session, self._loop, None
        if session is None or session.closed:
            return
        if loop is None or loop is asyncio.get_running_loop() or loop.is_closed():
            await session.close()  # on a closed loop this only marks it closed: its sockets went with it
        elif loop.is_running():  # a demo closes from another thread than the one serving requests
            done = asyncio.run_coroutine_threadsafe(session.close(), loop)
            await asyncio.wait_for(asyncio.wrap_future(done), 10)


def env_proxy(url: str) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``NO_PROXY``...) names for ``url``, looked up once:
    aiohttp's ``trust_env`` looks it up on every request, which costs more CPU than the request."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class OpenAIClientTransport:
    """The official ``openai`` client's plain POST (its auth, errors and timeouts; its retries off).

    One client per event loop, made on first use (its connection pool belongs to the loop), unless
    the caller gives one (then that one is used throughout and closed by :meth:`aclose`)."""

    def __init__(self, name: str, base_url: str | None, api_key: str, timeout_s: float,
                 client: Any | None = None) -> None:
        import openai  # a missing package is reported when the config is built, not at the first request

        self.name = name
        self.timeout_s = timeout_s
        self._given = client
        self._make = lambda: openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                                                max_retries=0)
        self._client: Any = client
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _client_for_loop(self) -> Any:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        client = self._client
        if client is not None and self._loop is loop:
            return client
        old, old_loop = client, self._loop  # as for aiohttp: no await before the new client is in place
        client = self._make()
        self._client, self._loop = client, loop
        if old is not None and old_loop is not None and old_loop.is_closed():
            await old.close()  # left open by a run that was not closed
        return client

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import openai

        client = await self._client_for_loop()
        try:
            # Without the client's per-request type transforms and models: the reply is parsed here. Its
            # body is read apart from its head, so that a body cut short (the server answered, then broke
            # off: charged, as for aiohttp) is told apart from a connection closed before any reply.
            response = await client.post(path, body=body, cast_to=_http_response_class(), stream=True)
        except openai.APIStatusError as e:
            response = e.response
            raise HTTPStatusError(e.status_code, response.content if response is not None else str(e).encode(),
                                  response.headers if response is not None else {}) from e
        except openai.APITimeoutError as e:
            raise BackendError(f"{self.name}: timed out", retryable=True, kind="timeout") from e
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            if not _connected(e):
                raise BackendError(f"{self.name}: cannot connect: {type(cause).__name__}: {cause}", retryable=True,
                                   kind="connection") from e
            raise BackendError(f"{self.name}: connection closed without a reply: {type(cause).__name__}: {cause}",
                               retryable=True, kind="connection") from no_reply(cause)
        try:
            raw = await response.aread()
        except Exception as e:  # the client's read errors (httpx's or httpx2's), after the reply began
            kind = "timeout" if _named(e, "TimeoutException") else "server"
            raise BackendError(f"{self.name}: reply cut short: {type(e).__name__}: {e}", retryable=True,
                               kind=kind) from e
        finally:
            await response.aclose()
        return parse_reply(self.name, raw)  # a 200 whose body is no JSON: said

    async def aclose(self) -> None:
        client = self._client
        if self._given is None:
            self._client = self._loop = None
        if client is not None:
            await client.close()


def _named(error: BaseException, *names: str) -> bool:
    """Whether ``error`` is one of the client's errors of these class names (httpx and httpx2 both
    define them)."""
    return not {c.__name__ for c in type(error).__mro__}.isdisjoint(names)


def _connected(error: Exception) -> bool:
    """Whether the official client's connection error came after the connection was made (the server
    closed it or reset it before replying), not from failing to make it (refused, DNS, proxy, TLS)."""
    cause = error.__cause__
    return cause is not None and not _named(cause, "ConnectError", "ProxyError", "UnsupportedProtocol", "SSLError")


def _http_response_class() -> type:
    """The HTTP response class of the client's transport (httpx, or httpx2 in newer openai releases):
    asked for as ``cast_to``, the client returns the response as it came."""
    import openai._base_client as base

    module = getattr(base, "httpx2", None) or base.httpx  # type: ignore[attr-defined]
    return module.Response
