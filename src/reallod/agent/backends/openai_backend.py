"""Any OpenAI-compatible chat endpoint: vLLM, SGLang, llama.cpp server, Ollama, OpenAI itself.

Structured output is asked for with ``response_format={"type": "json_schema", ...}`` (OpenAI, vLLM,
SGLang, Ollama). Servers differ in what they accept, so a request the server rejects *because of* its
``response_format`` is sent again one level down: ``{"type": "json_object", "schema": ...}`` (the
llama.cpp Python server's form, grammar-constrained; it answers ``json_schema`` with HTTP 500), then
``{"type": "json_object"}``, then none. The level that worked is kept for the rest of the run; the
reply is parsed and repaired by the caller either way. Images in content parts are sent as
base64 data URLs. The client's own retries are off: the workflow retries with its own policy, and
errors come back as :class:`BackendError` marked retryable (timeouts, connection errors, 408, 409,
429, 5xx) or not (everything else).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
from typing import Any

import openai
from PIL import Image

from reallod.agent.backends.base import BackendError, Completion, Message

log = logging.getLogger(__name__)

STRUCTURED_MODES: tuple[str, ...] = ("json_schema", "json_object+schema", "json_object", "none")
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar", "guided",
                 "structured", "not supported", "unsupported")


def image_data_url(image: Image.Image, fmt: str = "png", quality: int = 90) -> str:
    """A PIL image as a ``data:`` URL (PNG by default: lossless, keeps the thin red outline crisp)."""
    fmt = fmt.lower()
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG")
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
        kwargs: dict[str, Any] = {"model": self.model,
                                  "messages": to_openai_messages(messages, self.image_format), **self.params}
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if temperature is not None:
            kwargs["temperature"] = temperature
        started = time.perf_counter()
        while True:
            mode = self.structured
            response_format = self._response_format(schema)
            try:
                if response_format is None:
                    resp = await self._client.chat.completions.create(**kwargs)
                else:
                    resp = await self._client.chat.completions.create(**kwargs, response_format=response_format)
                break
            except openai.APIStatusError as e:
                if response_format is not None and e.status_code in (400, 422, 500) \
                        and any(w in str(e).lower() for w in _FORMAT_WORDS):
                    if self.structured == mode:  # concurrent calls degrade once, not once each
                        self._degrade(e)
                    continue
                code = e.status_code
                raise BackendError(f"{self.name}: HTTP {code}: {e}", retryable=code in (408, 409, 429)
                                   or code >= 500, retry_after=_retry_after(e)) from e
            except openai.APITimeoutError as e:
                raise BackendError(f"{self.name}: timed out", retryable=True) from e
            except openai.APIConnectionError as e:
                raise BackendError(f"{self.name}: cannot connect: {e}", retryable=True) from e
        latency = time.perf_counter() - started
        if not resp.choices:
            raise BackendError(f"{self.name}: reply has no choices", retryable=True)
        choice = resp.choices[0]
        text = choice.message.content or ""
        if choices:
            text = _unwrap_choice(text, choices)
        usage = resp.usage
        return Completion(text, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0, latency_s=latency,
                          meta={"finish_reason": choice.finish_reason, "structured": self.structured})

    async def aclose(self) -> None:
        await self._client.close()


def _retry_after(error: openai.APIStatusError) -> float | None:
    value = error.response.headers.get("retry-after") if error.response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _unwrap_choice(text: str, choices: list[str]) -> str:
    try:
        obj = json.loads(text)
    except ValueError:
        return text.strip()
    value = obj.get("choice") if isinstance(obj, dict) else obj
    return str(value).strip() if value is not None else text.strip()
