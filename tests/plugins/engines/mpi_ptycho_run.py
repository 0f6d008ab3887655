"""One small DM + ML run of the simulated scan, as each MPI rank sees it (the MPI test starts it under mpiexec).

    mpiexec -n 2 python mpi_ptycho_run.py HOME

Prints one JSON line per rank: its rank, the frames it held and every file it
wrote, so the test can check the split and that only rank 0 writes.
"""

import json
import sys

import difframe
from difframe import Run, parallel
from difframe.manager import PluginManager
from difframe.ptycho import workflow
from difframe.types import RecipeSpec

from ptycho_truth import simulate


class TruthRecipe:
    @difframe.hookimpl
    def difframe_recipes(self):
        prep = simulate(photons=1e5)[0]
        yield RecipeSpec(name="truth", summary="simulated scan of the tests", prepare=lambda p, ctx: prep)


def run(home) -> dict:
    """Run DM 6 + ML 6 under ``home``; returns this rank's record (rank, frames held, files written)."""
    record = {"rank": parallel.world().rank, "frames": None, "writes": []}
    write_ptyr, save_png, run_engines = workflow.write_ptyr, workflow.plotting.save_png, workflow.run_engines

    def counting_write(path, *args, **kw):
        record["writes"].append(str(path))
        return write_ptyr(path, *args, **kw)

    def counting_png(path, *args, **kw):
        record["writes"].append(str(path))
        return save_png(path, *args, **kw)

    def noting_share(run, model, outputs):
        record["frames"] = model.scans[0].num_frames
        return run_engines(run, model, outputs)

    workflow.write_ptyr, workflow.plotting.save_png, workflow.run_engines = counting_write, counting_png, noting_share
    try:
        params = {
            "run": "mpi", "data_type": "double",
            "io": {"paths": {"home": str(home)}, "autosave": {"interval": 4}},
            "plotclient": {"dump_interval": 0},
            "scans": {"a": {"data": {"source": "truth"}}},
            "engines": {"e1": {"name": "DM", "numiter": 6, "numiter_contiguous": 2},
                        "e2": {"name": "ML", "numiter": 6, "numiter_contiguous": 3}},
        }
        record["results"] = {k: str(v) for k, v in Run(params, plugins=PluginManager(plugins=[TruthRecipe()])).run().items()}
    finally:
        workflow.write_ptyr, workflow.plotting.save_png, workflow.run_engines = write_ptyr, save_png, run_engines
    return record


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])), flush=True)
