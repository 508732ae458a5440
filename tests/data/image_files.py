"""Image files the data, detection and evaluation tests write."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image


def noise_jpeg(path, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path, quality=90)


def png_claiming_size(path, width: int, height: int) -> None:
    """A valid 1×1 PNG whose header claims width × height (decoding it would need that much memory)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
