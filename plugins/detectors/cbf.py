"""Reader of CBF frames (Pilatus/Eiger mini-CBF and full imgCIF, byte-offset), plain or gzip/bzip2.

The reader is bounded by what the header declares (docs/security.md): it looks for
the binary section within :data:`difframe.detector.MAX_HEADER_BYTES`, checks the
declared shape against the frame cap before reading, reads exactly ``X-Binary-Size``
bytes, verifies ``Content-MD5`` and decodes with a bounds-checked decoder.  fabio's
reader is not used: it loops for ever on a file cut inside its header.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from difframe import hookimpl
from difframe.detector import (
    MAX_HEADER_BYTES,
    Frame,
    FrameFile,
    check_frame_size,
    checksum_policy,
    merge_metadata,
    parse_full_cbf_header,
    parse_pilatus_header,
    read_head,
    shown,
)
from difframe.errors import DataError
from difframe.types import DetectorReaderSpec

log = logging.getLogger("difframe.detector.cbf")

BINARY_SECTION = b"--CIF-BINARY-FORMAT-SECTION--"
STARTER = b"\x0c\x1a\x04\xd5"  # ends the MIME header of the binary section
MIME_LIMIT = 65536  # the MIME header is a dozen short lines

#: X-Binary-Element-Type -> dtype, and the longest byte-offset token of one pixel of it (a difference of two
#: values needs one more bit than the type: 8-bit types take at most 3 bytes, 16-bit 7, wider ones 15)
ELEMENT_TYPES = {
    "signed 8-bit integer": ("int8", 3), "unsigned 8-bit integer": ("uint8", 3),
    "signed 16-bit integer": ("int16", 7), "unsigned 16-bit integer": ("uint16", 7),
    "signed 32-bit integer": ("int32", 15), "unsigned 32-bit integer": ("uint32", 15),
    "signed 64-bit integer": ("int64", 15), "unsigned 64-bit integer": ("uint64", 15),
}


def sniff(head: bytes) -> bool:
    """CBF files open with the ``###CBF`` magic (or a CIF 2 magic) and carry ``_array_data`` items."""
    start = head.lstrip()
    return start.startswith(b"###CBF") or (start.startswith(b"#\\#CIF") and b"_array_data" in head)


def read(path) -> Frame:
    """Pixels of the first binary section; metadata from the mini header, completed by the imgCIF categories."""
    path = Path(path)
    with FrameFile(path) as stream:
        try:
            head = stream.read_until(BINARY_SECTION, MAX_HEADER_BYTES, "CBF binary section")
        except DataError:
            if not sniff(read_head(path)):
                raise DataError(f"{path} is not a CBF file (its first bytes are not a CBF header)") from None
            raise
        mime = _mime_header(path, stream.read_until(STARTER, MIME_LIMIT, "start of the CBF binary data"))
        shape, dtype, size = _layout(path, mime)
        binary = stream.read(size)
    if len(binary) < size:
        raise DataError(f"CBF frame {path} is truncated: its binary section holds {len(binary)} of the "
                        f"{size} bytes its header declares (X-Binary-Size)")
    header = cif_items(path, head[: head.rfind(b"\n;")].decode("latin-1"))
    mini = parse_pilatus_header(str(header.get("_array_data.header_contents") or ""))
    metadata = merge_metadata(mini, parse_full_cbf_header(header))
    text_header = {k: v for k, v in header.items() if isinstance(v, str)}
    text_header.update(mime)
    if not _md5_ok(path, mime, binary):
        return Frame(data=np.full(shape, -1, dtype=np.int32), metadata=metadata,
                     header=dict(text_header, difframe_dropped="Content-MD5 mismatch"))
    from difframe.byteoffset import decode_byte_offset  # numba: only when a frame is decoded

    return Frame(data=decode_byte_offset(binary, shape, dtype, path), metadata=metadata, header=text_header)


def _mime_header(path: Path, block: bytes) -> dict[str, str]:
    """``Key: value`` lines of the binary section's MIME header (continuation lines joined)."""
    text = block[: -len(STARTER)].decode("latin-1")
    entries: dict[str, str] = {}
    last = None
    for line in text.splitlines()[1:]:
        if line[:1] in (" ", "\t") and last is not None:
            entries[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            last = last.strip()
            entries[last] = value.strip()
    return entries


def _layout(path: Path, mime: dict[str, str]) -> tuple[tuple[int, int], str, int]:
    """(rows, cols), dtype and byte count of the binary section, checked against each other and the cap."""
    conversions = re.search(r'conversions\s*=\s*"?([^";\s]+)', mime.get("Content-Type", ""))
    if conversions is None or conversions.group(1).lower() != "x-cbf_byte_offset":
        found = conversions.group(1) if conversions else "none"
        raise DataError(f"CBF frame {path}: compression {shown(found)} (Content-Type conversions) is not "
                        "supported; only x-CBF_BYTE_OFFSET is")
    element = mime.get("X-Binary-Element-Type", "signed 32-bit integer").strip('" ').lower()
    if element not in ELEMENT_TYPES:
        raise DataError(f"CBF frame {path}: X-Binary-Element-Type {shown(element)} is not an integer type "
                        "difframe reads")
    dtype, longest = ELEMENT_TYPES[element]
    numbers = {}
    for key in ("X-Binary-Size-Fastest-Dimension", "X-Binary-Size-Second-Dimension", "X-Binary-Size"):
        text = mime.get(key, "").strip()
        if not text.isdigit() or len(text) > 18:
            raise DataError(f"CBF frame {path}: header key {key} is {shown(text)}, not a positive integer")
        numbers[key] = int(text)
    third = mime.get("X-Binary-Size-Third-Dimension", "1").strip()
    if third != "1":
        raise DataError(f"CBF frame {path}: X-Binary-Size-Third-Dimension is {shown(third)}; one 2-D frame is read")
    shape = (numbers["X-Binary-Size-Second-Dimension"], numbers["X-Binary-Size-Fastest-Dimension"])
    check_frame_size(path, shape, dtype, "X-Binary-Size-Second-Dimension, X-Binary-Size-Fastest-Dimension")
    count = shape[0] * shape[1]
    declared = mime.get("X-Binary-Number-of-Elements", str(count)).strip()
    if declared != str(count):
        raise DataError(f"CBF frame {path}: X-Binary-Number-of-Elements is {declared}, but the dimensions give "
                        f"{shape[0]} x {shape[1]} = {count}")
    size = numbers["X-Binary-Size"]
    if not count <= size <= longest * count:
        raise DataError(f"CBF frame {path}: X-Binary-Size {size} cannot hold {count} byte-offset pixels of "
                        f"{dtype} (between {count} and {longest * count} bytes)")
    return shape, dtype, size


def _md5_ok(path: Path, mime: dict[str, str], binary: bytes) -> bool:
    """True when Content-MD5 is absent or matches; a mismatch raises, or warns and drops the frame
    (``DIFFRAME_BAD_CHECKSUM=drop``)."""
    expected = mime.get("Content-MD5", "").strip()
    if not expected:
        return True
    got = base64.b64encode(hashlib.md5(binary, usedforsecurity=False).digest()).decode()
    if got == expected:
        return True
    if checksum_policy() == "error":
        raise DataError(f"CBF frame {path} is corrupt: the MD5 of its binary section is {got}, its Content-MD5 "
                        f"says {shown(expected)} (DIFFRAME_BAD_CHECKSUM=drop skips such frames with a warning)")
    log.warning("CBF frame %s: the MD5 of its binary section is %s, its Content-MD5 says %s; the frame is dropped "
                "(all its pixels read as -1, the invalid-pixel flag)", path, got, shown(expected))
    return False


# -- the CIF text before the binary section -------------------------------------------------

_RESERVED = ("loop_", "stop_", "global_")


def cif_items(path, text: str) -> dict:
    """Items of a CIF header: ``{name: value}`` and ``"loop_": [(names, rows)]`` (rows: dicts by name).

    A small tokenizer that always advances, so any text ends in a result or a DataError.
    """
    tokens = _cif_tokens(path, text)
    items: dict = {"loop_": []}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.lower() == "loop_":
            i += 1
            names = []
            while i < len(tokens) and tokens[i].startswith("_"):
                names.append(tokens[i])
                i += 1
            values = []
            while i < len(tokens) and not tokens[i].startswith("_") and tokens[i].lower() not in _RESERVED \
                    and not tokens[i].lower().startswith(("data_", "save_")):
                values.append(tokens[i])
                i += 1
            if names:
                rows = [dict(zip(names, values[r:r + len(names)])) for r in range(0, len(values) - len(names) + 1,
                                                                                  len(names))]
                items["loop_"].append((names, rows))
        elif token.startswith("_"):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is None or nxt.startswith("_") or nxt.lower() in _RESERVED:
                items[token] = None
                i += 1
            else:
                items[token] = nxt
                i += 2
        else:
            i += 1  # data_ block names, save frames
    return items


def _cif_tokens(path, text: str) -> list[str]:
    tokens: list[str] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        if line.startswith(";"):  # a text field runs to the next line opening with ';'
            body = [line[1:]]
            number += 1
            while number < len(lines) and not lines[number].startswith(";"):
                body.append(lines[number])
                number += 1
            if number == len(lines):
                raise DataError(f"CBF frame {path}: its header has a text field (';') that is never closed")
            tokens.append("\n".join(body).strip())
            line = lines[number][1:]
        _line_tokens(path, line, tokens, number)
        number += 1
    return tokens


def _line_tokens(path, line: str, tokens: list[str], number: int) -> None:
    pos, n = 0, len(line)
    while pos < n:
        char = line[pos]
        if char.isspace():
            pos += 1
        elif char == "#":
            return
        elif char in "'\"":
            end = pos + 1
            while True:  # a quote closes a string when whitespace or the line end follows it
                end = line.find(char, end)
                if end < 0:
                    raise DataError(f"CBF frame {path}: its header has an unterminated quoted string "
                                    f"(line {number + 1} of the header)")
                if end + 1 == n or line[end + 1].isspace():
                    break
                end += 1
            tokens.append(line[pos + 1:end])
            pos = end + 1
        else:
            end = pos
            while end < n and not line[end].isspace():
                end += 1
            tokens.append(line[pos:end])
            pos = end


@hookimpl
def difframe_detector_readers():
    yield DetectorReaderSpec(
        name="cbf",
        summary="CBF frames (mini and full imgCIF, byte-offset), plain, .gz or .bz2",
        extensions=(".cbf",),
        sniff=sniff,
        read=read,
    )
