"""A small synthetic rotation scan written as CBF files, for the harvest tests."""

from pathlib import Path

import fabio
import numpy as np

from difframe.crystal.geometry import Geometry

SHAPE = (48, 56)
N_FRAMES = 40
SPOTS = [[-1, -1, 1], [-2, -2, -1], [0, 0, -1], [1, 1, 1]]


def geometry() -> Geometry:
    return Geometry(lmbda=0.7, dist=60.0, pixel_size=1.2, det_origin_X=20.0, det_origin_Y=30.0,
                    AA=4.212, BB=4.212, CC=4.212, angular_step=1.0, phi=-10.0, r1=12.0, r2=-7.0, r3=31.0,
                    dim1=SHAPE[0], dim2=SHAPE[1])


def write_scan(folder: Path, seed: int = 0) -> list[Path]:
    """Random counts with negative (dead) pixels; a Bragg peak of (-2 -2 -1) above any threshold in frame 8."""
    rng = np.random.default_rng(seed)
    files = []
    for n in range(N_FRAMES):
        data = rng.poisson(50, SHAPE).astype(np.int32)
        data[rng.random(SHAPE) < 0.02] = -1
        if n == 8:
            data[44:47, 42:45] = 10**6
            data[45, 43] = 3 * 10**6
        path = folder / f"scan_{n:04d}.cbf"
        fabio.cbfimage.CbfImage(data=data).write(str(path))
        files.append(path)
    return files


def write_mask(folder: Path, seed: int = 1) -> Path:
    mask = (np.random.default_rng(seed).random(SHAPE) > 0.1).astype(np.int8)
    path = folder / "filter.edf"
    fabio.edfimage.EdfImage(data=mask).write(str(path))
    return path


def write_normalisation(folder: Path, files) -> Path:
    path = folder / "normalisation.dat"
    path.write_text("".join(f"{f} {1000.0 + 10 * i}\n" for i, f in enumerate(files)))
    return path


def simulate_and_harvest(spec: dict, folder: Path):
    """(truth, geometry, harvest dict for difframe.tds.fit.fit) of a simulated stack, harvested with its own
    DeltaQ and threshold."""
    from difframe.tds.config import geometry_of, read_tds_config
    from difframe.tds.harvest import HarvestOptions, harvest
    from difframe.tds.simulate import simulate

    truth = simulate(spec, folder)
    tds = read_tds_config(folder / "input.par")
    geometry = geometry_of(tds)
    options = HarvestOptions(delta_q_min=tds["DeltaQ_min"], delta_q_max=tds["DeltaQ_max"], threshold=tds["threshold"],
                             spots=np.array(tds["collectSpots"]), mask_file=str(folder / "filter.edf"),
                             normalisation_file=str(folder / "normalisation.dat"))
    result = harvest(geometry, [folder / f for f in truth["frames"]], options)
    data = {"Q": result.Q, "intensity": result.intensity, "spot": result.spot, "G": result.G, "hkl": result.hkl,
            "frame": result.frame, "pixel": result.pixel, "angle_increment": result.attrs["angle_increment_deg"],
            "delta_q": result.attrs["delta_q"]}
    return truth, geometry, data
