"""Any OpenAI-compatible chat endpoint: vLLM, SGLang, llama.cpp server, Ollama, OpenAI itself.

Structured output is asked for with ``response_format={"type": "json_schema", ...}`` (OpenAI, vLLM,
SGLang, Ollama). Servers differ in what they accept, so a request the server rejects with an error
about structured output (one naming ``response_format``, a JSON schema, a grammar or guided decoding)
is sent again one level down: ``{"type": "json_object", "schema": ...}`` (the llama.cpp Python
server's form, grammar-constrained; it answers ``json_schema`` with HTTP 500), then
``{"type": "json_object"}``, then none. Only a level that then works is kept for the rest of the
run; any other error (an image the model cannot take, a bad parameter) is the request's own and
changes nothing. The reply is parsed and repaired by the caller either way; its ``usage`` is
statistics, read leniently. Images in content parts are sent as base64 data URLs (JPEG by default,
see :func:`image_data_url`), encoded in a worker thread so the event loop keeps serving the other
tasks.

Requests go out through aiohttp, or with ``http_client: openai`` through the official client
(:mod:`reallod.llm.backends.http` says why the default is the lighter one). Neither retries by
itself: the runner retries with its own policy. Errors come back as :class:`BackendError` with a
``kind`` (timeout, connection, rate_limit, server, client) and marked retryable (timeouts,
connection errors, 408, 409, 429, 5xx, unreadable replies) or not (other 4xx), with the server's
``Retry-After`` (seconds, HTTP date, or ``retry-after-ms``).

A base URL never carries credentials (the key comes from ``api_key_env``) and the backend's name shows
it without user, password or query (:func:`public_url`): the name goes into traces, journals and reports.
Without ``base_url`` the requests go where the official client sends them (``OPENAI_BASE_URL``, else
OpenAI's API): that URL is the one named, and checked the same way.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import math
import os
import re
import time
import urllib.parse
from typing import Any

import orjson
from PIL import Image

from reallod.llm.backends.base import BackendError, Completion, Message, map_parts, message_images
from reallod.llm.backends.http import (
    DEFAULT_BASE_URL,
    TRANSPORTS,
    AiohttpTransport,
    HTTPStatusError,
    OpenAIClientTransport,
    Transport,
)
from reallod.llm.memo import IdentityMemo

log = logging.getLogger(__name__)

STRUCTURED_MODES: tuple[str, ...] = ("json_schema", "json_object+schema", "json_object", "none")
IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "jpg", "png")
_FORMAT_ERROR = re.compile(r"response_format|json_schema|json_object|json schema|grammar|guided"
                           r"|structured[ _]outputs?", re.IGNORECASE)
"""How servers name structured output in their errors: OpenAI (``'response_format' of type
'json_schema' is not supported``), vLLM (``guided_json``, ``JSON schema ... not supported by
xgrammar``), SGLang (``grammar backend``), Ollama (``expected "json" or a JSON schema``), llama.cpp
(``response_format type must be one of "text" or "json_object"``). Words such as "not supported"
alone are not enough: "Image input is not supported" is about the request, not its format."""


_ENCODED = IdentityMemo(64)


JPEG_QUALITY = 95


def image_data_url(image: Image.Image, fmt: str = "jpeg", quality: int = JPEG_QUALITY) -> str:
    """A PIL image as a ``data:`` URL. The same view object (tasks of one object share views) is
    encoded once.

    JPEG by default, at quality 95 without chroma subsampling: the views are photographs, and a
    512x512 view is about 1 ms and 120 KB this way against 15 ms and 500 KB as PNG, while the thin
    red outline keeps its colour and edges (4:4:4 does not smear it). ``png`` stays available."""
    return _ENCODED.get(image, (fmt.lower(), quality), lambda: _encode(image, fmt, quality))


def _encoded(images: list[Any], fmt: str) -> bool:
    return all(_ENCODED.has(img, (fmt.lower(), JPEG_QUALITY)) for img in images)


def _encode(image: Image.Image, fmt: str, quality: int) -> str:
    fmt = fmt.lower()
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG", compress_level=1)  # lossless all the same; 4x faster than level 6, ~8% larger
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def public_url(url: str) -> str:
    """``url`` as it may be shown and recorded: without user, password, query and fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        parts = None
    if parts is None or not parts.netloc:  # no scheme://host (or a bad port): keep what follows any "user:pw@"
        return url.rpartition("@")[2].split("?")[0].split("#")[0]
    host = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit((parts.scheme, host + (f":{port}" if port else ""), parts.path, "", ""))


def base_url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be a server's base URL, or None. Credentials in it would fail every request (the
    API key goes in the Authorization header) and end up in logs; a query would end up before the
    request's path, which is appended to the base URL."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        shown = public_url(url) if isinstance(url, str) else url
        return f"expected a URL starting with http:// or https://, got {shown!r} (e.g. http://localhost:8000/v1)"
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port  # raises for one that is no number or above 65535
    except ValueError:
        port = -1
    if port == -1 or port == 0 or not parts.hostname:  # every request failed as a "bad HTTP reply", 3 tries each
        return (f"{public_url(url)}: no host, or a port that is not a number from 1 to 65535 "
                "(e.g. http://localhost:8000/v1)")
    if parts.username is not None or parts.password is not None:
        return (f"a user or password in the URL is not accepted ({public_url(url)} without them): it would be "
                "written to traces and reports, and the API key goes in a header: put the key in an environment "
                "variable and name that variable with api_key_env in the agent config")
    if parts.query or parts.fragment:
        return (f"{public_url(url)}: a URL with a query (?...) or fragment (#...) is not accepted: request paths "
                "such as /chat/completions are appended to it; give the server's base URL alone")
    return None


def to_openai_messages(messages: list[Message], image_format: str = "jpeg") -> list[dict[str, Any]]:
    """Our messages (PIL images in parts) as OpenAI chat messages (image_url parts)."""
    return map_parts(messages,
                     lambda p: {"type": "image_url", "image_url": {"url": image_data_url(p["image"], image_format)}},
                     lambda p: {"type": "text", "text": p.get("text", "")})


STRICT_REFUSED = frozenset({"minLength", "maxLength"})
"""Keywords OpenAI's strict mode answers with HTTP 400; the parsers check what they meant."""


def strict_schema(schema: Any) -> Any:
    """``schema`` without the keywords strict mode refuses (grammar servers given the schema itself, as
    ``json_object+schema``, keep them). Property names are names, not keywords: a field may be called
    ``maxLength``."""
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: {name: strict_schema(sub) for name, sub in v.items()} if k == "properties" and isinstance(v, dict)
            else strict_schema(v) for k, v in schema.items() if k not in STRICT_REFUSED}


def _choice_schema(choices: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {"choice": {"type": "string", "enum": list(choices)}},
            "required": ["choice"], "additionalProperties": False}


class OpenAIBackend:
    """One model on one OpenAI-compatible server."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 120.0, params: dict[str, Any] | None = None, image_format: str = "jpeg",
                 structured: str = "json_schema", supports_images: bool = True, http_client: str = "aiohttp",
                 client: Any | None = None) -> None:
        if structured not in STRUCTURED_MODES:
            raise ValueError(f"structured must be one of {STRUCTURED_MODES}, got {structured!r}")
        if http_client not in TRANSPORTS:
            raise ValueError(f"http_client must be one of {TRANSPORTS}, got {http_client!r}")
        if not isinstance(image_format, str) or image_format.lower() not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if api_key_env is not None and not isinstance(api_key_env, str):
            raise ValueError(f"api_key_env must be the name of an environment variable, got {api_key_env!r}")
        # the server the requests go to, as the official client finds it, named and checked as given
        url = base_url if base_url is not None else os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if problem := base_url_problem(url):
            source = "base_url" if base_url is not None else \
                "the environment variable OPENAI_BASE_URL (used where a role gives no base_url)"
            raise ValueError(f"{source}: {problem}")
        self.model = model
        self.base_url = base_url
        self.name = f"openai:{model}@{public_url(url)}"
        self.supports_images = supports_images
        self.params = dict(params or {})
        self.image_format = image_format
        self.structured = structured
        self.first_structured = structured  # the level it starts from (``structured`` may fall back in a run)
        self.timeout_s = timeout_s
        # Local servers need no key; the official client insists on one, so a placeholder stands in.
        key = (os.environ.get(api_key_env) if api_key_env else None) or "EMPTY"
        if client is not None or http_client == "openai":
            self.http_client = "openai"
            self._transport: Transport = OpenAIClientTransport(self.name, base_url, key, timeout_s, client)
        else:
            self.http_client = "aiohttp"
            self._transport = AiohttpTransport(self.name, url, key, timeout_s)

    @property
    def model_identity(self) -> str:
        """What the response cache and journals key this model on: the model and every setting that
        changes its replies — request ``params``, ``image_format`` and the structured-output level it
        starts from — not the URL (a server moved to another port answers the same). The default level
        adds nothing, so keys made before it counted stay valid."""
        params = orjson.dumps(self.params, option=orjson.OPT_SORT_KEYS).decode()
        return (f"openai:{self.model}:{params}:{self.image_format}"
                + ("" if self.first_structured == "json_schema" else f":structured={self.first_structured}"))

    def _response_format(self, schema: dict[str, Any] | None, mode: str) -> dict[str, Any] | None:
        if schema is None or mode == "none":
            return None
        if mode == "json_object+schema":
            return {"type": "json_object", "schema": schema}
        if mode == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": "decision", "schema": strict_schema(schema),
                                                       "strict": True}}

    def _degrade(self, rejected: str, error: HTTPStatusError, worked: str) -> None:
        """Keep ``worked``, the level a rejected request then got through with (never climb back up:
        concurrent calls that fell back together degrade once)."""
        if STRUCTURED_MODES.index(worked) <= STRUCTURED_MODES.index(self.structured):
            return
        first_line = error.message.strip().splitlines()[0][:200] if error.message.strip() else f"HTTP {error.status}"
        log.warning("%s rejected response_format %s (%s); using %s from now on", self.name,
                    rejected, first_line, worked)
        self.structured = worked

    def _lower(self, mode: str) -> str:
        """The level below ``mode``, or below the run's level where another call already fell further."""
        return STRUCTURED_MODES[max(STRUCTURED_MODES.index(mode) + 1, STRUCTURED_MODES.index(self.structured))]

    async def complete(self, messages: list[Message], *, schema: dict[str, Any] | None = None,
                       choices: list[str] | None = None, max_tokens: int | None = None,
                       temperature: float | None = None) -> Completion:
        if choices:
            schema = _choice_schema(choices)
        if not _encoded(message_images(messages), self.image_format):  # new images: encode off the loop
            converted = await asyncio.to_thread(to_openai_messages, messages, self.image_format)
        else:
            converted = to_openai_messages(messages, self.image_format)
        kwargs: dict[str, Any] = {"model": self.model, "messages": converted, **self.params}
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if temperature is not None:
            kwargs["temperature"] = temperature
        started = time.perf_counter()
        mode, rejected = self.structured, None
        while True:
            response_format = self._response_format(schema, mode)
            body = kwargs if response_format is None else {**kwargs, "response_format": response_format}
            try:
                data = await self._transport.post_json("/chat/completions", body)
                break
            except HTTPStatusError as e:
                if response_format is None or not _format_rejected(e):
                    raise _backend_error(self.name, e) from e
                rejected = rejected or (mode, e)  # kept only if a level below then works
                mode = self._lower(mode)
        if rejected is not None:
            self._degrade(*rejected, mode)
        latency = time.perf_counter() - started
        try:
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(f"{self.name}: reply has no choices", retryable=True, kind="server") from None
        if not isinstance(text, str):
            text = str(text)
        finish = choice.get("finish_reason")
        if finish == "abort":  # SGLang ended the request early (its partial text is no answer): ask again
            raise BackendError(f"{self.name}: the server aborted the request (finish_reason abort)",
                               retryable=True, kind="server")
        usage = data.get("usage")
        completion_tokens = _token_count(usage, "completion_tokens")
        meta: dict[str, Any] = {"finish_reason": finish, "structured": mode}
        if reasoning := _reasoning(message):
            meta["reasoning_chars"] = len(reasoning)
            if not text.strip() and schema is not None and finish != "length" and _json_object(reasoning):
                # the answer the schema constrained, returned as reasoning: a reasoning parser that takes a
                # reply with thinking off for reasoning (vLLM's deepseek_r1 parser on Qwen3, LM Studio)
                text, meta["answer_from_reasoning"] = reasoning.strip(), True
        if finish == "length" and max_tokens and 0 < completion_tokens < max_tokens:
            meta["stopped_below_max_tokens"] = max_tokens  # the server's context or cap, not ours
        if choices:
            text = _unwrap_choice(text, choices)
        return Completion(text, prompt_tokens=_token_count(usage, "prompt_tokens"),
                          completion_tokens=completion_tokens, latency_s=latency, meta=meta)

    async def aclose(self) -> None:
        await self._transport.aclose()


def _json_object(text: str) -> bool:
    """Whether ``text`` is one JSON object and nothing else (an answer, not reasoning about one)."""
    text = text.strip()
    if not text.startswith("{"):
        return False
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def _reasoning(message: dict[str, Any]) -> str:
    """The reasoning a server with a reasoning parser returned apart from the answer (vLLM's ``reasoning``,
    earlier ``reasoning_content`` as SGLang and llama.cpp write it): its length is kept so that an empty
    answer is told as one the reasoning used the token limit up on, not as a model that wrote nothing."""
    for key in ("reasoning", "reasoning_content"):
        if isinstance(value := message.get(key), str) and value.strip():
            return value
    return ""


def _format_rejected(error: HTTPStatusError) -> bool:
    """Whether the server refused the request's structured-output part (not something else in it)."""
    return error.status in (400, 422, 500) and _FORMAT_ERROR.search(error.body) is not None


def _backend_error(name: str, error: HTTPStatusError) -> BackendError:
    code = error.status
    kind = "rate_limit" if code == 429 else "server" if code >= 500 else "timeout" if code == 408 else "client"
    return BackendError(f"{name}: HTTP {code}: {error.message}", retryable=code in (408, 409, 429) or code >= 500,
                        retry_after=_retry_after(error.headers), kind=kind)


def _token_count(usage: Any, key: str) -> int:
    """A token count from the reply's ``usage``, 0 (not counted) where it is missing or no number:
    usage is statistics, and a server's odd bookkeeping must not fail an otherwise valid reply."""
    value = usage.get(key) if isinstance(usage, dict) else None
    if isinstance(value, bool):
        return 0
    try:
        count = float(value)
    except (TypeError, ValueError):
        return 0
    return int(count) if math.isfinite(count) and count > 0 else 0


def _retry_after(headers: Any) -> float | None:
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
