"""Harvest throughput: frames/s of the TDS harvest against plain fabio reading of the same files,
and 1 against 2 MPI ranks (targets: harvest <= 1.3x the reading time; 2 ranks >= 1.6x faster).

    .venv/bin/python benchmarks/tds_harvest.py [--frames 400] [--detector pilatus300k] [--repeat 5]

The frames are a synthetic Pilatus rotation stack (Poisson background, byte-offset CBF)
written to a temporary folder; up to 20 spots of MgO whose neighbourhoods cross the detector.
Reading, serial harvest, and harvests under ``mpiexec -n 1`` and ``-n 2`` are measured in turn,
``--repeat`` times; medians are printed with the machine's load average before and after.
A serial harvest (and one rank) reads in a helper thread when a core is free, so it already uses
part of a second core: on a 2-core machine that bounds what a second rank can add.
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


def time_harvest(files, shape, plugins, comm=None):
    """Seconds of one harvest call (the plugin manager exists already, as in ``difframe tds``)."""
    from difframe.tds.harvest import HarvestOptions, harvest

    geom = geometry(shape)
    options = HarvestOptions(delta_q_min=0.02, delta_q_max=0.15, threshold=1e6,
                             spots=visible_spots(geom, len(files), shape, 0.15 * geom.lattice.max_reciprocal))
    if comm is not None:
        comm.Barrier()
    start = time.perf_counter()
    result = harvest(geom, files, options, plugins, comm=comm)
    if comm is not None:
        comm.Barrier()
    return time.perf_counter() - start, result


def worker(folder: str, rows: int, cols: int) -> None:
    """Run under mpiexec: print the time of a second harvest call (the first warms imports and caches) on rank 0."""
    from difframe.manager import PluginManager
    from difframe.tds.workflow import mpi_comm

    comm, plugins = mpi_comm(), PluginManager()
    files = sorted(Path(folder).glob("bench_*.cbf"))
    time_harvest(files, (rows, cols), plugins, comm)
    elapsed, result = time_harvest(files, (rows, cols), plugins, comm)
    if comm is None or comm.Get_rank() == 0:
        print(f"{elapsed:.6f} {len(result.Q)}")


def mpi_time(folder, shape, ranks: int) -> tuple[float, int]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    done = subprocess.run([str(mpiexec), "-n", str(ranks), sys.executable, str(HERE), "--worker", str(folder),
                           str(shape[0]), str(shape[1])], capture_output=True, text=True, check=True)
    elapsed, points = done.stdout.split()
    return float(elapsed), int(points)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--detector", default="pilatus300k", help="a detector template name")
    parser.add_argument("--repeat", type=int, default=5, help="measurements of each kind (medians are shown)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    from difframe.manager import PluginManager

    plugins = PluginManager()
    shape = plugins.get("detector_template", args.detector).shape
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_stack(folder, shape, args.frames)
        print(f"before: {load()} on {os.cpu_count()} cores")
        time_reading(files)  # warm the page cache and imports
        time_harvest(files, shape, plugins)
        times: dict[str, list[float]] = {"read": [], "harvest": [], "1 rank": [], "2 ranks": []}
        for _ in range(args.repeat):  # interleaved, so that a load change hits every kind alike
            times["read"].append(time_reading(files))
            elapsed, result = time_harvest(files, shape, plugins)
            times["harvest"].append(elapsed)
            for ranks in (1, 2):
                elapsed, points = mpi_time(folder, shape, ranks)
                assert points == len(result.Q), (ranks, points, len(result.Q))
                times[f"{ranks} rank" + ("s" if ranks > 1 else "")].append(elapsed)
        median = {k: float(np.median(v)) for k, v in times.items()}
        print(f"after: {load()}")
        print(f"detector {args.detector} {shape[0]}x{shape[1]}, {args.frames} frames, {len(result.hkl)} spots, "
              f"{len(result.Q)} points; medians of {args.repeat}")
        for key, label in (("read", "fabio reading"), ("harvest", "harvest"), ("1 rank", "MPI 1 rank"),
                           ("2 ranks", "MPI 2 ranks")):
            spread = ", ".join(f"{t:.3f}" for t in sorted(times[key]))
            print(f"{label:14s}: {args.frames / median[key]:8.1f} frames/s ({median[key]:.3f} s; runs {spread})")
        print(f"harvest / reading time: {median['harvest'] / median['read']:.2f}  (target <= 1.30)")
        print(f"speed-up 2 ranks / 1 rank: {median['1 rank'] / median['2 ranks']:.2f}  (target >= 1.60)")


if __name__ == "__main__":
    main()
