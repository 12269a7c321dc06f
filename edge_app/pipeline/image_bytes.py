"""What a JPEG or PNG file's bytes say before decoding: its kind, its picture size, and whether it is complete.

OpenCV decodes a JPEG or PNG cut short with a grey bottom instead of failing, and decodes a small PNG that unpacks
to gigabytes; these checks let the image reader and the preview page refuse both first. Only the container structure
(JPEG segments, PNG chunks) is walked, never the compressed picture.
"""

from __future__ import annotations

import re
import struct

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the picture's size): C0-CF except DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_kind(data: bytes) -> str | None:
    """``jpeg`` or ``png`` by the magic bytes (not the file name), else None."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def picture_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG or PNG from its header; None when the header is cut short or missing."""
    kind = image_kind(data)
    if kind == "jpeg":
        return _jpeg_size(data)
    if kind == "png" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def complete(data: bytes) -> bool:
    """False for a JPEG or PNG cut short; True for anything else (the decoder judges it)."""
    kind = image_kind(data)
    if kind == "jpeg":
        return _jpeg_complete(data)
    if kind == "png":
        return _png_complete(data)
    return True


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment; None when the segments end before one."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker in JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


# In JPEG entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker; anything else is a marker.
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_complete(data: bytes) -> bool:
    """False when the JPEG ends before its end-of-image marker; walks the segments, so data after the picture (a
    camera's trailer, a motion photo's video) and a thumbnail's own end marker do not fool it."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return True  # not a structure we understand: let the decoder judge
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 1 if marker == 0xFF else 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: the compressed data runs to the next marker
            found = _JPEG_NEXT_MARKER.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return data[pos:pos + 2] == b"\xff\xd9"


def _png_complete(data: bytes) -> bool:
    """False when the PNG ends before its IEND chunk (walking the chunks: length, type, data, CRC)."""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos += 12 + length
    return False
