"""Reading capture files safely: bounded size, text only, errors that name the file."""

from __future__ import annotations

from pathlib import Path

from topology.errors import Location, ParseError

#: Real captures are kilobytes; anything this large is not a topology capture.
MAX_CAPTURE_BYTES = 16 * 1024 * 1024


def read_capture(path: str | Path, max_bytes: int = MAX_CAPTURE_BYTES) -> str:
    """Return the text of a capture file, refusing huge, binary or unreadable files.

    Reads at most ``max_bytes + 1`` bytes, so a 100 MB file costs bounded memory.
    """
    where = Location(str(path))
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ParseError(f"cannot read file: {exc.strerror or exc}", where) from exc
    if len(raw) > max_bytes:
        raise ParseError(f"file is larger than {max_bytes // (1024 * 1024)} MiB; "
                         "this is not a topology capture", where)
    return decode_capture(raw, str(path))


def decode_capture(raw: bytes, source: str) -> str:
    """Decode capture bytes as UTF-8 text, refusing binary data with a clear error."""
    where = Location(source)
    if b"\x00" in raw[:65536]:
        raise ParseError("file holds binary data (NUL bytes)", where, "a text capture")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ParseError(f"invalid UTF-8 at byte {exc.start}", Location(source, line),
                         "a text capture") from exc
    if not text.strip():
        raise ParseError("file is empty", where, "a topology capture")
    return text
