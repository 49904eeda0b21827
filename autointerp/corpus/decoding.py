"""UTF-8 decoding that names the file and byte offset of a bad byte.

A corpus with a stray Latin-1 byte is common; Python's bare `UnicodeDecodeError` does not say which of
thousands of files or where, so every loader decodes through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from autointerp.errors import UserError

EncodingErrors = Literal["strict", "replace"]
ENCODING_ERRORS: tuple[str, ...] = ("strict", "replace")


def decode_utf8(data: bytes, path: Path, offset: int = 0, errors: EncodingErrors = "strict") -> str:
    """Decode `data`, which starts at byte `offset` of `path`; UserError on invalid UTF-8 when strict."""
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 4]
        raise UserError(
            f"{path} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {offset + exc.start} "
            f"(bytes there: {bad!r})",
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or pass --encoding-errors replace "
            "to replace undecodable bytes with U+FFFD",
        ) from exc
