"""Any OpenAI-compatible chat endpoint: vLLM, SGLang, llama.cpp server, Ollama, OpenAI itself.

Structured output is asked for with ``response_format={"type": "json_schema", ...}`` (OpenAI, vLLM,
SGLang, Ollama). Servers differ in what they accept, so a request the server rejects *because of* its
``response_format`` is sent again one level down: ``{"type": "json_object", "schema": ...}`` (the
llama.cpp Python server's form, grammar-constrained; it answers ``json_schema`` with HTTP 500), then
``{"type": "json_object"}``, then none. The level that worked is kept for the rest of the run; the
reply is parsed and repaired by the caller either way. Images in content parts are sent as
base64 data URLs, encoded in a worker thread so the event loop keeps serving the other tasks. The
client's own retries are off (``max_retries=0``): the runner retries with its own policy, and errors
come back as :class:`BackendError` with a ``kind`` (timeout, connection, rate_limit, server, client)
and marked retryable (timeouts, connection errors, 408, 409, 429, 5xx, unreadable replies) or not
(other 4xx), with the server's ``Retry-After`` (seconds, HTTP date, or ``retry-after-ms``).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import os
import time
from typing import Any

import openai
import orjson
from PIL import Image

from reallod.agent.backends.base import BackendError, Completion, Message
from reallod.agent.memo import IdentityMemo

log = logging.getLogger(__name__)

STRUCTURED_MODES: tuple[str, ...] = ("json_schema", "json_object+schema", "json_object", "none")
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar", "guided",
                 "structured", "not supported", "unsupported")


_ENCODED = IdentityMemo(64)


def image_data_url(image: Image.Image, fmt: str = "png", quality: int = 90) -> str:
    """A PIL image as a ``data:`` URL (PNG by default: lossless, keeps the thin red outline crisp).
    The same view object (tasks of one object share views) is encoded once."""
    return _ENCODED.get(image, (fmt.lower(), quality), lambda: _encode(image, fmt, quality))


def _encode(image: Image.Image, fmt: str, quality: int) -> str:
    fmt = fmt.lower()
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG", compress_level=1)  # lossless all the same; 4x faster than level 6, ~8% larger
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def to_openai_messages(messages: list[Message], image_format: str = "png") -> list[dict[str, Any]]:
    """Our messages (PIL images in parts) as OpenAI chat messages (image_url parts)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    parts.append({"type": "image_url",
                                  "image_url": {"url": image_data_url(part["image"], image_format)}})
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
            content = parts
        out.append({"role": m["role"], "content": content})
    return out


def _choice_schema(choices: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {"choice": {"type": "string", "enum": list(choices)}},
            "required": ["choice"], "additionalProperties": False}


class OpenAIBackend:
    """One model on one OpenAI-compatible server."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 120.0, params: dict[str, Any] | None = None, image_format: str = "png",
                 structured: str = "json_schema", supports_images: bool = True,
                 client: openai.AsyncOpenAI | None = None) -> None:
        if structured not in STRUCTURED_MODES:
            raise ValueError(f"structured must be one of {STRUCTURED_MODES}, got {structured!r}")
        self.model = model
        self.base_url = base_url
        self.name = f"openai:{model}@{base_url or 'api.openai.com'}"
        self.supports_images = supports_images
        self.params = dict(params or {})
        self.image_format = image_format
        self.structured = structured
        self.timeout_s = timeout_s
        # Local servers need no key; the client insists on one, so a placeholder stands in.
        key = (os.environ.get(api_key_env) if api_key_env else None) or "EMPTY"
        self._client = client or openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout_s,
                                                    max_retries=0)

    def _response_format(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None or self.structured == "none":
            return None
        if self.structured == "json_object+schema":
            return {"type": "json_object", "schema": schema}
        if self.structured == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": "decision", "schema": schema, "strict": True}}

    def _degrade(self, error: Exception) -> None:
        nxt = STRUCTURED_MODES[STRUCTURED_MODES.index(self.structured) + 1]
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        log.warning("%s rejected response_format %s (%s); using %s from now on", self.name,
                    self.structured, first_line, nxt)
        self.structured = nxt

    async def complete(self, messages: list[Message], *, schema: dict[str, Any] | None = None,
                       choices: list[str] | None = None, max_tokens: int | None = None,
                       temperature: float | None = None) -> Completion:
        if choices:
            schema = _choice_schema(choices)
        if any(isinstance(m.get("content"), list) for m in messages):  # images: encode off the event loop
            converted = await asyncio.to_thread(to_openai_messages, messages, self.image_format)
        else:
            converted = to_openai_messages(messages, self.image_format)
        kwargs: dict[str, Any] = {"model": self.model, "messages": converted, **self.params}
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if temperature is not None:
            kwargs["temperature"] = temperature
        started = time.perf_counter()
        while True:
            mode = self.structured
            response_format = self._response_format(schema)
            body = kwargs if response_format is None else {**kwargs, "response_format": response_format}
            try:
                # The plain POST of the client (its errors, auth, timeouts, no retries) without its
                # per-request type transforms and models: they cost milliseconds of CPU per call, which
                # a run with many requests in flight cannot afford. The reply is parsed here.
                raw = await self._client.post("/chat/completions", body=body, cast_to=_http_response_class())
                data = orjson.loads(raw.content)
                break
            except openai.APIStatusError as e:
                if response_format is not None and e.status_code in (400, 422, 500) \
                        and any(w in str(e).lower() for w in _FORMAT_WORDS):
                    if self.structured == mode:  # concurrent calls degrade once, not once each
                        self._degrade(e)
                    continue
                code = e.status_code
                kind = "rate_limit" if code == 429 else "server" if code >= 500 else \
                    "timeout" if code == 408 else "client"
                raise BackendError(f"{self.name}: HTTP {code}: {e}", retryable=code in (408, 409, 429)
                                   or code >= 500, retry_after=_retry_after(e), kind=kind) from e
            except openai.APITimeoutError as e:
                raise BackendError(f"{self.name}: timed out", retryable=True, kind="timeout") from e
            except openai.APIConnectionError as e:
                raise BackendError(f"{self.name}: cannot connect: {e}", retryable=True, kind="connection") from e
            except (openai.APIResponseValidationError, ValueError) as e:  # a 200 whose body is no JSON
                raise BackendError(f"{self.name}: unreadable reply: {type(e).__name__}: {e}", retryable=True,
                                   kind="server") from e
        latency = time.perf_counter() - started
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(f"{self.name}: reply has no choices", retryable=True, kind="server") from None
        if not isinstance(text, str):
            text = str(text)
        if choices:
            text = _unwrap_choice(text, choices)
        usage = data.get("usage") or {}
        return Completion(text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0), latency_s=latency,
                          meta={"finish_reason": choice.get("finish_reason"), "structured": self.structured})

    async def aclose(self) -> None:
        await self._client.close()


def _http_response_class() -> type:
    """The HTTP response class of the client's transport (httpx, or httpx2 in newer openai releases):
    asked for as ``cast_to``, the client returns the response as it came."""
    import openai._base_client as base

    module = getattr(base, "httpx2", None) or base.httpx  # type: ignore[attr-defined]
    return module.Response


def _retry_after(error: openai.APIStatusError) -> float | None:
    headers = error.response.headers if error.response is not None else {}
    return parse_retry_after(headers.get("retry-after"), headers.get("retry-after-ms"))


def parse_retry_after(value: str | None, value_ms: str | None = None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date) or ``retry-after-ms``."""
    if value_ms is not None:
        try:
            return max(float(value_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


def _unwrap_choice(text: str, choices: list[str]) -> str:
    try:
        obj = json.loads(text)
    except ValueError:
        return text.strip()
    value = obj.get("choice") if isinstance(obj, dict) else obj
    return str(value).strip() if value is not None else text.strip()
