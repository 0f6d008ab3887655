"""Recipes ``hdf5`` and ``stack``: the real P25 scan rewritten in other layouts gives what the ``cxi`` recipe gives;
corrections against numpy; each rank reads only its frames; one clear message per bad input."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from fabio.edfimage import EdfImage

from difframe import Run
from difframe.errors import DataError, ParameterError
from difframe.parallel import Ranks
from difframe.plugins.recipes.hdf5 import prepare as hdf5_recipe
from difframe.plugins.recipes.stack import prepare as stack_recipe
from difframe.ptycho.workflow import prepare_scans

P25 = "PETRAIII_P25_Near_Field_Ptycho.cxi"
FRAMES = 24  # of the 200, enough to compare and quick to write as files
GEOMETRY = {"energy": 6.2, "distance": 7.19, "psize": 172e-6, "prop_type": "nearfield"}


def ctx(label="t", ranks=None):
    return SimpleNamespace(label=label, positions=None, plugins=None, params=None, data_type="single",
                           dry_run=True, ranks=ranks or Ranks())


def scan(recipe, **p):
    return {"data": {"source": recipe, "recipe": {recipe: p}}, "geometry": dict(GEOMETRY)}


def write_edf(path, data):
    EdfImage(data=np.ascontiguousarray(data)).write(str(path))
    return str(path)


@pytest.fixture(scope="module")
def p25(real_data):
    with h5py.File(real_data / P25) as f:
        det = f["entry_1/instrument_1/detector_1"]
        return {"frames": det["data"][:FRAMES], "mask": det["mask"][()],
                "translation": f["entry_1/sample_1/geometry_1/translation"][:FRAMES].astype(float),
                "energy_j": float(f["entry_1/instrument_1/source_1/energy"][()]),
                "distance": float(det["distance"][()]), "psize": float(det["x_pixel_size"][()])}


@pytest.fixture(scope="module")
def layouts(p25, real_data, tmp_path_factory):
    """The same frames as a beamline HDF5 file (um motors, x slow) and as EDF files with a positions table."""
    d = tmp_path_factory.mktemp("layouts")
    t_um = p25["translation"] * 1e6
    with h5py.File(d / "scan.h5", "w") as f:
        f["scan_0042/measurement/pilatus/frames"] = p25["frames"]
        f["scan_0042/measurement/sample_x"] = t_um[:, 0]  # stage motors [um]; with the file's detector basis
        f["scan_0042/measurement/sample_y"] = t_um[:, 1]  # (rows along -y) the CXI positions are (y, x) = t
        f["scan_0042/instrument/good_pixels"] = (p25["mask"] == 0).astype(np.uint8)
        f["scan_0042/instrument/energy"] = p25["energy_j"] / 1.602176634e-19  # eV
        f["scan_0042/instrument/energy"].attrs["units"] = "eV"
        f["scan_0042/instrument/distance"] = p25["distance"] * 1e3
        f["scan_0042/instrument/distance"].attrs["units"] = "mm"
        f["scan_0042/instrument/x_pixel_size"] = p25["psize"]
        f["scan_0042/instrument/y_pixel_size"] = p25["psize"]
    for i, frame in enumerate(p25["frames"]):
        write_edf(d / f"frame_{i}.edf", frame)  # unpadded numbers: the glob must sort them numerically
    write_edf(d / "flags.edf", p25["mask"].astype(np.int32))
    np.savetxt(d / "positions.txt", np.c_[np.arange(FRAMES), t_um[:, 1], t_um[:, 0]], header="frame y_um x_um")
    hdf5 = {"file": str(d / "scan.h5"), "intensities": "scan_0042/measurement/pilatus/frames",
            "slow": "scan_0042/measurement/sample_x", "fast": "scan_0042/measurement/sample_y", "slow_axis": "x",
            "slow_multiplier": 1e-6, "fast_multiplier": 1e-6, "mask": "scan_0042/instrument/good_pixels",
            "mask_valid": "nonzero", "energy": "scan_0042/instrument/energy",
            "distance": "scan_0042/instrument/distance",
            "psize": ["scan_0042/instrument/y_pixel_size", "scan_0042/instrument/x_pixel_size"]}
    stack = {"files": str(d / "frame_*.edf"), "positions": str(d / "positions.txt"), "columns": [1, 2],
             "slow_multiplier": 1e-6, "fast_multiplier": 1e-6, "mask": str(d / "flags.edf"), "mask_valid": "zero",
             "energy": p25["energy_j"] / 1.602176634e-16, "distance": p25["distance"], "psize": p25["psize"]}
    cxi = {"cxifile": str(real_data / P25)}
    return SimpleNamespace(dir=d, hdf5=hdf5, stack=stack, cxi=cxi)


@pytest.mark.parametrize("extra", [{}, {"focus_distance": 3.65e-3}])
def test_same_scan_as_cxi(layouts, tmp_path, extra):
    scans = {name: scan(name, **getattr(layouts, name), **extra) for name in ("cxi", "hdf5", "stack")}
    for s in scans.values():
        s["data"]["num_frames"] = FRAMES
    run = Run({"io": {"paths": {"home": str(tmp_path)}}, "scans": scans, "engines": {"e1": {"name": "DM"}}})
    out = prepare_scans(run)
    ref = out["cxi"]
    assert ref.data.shape == (FRAMES, 100, 100) and ref.mask.sum() == 100 * 100 - 5
    for name in ("hdf5", "stack"):
        got = out[name]
        np.testing.assert_array_equal(got.data, ref.data)
        np.testing.assert_array_equal(got.mask, ref.mask)
        np.testing.assert_allclose(got.positions, ref.positions, rtol=1e-12, atol=1e-18)
        assert got.energy_kev == pytest.approx(ref.energy_kev, rel=1e-12)
        assert got.distance_m == pytest.approx(ref.distance_m, rel=1e-7)  # float32 in the CXI file
        assert got.psize_m == pytest.approx(ref.psize_m, rel=1e-12)
        assert got.propagation == ref.propagation == "nearfield"
        assert got.meta.get("magnification", 1) == pytest.approx(ref.meta.get("magnification", 1), rel=1e-7)


def test_positions_as_one_dataset_and_a_frame_filter(layouts, p25):
    with h5py.File(layouts.dir / "scan.h5", "a") as f:
        if "xy" not in f:
            f["xy"] = p25["translation"][:, [1, 0]] * 1e6  # (slow = y, fast = x) in um
    p = {**layouts.hdf5, "positions": "xy", "slow": None, "fast": None, "slow_axis": "y", "fast_multiplier": -1e-6}
    for frames, keep in (("2:20:3", np.arange(2, 20, 3)), ([7, 1, 4, 4], [7, 1, 4, 4])):
        out = hdf5_recipe(scan("hdf5", **p, frames=frames), ctx())
        np.testing.assert_array_equal(out.data, p25["frames"][keep])
        np.testing.assert_allclose(out.positions, p25["translation"][keep][:, [1, 0]] * [1, -1], rtol=1e-12)
    out = stack_recipe(scan("stack", **layouts.stack, frames=":5"), ctx())
    np.testing.assert_array_equal(out.data, p25["frames"][:5])


def corrected(frames, dark, flat, monitor, reference=None):
    """numpy statement of the documented order: dark, flat scaled to mean 1 on valid pixels, monitor."""
    valid = flat > 0
    rel = np.where(valid, flat / flat[valid].mean(), 1.0)
    ref = monitor.mean() if reference is None else reference
    return np.maximum(frames - dark, 0) / rel * (ref / monitor)[:, None, None], valid


def test_dark_flat_normalisation_against_numpy(tmp_path):
    rng = np.random.default_rng(3)
    frames = rng.poisson(50, (10, 12, 16)).astype(np.int32)
    dark = rng.uniform(0, 8, (12, 16))
    flat = rng.uniform(0.5, 1.5, (12, 16))
    flat[2, 3] = 0  # a dead pixel: masked, not divided by
    monitor = rng.uniform(900, 1100, 10)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["entry/data/data"], f["dark"], f["flat"], f["i0"] = frames, dark, flat, monitor
        f["xy"] = rng.uniform(-1, 1, (10, 2))
    p = {"file": str(tmp_path / "c.h5"), "positions": "xy", "dark": "dark", "flat": "flat", "normalisation": "i0"}
    keep = np.arange(1, 10, 2)
    want, valid = corrected(frames[keep], dark, flat, monitor[keep])
    out = hdf5_recipe(scan("hdf5", **p, frames="1::2"), ctx())
    np.testing.assert_allclose(out.data, want, rtol=2e-6)
    np.testing.assert_array_equal(out.mask, valid)
    out = hdf5_recipe(scan("hdf5", **p, normalisation_reference=1000.0), ctx())
    np.testing.assert_allclose(out.data, corrected(frames, dark, flat, monitor, 1000.0)[0], rtol=2e-6)
    # the stack recipe: images and a monitor column, same maths
    files = [write_edf(tmp_path / f"f{i}.edf", frame) for i, frame in enumerate(frames)]
    np.savetxt(tmp_path / "pos.txt", np.c_[rng.uniform(-1, 1, (10, 2)), monitor])
    out = stack_recipe(scan("stack", files=files, positions=str(tmp_path / "pos.txt"), normalisation_column=2,
                            dark=write_edf(tmp_path / "dark.edf", dark.astype(np.float32)),
                            flat=write_edf(tmp_path / "flat.edf", flat.astype(np.float32))), ctx())
    np.testing.assert_allclose(out.data, corrected(frames, dark.astype(np.float32), flat.astype(np.float32),
                                                   monitor)[0], rtol=2e-6)


def test_each_rank_reads_only_its_frames(tmp_path):
    """Frames outside rank 1's block hold NaN: rank 1 of 2 loads without error, rank 0 names them."""
    frames = np.ones((8, 6, 6), np.float32) * np.arange(8)[:, None, None]
    frames[1:4, 0, 0] = np.nan
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f["entry/data/data"], f["xy"] = frames, np.zeros((8, 2))
    for i, frame in enumerate(frames):
        write_edf(tmp_path / f"n{i:02d}.edf", frame)
    np.savetxt(tmp_path / "xy.txt", np.zeros((8, 2)))
    params = (scan("hdf5", file=str(tmp_path / "n.h5"), positions="xy"),
              scan("stack", files=str(tmp_path / "n{:02d}.edf"), positions=str(tmp_path / "xy.txt")))
    for recipe, p in zip((hdf5_recipe, stack_recipe), params):
        ranks = Ranks()
        ranks.rank, ranks.size = 1, 2  # the block rank 1 of 2 would read; no collective is needed on one process
        out = recipe(p, ctx(ranks=ranks))
        assert out.first == 4 and out.num_frames == 8
        np.testing.assert_array_equal(out.data, frames[4:])
        ranks.rank = 0
        with pytest.raises(DataError, match=r"frames \[1, 2, 3\] contain NaN"):
            recipe(p, ctx(ranks=ranks))


def test_bad_inputs_name_the_culprit(layouts, p25, tmp_path):
    h, s = layouts.hdf5, layouts.stack
    label = "scans.t.data.recipe.hdf5"
    cases = [
        (hdf5_recipe, {**h, "intensities": "entry/data/data"}, DataError,
         f"{label}.intensities = 'entry/data/data' does not exist; expected an \\(N, H, W\\) stack of frames. "
         f"Datasets of that shape in the file: /scan_0042/measurement/pilatus/frames \\({FRAMES}, 100, 100\\)"),
        (hdf5_recipe, {**h, "slow": "scan_0042/instrument/energy"}, DataError,
         r"slow = 'scan_0042/instrument/energy' has shape \(\); expected one value per frame, \(24,\).*"
         r"/scan_0042/measurement/sample_x \(24,\), /scan_0042/measurement/sample_y \(24,\)"),
        (hdf5_recipe, {**h, "mask": "nope"}, DataError, r"mask = 'nope' does not exist.*good_pixels \(100, 100\)"),
        (hdf5_recipe, {**h, "positions": "xy"}, ParameterError, "either positions or slow and fast"),
        (hdf5_recipe, {**h, "file": str(tmp_path / "missing.h5")}, DataError, "missing.h5: no such HDF5 file"),
        (hdf5_recipe, {**h, "frames": "0:x"}, ParameterError, r"frames = '0:x': expected a slice"),
        (hdf5_recipe, {**h, "frames": [0, 99]}, ParameterError, r"frame indices \[99\] are outside 0..23"),
        (stack_recipe, {**s, "files": str(layouts.dir / "frame_{}.edf"), "count": 30}, DataError,
         r"6 of 30 frame files do not exist: .*frame_24.edf"),
        (stack_recipe, {**s, "columns": [1, 5]}, ParameterError, r"columns = 5: .*positions.txt has 3 columns"),
        (stack_recipe, {**s, "positions": str(tmp_path / "short.txt")}, DataError,
         r"24 frame files but 23 rows of positions in .*short.txt"),
        (stack_recipe, {**s, "files": str(tmp_path / "*.cbf")}, DataError, r"no file matches"),
        (stack_recipe, {**s, "psize": [1e-6, 2e-6, 3e-6]}, ParameterError, r"psize = .*expected 1 or 2 positive"),
        (hdf5_recipe, {**h, "energy": "scan_0042/measurement/sample_x"}, DataError,
         r"energy = 'scan_0042/measurement/sample_x' has shape \(24,\); expected 1 number.*"
         r"/scan_0042/instrument/energy"),
    ]
    with h5py.File(tmp_path / "data_000001.h5", "w") as f:
        f["data"] = np.zeros((3, 4, 4))
    with h5py.File(tmp_path / "short.h5", "w") as f:  # frames in an external file, as in an Eiger master file
        f["entry/data/data"] = h5py.ExternalLink("data_000001.h5", "data")
        f["xy"], f["other_xy"] = np.zeros((2, 2)), np.zeros((3, 2))
    cases.append((hdf5_recipe, {"file": str(tmp_path / "short.h5"), "intensities": "entry/data"}, DataError,
                  r"intensities = 'entry/data' is a group; .* in the file: /entry/data/data \(3, 4, 4\)$"))
    cases.append((hdf5_recipe, {"file": str(tmp_path / "short.h5"), "positions": "xy"}, DataError,
                  r"positions = 'xy' has shape \(2, 2\); expected \(3, 2\) positions .* /other_xy \(3, 2\)"))
    np.savetxt(tmp_path / "short.txt", np.zeros((FRAMES - 1, 3)))
    for recipe, p, error, message in cases:
        with pytest.raises(error, match=message):
            recipe(scan(recipe.__module__.rpartition(".")[2], **p), ctx())
    odd = [write_edf(tmp_path / f"odd{i}.edf", np.zeros(shape, np.int32)) for i, shape in
           enumerate([(100, 100), (100, 100), (100, 90)])]
    np.savetxt(tmp_path / "three.txt", np.zeros((3, 3)))
    with pytest.raises(DataError, match=r"odd2.edf: frame shape \(100, 90\), but .*odd0.edf is \(100, 100\)"):
        stack_recipe(scan("stack", **{**s, "files": odd, "positions": str(tmp_path / "three.txt")}), ctx())
