"""Images of a run (the agent's tasks, the data engine's annotations), opened lazily and only from
inside one image root.

Task files name images relative to a root given at run time; a name that is absolute or climbs out
of the root with ``..`` is refused, so a task file cannot make the agent read (and send to a model
server) an arbitrary file. The check is on the path as written: symbolic links placed inside the root
by its owner (a common way to assemble a dataset) are followed.

:meth:`ImageLoader.check` reads only the file header (run for every task so a missing or broken
image is a per-task error even when no VLM ever needs the pixels) and remembers the sizes it read, so
the other tasks of an image are checked without touching the disk; :meth:`ImageLoader.load`
decodes, with a small cache because tasks of one image run close together.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Protocol

from PIL import Image, UnidentifiedImageError

from reallod.data.images import DEFAULT_MAX_PIXELS, check_image_root, open_header, open_image, upright_size
from reallod.errors import DataError


class SizedImage(Protocol):
    """What :meth:`ImageLoader.check` needs of a task: its image and the size the task expects."""

    image_path: str
    width: int
    height: int


class ImageError(DataError):
    """A task's image cannot be used; ``kind`` is one of the task problem kinds for summaries."""

    def __init__(self, kind: str, message: str, *, path: str) -> None:
        super().__init__(message, path=path)
        self.kind = kind


class ImageLoader:
    """Opens ``root``-relative image paths; thread-safe (views are made off the event loop)."""

    def __init__(self, root: str | os.PathLike, *, cache_size: int = 8, sizes_kept: int = 65536,
                 max_pixels: int = DEFAULT_MAX_PIXELS, hint: str = "") -> None:
        """``max_pixels``: the largest image decoded (a larger one is an ``unreadable_image`` error whose
        message ends with ``hint``, what the user can do)."""
        self.root = Path(root)
        self.max_pixels, self._hint = max_pixels, hint
        check_image_root(self.root)
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()
        self._cache_size = cache_size
        self._sizes: OrderedDict[str, tuple[int, int]] = OrderedDict()  # image_path → (width, height) read
        self._sizes_kept = sizes_kept
        self._lock = threading.Lock()

    def resolve(self, rel: str) -> Path:
        """The file for a task's ``image_path``; refuses paths that leave the root."""
        if not rel or "\x00" in rel:
            raise ImageError("unsafe_path", "empty or invalid image path", path=repr(rel))
        posix = PurePosixPath(rel.replace("\\", "/"))
        if posix.is_absolute() or Path(rel).is_absolute() or re.match(r"[A-Za-z]:[\\/]", rel):
            raise ImageError("unsafe_path", "absolute image paths are refused: paths are relative to --images",
                             path=rel)
        depth = 0
        for part in posix.parts:
            depth += -1 if part == ".." else 0 if part == "." else 1
            if depth < 0:
                raise ImageError("unsafe_path", "image path leaves the image root ('..')", path=rel)
        return self.root.joinpath(*posix.parts)

    def knows(self, rel: str) -> bool:
        """Whether :meth:`check` can answer for this image from memory (no file to open)."""
        return rel in self._sizes

    def check(self, task: SizedImage) -> None:
        """Raise :class:`ImageError` when the task's image is missing, not an image or of another size."""
        size = self._sizes.get(task.image_path)
        if size is None:
            size = self._read_size(task.image_path)
        if size != (task.width, task.height):
            raise ImageError("image_size_mismatch",
                             f"image is {size[0]}x{size[1]} but the task says {task.width}x{task.height}",
                             path=str(self.resolve(task.image_path)))

    def _read_size(self, rel: str) -> tuple[int, int]:
        path = self.resolve(rel)
        if not path.is_file():
            raise ImageError("missing_image", f"image not found under {self.root}", path=str(path))
        try:
            with open_header(path) as im:  # any size: nothing is decoded here (load() has a pixel budget)
                size = upright_size(im)  # as load() returns it
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ImageError("unreadable_image", f"not a readable image ({_reason(e)})", path=str(path)) from None
        with self._lock:
            self._sizes[rel] = size
            while len(self._sizes) > self._sizes_kept:
                self._sizes.popitem(last=False)
        return size

    def load(self, rel: str) -> Image.Image:
        """The decoded RGB image (callers must not modify it: it is shared through the cache)."""
        with self._lock:
            cached = self._cache.get(rel)
            if cached is not None:
                self._cache.move_to_end(rel)
                return cached
        path = self.resolve(rel)
        if not path.is_file():
            raise ImageError("missing_image", f"image not found under {self.root}", path=str(path))
        try:
            image = open_image(path, self.max_pixels, hint=self._hint)  # upright, as the detector sees it
        except DataError as e:
            raise ImageError("unreadable_image", f"not a readable image ({e.message})", path=str(path)) from None
        with self._lock:
            self._cache[rel] = image
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return image

    def loader_for(self, task: SizedImage) -> Callable[[], Image.Image]:
        """What ``workflow.run_task`` calls when (and only when) it needs the pixels."""
        return lambda: self.load(task.image_path)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
