"""Harvest throughput: frames/s of the TDS harvest against plain fabio reading of the same files,
and 1 against 2 MPI ranks (targets: harvest <= 1.3x the reading time; 2 ranks >= 1.6x faster).

    .venv/bin/python benchmarks/tds_harvest.py [--frames 60] [--detector pilatus2m]

The frames are a synthetic Pilatus rotation stack (Poisson background, byte-offset CBF)
written to a temporary folder; 20 spots of MgO whose neighbourhoods cross the detector.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def geometry(shape):
    from difframe.crystal.geometry import Geometry

    return Geometry(lmbda=0.7, dist=150.0, pixel_size=0.172, det_origin_X=shape[1] / 2, det_origin_Y=shape[0] / 2,
                    AA=4.212, BB=4.212, CC=4.212, angular_step=0.1, r1=10.0, r2=20.0, r3=30.0,
                    dim1=shape[0], dim2=shape[1])


def visible_spots(geom, n_frames, shape, r_max, count=20):
    """hkl whose r_max neighbourhood meets the detector during the scan, nearest to the middle frame first."""
    grid = np.array([[h, k, l] for h in range(-5, 6) for k in range(-5, 6) for l in range(-5, 6) if h or k or l])
    g_c = geom.lattice.q(grid)
    frames = np.arange(n_frames)
    g_lab = np.einsum("fji,sj->fsi", geom.lab_to_crystal(frames), g_c)  # (F, S, 3)
    k_out = geom.k_in + g_lab
    off_sphere = np.abs(np.linalg.norm(k_out, axis=-1) - geom.k)
    row, col = geom.lab_to_pixel(k_out)
    seen = (off_sphere < 0.5 * r_max) & (row > 0) & (row < shape[0] - 1) & (col > 0) & (col < shape[1] - 1)
    order = np.argsort(-seen.sum(axis=0))
    return grid[order[: count]][seen[:, order[:count]].any(axis=0)]


def write_stack(folder: Path, shape, n_frames: int) -> list[Path]:
    import fabio

    rng = np.random.default_rng(0)
    files = []
    for n in range(n_frames):
        data = rng.poisson(20, shape).astype(np.int32)
        path = folder / f"bench_{n:05d}.cbf"
        fabio.cbfimage.CbfImage(data=data).write(str(path))
        files.append(path)
    return files


def time_reading(files) -> float:
    import fabio

    start = time.perf_counter()
    for f in files:
        fabio.open(str(f)).data  # noqa: B018
    return time.perf_counter() - start


def time_harvest(files, shape, comm=None):
    from difframe.tds.harvest import HarvestOptions, harvest

    geom = geometry(shape)
    options = HarvestOptions(delta_q_min=0.02, delta_q_max=0.15, threshold=1e6,
                             spots=visible_spots(geom, len(files), shape, 0.15 * geom.lattice.max_reciprocal))
    if comm is not None:
        comm.Barrier()
    start = time.perf_counter()
    result = harvest(geom, files, options, comm=comm)
    if comm is not None:
        comm.Barrier()
    return time.perf_counter() - start, result


def worker(folder: str, rows: int, cols: int) -> None:
    """Run under mpiexec: print the harvest time of this many ranks (rank 0)."""
    from difframe.tds.workflow import mpi_comm

    comm = mpi_comm()
    files = sorted(Path(folder).glob("bench_*.cbf"))
    elapsed, result = time_harvest(files, (rows, cols), comm)
    if comm is None or comm.Get_rank() == 0:
        print(f"{elapsed:.6f} {len(result.Q)}")


def mpi_time(folder, shape, ranks: int) -> tuple[float, int]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    done = subprocess.run([str(mpiexec), "-n", str(ranks), sys.executable, str(HERE), "--worker", str(folder),
                           str(shape[0]), str(shape[1])], capture_output=True, text=True, check=True)
    elapsed, points = done.stdout.split()
    return float(elapsed), int(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--detector", default="pilatus300k", help="a detector template name")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    from difframe.manager import PluginManager

    shape = PluginManager().get("detector_template", args.detector).shape
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_stack(folder, shape, args.frames)
        time_reading(files[:4])  # warm the page cache and imports
        reading = min(time_reading(files) for _ in range(2))
        harvesting, result = min((time_harvest(files, shape) for _ in range(2)), key=lambda r: r[0])
        print(f"detector {args.detector} {shape[0]}x{shape[1]}, {args.frames} frames, {len(result.hkl)} spots, "
              f"{len(result.Q)} points")
        print(f"fabio reading : {args.frames / reading:8.1f} frames/s ({reading:.3f} s)")
        print(f"harvest       : {args.frames / harvesting:8.1f} frames/s ({harvesting:.3f} s)")
        print(f"harvest / reading time: {harvesting / reading:.2f}  (target <= 1.30)")
        one, n1 = mpi_time(folder, shape, 1)
        two, n2 = mpi_time(folder, shape, 2)
        assert n1 == n2 == len(result.Q), (n1, n2, len(result.Q))
        print(f"MPI 1 rank    : {args.frames / one:8.1f} frames/s ({one:.3f} s)")
        print(f"MPI 2 ranks   : {args.frames / two:8.1f} frames/s ({two:.3f} s)")
        print(f"speed-up 2 ranks / 1 rank: {one / two:.2f}  (target >= 1.60; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
