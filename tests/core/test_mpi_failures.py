"""A fault in one MPI rank's share ends the whole job at once, its message printed once, exit status as the CLI's.

Each test runs ``mpiexec -n 2`` with a timeout: before the last line of
defence (``difframe.parallel.end_job``: report, then ``MPI_Abort``) a rank
failing alone left the other waiting in a collective for ever.  Faults: a
corrupt chunk in rank 1's frames of a ``.ptyd``, DM raising on rank 1 in an
embedded ``difframe.Run``, a truncated frame in rank 1's block of a TDS
harvest and a frame of the wrong shape in rank 0's, a failure of the fit rank 0 runs after the harvest, an interaction
server that cannot listen (rank 0 alone runs it), a bad parameter every
rank meets, and Ctrl-C.  Garbage sent to the server of a two-rank run does not
end it.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpi_failures

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
WAIT = 60.0

pytestmark = pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec beside the interpreter")


def mpirun(*command, cwd: Path, wait: float = WAIT) -> subprocess.CompletedProcess:
    """``mpiexec -n 2 command`` (a timeout is a hang: the test fails)."""
    return subprocess.run([str(MPIEXEC), "-n", "2", *map(str, command)], capture_output=True, text=True, cwd=cwd,
                          timeout=wait, env={"PATH": str(BIN), "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1",
                                             "MPLBACKEND": "Agg", "HOME": str(cwd)})


def assert_one_message(proc: subprocess.CompletedProcess, status: int, *parts: str) -> str:
    """Exit ``status``; exactly one line holds every part; no traceback.  Returns that line."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == status, output[-3000:]
    lines = [line for line in output.splitlines() if all(p in line for p in parts)]
    assert len(lines) == 1, output[-3000:]
    assert output.count(parts[0]) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return lines[0]


@pytest.fixture
def scan(tmp_path) -> Path:
    mpi_failures.write_scan(tmp_path)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(mpi_failures.params(tmp_path)))
    return path


def test_a_corrupt_chunk_in_rank_1s_frames_is_one_message_from_every_rank(scan, tmp_path):
    ptyd = tmp_path / "scan.ptyd"
    with h5py.File(ptyd) as f:
        info = f["chunks/0/data"].id.get_chunk_info(mpi_failures.FRAMES - 1)  # the last frame: rank 1's block
    with open(ptyd, "r+b") as raw:
        raw.seek(info.byte_offset + 2)
        raw.write(b"\x00\xff" * (info.size // 2 - 1))
    proc = mpirun(BIN / "difframe", "run", scan, cwd=tmp_path)
    line = assert_one_message(proc, 1, f"{ptyd}:/chunks/0/data: cannot read")
    assert line.startswith("difframe run: error: ")
    assert not (tmp_path / "recons").exists()


def test_an_engine_failing_on_rank_1_of_an_embedded_run_ends_the_job(scan, tmp_path):
    proc = mpirun(sys.executable, HERE / "mpi_failures.py", scan, cwd=tmp_path)
    line = assert_one_message(proc, 1, mpi_failures.INJECTED)
    assert line == f"rank 1 of 2: RuntimeError: {mpi_failures.INJECTED}; ending every rank"


def test_a_server_that_cannot_listen_on_rank_0_ends_the_job(scan, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        port = taken.getsockname()[1]
        params = json.loads(scan.read_text())
        params["interaction"] = {"primary_address": "tcp://127.0.0.2", "primary_port": port,
                                 "port_range": f"{port}:{port}"}
        scan.write_text(json.dumps(params))
        proc = mpirun(BIN / "difframe", "run", scan, cwd=tmp_path)
    line = assert_one_message(proc, 2, f"interaction: port {port} and interaction.port_range")
    assert line.startswith("difframe run: error (rank 0 of 2): ")


def test_garbage_sent_to_the_server_does_not_end_a_two_rank_run_but_an_interrupt_does(scan, tmp_path):
    import zmq

    from difframe.ptycho import interaction as ia

    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    params = json.loads(scan.read_text())
    params["engines"]["e1"].update(numiter=10**6, numiter_contiguous=1)
    params["interaction"] = {"primary_address": "tcp://127.0.0.2", "primary_port": port}
    scan.write_text(json.dumps(params))
    address = f"tcp://127.0.0.2:{port}"
    proc = subprocess.Popen([str(MPIEXEC), "-n", "2", str(BIN / "difframe"), "run", str(scan)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={"PATH": str(BIN), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                                 "HOME": str(tmp_path)}, start_new_session=True)
    context = zmq.Context()
    try:
        with ia.InteractionClient(address, timeout=WAIT) as client:
            first = client.status()["iteration"]
            dealer = context.socket(zmq.DEALER)  # a frame without the REQ envelope, then random bytes
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(address)
            dealer.send(b'{"cmd": "status"}')
            dealer.send(random.Random(1).randbytes(4096))
            raw = socket.create_connection(("127.0.0.2", port), timeout=WAIT)
            raw.sendall(os.urandom(1 << 16))
            raw.close()
            dealer.close()
            time.sleep(0.5)
            later = client.status()["iteration"]
        proc.send_signal(signal.SIGINT)  # Ctrl-C: mpiexec passes it on to both ranks
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:  # mpiexec and the ranks it started
            os.killpg(proc.pid, signal.SIGKILL)
        context.term()
    assert later > first  # the run went on iterating
    assert proc.returncode == 130, err[-3000:]
    assert err.count("difframe: interrupted") == 1 and "Traceback" not in err, err[-3000:]


def test_a_launcher_without_mpi4py_is_a_usage_error_and_fails_nothing_else(monkeypatch):
    from difframe import parallel
    from difframe.errors import UsageError

    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(UsageError, match="started by an MPI launcher but mpi4py is not installed"):
        parallel.world()
    assert not parallel.stranded(RuntimeError("a failure")) and parallel.reports(RuntimeError("a failure"))


def test_a_bad_parameter_every_rank_meets_is_printed_once(scan, tmp_path):
    proc = mpirun(BIN / "difframe", "run", scan, "-p", "engines.e1.numiter=-1", cwd=tmp_path)
    line = assert_one_message(proc, 2, "engines.e1.numiter")
    assert line.startswith("difframe run: error (rank 0 of 2): ")


# -- TDS -----------------------------------------------------------------------------------------------------------

CONF = """\
lmbda = 0.7
dist = 60.0
pixel_size = 1.2
det_origin_X = 20.0
det_origin_Y = 30.0
AA = BB = CC = 4.212
angular_step = 1.0
phi = -10.0
r1 = 12.0
r2 = -7.0
r3 = 31.0
DeltaQ_max = 0.3
DeltaQ_min = 0.05
save_to_file = "harvest.h5"
threshold = 500000.0
collectSpots = [[-1, -1, 1], [-2, -2, -1], [0, 0, -1], [1, 1, 1]]
"""

INPUT = """\
conf_file = "tds2el.par"
filter_file = "filter.edf"
images_prefix = "scan_"
images_postfix = ".cbf"
ascii_generators = "1~,4(z),3(111)"
"""


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    sys.path.insert(0, str(HERE / "tds"))
    try:
        import harvest_support as hs
    finally:
        sys.path.remove(str(HERE / "tds"))
    folder = tmp_path_factory.mktemp("frames")
    hs.write_scan(folder)
    hs.write_mask(folder)
    return folder


@pytest.fixture
def experiment(frames, tmp_path) -> Path:
    folder = tmp_path / "tds"
    shutil.copytree(frames, folder)
    (folder / "tds2el.par").write_text(CONF)
    (folder / "input.par").write_text(INPUT)
    return folder


@pytest.mark.parametrize("number, fault, rank", [(30, "truncated", 1), (5, "wrong shape", 0)])
def test_a_bad_frame_in_one_ranks_harvest_block_ends_the_job(experiment, number, fault, rank):
    import fabio

    frame = experiment / f"scan_{number:04d}.cbf"  # 40 frames: rank 0 harvests 0..19, rank 1 20..39
    if fault == "truncated":
        frame.write_bytes(frame.read_bytes()[:-2000])
    else:
        fabio.cbfimage.CbfImage(data=np.ones((40, 56), np.int32)).write(str(frame))
    proc = mpirun(BIN / "difframe", "tds", experiment / "input.par", cwd=experiment)
    line = assert_one_message(proc, 1, str(frame))
    assert line.startswith(f"difframe tds: error (rank {rank} of 2): ")
    if fault == "wrong shape":
        assert line.endswith(f"{frame} is 40 x 56, the first frame {experiment / 'scan_0000.cbf'} is 48 x 56")
    assert not (experiment / "harvest.h5").exists()


def test_a_fit_failing_on_rank_0_after_the_harvest_ends_the_job(experiment):
    (experiment / "tds2el.par").write_text(CONF + 'CGUESS = {"C11": [297.0, 200.0, 400.0], "A12": [95.0, 0.0, 300.0], '
                                                  '"A44": [150.0, 1.0, 400.0]}\nminimiser = "nosuch"\n')
    proc = mpirun(BIN / "difframe", "tds", experiment / "input.par", cwd=experiment)
    line = assert_one_message(proc, 2, "nosuch")
    assert line.startswith("difframe tds: error (rank 0 of 2): ")
    assert (experiment / "harvest.h5").is_file()  # the harvest before the fit was written


def test_a_fit_of_a_saved_harvest_under_mpiexec_runs_once(experiment):
    """load_from_file: the fit is one process's work; a second rank neither fits again nor writes the files."""
    cguess = 'CGUESS = {"C11": [297.0, 200.0, 400.0], "A12": [95.0, 0.0, 300.0], "A44": [150.0, 1.0, 400.0]}\n'
    from difframe.run import Run
    from difframe.tds.config import read_tds_config

    (experiment / "tds2el.par").write_text(CONF + "DO_ELASTIC = 1\n")
    Run({"tds": {**read_tds_config(experiment / "input.par"), "output_directory": str(experiment)}}).run()
    assert (experiment / "harvest.h5").is_file()  # the saved harvest (made here: the fit under mpiexec is the test)
    (experiment / "tds2el.par").write_text(CONF.replace('save_to_file = "harvest.h5"', 'load_from_file = "harvest.h5"')
                                           + cguess)
    env = {"PATH": f"{BIN}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1", "HOME": str(experiment)}
    proc = subprocess.run([str(MPIEXEC), "-n", "2", str(BIN / "difframe"), "tds", str(experiment / "input.par")],
                          capture_output=True, text=True, cwd=experiment, timeout=WAIT, env=env)  # PoCL links with ld
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert output.count("Elastic constants [GPa]") == 1, output[-3000:]  # one fit's report: rank 1 fits nothing
    assert (experiment / "fit_results.json").is_file()
