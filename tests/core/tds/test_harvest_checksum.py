"""A frame whose CBF binary section fails its Content-MD5 (bit flips on disk): the harvest stops naming it, or,
with DIFFRAME_BAD_CHECKSUM=drop, goes on without that frame's points (issue 10)."""

import logging

import numpy as np
import pytest

from difframe.errors import DataError
from difframe.manager import PluginManager
from difframe.tds.harvest import HarvestOptions, harvest

import harvest_support as hs

DAMAGED = 13


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    clean = hs.write_scan(tmp_path_factory.mktemp("clean"))
    damaged = hs.write_scan(tmp_path_factory.mktemp("damaged"))
    raw = bytearray(damaged[DAMAGED].read_bytes())
    raw[raw.find(b"\x0c\x1a\x04\xd5") + 500] ^= 0x10  # one bit inside the binary section
    damaged[DAMAGED].write_bytes(bytes(raw))
    return clean, damaged


def test_damaged_frame_stops_the_harvest_or_is_dropped(scans, monkeypatch, caplog):
    clean, damaged = scans
    plugins = PluginManager()
    options = HarvestOptions(delta_q_min=0.05, delta_q_max=0.3, threshold=5e5, spots=np.array(hs.SPOTS))
    with pytest.raises(DataError, match=rf"scan_{DAMAGED:04d}.cbf is corrupt: the MD5 of its binary section"):
        harvest(hs.geometry(), damaged, options, plugins)
    monkeypatch.setenv("DIFFRAME_BAD_CHECKSUM", "drop")
    with caplog.at_level(logging.WARNING, logger="difframe.detector"):
        result = harvest(hs.geometry(), damaged, options, plugins)
    assert f"scan_{DAMAGED:04d}.cbf" in caplog.text and "dropped" in caplog.text
    reference = harvest(hs.geometry(), clean, options, plugins)
    keep = reference.frame != DAMAGED
    assert (~keep).sum() > 0 and DAMAGED not in result.frame  # the frame had points; none are taken from it
    np.testing.assert_array_equal(result.frame, reference.frame[keep])
    np.testing.assert_array_equal(result.pixel, reference.pixel[keep])
    np.testing.assert_allclose(result.intensity, reference.intensity[keep], rtol=0)
