"""Inputs of test_mpi_failures, and the embedded run whose engine fails on one rank only.

    mpiexec -n 2 python mpi_failures.py PARAMS.json

runs ``difframe.Run(PARAMS).run()`` (no CLI) with DM raising ``RuntimeError`` in
its second block of iterations on rank 1 alone, while rank 0 is in that
block's all-reduce, waiting for rank 1.
"""

import json
import sys
from pathlib import Path

import numpy as np

FRAMES, SIDE = 12, 24
INJECTED = "DM failed on rank 1 (injected fault)"


def write_scan(folder: Path) -> Path:
    """scan.ptyd: FRAMES frames of an off-centre spot at random positions, one gzip chunk per frame."""
    from difframe.ptycho.data import PreparedData
    from difframe.ptycho.ptyd import write_ptyd

    rng = np.random.default_rng(3)
    y, x = np.indices((SIDE, SIDE))
    spot = 400 * np.exp(-((y - 11.4) ** 2 + (x - 12.2) ** 2) / 8.0)
    frames = rng.poisson(spot * rng.uniform(0.5, 1.5, (FRAMES, 1, 1))).astype(np.float32)
    prepared = PreparedData(label="scan", data=frames, mask=np.ones((SIDE, SIDE), bool),
                            positions=rng.uniform(-1e-6, 1e-6, (FRAMES, 2)), energy_kev=6.2, distance_m=7.19,
                            psize_m=(172e-6, 172e-6), center=(12, 12))
    return write_ptyd(folder / "scan.ptyd", prepared)


def params(folder: Path, numiter: int = 6, **extra) -> dict:
    """DM on scan.ptyd, results under ``folder``, no pictures or autosaves."""
    return {"run": "fault", "io": {"paths": {"home": str(folder)}, "autosave": {"active": False}},
            "plotclient": {"dump": False},
            "scans": {"scan": {"data": {"source": "file", "dfile": str(folder / "scan.ptyd")},
                               "geometry": {"energy": 6.2, "distance": 7.19, "psize": 172e-6}}},
            "engines": {"e1": {"name": "DM", "numiter": numiter, "numiter_contiguous": 2}}, **extra}


def fail_on_rank_1() -> None:
    """DM's second call of ``iterate`` raises on rank 1; rank 0 iterates on into the block's collectives."""
    from difframe import parallel
    from difframe.plugins.engines import dm

    iterate, calls = dm.DifferenceMap.iterate, []

    def failing(self, n):
        calls.append(n)
        if len(calls) == 2 and parallel.world().rank == 1:
            raise RuntimeError(INJECTED)
        return iterate(self, n)

    dm.DifferenceMap.iterate = failing


if __name__ == "__main__":
    from difframe import Run

    fail_on_rank_1()
    Run(json.loads(Path(sys.argv[1]).read_text())).run()
