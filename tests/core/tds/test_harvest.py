"""Harvest against a brute-force reference: every pixel of every frame rotated, every spot tested."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from difframe.errors import DataError, UsageError
from difframe.manager import PluginManager
from difframe.tds.harvest import (
    HarvestOptions,
    harvest,
    hkl_summary,
    load_harvest,
    read_normalisation,
    read_spot_list,
    replicate_spots,
    write_harvest,
)

import harvest_support as hs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def plugins():
    return PluginManager()


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    files = hs.write_scan(folder)
    return {"folder": folder, "files": files, "mask": hs.write_mask(folder),
            "norm": hs.write_normalisation(folder, files)}


def brute_force(geometry, files, hkl, options, mask, norm, centres=None, rule="frame"):
    """Every (frame, spot, pixel) that the selection rules keep, from full-frame rotations, and the frames
    with a spot pixel above the threshold (``rule``: they lose every spot, or "spot": that spot)."""
    import fabio

    q_lab = geometry.q_lab_image(hs.SHAPE).reshape(-1, 3)
    G = geometry.lattice.q(hkl)
    centres = G if centres is None else centres
    unit = geometry.lattice.max_reciprocal
    r_min, r_max = options.delta_q_min * unit, options.delta_q_max * unit
    rows = []
    excluded = set()
    for n, f in enumerate(files):
        values = fabio.open(str(f)).data.ravel().astype(float)
        q_c = q_lab @ geometry.lab_to_crystal(n).T
        for s in range(len(hkl)):
            d = np.linalg.norm(q_c - centres[s], axis=1)
            if options.threshold is not None and np.any((d < r_max) & mask & (values > options.threshold)):
                excluded.add((n, s))
            for p in np.flatnonzero((d > r_min) & (d < r_max) & mask & (values >= 0)):
                rows.append((n, s, p, *(G[s] + q_c[p] - centres[s]), values[p] / norm[n]))
    frames = {n for n, _ in excluded}
    rows = [r for r in rows if ((r[0], r[1]) not in excluded if rule == "spot" else r[0] not in frames)]
    return np.array(sorted(rows)), sorted(frames)


def test_harvest_matches_brute_force(scan, plugins):
    geometry = hs.geometry()
    options = HarvestOptions(delta_q_min=0.05, delta_q_max=0.3, threshold=5e5, spots=np.array(hs.SPOTS),
                             mask_file=str(scan["mask"]), normalisation_file=str(scan["norm"]))
    result = harvest(geometry, scan["files"], options, plugins)
    import fabio

    mask = fabio.open(str(scan["mask"])).data.ravel() != 0
    norm = 1000.0 + 10 * np.arange(hs.N_FRAMES)
    reference, excluded = brute_force(geometry, scan["files"], np.array(hs.SPOTS), options, mask, norm)
    assert excluded == [8] and result.excluded_frames.tolist() == [8]
    assert len(result.Q) == len(reference) > 200
    flat = result.pixel[:, 0] * hs.SHAPE[1] + result.pixel[:, 1]
    np.testing.assert_array_equal(result.frame, reference[:, 0])
    np.testing.assert_array_equal(result.spot, reference[:, 1])
    np.testing.assert_array_equal(flat, reference[:, 2])
    np.testing.assert_allclose(result.Q, reference[:, 3:6], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.intensity, reference[:, 6], rtol=1e-15)
    assert set(result.counts.nonzero()[0]) == set(range(len(hs.SPOTS)))
    # the centroid of the saturated blob is its intensity-weighted Q
    q_lab = geometry.q_lab(np.array([44, 44, 44, 45, 45, 45, 46, 46, 46]), np.array([42, 43, 44] * 3))
    weights = np.full(9, 1e6)
    weights[4] = 3e6
    expected = (weights[:, None] * (q_lab @ geometry.lab_to_crystal(8).T)).sum(0) / weights.sum()
    np.testing.assert_allclose(result.centroid[1], expected, atol=1e-12)
    assert np.isnan(result.centroid[[0, 2, 3]]).all()


def test_per_spot_threshold_rule_drops_only_the_hot_spot(scan, plugins, tmp_path):
    import dataclasses

    import fabio

    geometry = hs.geometry()
    frame_rule = HarvestOptions(delta_q_min=0.05, delta_q_max=0.3, threshold=5e5, spots=np.array(hs.SPOTS),
                                mask_file=str(scan["mask"]))
    spot_rule = dataclasses.replace(frame_rule, threshold_rule="spot")
    by_frame = harvest(geometry, scan["files"], frame_rule, plugins)
    by_spot = harvest(geometry, scan["files"], spot_rule, plugins)
    mask = fabio.open(str(scan["mask"])).data.ravel() != 0
    reference, excluded = brute_force(geometry, scan["files"], np.array(hs.SPOTS), spot_rule, mask,
                                      np.ones(hs.N_FRAMES), rule="spot")
    assert excluded == [8] and by_spot.excluded_frames.tolist() == [8]
    flat = by_spot.pixel[:, 0] * hs.SHAPE[1] + by_spot.pixel[:, 1]
    np.testing.assert_array_equal(np.stack([by_spot.frame, by_spot.spot, flat], 1), reference[:, :3])
    in_8 = by_spot.frame == 8
    assert in_8.any() and 1 not in by_spot.spot[in_8]  # frame 8 still gives the other spots' points
    assert 8 not in by_frame.frame
    for result in (by_frame, by_spot):  # both rules' counts, whichever was applied
        assert result.attrs["threshold_frame_rule_points"] == len(by_frame.Q)
        assert result.attrs["threshold_spot_rule_points"] == len(by_spot.Q) > len(by_frame.Q)
        assert result.attrs["threshold_frame_rule_frames_kept"] == hs.N_FRAMES - 1
        assert result.attrs["threshold_spot_rule_pairs_dropped"] == 1
    assert by_spot.attrs["threshold_rule"] == "spot" and by_frame.attrs["threshold_rule"] == "frame"
    # masked pixels never count as spot pixels: masking the saturated blob keeps frame 8 whole
    blind = fabio.open(str(scan["mask"])).data.copy()
    blind[43:48, 41:46] = 0
    path = tmp_path / "blind.edf"
    fabio.edfimage.EdfImage(data=blind).write(str(path))
    unmasked = harvest(geometry, scan["files"], dataclasses.replace(frame_rule, mask_file=str(path)), plugins)
    assert unmasked.excluded_frames.size == 0 and 8 in unmasked.frame
    with pytest.raises(UsageError, match="threshold_rule = 'pixel'"):
        harvest(geometry, scan["files"], dataclasses.replace(frame_rule, threshold_rule="pixel"), plugins)


@pytest.mark.parametrize("change", [
    {"omega": 20.0, "alpha": 50.0, "beta": 10.0, "kappa": 30.0, "angular_step": -1.0},  # tilted axis, turning back
    {"angular_step": 10.0},  # 390 degrees: a pixel comes near a spot in two turns
    {"r1": 0.0, "r2": 0.0, "r3": 0.0, "angular_step": 10.0},  # (0 0 1) on the phi axis: near in every frame
], ids=["kappa-backwards", "more-than-a-turn", "spot-on-the-axis"])
def test_harvest_matches_brute_force_in_other_scans(scan, plugins, change):
    """The per-scan solution of when a pixel is near a spot holds for any goniometer setting and scan range."""
    import dataclasses

    geometry = dataclasses.replace(hs.geometry(), **change)
    options = HarvestOptions(delta_q_min=0.05, delta_q_max=0.3, spots=np.array([[0, 0, 1], *hs.SPOTS]),
                             replicas=True, generators="1~,4(z),3(111)")
    result = harvest(geometry, scan["files"], options, plugins)
    mask = np.ones(hs.SHAPE[0] * hs.SHAPE[1], bool)
    reference, _ = brute_force(geometry, scan["files"], result.hkl, options, mask, np.ones(hs.N_FRAMES))
    assert len(result.Q) == len(reference) > 1000
    flat = result.pixel[:, 0] * hs.SHAPE[1] + result.pixel[:, 1]
    np.testing.assert_array_equal(np.stack([result.frame, result.spot, flat], 1), reference[:, :3])
    np.testing.assert_allclose(result.Q, reference[:, 3:6], rtol=0, atol=1e-12)
    if "r1" in change:  # every frame sees the same pixels around the spot on the axis (less its dead ones)
        on_axis = result.spot == 0
        per_frame = np.bincount(result.frame[on_axis], minlength=hs.N_FRAMES)
        assert np.unique(flat[on_axis]).size == per_frame.max() > 10 and per_frame.min() >= per_frame.max() - 3


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "mpiexec").exists(), reason="mpiexec not installed")
def test_three_ranks_give_the_serial_harvest(scan, plugins, tmp_path):
    """Uneven blocks (14, 13, 13 frames), the threshold and the centroids across ranks: same arrays as serial."""
    options = dict(delta_q_min=0.05, delta_q_max=0.3, threshold=5e5, spots=hs.SPOTS, mask_file=str(scan["mask"]))
    serial = harvest(hs.geometry(), scan["files"], HarvestOptions(**{**options, "spots": np.array(hs.SPOTS)}),
                     plugins)
    script = tmp_path / "harvest_mpi.py"
    script.write_text(
        "import sys, json\n"
        "import numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import harvest_support as hs\n"
        "from mpi4py import MPI\n"
        "from difframe.tds.harvest import HarvestOptions, harvest, write_harvest\n"
        "options = json.loads(sys.argv[1])\n"
        "options['spots'] = np.array(options['spots'])\n"
        "files = sys.argv[3:]\n"
        "result = harvest(hs.geometry(), files, HarvestOptions(**options), comm=MPI.COMM_WORLD)\n"
        "if result is not None:\n"
        "    write_harvest(result, sys.argv[2])\n"
    )
    bin_dir = ROOT / ".venv" / "bin"
    done = subprocess.run([str(bin_dir / "mpiexec"), "-n", "3", sys.executable, str(script), json.dumps(options),
                           str(tmp_path / "mpi.h5"), *map(str, scan["files"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    parallel = load_harvest(tmp_path / "mpi.h5")
    for key in ("Q", "intensity", "spot", "frame", "pixel", "centroid", "excluded_frames"):
        np.testing.assert_array_equal(getattr(parallel, key), getattr(serial, key), err_msg=key)
    assert parallel.excluded_frames.tolist() == [8] and np.isfinite(parallel.centroid[1]).all()


def test_file_round_trip_and_recentring(scan, plugins, tmp_path):
    geometry = hs.geometry()
    options = HarvestOptions(delta_q_min=0.05, delta_q_max=0.3, threshold=5e5, spots=np.array(hs.SPOTS))
    first = harvest(geometry, scan["files"], options, plugins)
    path = write_harvest(first, tmp_path / "harvest_spots.h5")
    again = load_harvest(path)
    for key in ("Q", "intensity", "spot", "frame", "pixel", "hkl", "G", "centroid", "excluded_frames"):
        np.testing.assert_array_equal(getattr(again, key), getattr(first, key))
    assert again.attrs["unit"] == "1/Angstrom" and "a* along x" in again.attrs["frame_convention"]
    assert again.attrs["input_files"] == [str(f) for f in scan["files"]]
    import h5py

    with h5py.File(path) as f:
        assert f["points/Q"].shape == (len(first.Q), 3) and f["points/pixel"].dtype.kind == "i"
        assert f["spots/hkl"].shape == (4, 3)
    # second pass: the spot with a measured centroid is re-centred on it
    recentred = harvest(geometry, scan["files"],
                        HarvestOptions(delta_q_min=0.05, delta_q_max=0.3, spots=np.array(hs.SPOTS),
                                       centering_file=str(path)), plugins)
    mask = np.ones(hs.SHAPE[0] * hs.SHAPE[1], bool)
    centres = geometry.lattice.q(np.array(hs.SPOTS))
    centres[1] = first.centroid[1]
    reference, _ = brute_force(geometry, scan["files"], np.array(hs.SPOTS), recentred_options(), mask,
                               np.ones(hs.N_FRAMES), centres)
    np.testing.assert_allclose(recentred.Q, reference[:, 3:6], atol=1e-12)
    assert "harvest_spots.h5" in recentred.attrs["centering_file"]
    assert "points" in hkl_summary(recentred) and f"{len(recentred.Q)} points" in hkl_summary(recentred)


def recentred_options():
    return HarvestOptions(delta_q_min=0.05, delta_q_max=0.3, spots=np.array(hs.SPOTS))


def test_replicas_follow_the_point_group():
    geometry = hs.geometry()
    cubic = replicate_spots(np.array([[1, 2, 0]]), "1~,4(z),3(111)", geometry.lattice)
    assert len(cubic) == 24  # <120> under m-3m
    assert {tuple(sorted(np.abs(h))) for h in cubic.tolist()} == {(0, 1, 2)}
    ortho = replicate_spots(np.array([[1, 2, 3]]), "1~,2(z),2(y)", geometry.lattice)
    assert sorted(map(tuple, np.abs(ortho).tolist())) == [(1, 2, 3)] * 8


def test_bad_inputs_name_the_culprit(scan, plugins, tmp_path):
    import fabio

    geometry = hs.geometry()
    base = dict(delta_q_min=0.05, delta_q_max=0.3, spots=np.array(hs.SPOTS))
    never = HarvestOptions(**{**base, "spots": np.array([[-1, -1, 1], [9, 9, 9]])})
    with pytest.raises(UsageError, match=r"collectSpots entry \[9, 9, 9\] never falls on the detector"):
        harvest(geometry, scan["files"], never, plugins)
    small_mask = tmp_path / "small.edf"
    fabio.edfimage.EdfImage(data=np.ones((10, 10), np.int8)).write(str(small_mask))
    with pytest.raises(DataError, match="filter_file .*small.edf is 10 x 10 but the frames are 48 x 56"):
        harvest(geometry, scan["files"], HarvestOptions(**base, mask_file=str(small_mask)), plugins)
    partial = tmp_path / "norm.dat"
    partial.write_text("".join(f"{f.name} 2.0\n" for f in scan["files"][:-1]))
    with pytest.raises(DataError, match=f"norm.dat has no line for frame .*{scan['files'][-1].name}"):
        harvest(geometry, scan["files"], HarvestOptions(**base, normalisation_file=str(partial)), plugins)
    broken = list(scan["files"])
    cut = tmp_path / "scan_0005.cbf"
    cut.write_bytes(broken[5].read_bytes()[:-200])
    broken[5] = cut
    with pytest.raises(DataError, match="scan_0005.cbf is truncated"):
        harvest(geometry, broken, HarvestOptions(**base), plugins)


def test_normalisation_and_spot_files(tmp_path):
    norm = tmp_path / "n.dat"
    norm.write_text("# name denominator\n/data/a_0001.cbf 2.5\nb_0002.cbf 4\n")
    np.testing.assert_array_equal(read_normalisation(norm, ["/data/a_0001.cbf", "/other/b_0002.cbf"]), [2.5, 4.0])
    norm.write_text("a_0001.cbf two\n")
    with pytest.raises(DataError, match="n.dat line 1"):
        read_normalisation(norm, ["a_0001.cbf"])
    spots = tmp_path / "maxima.txt"
    spots.write_text("# accepted\n1 0 0\n-2, 1, 3\n")
    np.testing.assert_array_equal(read_spot_list(spots), [[1, 0, 0], [-2, 1, 3]])
    (tmp_path / "m.json").write_text("[[0, 0, 2]]")
    np.testing.assert_array_equal(read_spot_list(tmp_path / "m.json"), [[0, 0, 2]])
    (tmp_path / "tagged.p").write_bytes(b"\x80\x04.")
    with pytest.raises(UsageError, match="pickle"):
        read_spot_list(tmp_path / "tagged.p")
