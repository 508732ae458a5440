"""Model backends, built by name: ``openai`` (any OpenAI-compatible server) and ``transformers``
(in-process). Both implement :class:`reallod.llm.backends.base.Backend`."""

from __future__ import annotations

from typing import Any

from reallod.errors import ConfigError
from reallod.llm.backends.base import Backend, BackendError, Completion, Message

BACKENDS: tuple[str, ...] = ("openai", "transformers")

__all__ = ["BACKENDS", "Backend", "BackendError", "Completion", "Message", "make_backend"]


def make_backend(backend: str, model: str, **options: Any) -> Backend:
    """A backend of type ``backend`` for ``model``; ``options`` are its keyword arguments."""
    if backend == "openai":
        from reallod.llm.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(model, **options)
    if backend == "transformers":
        from reallod.llm.backends.transformers_backend import TransformersBackend

        return TransformersBackend(model, **options)
    raise ConfigError(f"unknown backend {backend!r}; backends are {', '.join(BACKENDS)}")
