"""Frames from the real detector files: pixels against fabio, metadata against the data README."""

import bz2
import gzip
import json

import fabio
import numpy as np
import pytest

from difframe.detector import (
    METADATA_FIELDS,
    format_suffix,
    open_frame,
    parse_pilatus_header,
    read_head,
    sensitive_mask,
    tiled_shape,
)
from difframe.errors import DataError
from difframe.manager import PluginManager

#: values stated in shared/data/real/README.md and the files' own headers
REAL = {
    "thau_3_2_0001.cbf.bz2": {
        "shape": [2527, 2463],
        "wavelength_m": 0.96859e-10,
        "distance_m": 0.351,
        "beam_center_px": [1261.61, 1306.96],
        "pixel_size_m": [172e-6, 172e-6],
        "start_angle_deg": 89.9997,
        "angle_increment_deg": 0.0,
        "exposure_s": 0.019,
        "detector": "PILATUS3 6M",
    },
    "DLS_I03_smargon_0001.cbf.gz": {
        "shape": [2527, 2463],
        "wavelength_m": 0.97625e-10,
        "distance_m": 0.29147,
        "beam_center_px": [1229.30, 1200.48],
        "pixel_size_m": [172e-6, 172e-6],
        "start_angle_deg": 45.0,
        "angle_increment_deg": 0.1,
        "exposure_s": 0.009,
        "detector": "PILATUS3 6M",
    },
    "dlsnxs2cbf_therm_0001.cbf.gz": {
        "shape": [4362, 4148],
        "wavelength_m": 0.98027e-10,
        "distance_m": 0.21396,
        "beam_center_px": [2216.06, 2300.41],
        "pixel_size_m": [75e-6, 75e-6],
        "start_angle_deg": 174.0,
        "angle_increment_deg": 0.25,
        "exposure_s": 0.008,
        "detector": "EIGER 16M XR4i",
    },
}


@pytest.fixture(scope="module")
def plugins():
    return PluginManager()


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_frames_match_fabio_and_readme(real_data, plugins, name):
    path = real_data / name
    frame = open_frame(path, plugins)
    reference = fabio.open(str(path)).data
    assert frame.data.dtype == np.int32
    assert list(frame.data.shape) == REAL[name]["shape"]
    np.testing.assert_array_equal(frame.data, reference)
    for key in METADATA_FIELDS:
        expected, got = REAL[name][key], frame.metadata[key]
        if isinstance(expected, str):
            assert got == expected
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-9, err_msg=key)


def test_full_cbf_categories_alone_give_the_geometry(real_data):
    """The imgCIF loops of the full CBF agree with its mini header (read independently)."""
    from difframe.detector import parse_full_cbf_header

    image = fabio.open(str(real_data / "DLS_I03_smargon_0001.cbf.gz"))
    meta = parse_full_cbf_header(image.header)
    assert meta["wavelength_m"] == pytest.approx(0.97625e-10)
    assert meta["distance_m"] == pytest.approx(0.29147)
    assert meta["pixel_size_m"] == pytest.approx([172e-6, 172e-6])
    assert meta["start_angle_deg"] == 45.0 and meta["angle_increment_deg"] == 0.1
    assert meta["exposure_s"] == pytest.approx(0.009)
    assert meta["detector"] == "Pilatus6M"
    assert meta["beam_center_px"] is None  # not a field of these categories


def test_format_is_sniffed_from_content_not_name(real_data, plugins, tmp_path):
    raw = gzip.decompress((real_data / "dlsnxs2cbf_therm_0001.cbf.gz").read_bytes())
    misnamed = tmp_path / "frame.edf.bz2"
    misnamed.write_bytes(bz2.compress(raw, 1))
    assert read_head(misnamed).startswith(b"###CBF")
    frame = open_frame(misnamed, plugins)
    assert frame.data.shape == (4362, 4148)
    assert frame.metadata["distance_m"] == pytest.approx(0.21396)


def test_edf_round_trip_and_metadata(plugins, tmp_path):
    data = np.arange(35, dtype=np.float32).reshape(5, 7)
    header = {"PSize_1": "75e-6", "PSize_2": "80e-6", "Center_1": "3.5", "Center_2": "2.0",
              "SampleDistance": "0.2", "WaveLength": "1e-10", "ExposureTime": "0.5"}
    path = tmp_path / "mask.edf"
    fabio.edfimage.EdfImage(data=data, header=header).write(str(path))
    gz = tmp_path / "copy.edf.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    for p in (path, gz):
        frame = open_frame(p, plugins)
        np.testing.assert_array_equal(frame.data, data)
        assert frame.metadata["pixel_size_m"] == [75e-6, 80e-6]
        assert frame.metadata["beam_center_px"] == [3.5, 2.0]
        assert frame.metadata["distance_m"] == 0.2 and frame.metadata["wavelength_m"] == 1e-10
        assert frame.metadata["exposure_s"] == 0.5 and frame.metadata["start_angle_deg"] is None


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_cbf_is_one_data_error_naming_the_file(real_data, plugins, tmp_path, cut):
    raw = bz2.decompress((real_data / "thau_3_2_0001.cbf.bz2").read_bytes())
    path = tmp_path / "frame_0007.cbf"
    path.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(DataError, match="frame_0007.cbf is truncated"):
        open_frame(path, plugins)


def test_truncated_compressed_and_non_cbf_files(real_data, plugins, tmp_path):
    short_gz = tmp_path / "short.cbf.gz"
    short_gz.write_bytes((real_data / "DLS_I03_smargon_0001.cbf.gz").read_bytes()[:100_000])
    with pytest.raises(DataError, match="short.cbf.gz is truncated"):
        open_frame(short_gz, plugins)
    text = tmp_path / "notes.cbf"
    text.write_text("these are my notes, not a frame\n" * 20)
    with pytest.raises(DataError, match="notes.cbf is not a CBF file"):
        open_frame(text, plugins)
    unknown = tmp_path / "notes.txt"
    unknown.write_text("plain text")
    with pytest.raises(DataError, match="notes.txt is not a detector frame any reader recognises"):
        open_frame(unknown, plugins)
    with pytest.raises(DataError, match="missing.cbf"):
        open_frame(tmp_path / "missing.cbf", plugins)


def test_truncated_edf(plugins, tmp_path):
    path = tmp_path / "mask.edf"
    fabio.edfimage.EdfImage(data=np.ones((20, 30), np.int32)).write(str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="mask.edf is truncated"):
        open_frame(path, plugins)


def test_pilatus_header_units_and_absent_fields():
    meta = parse_pilatus_header("# Wavelength 1.5 nm\r\n# Detector_distance 250 mm\r\n# Pixel_size 75 um x 80 um\r\n")
    assert meta["wavelength_m"] == pytest.approx(1.5e-9)
    assert meta["distance_m"] == pytest.approx(0.25)
    assert meta["pixel_size_m"] == pytest.approx([75e-6, 80e-6])
    assert meta["beam_center_px"] is None and meta["detector"] is None and meta["exposure_s"] is None


def test_format_suffix():
    assert format_suffix("a/b/frame_0001.cbf.gz") == ".cbf"
    assert format_suffix("mask.EDF.bz2") == ".edf"
    assert format_suffix("noext") == ""


def test_tiled_shape_and_sensitive_mask():
    assert tiled_shape((12, 5), (195, 487), (17, 7)) == (2527, 2463)
    from difframe.types import DetectorTemplateSpec

    spec = DetectorTemplateSpec(name="t", summary="", shape=(2 * 4 + 1, 3 * 2 + 2 * 2),
                                pixel_size=(1.0, 1.0), module_shape=(4, 2), gap=(1, 2))
    mask = sensitive_mask(spec)
    assert mask.sum() == 6 * 4 * 2  # six modules of 4x2
    assert not mask[4].any() and not mask[:, 2:4].any() and mask[5:, 4:6].all()


def test_inspect_command_json(real_data, capsys):
    from difframe.cli import main

    assert main(["inspect", str(real_data / "thau_3_2_0001.cbf.bz2"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shape"] == [2527, 2463] and report["dtype"] == "int32"
    assert list(report["metadata"]) == list(METADATA_FIELDS)
    assert report["metadata"]["beam_center_px"] == [1261.61, 1306.96]


def test_inspect_command_bad_file_exit_1(tmp_path, capsys):
    from difframe.cli import main

    bad = tmp_path / "bad.cbf"
    bad.write_bytes(b"###CBF: VERSION 1.5\r\n" + b"\0" * 50)
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.cbf" in err and err.count("\n") == 1


def test_cif_header_parser_agrees_with_fabio(real_data):
    """difframe's bounded CIF tokenizer gives fabio's items and loops on the full imgCIF header."""
    from difframe.plugins.detectors.cbf import BINARY_SECTION, cif_items

    with gzip.open(real_data / "DLS_I03_smargon_0001.cbf.gz") as stream:
        head = stream.read(65536)
    ours = cif_items("x.cbf", head[: head.rfind(b"\n;", 0, head.find(BINARY_SECTION))].decode("latin-1"))
    theirs = fabio.open(str(real_data / "DLS_I03_smargon_0001.cbf.gz")).header
    their_loops = {tuple(n.decode() if isinstance(n, bytes) else n for n in names): rows
                   for names, rows in theirs["loop_"]}
    assert len(ours["loop_"]) == len(their_loops) > 10
    for names, rows in ours["loop_"]:
        expected = [{(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                     for k, v in row.items()} for row in their_loops[tuple(names)]]
        assert rows == expected, names
    plain = {k: v for k, v in ours.items() if k != "loop_" and v is not None}
    assert plain and all(str(theirs[k]).replace("\r\n", "\n").strip() == v for k, v in plain.items())
