"""Reader of ESRF Data Format (EDF) frames, plain or gzip/bzip2 (masks, Frelon images), bounded by the header."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difframe import hookimpl
from difframe.detector import (
    MAX_HEADER_BYTES,
    Frame,
    FrameFile,
    check_frame_size,
    empty_metadata,
    read_head,
    shown,
)
from difframe.errors import DataError
from difframe.types import DetectorReaderSpec

#: metadata key -> EDF header keys that hold it (the ESRF/pyFAI spellings, SI units)
_KEYS = {
    "wavelength_m": ("WaveLength", "Wavelength"),
    "distance_m": ("SampleDistance",),
    "exposure_s": ("ExposureTime", "count_time", "Count Time", "acq_expo_time"),
    "start_angle_deg": ("StartAngle", "Omega"),
    "angle_increment_deg": ("AngleIncrement",),
    "detector": ("DetectorName", "Detector"),
}

#: EDF DataType -> numpy type (the ESRF names, with fabio's aliases)
DATA_TYPES = {
    "SignedByte": "i1", "Signed8": "i1", "UnsignedByte": "u1", "Unsigned8": "u1",
    "SignedShort": "i2", "Signed16": "i2", "UnsignedShort": "u2", "Unsigned16": "u2", "UnsignedShortInteger": "u2",
    "SignedInteger": "i4", "Signed32": "i4", "SignedLong": "i4", "UnsignedInteger": "u4", "Unsigned32": "u4",
    "UnsignedLong": "u4", "Signed64": "i8", "Unsigned64": "u8",
    "FloatValue": "f4", "FLOATVALUE": "f4", "FLOAT": "f4", "Float": "f4", "FloatIEEE32": "f4", "Float32": "f4",
    "DoubleValue": "f8", "Double": "f8", "FloatIEEE64": "f8", "DoubleIEEE64": "f8",
}


def sniff(head: bytes) -> bool:
    """An EDF header is a ``{ key = value ; ... }`` block opening the file."""
    start = head.lstrip()
    return start.startswith(b"{") and any(key in head[:1024] for key in (b"HeaderID", b"EDF_", b"ByteOrder", b"DataType"))


def _float(value):
    try:
        return float(str(value).split()[0])
    except (ValueError, IndexError):
        return None


def metadata_from_header(header: dict) -> dict:
    lowered = {str(k).lower(): v for k, v in header.items()}
    meta = empty_metadata()
    for field, keys in _KEYS.items():
        for key in keys:
            if key.lower() in lowered:
                value = lowered[key.lower()]
                meta[field] = str(value).strip() if field == "detector" else _float(value)
                break
    pixel = [_float(lowered.get("psize_1")), _float(lowered.get("psize_2"))]
    if None not in pixel:
        meta["pixel_size_m"] = pixel
    center = [_float(lowered.get("center_1")), _float(lowered.get("center_2"))]
    if None not in center:
        meta["beam_center_px"] = center
    return meta


def read(path) -> Frame:
    """The first image of the EDF file and what its header says of the geometry.

    The header is checked before any data are read: Dim_1 x Dim_2 of DataType must
    agree with Size (and EDF_BinarySize) and stay under the frame cap, and the file
    must hold exactly that much data (or another frame after it).
    """
    path = Path(path)
    with FrameFile(path) as stream:
        try:
            block = stream.read_until(b"}\n", MAX_HEADER_BYTES, "end of the EDF header ('}' and a newline)")
        except DataError:
            if not sniff(read_head(path)):
                raise DataError(f"{path} is not an EDF file (its first bytes are not an EDF header)") from None
            raise
        if not block.lstrip().startswith(b"{"):
            raise DataError(f"{path} is not an EDF file (its first bytes are not an EDF header)")
        header = _header_entries(block)
        shape, dtype, size = _layout(path, header)
        raw = stream.read(size)
        after = stream.read(1)
    if len(raw) < size:
        raise DataError(f"EDF frame {path} is truncated: its header declares {size} bytes of data "
                        f"({_declared(header)}), the file holds {len(raw)}")
    if after not in (b"", b"{"):
        raise DataError(f"EDF frame {path} holds more data than its header declares ({_declared(header)}): "
                        "Dim_1, Dim_2 or DataType do not match the file")
    data = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return Frame(data=data, metadata=metadata_from_header(header), header=header)


def _header_entries(block: bytes) -> dict[str, str]:
    text = block.decode("latin-1").strip().lstrip("{").rstrip("}")
    entries = {}
    for entry in text.split(";"):
        key, sep, value = entry.partition("=")
        if sep and key.strip():
            entries[key.strip()] = value.strip()
    return entries


def _declared(header: dict[str, str]) -> str:
    keys = ("Dim_1", "Dim_2", "DataType", "Size")
    return ", ".join(f"{key} = {shown(header[key], 20)}" for key in keys if key in header)


def _layout(path: Path, header: dict[str, str]) -> tuple[tuple[int, int], np.dtype, int]:
    """(rows, cols), dtype (with byte order) and byte count of the first image, from the header."""
    lowered = {k.lower(): (k, v) for k, v in header.items()}

    def integer(key: str, default: str | None = None) -> int:
        name, text = lowered.get(key.lower(), (key, default))
        if text is None:
            raise DataError(f"EDF frame {path}: its header has no {key}")
        if not text.isdigit() or len(text) > 18:
            raise DataError(f"EDF frame {path}: header key {name} is {shown(text)}, not a non-negative integer")
        return int(text)

    compression = lowered.get("compression", ("", "none"))[1].lower()
    if compression not in ("none", "nocompression", ""):
        raise DataError(f"EDF frame {path}: Compression = {compression} is not supported (compress the whole "
                        "file with gzip or bzip2 instead)")
    type_key, type_name = lowered.get("datatype", ("DataType", None))
    if type_name is None:
        raise DataError(f"EDF frame {path}: its header has no DataType")
    if type_name not in DATA_TYPES:
        raise DataError(f"EDF frame {path}: header key DataType is {shown(type_name)}, not one of "
                        f"{', '.join(sorted(DATA_TYPES))}")
    order = lowered.get("byteorder", ("ByteOrder", "LowByteFirst"))[1]
    if order not in ("LowByteFirst", "HighByteFirst"):
        raise DataError(f"EDF frame {path}: header key ByteOrder is {shown(order)}, not LowByteFirst or HighByteFirst")
    dtype = np.dtype(DATA_TYPES[type_name]).newbyteorder("<" if order == "LowByteFirst" else ">")
    if integer("Dim_3", "1") != 1:
        raise DataError(f"EDF frame {path}: header key Dim_3 is {header.get('Dim_3')}; one 2-D frame is read")
    shape = (integer("Dim_2"), integer("Dim_1"))
    check_frame_size(path, shape, dtype, "Dim_1, Dim_2, DataType")
    size = shape[0] * shape[1] * dtype.itemsize
    for key in ("Size", "EDF_BinarySize"):
        if key.lower() in lowered and integer(key) != size:
            raise DataError(f"EDF frame {path}: header key {lowered[key.lower()][0]} = {integer(key)} does not "
                            f"match Dim_1 x Dim_2 of DataType ({shape[1]} x {shape[0]} x {dtype.itemsize} = {size})")
    return shape, dtype, size


@hookimpl
def difframe_detector_readers():
    yield DetectorReaderSpec(
        name="edf",
        summary="ESRF Data Format frames (first image), plain, .gz or .bz2",
        extensions=(".edf",),
        sniff=sniff,
        read=read,
    )
