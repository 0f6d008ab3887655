"""Under mpiexec each rank loads only its share of the frames, yet every all-frame answer is one rank's.

One mpiexec launch of ``mpi_loading.py`` (2 ranks) is compared with the same
script run in this process (one rank, all frames): the rank's frames are the
one-rank frames of its block, the auto centre, positions, statistics, NaN
report and written ``.ptyd`` files are the same, and an interaction client's
``set`` reaches both ranks.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from difframe.ptycho import interaction as ia

import mpi_loading

HERE = Path(__file__).resolve().parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
WAIT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


def h5_content(path: Path) -> dict:
    """Every dataset (values) and every node's attributes of an HDF5 file, external links followed."""
    content = {}
    with h5py.File(path) as f:
        for name in _names(f):
            node = f[name]
            content[name + "@"] = {k: str(v) for k, v in node.attrs.items()}
            if isinstance(node, h5py.Dataset):
                content[name] = node[()]
    return content


def _names(group, prefix=""):
    for key in group:
        yield prefix + key
        if isinstance(group[key], h5py.Group):
            yield from _names(group[key], prefix + key + "/")


def assert_same_h5(a: Path, b: Path) -> None:
    """Same nodes, attributes and values; ``info/dfile`` names each file's own folder."""
    x, y = h5_content(a), h5_content(b)
    assert sorted(x) == sorted(y)
    for key in x:
        if key == "info/dfile":
            assert (x[key].decode(), y[key].decode()) == (str(a), str(b))
        elif key.endswith("@"):
            assert x[key] == y[key], key
        else:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-rank record, the two ranks' records, their folders, the client's answers)."""
    if not MPIEXEC.exists():
        pytest.skip("no mpiexec beside the interpreter")
    base = tmp_path_factory.mktemp("mpi_loading")
    inputs, one, two = base / "in", base / "one", base / "two"
    for d in (inputs, one, two):
        d.mkdir()
    mpi_loading.make_inputs(inputs)
    single = mpi_loading.load(inputs, one)
    port = free_port()
    proc = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, str(HERE / "mpi_loading.py"), str(inputs),
                             str(two), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=HERE, env={"PATH": str(MPIEXEC.parent), "PYTHONPATH": str(HERE),
                                           "OMP_NUM_THREADS": "1"})
    try:
        with ia.InteractionClient(f"tcp://127.0.0.2:{port}", timeout=WAIT) as client:
            i = client.status()["iteration"]
            answers = {"iteration": i, "alpha": client.set("engines.e1.alpha", 2),
                       "numiter": client.set("engines.e1.numiter", i + 3)}
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    records = sorted((json.loads(line) for line in out.splitlines() if line.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in records] == [0, 1]
    return single, records, (one, two), answers


def test_each_rank_reads_and_holds_only_its_share(runs):
    single, records, _, _ = runs
    sims = single["s"]["frames"]
    assert single["loaded"] == {"f": [[0, 13]], "c": [[0, 13]], "h": [[0, 13]], "s": [[0, sims]]}
    assert [r["loaded"] for r in records] == [{"f": [[0, 6]], "c": [[0, 6]], "h": [[0, 6]], "s": [[0, sims // 2]]},
                                              {"f": [[6, 13]], "c": [[6, 13]], "h": [[6, 13]],
                                               "s": [[sims // 2, sims]]}]
    for label, n in (("f", 13), ("c", 13), ("h", 13), ("s", sims)):
        assert [r[label]["held"] for r in records] == [n // 2, n - n // 2]
        assert [r[label]["first"] for r in records] == [0, n // 2]
        assert all(r[label]["frames"] == n for r in records)


def test_shares_are_the_one_rank_frames_and_all_frame_answers_agree(runs):
    single, records, (one, two), _ = runs
    ref = np.load(one / "rank0.npz")
    ranks = [np.load(two / f"rank{r}.npz") for r in (0, 1)]
    for label in ("f", "c", "h", "s"):
        np.testing.assert_array_equal(np.concatenate([r[f"{label}_data"] for r in ranks]), ref[f"{label}_data"])
        np.testing.assert_array_equal(np.concatenate([r[f"{label}_mask"] for r in ranks]), ref[f"{label}_mask"])
        for r, rec in zip(ranks, records):
            np.testing.assert_array_equal(r[f"{label}_positions"], ref[f"{label}_positions"])
            np.testing.assert_allclose(r[f"{label}_totals"], ref[f"{label}_totals"], rtol=1e-12)
            np.testing.assert_allclose(r[f"{label}_mean"], ref[f"{label}_mean"], rtol=1e-12)
            assert rec[label]["center"] == pytest.approx(single[label]["center"], rel=1e-12)
    assert single["f"]["center"] != pytest.approx([8.0, 8.0], abs=0.1)  # the auto centre moved the crop
    assert not ref["c_mask"].all() and not ref["s_mask"].all()  # per-frame masks were read and simulated
    assert single["nan_error"] == ["DataError", f"{Path(one).parent / 'in' / 'nan.ptyd'}: frames [11] contain NaN "
                                                "or infinity"]
    assert all(r["nan_error"] == single["nan_error"] for r in records)  # found by rank 1, raised by both


def test_ptyd_written_from_shares_is_the_one_rank_file(runs):
    _, _, (one, two), _ = runs
    for name in ("cxi.ptyd", "sim.ptyd", "chunked.ptyd"):
        assert_same_h5(two / name, one / name)
    assert (two / "sim.ptyd.chunk00").is_file()
    with h5py.File(two / "chunked.ptyd") as f:
        assert len(f["chunks"]) == 9 and f["chunks/4/data"].dtype == np.int32
    assert sorted(p.name for p in two.iterdir() if ".ptyd" in p.name) == \
        sorted(p.name for p in one.iterdir() if ".ptyd" in p.name)


def test_interaction_set_is_queued_then_applied_on_every_rank(runs):
    _, records, _, answers = runs
    i = answers["iteration"]
    assert answers["alpha"] == {"ok": True, "path": "engines.e1.alpha", "value": 2, "state": "queued"}
    assert answers["numiter"]["state"] == "queued" and answers["numiter"]["value"] == i + 3
    assert [r["steered"] for r in records] == [{"iterations": i + 3, "numiter": i + 3, "alpha": 2}] * 2
