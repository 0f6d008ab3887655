"""difframe's ePIE, rPIE and mPIE against PtyLab's own ePIE: seconds per epoch on the same frames, and object errors.

    .venv/bin/python benchmarks/ptylab_epie.py [--frames 161 1000] [--rounds 7] [--epochs 60] [--photons 1e8]
                                               [--ptylab /work/bench-ptylab/bin/python] [--skip-speed]

PtyLab is not a difframe dependency: it lives in a benchmark-only virtual
environment outside the repository,

    python3 -m venv /work/bench-ptylab && /work/bench-ptylab/bin/pip install ptylab==0.3.7

(CPU only: its GPU path is the optional ``gpu`` extra, cupy, not installed).
This script runs itself a second time with that environment's python as a
worker (``--worker``): the frames, positions and starting probe and object
go to it in one HDF5 file in PtyLab's own input layout (``ptychogram``,
``encoder``, ``wavelength``, ``dxd``, ``zo``, plus the starting guesses and
difframe's window corners), commands and answers are JSON lines on its
standard input and output, results come back as ``.npz`` read without
pickle.

1. Speed, on benchmarks/ptycho_engines.py's problem (161 and 1000 far-field
   frames of 128 x 128, one probe mode, one object mode): PtyLab's ePIE
   (``Engines.ePIE`` driven through ``reconstruct_stepwise``, one epoch =
   every frame's yield, which includes the previous epoch's error metric and
   constraints) with ``fftshiftSwitch`` on (its fast far-field path: data
   shifted once, no shifts around each FFT) and with its defaults (a
   ``fftshift``/``ifftshift`` pair around every FFT), and difframe's
   ePIE/rPIE/mPIE, the five taking turns one epoch each per round after
   three warm-up epochs (benchmarks/ptycho_new_engines.py's
   ``interleaved_samples``).  Printed: median wall seconds per epoch, the
   spread (min..max), the median CPU seconds (each side's process; both
   epochs are single-threaded, so on a loaded machine these estimate the
   idle machine's wall time), and difframe / PtyLab as the ratio of medians,
   as the median and range of the per-round ratios, and in CPU time.
   Target: <= 0.5.
2. Quality, on benchmarks/ptycho_textbook.py's moonflower-like scan with
   known truth (161 frames, Poisson counts): PtyLab's ePIE at its default
   steps (betaObject = betaProbe = 0.25) and at 1 (PtyLab visits the frames
   in file order in its first two epochs, randomly after), at 0.25 also in a
   random order from the first epoch as difframe does, and difframe's engines,
   the same number of epochs from the same starting probe and object (the
   flow's); difframe's ePIE also "as PtyLab" (the same steps, the probe
   moving from the first epoch, no probe support), and DM as the issue's
   yardstick.  Errors after removing a global factor, shift and phase ramp
   (difframe.ptycho.quality.truth_errors).

What the two do per frame: the same pods (one probe x one object window),
one forward and one inverse unitary FFT, the modulus projection, object and
probe updated from their old values with the max|P|^2 and max|O|^2
denominators.  Bookkeeping differs: PtyLab stores |I - I_model| per pixel of
every frame and sums it per epoch; difframe sums the amplitude error and
the Poisson deviance per frame and applies the probe support (0.7) after
each epoch.  Both single precision (PtyLab: complex64 object and probe,
float32 frames as written here); both run the sequential epoch on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

PTYLAB_PYTHON = "/work/bench-ptylab/bin/python"
WAVELENGTH, DISTANCE, PIXEL = 1.99975e-10, 7.19, 172e-6  # 6.2 keV; the geometry of both problems


# ---------------------------------------------------------------------------------------------------------------
# the worker: runs in PtyLab's environment, imports nothing of difframe


class _PtyLabRun:
    """One PtyLab ePIE reconstruction from the file's frames and starting guesses, stepped an epoch at a time."""

    def __init__(self, path: str, fftshift: bool, beta_object: float, beta_probe: float, epochs: int, seed: int,
                 shuffle_from_start: bool = False):
        from PtyLab import Engines, ExperimentalData, Params, Reconstruction
        from PtyLab.Monitor.Monitor import DummyMonitor

        with h5py.File(path, "r") as f:
            corners = f["difframe_corners"][()]
            probe0, obj0 = f["init_probe"][()], f["init_object"][()]
        data = ExperimentalData(path, "CPM")
        params = Params()
        params.positionOrder = "random"  # PtyLab: the first two epochs in file order, then shuffled
        params.propagatorType = "Fraunhofer"
        params.fftshiftSwitch = bool(fftshift)
        rec = Reconstruction(data, params)
        rec.initializeObjectProbe()
        offset = np.asarray(rec.positions) - corners
        if not (offset == offset[0]).all():
            raise RuntimeError(f"{path}: PtyLab's windows are not difframe's shifted by one offset")
        self.offset, self.shape = offset[0], obj0.shape
        rec.probe = probe0.astype(np.complex64).reshape(rec.probe.shape)
        obj = np.ones(rec.object.shape, np.complex64)
        mine, theirs = self._overlap(obj.shape[-2:])
        obj[..., theirs[0], theirs[1]] = obj0[mine]
        rec.object = obj
        self.rec, self.frames = rec, data.numFrames
        engine = Engines.ePIE(rec, data, params, DummyMonitor())
        engine.numIterations = int(epochs)
        engine.betaObject, engine.betaProbe = float(beta_object), float(beta_probe)
        if shuffle_from_start:  # PtyLab visits the frames in file order while its error history is shorter than 2
            rec.error = np.zeros(2)
        np.random.seed(seed)
        self.steps = engine.reconstruct_stepwise()

    def _overlap(self, their_shape):
        """(difframe slices, PtyLab slices) of the object pixels both frames hold."""
        mine, theirs = [], []
        for off, n_mine, n_theirs in zip(self.offset, self.shape, their_shape):
            lo, hi = max(0, -off), min(n_mine, n_theirs - off)
            mine.append(slice(lo, hi))
            theirs.append(slice(lo + off, hi + off))
        return tuple(mine), tuple(theirs)

    def epochs(self, n: int) -> tuple[float, float]:
        """(wall, CPU) seconds of ``n`` epochs."""
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(n * self.frames):
            next(self.steps)
        return time.perf_counter() - start, time.process_time() - start_cpu

    def finish(self) -> float:
        """Run to the end (the last epoch's error metric and constraints)."""
        start = time.perf_counter()
        for _ in self.steps:
            pass
        return time.perf_counter() - start

    def save(self, path: str) -> None:
        obj = np.ones(self.shape, np.complex64)
        mine, theirs = self._overlap(self.rec.object.shape[-2:])
        obj[mine] = np.asarray(self.rec.object)[0, 0, 0, 0][theirs]
        np.savez(path, object=obj, probe=np.asarray(self.rec.probe)[0, 0, 0, 0],
                 error=np.asarray(self.rec.error, float))


def worker(path: str) -> None:
    """Answer JSON-line commands on stdin; PtyLab's own prints go to stderr."""
    proto, sys.stdout = sys.stdout, sys.stderr
    import PtyLab
    from importlib.metadata import version

    runs = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        op, name = cmd["op"], cmd.get("name")
        if op == "start":
            runs[name] = _PtyLabRun(path, cmd["fftshift"], cmd["beta_object"], cmd["beta_probe"], cmd["epochs"],
                                    cmd.get("seed", 0), cmd.get("shuffle_from_start", False))
            answer = {"version": version("ptylab"), "module": PtyLab.__file__, "numpy": np.__version__}
        elif op == "epochs":
            wall, cpu = runs[name].epochs(int(cmd["n"]))
            answer = {"seconds": wall, "cpu": cpu}
        elif op == "finish":
            answer = {"seconds": runs[name].finish()}
        elif op == "save":
            runs[name].save(cmd["path"])
            answer = {}
        elif op == "drop":
            runs.pop(name, None)
            answer = {}
        elif op == "quit":
            break
        else:
            raise ValueError(f"unknown command {op!r}")
        proto.write(json.dumps(answer) + "\n")
        proto.flush()


# ---------------------------------------------------------------------------------------------------------------
# the parent: difframe's side


def write_frames(path: Path, scan, probe: np.ndarray, obj: np.ndarray) -> None:
    """One scan's frames, windows and starting guesses as PtyLab's CPM input file (centred frames, encoder in
    metres: the corners times PtyLab's object pixel, centred so its object frame holds every window)."""
    n, h, w = scan.intensity.shape
    if h != w:
        raise ValueError(f"PtyLab needs square frames, {scan.label!r} has {h} x {w}")
    dxo = WAVELENGTH * DISTANCE / (h * PIXEL)
    corners = np.asarray(scan.corners, np.int64)
    centre = (corners.min(axis=0) + corners.max(axis=0)) // 2
    with h5py.File(path, "w") as f:
        f["ptychogram"] = np.fft.fftshift(scan.intensity, axes=(-2, -1)).astype(np.float32)
        f["encoder"] = (corners - centre) * dxo
        f["wavelength"], f["dxd"], f["zo"] = WAVELENGTH, PIXEL, DISTANCE
        f["difframe_corners"] = corners
        f["init_probe"] = np.asarray(probe, np.complex64)
        f["init_object"] = np.asarray(obj, np.complex64)


class Worker:
    """The PtyLab worker process for one frames file."""

    def __init__(self, python: str, frames: Path):
        if not Path(python).exists():
            raise FileNotFoundError(f"--ptylab {python}: no such interpreter (make the venv: see this script's doc)")
        self.log = open(frames.with_suffix(".log"), "w+")
        env = dict(os.environ, TQDM_DISABLE="1", MPLBACKEND="Agg")
        self.proc = subprocess.Popen([python, __file__, "--worker", str(frames)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"PtyLab worker died on {cmd}:\n{self.log.read()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


class PtyLabEngine:
    """PtyLab's ePIE in the worker, with the engine protocol (initialize, iterate, finalize) of difframe's
    engines, so that benchmarks/ptycho_new_engines.py's interleaved timing takes it as one of them."""

    def __init__(self, worker: Worker, name: str, epochs: int, fftshift: bool = True, beta_object: float = 0.25,
                 beta_probe: float = 0.25, seed: int = 0, shuffle_from_start: bool = False):
        self.worker, self.name = worker, name
        self.settings = dict(fftshift=fftshift, beta_object=beta_object, beta_probe=beta_probe, epochs=epochs,
                             seed=seed, shuffle_from_start=shuffle_from_start)
        self.info = {}

    def initialize(self) -> None:
        self.info = self.worker.call(op="start", name=self.name, **self.settings)

    def iterate(self, n: int) -> tuple[float, float]:
        """(wall, CPU) seconds of ``n`` epochs, as the worker timed them."""
        answer = self.worker.call(op="epochs", name=self.name, n=n)
        return answer["seconds"], answer["cpu"]

    def finish(self) -> float:
        return self.worker.call(op="finish", name=self.name)["seconds"]

    def result(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        self.worker.call(op="save", name=self.name, path=str(path))
        with np.load(path, allow_pickle=False) as z:
            return z["object"], z["probe"]

    def finalize(self) -> dict:
        self.worker.call(op="drop", name=self.name)
        return {}


def ptylab_engines(worker: Worker, epochs: int) -> dict:
    """The two PtyLab columns of the speed table: its fast far-field path and its defaults."""
    return {"PtyLab ePIE": PtyLabEngine(worker, "fast", epochs, fftshift=True),
            "PtyLab ePIE (defaults)": PtyLabEngine(worker, "defaults", epochs, fftshift=False)}


def speed(frames_list, rounds: int, python: str, home: Path) -> None:
    from ptycho_engines import problem
    from ptycho_new_engines import engine_params, fresh_model, interleaved_samples

    print(f"1. seconds per epoch, far field 128 x 128, one probe and one object mode, complex64; {rounds} rounds "
          f"after 3 warm-up epochs, engines taking turns; load average at start {os.getloadavg()[0]:.1f}")
    for frames in frames_list:
        prep, probe = problem(frames, 128, 1)
        model = fresh_model(prep, probe)
        (scan,) = model.scans
        path = home / f"frames{frames}.h5"
        write_frames(path, scan, model.probes["bench"].data[0], model.objects["bench"].data[0])
        del model, scan
        worker = Worker(python, path)
        try:
            engines = ptylab_engines(worker, rounds + 5)
            for name in ("ePIE", "rPIE", "mPIE"):
                spec, p = engine_params(name, 100, home)
                engines[name] = spec.factory(p, fresh_model(prep, probe))
            samples, cpu = interleaved_samples(engines, rounds)
            info = engines["PtyLab ePIE"].info
        finally:
            worker.close()
        print(f"  {frames} frames (PtyLab {info['version']}, numpy {info['numpy']}; load average now "
              f"{os.getloadavg()[0]:.1f}); wall s/epoch median (min..max), CPU s/epoch median:")
        for name, t in samples.items():
            line = f"    {name:23s} {np.median(t):7.3f} ({t.min():.3f}..{t.max():.3f})  CPU {np.median(cpu[name]):6.3f}"
            if not name.startswith("PtyLab"):
                ref, ref_default = samples["PtyLab ePIE"], samples["PtyLab ePIE (defaults)"]
                per_round = t / ref
                line += (f"   / PtyLab ePIE {np.median(t) / np.median(ref):.3f} [per round {np.median(per_round):.3f},"
                         f" {per_round.min():.3f}..{per_round.max():.3f}], CPU "
                         f"{np.median(cpu[name]) / np.median(cpu['PtyLab ePIE']):.3f};"
                         f" / defaults {np.median(t) / np.median(ref_default):.3f}")
            print(line)
    print("  target: difframe epoch / PtyLab ePIE epoch <= 0.5")


def quality(epochs: int, iterations: int, photons: float, python: str, home: Path) -> None:
    from difframe import Run
    from difframe.plugins.recipes.sim import simulate
    from difframe.ptycho import workflow
    from difframe.ptycho.quality import truth_errors
    from ptycho_new_engines import reconstruct
    from ptycho_textbook import parameters

    print(f"2. moonflower-like scan, 161 frames of 128 x 128, {photons:.0e} photons per frame (Poisson); "
          f"{epochs} epochs, DM {iterations} iterations, the flow's starting probe and object")
    run = Run(parameters(photons, {"e": ("ePIE", epochs)}, home))
    truth = simulate(run.params.scans.sim, run.scan_context("sim")).meta["truth"]
    prepared = workflow.prepare_scans(run)
    model = workflow.build_run_model(run, prepared)
    (scan,) = model.scans
    masked = int((np.asarray(scan.weights) == 0).sum())
    path = home / "moonflower.h5"
    write_frames(path, scan, model.probes["sim"].data[0], model.objects["sim"].data[0])
    corners = scan.corners
    del model, scan
    rows = []
    worker = Worker(python, path)
    try:
        for step, shuffled in ((0.25, False), (1.0, False), (0.25, True)):
            engine = PtyLabEngine(worker, f"q{step}{shuffled}", epochs, beta_object=step, beta_probe=step,
                                  shuffle_from_start=shuffled)
            engine.initialize()
            elapsed = engine.finish()
            obj, probe = engine.result(home / f"q{step}{shuffled}.npz")
            label = f"PtyLab ePIE, steps {step:g}" + (", random order from epoch 1" if shuffled else "")
            rows.append((label, truth_errors(obj, probe, corners, truth), elapsed))
            engine.finalize()
    finally:
        worker.close()
    like_ptylab = {"alpha": 0.25, "beta": 0.25, "probe_update_start": 0, "probe_support": None}
    for label, name, n, extra in (("difframe ePIE as PtyLab", "ePIE", epochs, like_ptylab),
                                  ("difframe ePIE", "ePIE", epochs, None), ("difframe rPIE", "rPIE", epochs, None),
                                  ("difframe mPIE", "mPIE", epochs, None), ("difframe DM", "DM", iterations, None)):
        err, elapsed = reconstruct(name, n, photons, home, prepared, truth, extra)
        rows.append((label + ("" if name != "DM" else f" ({n} iterations)"), err, elapsed))
    for label, (obj_err, probe_err), elapsed in rows:
        print(f"  {label:46s} object error {obj_err:.4f}  probe error {probe_err:.4f}  {elapsed:6.2f} s")
    if masked:
        print(f"  ({masked} masked pixels: difframe weights them out, PtyLab's ePIE fits them)")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="*", default=[161, 1000], help="frame counts (speed)")
    ap.add_argument("--rounds", type=int, default=7, help="timed epochs of each engine (speed)")
    ap.add_argument("--epochs", type=int, default=60, help="epochs of every PIE reconstruction (quality)")
    ap.add_argument("--iterations", type=int, default=100, help="DM iterations (quality)")
    ap.add_argument("--photons", type=float, default=1e8, help="photons per frame (quality)")
    ap.add_argument("--ptylab", default=PTYLAB_PYTHON, help="python of the environment PtyLab is installed in")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speed:
            speed(args.frames, args.rounds, args.ptylab, Path(tmp))
        if not args.skip_quality:
            quality(args.epochs, args.iterations, args.photons, args.ptylab, Path(tmp))


if __name__ == "__main__":
    main()
