"""Safety limits shared by the web demos: sizes, time, and how much of the server one client may hold.

A demo page is open to whoever can reach it, so every request is bounded before any model runs:
the upload size (enforced by Gradio on upload), the image's pixel count (checked from the header,
before decoding), the number and length of the texts, a wall-clock timeout, a fixed number of work
slots, and at most ``per_client`` requests waiting or running per client address, so one user
clicking (or scripting) many requests cannot queue ahead of everyone else.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from reallod.errors import ConfigError, DataError, ReallodError


class DemoInputError(ReallodError):
    """Something the user entered on the page cannot be used; the message is shown in the page."""


class Busy(ReallodError):
    """The request was refused for now: the client already has requests in flight, or no slot freed up."""


@dataclass(frozen=True)
class DemoLimits:
    """What one request may ask of the server."""

    max_upload_mb: float = 10.0  # bytes of one uploaded file (Gradio refuses bigger uploads)
    max_pixels: int = 25_000_000  # width × height of an image, checked before decoding
    max_expressions: int = 32  # expressions per detection request
    max_expression_chars: int = 300
    max_text_chars: int = 4000  # the agent's caption
    timeout_s: float = 120.0  # wall clock of one request, waiting for a slot included
    concurrency: int = 1  # requests running at once (work slots)
    per_client: int = 1  # requests waiting or running per client address
    queue_size: int = 16  # requests the page accepts at once, all clients together

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_expressions", "max_expression_chars", "max_text_chars",
                     "concurrency", "per_client", "queue_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"demo limit {name} must be at least 1, not {getattr(self, name)}")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"demo limit max_upload_mb must be positive, not {self.max_upload_mb}")
        if not self.timeout_s > 0:
            raise ConfigError(f"demo limit timeout_s must be positive, not {self.timeout_s}")

    @property
    def max_file_size(self) -> int:
        """The upload limit in bytes, as Gradio's ``launch(max_file_size=...)`` takes it."""
        return int(self.max_upload_mb * 1024 * 1024)


class ClientGate:
    """Counts each client's requests in flight and refuses one beyond ``per_client``. Thread-safe."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()

    @contextmanager
    def admit(self, client: str) -> Iterator[None]:
        with self._lock:
            if self._pending[client] >= self.per_client:
                raise Busy(f"you already have {self._pending[client]} request(s) in progress; "
                           "wait for them to finish")
            self._pending[client] += 1
        try:
            yield
        finally:
            with self._lock:
                self._pending[client] -= 1
                if self._pending[client] <= 0:
                    del self._pending[client]

    def pending(self, client: str) -> int:
        with self._lock:
            return self._pending[client]


class WorkSlots:
    """A fixed number of requests run at once; a request that cannot get a slot in time is refused.

    The slot is released by whoever finishes the work, not by the request that timed out waiting for
    it, so an abandoned computation still counts until it really ends.
    """

    def __init__(self, slots: int) -> None:
        self._sem = threading.BoundedSemaphore(slots)

    def acquire(self, timeout_s: float) -> None:
        if not self._sem.acquire(timeout=max(0.0, timeout_s)):
            raise Busy(f"the server is busy: no free slot within {timeout_s:.0f} s, try again later")

    def release(self) -> None:
        self._sem.release()


def client_key(request: object | None) -> str:
    """The client address of a Gradio request (forwarding headers are ignored: they can be forged)."""
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return str(host) if host else "unknown"


def check_pixels(width: int, height: int, limits: DemoLimits) -> None:
    if width < 1 or height < 1:
        raise DemoInputError(f"the image is {width}×{height} pixels: nothing to look at")
    if width * height > limits.max_pixels:
        raise DemoInputError(f"the image is {width}×{height} = {width * height:,} pixels, above this "
                             f"demo's limit of {limits.max_pixels:,}; use a smaller image")


def open_upload(path: str | Path, limits: DemoLimits, allowed_roots: list[Path]) -> Image.Image:
    """Decode an uploaded image (RGB, upright) within the limits.

    Only files under ``allowed_roots`` (Gradio's upload folder, the bundled examples) are opened: a path
    is never taken from what a user typed. The pixel count is checked from the header before decoding.
    """
    from reallod.data.images import open_image

    p = Path(path).resolve()
    if not any(p.is_relative_to(root.resolve()) for root in allowed_roots):
        raise DemoInputError("that file was not uploaded to this page")
    if not p.is_file():
        raise DemoInputError("the uploaded file is gone from the server; upload it again")
    if p.stat().st_size > limits.max_file_size:
        raise DemoInputError(f"the file is {p.stat().st_size / 2**20:.1f} MB, above this demo's limit of "
                             f"{limits.max_upload_mb:g} MB")
    try:
        image = open_image(p, max_pixels=limits.max_pixels)
    except DataError as e:
        message = e.message
        if "pixels" in message:
            message = "the " + message.replace("above the limit", "above this demo's limit") + "; use a smaller image"
        elif "too large" not in message:
            message = f"the file is not an image this demo can read ({message})"
        raise DemoInputError(message) from None
    check_pixels(image.width, image.height, limits)
    return image
