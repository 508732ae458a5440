"""Test double: a tiny OpenAI-compatible HTTP server on 127.0.0.1 that replays prepared replies.

It records every request body and header, so tests see exactly what the real ``openai`` client sent.
Each prepared reply is ``(status, body, headers)``; :func:`chat_reply` builds a normal completion body.
Instead of a queue, a ``responder(body) -> Reply | FakeReply`` can answer each request (e.g.
:func:`valid_decision`, which answers every role with a valid decision); a :class:`FakeReply` can
also wait before answering (a timeout for a client with a short one), or send a body cut short.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, dict[str, Any], dict[str, str]]


@dataclass
class FakeReply:
    status: int
    body: dict[str, Any] | bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    truncate: bool = False  # announce the full length, send half, close: the client sees a cut body
    hang_up: bool = False  # close the connection without a word: the client cannot tell it from a crash


Responder = Callable[[dict[str, Any]], "Reply | FakeReply"]


def chat_reply(text: str, prompt_tokens: int = 12, completion_tokens: int = 5) -> Reply:
    return 200, {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}}, {}


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return status, {"error": {"message": message, "type": "invalid_request_error", "code": None}}, headers or {}


def role_of(body: dict[str, Any]) -> str:
    """Which agent role sent this request, from the decision schema it asks for (or its prompt)."""
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
    props = set(schema.get("properties") or {})
    for key, role in (("verdict", "reflector"), ("state", "planner"), ("expression", "rewriter"),
                      ("answer", "vlm")):
        if key in props:
            return role
    return "unknown"


def _user_text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return str(content)


def valid_decision(body: dict[str, Any], rng: random.Random) -> str:
    """A valid decision for the asking role, drawn at random: the agent's paths all get exercised
    (correct, rewrite, VLM looks), and a rerun without the cache would give other answers."""
    role = role_of(body)
    if role == "reflector":
        verdict = rng.choices(["correct", "uncertain", "wrong"], [5, 3, 2])[0]
        return json.dumps({"missing": "colour" if verdict == "uncertain" else "", "feedback": "checked",
                           "verdict": verdict})
    if role == "planner":
        m = re.search(r"Reviewer's verdict: (\w+)", _user_text(body))
        state = m.group(1) if m else "correct"
        return json.dumps({"reason": "as reviewed", "state": state,
                           "focus": rng.choice(["object", "surroundings", "position"]),
                           "question": "what colour is it?" if state == "uncertain" else ""})
    if role == "rewriter":
        return json.dumps({"expression": f"the object number {rng.randint(1, 999)}"})
    if role == "vlm":
        return json.dumps({"answer": rng.choice(["it is red", "it is next to a table", "it is on the left"])})
    fields = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema", {}).get("properties", {})
    if fields and all(k.startswith("expression_") for k in fields):  # a generation step's phrase list
        return json.dumps({k: f"the thing number {rng.randint(1, 999)}" for k in fields})
    return json.dumps({"error": "unknown role"})


class FakeChatServer:
    def __init__(self, responder: Responder | None = None) -> None:
        self.replies: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.responder = responder
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with outer._lock:
                    outer.requests.append(body)
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if outer.responder is not None:
                        reply = outer.responder(body)
                    else:
                        reply = outer.replies.pop(0) if outer.replies else error_reply(500, "no prepared reply")
                if not isinstance(reply, FakeReply):
                    reply = FakeReply(*reply)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                if reply.hang_up:
                    self.close_connection = True
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2] if reply.truncate else data)
                except OSError:
                    pass  # the client gave up waiting (a timeout test): nothing to answer

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up mid-reply is expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
