"""Reader of CBF frames (Pilatus/Eiger mini-CBF and full imgCIF), plain or gzip/bzip2, on fabio."""

from __future__ import annotations

from pathlib import Path

from difframe import hookimpl
from difframe.detector import Frame, merge_metadata, parse_full_cbf_header, parse_pilatus_header, read_fabio_image
from difframe.types import DetectorReaderSpec


def sniff(head: bytes) -> bool:
    """CBF files open with the ``###CBF`` magic (or a CIF 2 magic) and carry ``_array_data`` items."""
    start = head.lstrip()
    return start.startswith(b"###CBF") or (start.startswith(b"#\\#CIF") and b"_array_data" in head)


def read(path) -> Frame:
    """Data as fabio decodes them; metadata from the mini header, completed by the full-CBF categories."""
    from fabio.cbfimage import CbfImage

    image = read_fabio_image(CbfImage, Path(path), "CBF", sniff)
    header = dict(image.header)
    mini = parse_pilatus_header(str(header.get("_array_data.header_contents", "")))
    metadata = merge_metadata(mini, parse_full_cbf_header(header))
    text_header = {k: v for k, v in header.items() if isinstance(v, str)}
    return Frame(data=image.data, metadata=metadata, header=text_header)


@hookimpl
def difframe_detector_readers():
    yield DetectorReaderSpec(
        name="cbf",
        summary="CBF frames (mini and full imgCIF, byte-offset), plain, .gz or .bz2",
        extensions=(".cbf",),
        sniff=sniff,
        read=read,
    )
