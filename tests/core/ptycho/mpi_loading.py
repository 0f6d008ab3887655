"""Scans loaded and steered as each MPI rank sees them (test_mpi_loading starts it under mpiexec).

    mpiexec -n 2 python mpi_loading.py INPUTS OUT [PORT]

Loads a ``.ptyd`` scan, a CXI scan and a simulated one with the flow's
``prepare_scans``, saves each rank's frames and statistics to
``OUT/rank<r>.npz``, writes ``.ptyd`` files from the shares, tries a ``.ptyd``
with a NaN frame on rank 1's side, and with PORT runs DM with an interaction
server for the test to steer.  Prints one JSON line per rank.
"""

import json
import sys
from pathlib import Path

import h5py
import numpy as np

import difframe
from difframe import Run, parallel
from difframe.errors import DifframeError
from difframe.ptycho import prepare as prep_module
from difframe.ptycho.data import PreparedData
from difframe.ptycho.ptyd import write_ptyd
from difframe.ptycho.workflow import prepare_scans

FRAMES, SIDE = 13, 24
GEOMETRY = {"energy": 6.2, "distance": 7.19, "psize": 172e-6, "prop_type": "farfield"}


def make_inputs(inputs: Path) -> None:
    """in.ptyd (3 chunks), nan.ptyd (NaN in frame 11), in.cxi (a mask per frame) and in.h5 (a beamline layout),
    one off-centre spot."""
    rng = np.random.default_rng(7)
    y, x = np.indices((SIDE, SIDE))
    spot = 400 * np.exp(-((y - 9.4) ** 2 + (x - 14.2) ** 2) / 6.0)
    frames = rng.poisson(spot * rng.uniform(0.5, 1.5, (FRAMES, 1, 1))).astype(np.float32)
    positions = rng.uniform(-2e-6, 2e-6, (FRAMES, 2))
    mask = np.ones((SIDE, SIDE), bool)
    mask[3, 5] = False
    prepared = PreparedData(label="in", data=frames, mask=mask, positions=positions, energy_kev=6.2,
                            distance_m=7.19, psize_m=(172e-6, 172e-6), center=(12, 12))
    write_ptyd(inputs / "in.ptyd", prepared, frames_per_chunk=5)
    write_ptyd(inputs / "nan.ptyd", PreparedData(**{**prepared.__dict__, "data": frames + 0.5}), frames_per_chunk=5)
    with h5py.File(inputs / "nan.ptyd", "a") as f:
        f["chunks/2/data"][1, 2, 2] = np.nan  # frame 11
    with h5py.File(inputs / "in.h5", "w") as f:  # a beamline layout for the hdf5 recipe: the same frames
        f["scan/frames"] = frames
        f["scan/y_um"], f["scan/x_um"] = positions[:, 0] * 1e6, positions[:, 1] * 1e6
    with h5py.File(inputs / "in.cxi", "w") as f:
        det = f.create_group("entry_1/instrument_1/detector_1")
        det["data"] = frames[::-1]
        flags = np.zeros((FRAMES, SIDE, SIDE), np.int32)
        flags[np.arange(FRAMES), np.arange(FRAMES) + 2, 12] = 1  # frame n loses pixel (n + 2, 12)
        det["mask"] = flags
        det["distance"], det["x_pixel_size"], det["y_pixel_size"] = 7.19, 172e-6, 172e-6
        f["entry_1/instrument_1/source_1/wavelength"] = 2e-10
        f["entry_1/sample_1/geometry_1/translation"] = np.c_[positions, np.zeros(FRAMES)]


def scan_params(inputs: Path, out: Path) -> dict:
    sim = {"source": "sim", "shape": 32, "dfile": str(out / "sim.ptyd"), "save": "link",
           "recipe": {"sim": {"seed": 5}},
           "simulation": {"detector": {"shape": [34, 34], "pixel_size": [172e-6, 172e-6], "module_shape": [16, 16],
                                       "gap": [2, 2], "saturation": 60, "dark_counts": 0.5, "dtype": "int32"},
                          "sample": {"model": "flower"}}}
    return {
        "f": {"data": {"source": "file", "dfile": str(inputs / "in.ptyd"), "auto_center": True, "shape": 16},
              "geometry": GEOMETRY},
        "c": {"data": {"source": "cxi", "recipe": {"cxi": {"cxifile": str(inputs / "in.cxi")}}, "shape": 16,
                       "dfile": str(out / "cxi.ptyd"), "save": "append"},
              "geometry": GEOMETRY},
        "h": {"data": {"source": "hdf5", "shape": 16,
                       "recipe": {"hdf5": {"file": str(inputs / "in.h5"), "intensities": "scan/frames",
                                           "slow": "scan/y_um", "fast": "scan/x_um", "slow_multiplier": 1e-6,
                                           "fast_multiplier": 1e-6}}},
              "geometry": GEOMETRY},
        "s": {"data": sim, "geometry": GEOMETRY, "xy": {"type": "spiral", "spiral": {"dr": 0.5e-6, "r_out": 1.6e-6}},
              "illumination": {"photons": 100000, "aperture": {"form": "circ", "size": 1.5e-6}}},
    }


def load(inputs: Path, out: Path) -> dict:
    """Prepare the four scans on this rank; save its frames and the all-frame statistics."""
    ranks = parallel.world()
    record = {"rank": ranks.rank, "loaded": {}}
    load_share = prep_module.load_share

    def noting_load(raw, share, label):
        record["loaded"].setdefault(label, []).append([share.start, share.stop])
        return load_share(raw, share, label)

    prep_module.load_share = noting_load
    try:
        params = {"io": {"paths": {"home": str(out)}}, "scans": scan_params(inputs, out),
                  "engines": {"e1": {"name": "DM"}}}
        prepared = prepare_scans(Run(params), ranks)
    finally:
        prep_module.load_share = load_share
    arrays = {}
    for label, p in prepared.items():
        record[label] = {"first": p.first, "held": p.data.shape[0], "frames": p.num_frames, "center": p.center}
        arrays.update({f"{label}_data": p.data, f"{label}_mask": p.frame_mask(), f"{label}_positions": p.positions,
                       f"{label}_totals": p.frame_totals(), f"{label}_mean": p.mean_frame()})
    np.savez(out / f"rank{ranks.rank}.npz", **arrays)
    write_ptyd(out / "chunked.ptyd", prepared["s"], save="append", frames_per_chunk=4)
    nan = {"io": {"paths": {"home": str(out)}}, "engines": {"e1": {"name": "DM"}},
           "scans": {"n": {"data": {"source": "file", "dfile": str(inputs / "nan.ptyd")}, "geometry": GEOMETRY}}}
    try:
        prepare_scans(Run(nan), ranks)
    except DifframeError as err:
        record["nan_error"] = [type(err).__name__, str(err)]
    return record


class IterationCounter:
    def __init__(self):
        self.last = 0

    @difframe.hookimpl
    def difframe_iteration_finished(self, run, engine, iteration, metrics):
        self.last = iteration


def steer(inputs: Path, out: Path, port: int) -> dict:
    """DM on the simulated scan with an interaction server on ``port``, until a client sets numiter."""
    from difframe.manager import PluginManager

    counter = IterationCounter()
    params = {"io": {"paths": {"home": str(out / "steered")}, "autosave": {"active": False}},
              "plotclient": {"dump": False}, "scans": {"s": scan_params(inputs, out)["s"]},
              "engines": {"e1": {"name": "DM", "numiter": 5000, "numiter_contiguous": 1}},
              "interaction": {"primary_address": "tcp://127.0.0.2", "primary_port": port}}
    params["scans"]["s"]["data"].pop("dfile")
    run = Run(params, plugins=PluginManager(plugins=[counter]))
    run.run()
    e1 = run.params.engines.e1
    return {"iterations": counter.last, "numiter": e1.numiter, "alpha": e1.alpha}


if __name__ == "__main__":
    inputs, out = Path(sys.argv[1]), Path(sys.argv[2])
    record = load(inputs, out)
    if len(sys.argv) > 3:
        record["steered"] = steer(inputs, out, int(sys.argv[3]))
    print(json.dumps(record), flush=True)
