"""Test double: an OpenAI-compatible server on aiohttp, in a thread of its own, for the outage tests.

Unlike ``tests/agent/fake_openai_server.py`` its answers can take as long as they like without holding
a thread each (a hung server), and it can stop listening and start again on the same port (a restart:
connections are refused meanwhile). ``respond(body, request)`` is an async function returning a
response; :func:`ok`, :func:`status` and :func:`hang_up` build the usual ones.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Respond = Callable[[dict[str, Any], web.Request], Awaitable[web.StreamResponse]]


def ok(text: str = '{"verdict": "correct"}') -> web.Response:
    return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": text}}],
                              "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})


def status(code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "error", "code": code}}, status=code,
                             headers=headers)


def hang_up(request: web.Request) -> web.Response:
    """Close the connection without a word (a prompt that crashes a server worker)."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()


async def cut_short(request: web.Request) -> web.StreamResponse:
    """Announce a whole body, send its start, close."""
    response = web.StreamResponse(headers={"Content-Length": "1000", "Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"choices": [')
    assert request.transport is not None
    request.transport.close()
    return response


def user_text(body: dict[str, Any]) -> str:
    return json.dumps(body.get("messages"))


class AioServer:
    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.bodies: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        return await self.respond(body, request)

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _close(self, *, for_good: bool = False) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if for_good:  # answers still waiting (a hung server's) end with it
            waiting = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    def _run(self, coro: Awaitable[None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def listen(self) -> None:
        """Listen (again, on the same port once it had one)."""
        self._run(self._listen())

    def close(self) -> None:
        """Stop listening and drop the connections: new ones are refused."""
        self._run(self._close())

    def __enter__(self) -> AioServer:
        self._thread.start()
        self.listen()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._run(self._close(for_good=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
