"""Gradio pieces both pages use: an image input that says clearly when a file is not an image, and
a wrapper that turns every failure of a handler into a message in the page (never a stack trace)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from PIL import Image, UnidentifiedImageError

from reallod.demo.limits import Busy, DemoInputError
from reallod.demo.server import import_gradio
from reallod.errors import DataError, ReallodError

gr = import_gradio()
log = logging.getLogger("reallod.demo")


def uploaded_image(**kwargs: Any) -> Any:
    """A ``gr.Image`` input whose upload check fails with a readable message, not Pillow's exception.

    Gradio opens an upload (header only) before a handler runs; a file that is not an image, or whose
    header announces a decompression bomb, would otherwise end as a bare "Error". The component's
    ``preprocess`` is wrapped on this instance: subclassing a Gradio component makes Gradio write a
    ``.pyi`` stub next to our source file.
    """
    image = gr.Image(**kwargs)
    original = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except Image.DecompressionBombError:
            raise gr.Error("the image has far too many pixels for this demo; use a smaller image",
                           print_exception=False) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise gr.Error("the file is not an image this demo can read (use JPEG, PNG, WebP, BMP...)",
                           print_exception=False) from None

    image.preprocess = preprocess
    return image


def page_message(e: BaseException) -> str:
    """The text a user sees for a failure: the message, without server paths."""
    if isinstance(e, DataError):
        return e.message
    return str(e)


def _as_page_error(e: Exception, debug: bool) -> Exception:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, (DemoInputError, Busy, ReallodError)):
        return gr.Error(page_message(e), print_exception=False)
    log.error("demo handler failed", exc_info=e)
    return gr.Error(f"unexpected {type(e).__name__}" + (f": {e}" if debug else "; see the server log"),
                    print_exception=False)


def shown_in_page(fn: Callable[..., Any], *, debug: bool = False) -> Callable[..., Any]:
    """Wrap a handler (function, coroutine or async generator) so any failure becomes a ``gr.Error``."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> Any:
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except Exception as e:
                raise _as_page_error(e, debug) from None
        return agen
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except Exception as e:
                raise _as_page_error(e, debug) from None
        return coro

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _as_page_error(e, debug) from None
    return plain
