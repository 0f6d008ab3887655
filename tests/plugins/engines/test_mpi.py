"""DM and ML split over two MPI ranks give the one-rank result; only rank 0 writes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from difframe.parallel import Ranks
from difframe.ptycho.ptyr import read_ptyr

import mpi_ptycho_run

HERE = Path(__file__).resolve().parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"


class FakeComm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shares_partition_the_frames_in_order(size):
    for n in (0, 1, 4, 49):
        shares = [Ranks(FakeComm(r, size)).share(n) if size > 1 else Ranks().share(n) for r in range(size)]
        held = [i for s in shares for i in range(n)[s]]
        assert held == list(range(n))
        assert max(len(range(n)[s]) for s in shares) - min(len(range(n)[s]) for s in shares) <= 1


def test_one_rank_reductions_return_their_input():
    ranks = Ranks()
    a = np.arange(6, dtype=np.complex64).reshape(2, 3)
    ranks.sum_arrays(a)
    ranks.broadcast_arrays(a)
    np.testing.assert_array_equal(a, np.arange(6).reshape(2, 3))
    assert ranks.sum(1.5, 2) == (1.5, 2.0) and ranks.any(True) and not ranks.any(False) and ranks.is_root


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec beside the interpreter")
def test_two_ranks_reproduce_one_rank_and_only_rank_0_writes(tmp_path):
    one = mpi_ptycho_run.run(tmp_path / "one")
    assert one["frames"] == 49 and one["rank"] == 0
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(HERE / "mpi_ptycho_run.py"), str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=120, cwd=HERE,
                          env={"PATH": str(MPIEXEC.parent), "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                     key=lambda r: r["rank"])
    assert [r["rank"] for r in records] == [0, 1]
    assert [r["frames"] for r in records] == [24, 25]  # each rank iterates over its own block
    assert records[1]["writes"] == [] and records[1]["results"] == {}
    assert [Path(p).relative_to(tmp_path / "two") for p in records[0]["writes"]] == \
        [Path(p).relative_to(tmp_path / "one") for p in one["writes"]]
    files = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    a = read_ptyr(records[0]["results"]["reconstruction"])
    b = read_ptyr(one["results"]["reconstruction"])
    for which in ("objects", "probes"):
        x, y = getattr(a, which)["a"]["data"], getattr(b, which)["a"]["data"]
        assert x.dtype == np.complex128
        assert np.linalg.norm(x - y) < 1e-9 * np.linalg.norm(y)
    errors = lambda r: np.array([i["error"] for i in r.iter_info])  # noqa: E731
    assert [i["engine"] for i in a.iter_info] == ["DM"] * 6 + ["ML"] * 6
    np.testing.assert_allclose(errors(a), errors(b), rtol=1e-9)
    np.testing.assert_array_equal(a.positions["a"], b.positions["a"])
