"""Reader of ESRF Data Format (EDF) frames, plain or gzip/bzip2, on fabio (masks, Frelon images)."""

from __future__ import annotations

from pathlib import Path

from difframe import hookimpl
from difframe.detector import Frame, empty_metadata, read_fabio_image
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
    """The first image of the EDF file and what its header says of the geometry."""
    from fabio.edfimage import EdfImage

    image = read_fabio_image(EdfImage, Path(path), "EDF", sniff)
    if image.incomplete_data:  # fabio pads a short data block with zeros: refuse it
        raise DataError(f"EDF frame {path} is truncated: its data block is shorter than its header says")
    header = {str(k): str(v) for k, v in image.header.items()}
    return Frame(data=image.data, metadata=metadata_from_header(header), header=header)


@hookimpl
def difframe_detector_readers():
    yield DetectorReaderSpec(
        name="edf",
        summary="ESRF Data Format frames (first image), plain, .gz or .bz2",
        extensions=(".edf",),
        sniff=sniff,
        read=read,
    )
