"""The one interface every model backend implements, whatever serves the model.

A backend turns chat messages (OpenAI format; images as PIL images inside content parts) into text.
Structured output is requested with ``schema`` (a JSON schema the reply must follow) or ``choices``
(the reply must be exactly one of these strings); a backend enforces it where it can (server-side
``response_format``, constrained decoding, scoring the options) and otherwise just asks for it — the
caller parses, repairs and retries either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]
"""{"role": "system"|"user"|"assistant", "content": str | [{"type": "text", "text": ...} |
{"type": "image", "image": PIL.Image.Image}]}"""


def map_parts(messages: list[Message], image: Callable[[dict[str, Any]], dict[str, Any]],
              text: Callable[[dict[str, Any]], dict[str, Any]] = dict) -> list[Message]:
    """New messages whose content parts are ``image(part)`` for an image part and ``text(part)`` for any
    other (a copy by default); a plain-string content stays as it is."""

    def parts(content: Any) -> Any:
        if not isinstance(content, list):
            return content
        return [image(p) if p.get("type") == "image" else text(p) for p in content]

    return [{"role": m["role"], "content": parts(m["content"])} for m in messages]


def message_images(messages: list[Message]) -> list[Any]:
    """The images in the messages' content parts, in order."""
    return [part["image"] for m in messages if isinstance(m.get("content"), list)
            for part in m["content"] if part.get("type") == "image"]


@dataclass(slots=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


THINKING_OFF = ("turn thinking off (the role's params: chat_template_kwargs: {enable_thinking: false} on "
                "vLLM, SGLang and llama-server; reasoning_effort: none on Ollama, which ignores "
                "chat_template_kwargs)")
"""The fix for a reply whose token limit a reasoning model spent on thinking the server returned apart
(``meta["reasoning_chars"]``), as every reader of replies words it."""
REASONING_PARSER = "serve the model with a reasoning parser or with thinking turned off"
"""The fix for a reply of reasoning alone in ``<think>`` tags (a server without a reasoning parser)."""


class BackendError(Exception):
    """A call that failed; ``retryable`` says whether trying again may help (timeouts, 429, 5xx).

    ``kind`` is one of timeout, connection, rate_limit, server, client, error: a run that sees only
    connection errors from an endpoint stops cleanly instead of failing every task.
    """

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 kind: str = "error", requests: int = 1) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind
        self.requests = requests  # sent before it gave up (the retries of a hardened backend included)


@runtime_checkable
class Backend(Protocol):
    name: str  # for reports: "openai:qwen2.5-7b@http://127.0.0.1:8000/v1"
    supports_images: bool

    async def complete(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        choices: list[str] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion: ...

    async def aclose(self) -> None: ...
