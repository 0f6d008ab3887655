"""DM and ML seconds per iteration on 1000 far-field frames of 128 x 128, against this machine's floor.

    .venv/bin/python benchmarks/ptycho_engines.py [--frames 1000] [--size 128] [--rounds 11]

The floor is measured in the same run: one forward and one inverse batched FFT
of every pod through the engines' own FFT (difframe.fft, FFTW in place: what
any projection algorithm must transform per iteration; the faster of FFTW's
threads over 8 MiB chunks and one thread per cache-sized chunk) plus
the streaming passes over the exit-wave array that a DM iteration cannot avoid
(Fourier step: read psi and write it back, two passes; object and probe updates:
read psi once each).  Targets: DM <= 2x floor with the terms for real data
switched off, ML <= 2.5x DM, peak < 1 GB; with the model terms for real data
(background map and frame scales fitted) DM at most 15 % slower.  With several
probe modes the cost of keeping them orthogonal is printed on its own line.
Peak memory is what tracemalloc sees numpy allocate (data, model, engine
buffers) during initialisation and iterations, in runs of its own.  Timing:
every engine is started and warmed up (three iterations), then each round
takes the floor and one iteration of each engine in turn, the starting one
rotating (:func:`in_turns`); a ratio is taken within each round, and the
median, the rounds' range and the ratio of the best times are printed, so
that the shared machine's slow phases, which last minutes, move both sides
of it.  Last, DM on the 161-frame
problem the issue uses to compare with ptypy, against a plain numpy DM in the
same run.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from difframe import fft, frame_threads, optics
from difframe.param import Param
from difframe.plugins.engines import dm, ml
from difframe.ptycho import model as pm
from difframe.ptycho import terms
from difframe.ptycho.data import PreparedData


def problem(frames: int, size: int, modes: int, seed: int = 0):
    """Random smooth object, apertured probe, spiral positions, Poisson frames from them."""
    rng = np.random.default_rng(seed)
    lam = optics.energy_to_wavelength(6.2)
    psize = optics.farfield_object_psize(lam, 7.19, (size, size), 172e-6)
    k = np.arange(frames)
    r = np.sqrt(k) * size * 0.12
    pos = np.stack([r * np.sin(k * 2.4), r * np.cos(k * 2.4)], axis=1) * psize
    y, x = optics.coordinates((size, size), psize)
    aperture = (np.hypot(y[:, None], x[None, :]) < size * psize[0] / 5).astype(complex)
    probe = optics.fresnel_propagate(aperture, psize, lam, 5e-5)
    probe = np.stack([probe * 0.7**m for m in range(modes)]) * 100
    shape, origin = pm.object_frame([pos], psize, (size, size))
    obj = pm.gaussian_smooth(rng.normal(size=shape) + 1j * rng.normal(size=shape), 3.0)
    obj = np.exp(1j * obj.real / np.abs(obj.real).max())[None]
    storage = pm.Storage(obj, psize, origin, 6.2)
    corners = pm.corners_of(pos, storage, (size, size))
    data = np.empty((frames, size, size), np.float32)
    for sl in (slice(i, i + 100) for i in range(0, frames, 100)):
        pods = pm.exit_waves(probe.astype(np.complex64), pm.gather(obj.astype(np.complex64), corners[sl], (size, size)))
        data[sl] = rng.poisson(pm.intensity(optics.FarField((size, size)).forward(pods)))
    return PreparedData(label="bench", data=data, mask=np.ones((size, size), bool), positions=pos,
                        energy_kev=6.2, distance_m=7.19, psize_m=(172e-6, 172e-6), center=(size / 2, size / 2)), probe


def engine_params(schema, **extra):
    p = Param(numiter=10, numiter_contiguous=1, probe_support=0.7, clip_object=None)
    p.update({path.rpartition(".")[2]: node.default for path, node in terms.NODES.items()
              if path.count(".") == 2 and path.startswith("engine.common.") and node.type != ("Param",)})
    p.update({key: node.default for key, node in schema.items()})
    p.update(extra)
    return p


def started_engine(module, prep, probe, model_terms=False, orthogonal=False):
    """One engine on a fresh model, past its warm-up: the engine as ptypy has it, the terms for real data off;
    with ``model_terms`` a background map and per-frame scales are fitted every iteration, with ``orthogonal``
    the probe modes are orthogonalised after every iteration."""
    model = pm.build_model({"bench": prep}, {"bench": (None, 1.0, None, 1.0)},
                           init_probe=lambda *a: probe, init_object=lambda label, shape, *a: np.ones((1, *shape)))
    if model_terms:
        model.scans[0].background = np.zeros(prep.shape, model.rdtype)
    options = {"floating_intensities": True, "background_update_start": 0} if model_terms else {}
    options["orthogonal_modes"] = orthogonal
    engine = module.factory(engine_params(module.PARAMETERS, **options), model)
    engine.initialize()
    engine.iterate(3)  # warm-up past probe_update_start: every kernel compiled (or loaded), buffers touched
    return engine


def peak_memory(module, prep, probe) -> tuple[int, dict]:
    """(peak bytes, last metrics) that tracemalloc sees numpy allocate while an engine initialises and runs
    four iterations.  Measured on its own: tracing every allocation slows the Python around the kernels (DM
    by about 14 % on 1000 frames), so no time is taken with it on."""
    tracemalloc.start()
    engine = started_engine(module, prep, probe)
    metrics = engine.iterate(1)[-1]
    engine.finalize()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, metrics


def in_turns(steps: dict, rounds: int) -> tuple[dict, dict]:
    """(wall, cpu): name -> the wall-clock and CPU seconds (all threads of the process) of each of ``rounds``
    rounds, every step run once a round in turn, the starting step rotating from round to round.

    The machine's speed drifts (a shared VM has slow phases lasting minutes), so a ratio is taken within each
    round, between steps run seconds apart; and what ran just before a step changes from round to round (with a
    fixed order it moved a ratio by up to 0.2).  A step that returns a (wall, cpu) pair has timed itself (the
    floor its parts; benchmarks/ptylab_epie.py's PtyLab in its own process, without the message passing).
    """
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            own = steps[name]()
            if not isinstance(own, tuple):
                own = (time.perf_counter() - start, time.process_time() - start_cpu)
            wall[name].append(own[0])
            cpu[name].append(own[1])
    return ({name: np.asarray(t) for name, t in wall.items()}, {name: np.asarray(t) for name, t in cpu.items()})


def median_ratio(times: dict, top: str, bottom: str, unit: str = "") -> str:
    """The median of the rounds' ratios top / bottom, their range, and the ratio of the best times (what is
    left when other work on the machine, which only ever adds time, is least in the way)."""
    ratios = times[top] / times[bottom]
    best = times[top].min() / times[bottom].min()
    return f"{np.median(ratios):5.2f}{unit} (rounds {ratios.min():.2f}-{ratios.max():.2f}, best times {best:.2f})"


def plain_numpy_dm(prep, probe, iterations):
    """Median seconds per iteration of a plain numpy DM (the issue's yardstick for ptypy's speed).

    Textbook statements, one core: fancy-index gather of the windows, numpy.fft,
    full modulus projection, np.add.at scatter for the object, sums for the
    probe. ptypy's serial DM ran 2.3x slower than such a DM on 161 frames of
    128 x 128 on these machines.
    """
    h, w = prep.shape
    psize = pm.object_psize(prep)
    shape, origin = pm.object_frame([prep.positions], psize, (h, w))
    corners = pm.corners_of(prep.positions, pm.Storage(np.zeros(shape), psize, origin, 6.2), (h, w))
    rows = corners[:, 0, None, None] + np.arange(h)[None, :, None]
    cols = corners[:, 1, None, None] + np.arange(w)[None, None, :]
    amp = np.sqrt(np.fft.ifftshift(prep.data, axes=(-2, -1)))
    obj = np.ones(shape, np.complex64)
    pr = probe[0].astype(np.complex64)
    exits = pr * obj[rows, cols]
    times = []
    for it in range(iterations + 1):
        start = time.perf_counter()
        views = obj[rows, cols]
        pods = pr * views
        f = np.fft.fft2(2 * pods - exits, norm="ortho")
        f = amp * np.exp(1j * np.angle(f))
        exits += np.fft.ifft2(f, norm="ortho") - pods
        num = np.zeros(shape, np.complex64)
        den = np.zeros(shape, np.float32)
        np.add.at(num, (rows, cols), np.conj(pr) * exits)
        np.add.at(den, (rows, cols), np.broadcast_to(np.abs(pr) ** 2, exits.shape))
        obj = (num / (den + 1e-3 * den.max())).astype(np.complex64)
        views = obj[rows, cols]
        pr = ((np.conj(views) * exits).sum(axis=0) / (np.abs(views) ** 2).sum(axis=0)).astype(np.complex64)
        if it:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def floor_step(frames: int, size: int, modes: int):
    """A step of :func:`in_turns` that times itself, the floor's seconds (and keeps its parts in
    ``step.parts``): one FFT pair over frames x modes pods by the faster of the engines' two routes, plus four
    streaming passes over them."""
    pods = fft.empty((frames, modes, size, size))
    pods[...] = 1
    other = np.ones_like(pods)
    chunk = max(1, pm.CHUNK_BYTES // (modes * size * size * 8))

    def pair(piece):
        fft.fft2(piece, overwrite=True)
        fft.ifft2(piece, overwrite=True)

    def step():
        start_cpu = time.process_time()
        # the engines' two routes (difframe.fft: FFTW, in place): FFTW's threads over 8 MiB chunks, and each
        # cache-sized chunk's pair on one thread, the threads taking turns (difframe.frame_threads)
        start = time.perf_counter()
        for i in range(0, frames, chunk):
            pair(pods[i:i + chunk])
        threaded = time.perf_counter() - start
        start = time.perf_counter()
        frame_threads.in_chunks(pair, pods)
        chunked = time.perf_counter() - start
        start = time.perf_counter()
        np.add(pods, other, out=pods)  # reads two arrays, writes one
        one_pass = (time.perf_counter() - start) / 1.5
        step.parts.append((min(threaded, chunked), one_pass))
        return min(threaded, chunked) + 4 * one_pass, time.process_time() - start_cpu

    step.parts = []
    return step


def iteration_step(engine):
    """A step of :func:`in_turns`: one iteration of ``engine``."""
    return lambda: engine.iterate(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=11, help="rounds of the floor and one iteration of each engine")
    args = ap.parse_args()
    print(f"{args.frames} frames of {args.size}x{args.size}, complex64, FFTs through FFTW (difframe.fft), "
          f"{fft.fft_workers()} threads; medians over {args.rounds} rounds")
    for modes in (1, 3):
        prep, probe = problem(args.frames, args.size, modes)
        peak_dm, m_dm = peak_memory(dm, prep, probe)
        peak_ml = peak_memory(ml, prep, probe)[0]
        floor = floor_step(args.frames, args.size, modes)
        steps = {"floor": floor,
                 "DM": iteration_step(started_engine(dm, prep, probe)),
                 "DM + terms": iteration_step(started_engine(dm, prep, probe, model_terms=True)),
                 "ML": iteration_step(started_engine(ml, prep, probe)),
                 "ML + terms": iteration_step(started_engine(ml, prep, probe, model_terms=True))}
        if modes > 1:
            steps["DM + orthogonal"] = iteration_step(started_engine(dm, prep, probe, orthogonal=True))
        floor()  # its buffers touched
        floor.parts.clear()
        t = in_turns(steps, args.rounds)[0]
        sec = {name: float(np.median(v)) for name, v in t.items()}
        fft_pair, one_pass = np.median(np.array(floor.parts), axis=0)
        print(f"\nprobe modes {modes}:")
        print(f"  floor            {sec['floor']:7.3f} s/it  "
              f"(FFT pair {fft_pair:.3f} s + 4 passes of {one_pass:.3f} s)")
        print(f"  DM               {sec['DM']:7.3f} s/it  peak {peak_dm / 2**20:6.0f} MiB  "
              f"overlap loops {m_dm['overlap_loops']}  ratio to floor {median_ratio(t, 'DM', 'floor')}  "
              f"(target <= 2)")
        print(f"  DM + terms       {sec['DM + terms']:7.3f} s/it  background and frame scales fitted: "
              f"{median_ratio(t, 'DM + terms', 'DM', 'x DM')}  (target <= 1.15)")
        if modes > 1:
            print(f"  DM + orthogonal  {sec['DM + orthogonal']:7.3f} s/it  modes orthogonalised every iteration "
                  f"(both exit-wave stacks mixed): {median_ratio(t, 'DM + orthogonal', 'DM', 'x DM')}")
        print(f"  ML               {sec['ML']:7.3f} s/it  peak {peak_ml / 2**20:6.0f} MiB  "
              f"ratio to DM {median_ratio(t, 'ML', 'DM')}  (target <= 2.5)")
        print(f"  ML + terms       {sec['ML + terms']:7.3f} s/it  {median_ratio(t, 'ML + terms', 'ML', 'x ML')}")
        del steps, floor
    prep, probe = problem(161, args.size, 1)
    t_plain = plain_numpy_dm(prep, probe, args.rounds)
    t_ours = float(np.median(in_turns({"DM": iteration_step(started_engine(dm, prep, probe))}, args.rounds)[0]["DM"]))
    print(f"\n161 frames, 1 mode (the issue's ptypy comparison): plain numpy DM {t_plain:.3f} s/it, "
          f"difframe DM {t_ours:.3f} s/it: {t_plain / t_ours:.1f}x faster than plain numpy, "
          f"so about {2.3 * t_plain / t_ours:.0f}x faster than ptypy's serial DM (2.3x slower than plain numpy here)")


if __name__ == "__main__":
    with fft.blas_one_thread():  # as a run's engines have it (difframe.ptycho.workflow)
        main()
