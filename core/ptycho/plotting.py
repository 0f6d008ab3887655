"""Pictures of a reconstruction: object amplitude and phase, probe modes, error curves; movies.

Everything takes plain arrays (``{ID: (layers, H, W)}``), storages (anything
with ``data`` and ``psize``, or a ``.ptyr`` storage dict with ``_psize``) and
ptypy-style ``iter_info`` records, so a run in progress and a ``.ptyr`` read
back are drawn the same way.  Choices a reader relies on: the phase uses a
sequential map over the range shown (a cyclic one only when that range spans
2 pi, where the ends are the same phase); probes are complex colour (hue =
phase, brightness = amplitude) with a colour wheel as key; every image has a
scale bar in metres when the pixel size is known; errors are on a log axis
with the engine switches marked.  matplotlib (Agg) is imported inside the
functions.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difframe.errors import DataError
from difframe.fileio import atomic_path

log = logging.getLogger("difframe.ptycho.plotting")

ERROR_LABELS = ("Fourier error", "deviance per pixel", "exit-wave change")
_FFMPEG_FORMATS = {".mpg": "mpeg", ".mpeg": "mpeg", ".mp4": "mp4", ".avi": "avi", ".mkv": "matroska"}
PNG_DPI = 80
MOVIE_PIXELS = 400  # a movie keeps objects at most this many pixels across (a panel shows ~250)
CYCLIC_SPAN = 1.8 * np.pi  # a phase range this wide is wrapped: drawn with a cyclic map over [-pi, pi]


@dataclass
class Picture:
    """What one picture shows: mode 0 of each object's scanned window and each probe, with pixel sizes."""

    objects: dict  # ID -> ((H, W) complex, psize (y, x) [m] or None)
    probes: dict  # ID -> ((modes, H, W) complex, psize or None)
    iter_info: list
    title: str


class PlotFile(type(Path())):
    """The path of a written picture that keeps what it shows, so a movie can redraw its frames
    with the colour limits of the last one."""

    picture: Picture


def _field(value) -> tuple[np.ndarray, np.ndarray | None]:
    """(array, pixel size or None) of an array, a storage or a .ptyr storage dict."""
    if isinstance(value, np.ndarray):  # (an ndarray's own .data is its buffer)
        data, psize = value, None
    elif isinstance(value, dict):
        data, psize = value["data"], value.get("_psize", value.get("psize"))
    else:
        data, psize = value.data, getattr(value, "psize", None)
    psize = None if psize is None else np.broadcast_to(np.asarray(psize, dtype=float).ravel(), (2,))
    return np.asarray(data), psize


def _window(obj: np.ndarray, positions_px: np.ndarray | None) -> tuple[slice, slice]:
    """The scanned part of an object (padding trimmed), or all of it."""
    if positions_px is None or len(positions_px) == 0:
        return slice(None), slice(None)
    lo = np.clip(np.floor(positions_px.min(axis=0)).astype(int), 0, None)
    hi = np.ceil(positions_px.max(axis=0)).astype(int) + 1
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def picture(objects: dict, probes: dict, iter_info: list, title: str = "", scanned: dict | None = None,
            max_pixels: int | None = None) -> Picture:
    """The :class:`Picture` of a state; ``max_pixels`` decimates large objects (for movies kept in memory)."""
    shown = {}
    for oid, value in objects.items():
        data, psize = _field(value)
        mode0 = data[0][_window(data[0], (scanned or {}).get(oid))]
        step = 1 if max_pixels is None else max(1, int(np.ceil(max(mode0.shape) / max_pixels)))
        shown[oid] = (mode0[::step, ::step].copy(), None if psize is None else psize * step)
    return Picture(shown, {pid: tuple(_field(v)) for pid, v in probes.items()},
                   [dict(rec) for rec in iter_info], title)


def complex_rgb(field: np.ndarray, top: float | None = None) -> np.ndarray:
    """Phase as hue, amplitude as brightness (relative to ``top``, default the largest amplitude)."""
    from matplotlib.colors import hsv_to_rgb

    amp = np.abs(field)
    top = float(amp.max()) if top is None else top
    hsv = np.stack([(np.angle(field) + np.pi) / (2 * np.pi), np.ones_like(amp),
                    np.clip(amp / max(top, 1e-30), 0, 1)], axis=-1)
    return hsv_to_rgb(hsv)


def limits(pic: Picture) -> dict:
    """Colour limits of a picture: amplitude and phase per object, full-brightness amplitude per probe."""
    out = {"amplitude": {}, "phase": {}, "probe": {}}
    for oid, (mode0, _) in pic.objects.items():
        out["amplitude"][oid] = tuple(np.percentile(np.abs(mode0), [1, 99]))
        lo, hi = np.percentile(np.angle(mode0), [1, 99])
        out["phase"][oid] = (-np.pi, np.pi) if hi - lo > CYCLIC_SPAN else (lo, hi)
    for pid, (probe, _) in pic.probes.items():  # a few hot pixels must not darken the whole probe
        out["probe"][pid] = float(np.percentile(np.abs(probe), 99.5))
    return out


def _nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^n not above ``target``."""
    exponent = np.floor(np.log10(target))
    for mantissa in (5, 2, 1):
        if mantissa * 10**exponent <= target * (1 + 1e-9):
            return float(mantissa * 10**exponent)
    return float(10**exponent)


def length_label(metres: float) -> str:
    """A length in the unit that keeps its number between 1 and 1000 (nm, um, mm, m)."""
    for unit, factor in (("m", 1.0), ("mm", 1e-3), ("\u00b5m", 1e-6), ("nm", 1e-9)):
        if metres >= factor * (1 - 1e-9):
            return f"{metres / factor:g} {unit}"
    return f"{metres / 1e-9:.2g} nm"


def scale_bar(ax, psize: np.ndarray | None, width_px: int) -> float | None:
    """A bar of about a fifth of the image width, labelled in physical units; returns its length [m]."""
    if psize is None or not np.all(np.asarray(psize) > 0):
        return None
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    metres = _nice_length(0.2 * width_px * float(psize[1]))
    bar = AnchoredSizeBar(ax.transData, metres / float(psize[1]), length_label(metres), "lower left", pad=0.3,
                          color="white", frameon=True, size_vertical=max(width_px / 80, 0.5), label_top=True,
                          fontproperties=FontProperties(size="small"))
    bar.patch.set(facecolor="black", alpha=0.55, edgecolor="none")
    ax.add_artist(bar)
    return metres


def colour_wheel(ax, size: int = 101) -> None:
    """The key of :func:`complex_rgb`: phase around the wheel, amplitude from the centre out."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    rgba = np.ones((size, size, 4))
    rgba[..., :3] = complex_rgb(np.hypot(x, y) * np.exp(1j * np.arctan2(y, x)), top=1.0)
    rgba[..., 3] = np.hypot(x, y) <= 1
    ax.imshow(rgba, origin="lower", extent=(-1, 1, -1, 1))
    for angle, text in ((0, "0"), (np.pi / 2, "\u03c0/2"), (np.pi, "\u03c0"), (-np.pi / 2, "-\u03c0/2")):
        ax.text(1.3 * np.cos(angle), 1.3 * np.sin(angle), text, ha="center", va="center", fontsize="small")
    ax.set_xlim(-1.7, 1.7)
    ax.set_ylim(-1.5, 1.5)
    ax.set_title("probe key: phase (hue),\namplitude (brightness)", fontsize="small")
    ax.set_axis_off()


def engine_segments(iter_info: list) -> list[tuple[int, str]]:
    """(first run iteration, engine) of each engine in turn: a new engine name or a restarted count."""
    segments, previous = [], None
    for rec in iter_info:
        engine, within = str(rec.get("engine", "")), int(rec.get("iteration", rec["iterations"]))
        if previous is None or engine != previous[0] or within <= previous[1]:
            segments.append((int(rec["iterations"]), engine))
        previous = (engine, within)
    return segments


def draw_errors(ax, iter_info: list) -> None:
    """Each error over the run, divided by its largest value, on a log axis; engine switches marked."""
    its = np.array([rec["iterations"] for rec in iter_info], dtype=float)
    errs = np.array([np.pad(np.ravel(rec["error"]).astype(float)[:3], (0, 3))[:3] for rec in iter_info])
    drawn = 0
    for k, label in enumerate(ERROR_LABELS):
        curve = errs[:, k]
        ok = np.isfinite(curve) & (curve > 0)
        if ok.any():
            ax.plot(its[ok], curve[ok] / curve[ok].max(), label=label, marker="." if ok.sum() < 20 else None)
            drawn += 1
    segments = engine_segments(iter_info)
    for n, (first, engine) in enumerate(segments):
        if n:
            ax.axvline(first - 0.5, color="0.4", linestyle=":", linewidth=1)
        ax.text(first - 0.5 if n else its.min(), 1.0, f" {engine}", transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize="small", color="0.2")
    ax.set_yscale("log")
    ax.set_xlabel("iteration (whole run)")
    ax.set_ylabel("error / its largest value")
    ax.set_title("errors (dotted: engine switch)")
    if drawn:
        ax.legend(fontsize="x-small", loc="lower left")
    ax.grid(True, which="major", alpha=0.3)


def draw_picture(pic: Picture, fixed: dict | None = None):
    """A matplotlib Figure of ``pic``; ``fixed`` colour limits (from :func:`limits`) else its own."""
    from matplotlib.figure import Figure

    lim = fixed or limits(pic)
    n_modes = max((p.shape[0] for p, _ in pic.probes.values()), default=1)
    rows = max(len(pic.objects), len(pic.probes), 1)
    widths = [1.15, 1.15] + [1.0] * n_modes + [0.55, 1.4]  # amplitude, phase, probe modes, key, errors
    fig = Figure(figsize=(3.0 * sum(widths), 3.1 * rows), layout="constrained")
    axes = fig.subplots(rows, len(widths), squeeze=False, width_ratios=widths)
    for ax in axes.ravel():
        ax.set_axis_off()
    for row, (oid, (mode0, psize)) in enumerate(pic.objects.items()):
        lo, hi = lim["amplitude"].get(oid, (None, None))
        im = axes[row, 0].imshow(np.abs(mode0), cmap="gray", vmin=lo, vmax=hi)
        axes[row, 0].set_title(f"object {oid}: amplitude")
        fig.colorbar(im, ax=axes[row, 0], shrink=0.8, extend="both")  # limits are percentiles: a few clip
        lo, hi = lim["phase"].get(oid, (-np.pi, np.pi))
        cyclic = hi - lo > CYCLIC_SPAN
        im = axes[row, 1].imshow(np.angle(mode0), cmap="twilight" if cyclic else "viridis", vmin=lo, vmax=hi)
        axes[row, 1].set_title("phase [rad]" + (" (cyclic: wraps)" if cyclic else ""))
        fig.colorbar(im, ax=axes[row, 1], shrink=0.8, extend="neither" if cyclic else "both")
        for ax in axes[row, :2]:
            scale_bar(ax, psize, mode0.shape[1])
    for row, (pid, (probe, psize)) in enumerate(pic.probes.items()):
        power = (np.abs(probe) ** 2).sum(axis=(-2, -1))
        for m in range(probe.shape[0]):
            ax = axes[row, 2 + m]
            ax.imshow(complex_rgb(probe[m], lim["probe"].get(pid)))
            ax.set_title(f"probe {pid} mode {m} ({100 * power[m] / power.sum():.0f}%)")
            scale_bar(ax, psize, probe.shape[-1])
        colour_wheel(axes[row, -2])
    if pic.iter_info:
        axes[0, -1].set_axis_on()
        draw_errors(axes[0, -1], pic.iter_info)
    if pic.title:
        fig.suptitle(pic.title)
    return fig


def draw(objects: dict, probes: dict, iter_info: list, title: str = "", scanned: dict | None = None):
    """A matplotlib Figure: per object storage amplitude and phase, probe modes, error curves."""
    return draw_picture(picture(objects, probes, iter_info, title, scanned))


def save_png(path, objects: dict, probes: dict, iter_info: list, title: str = "",
             scanned: dict | None = None) -> PlotFile:
    """Draw and write a PNG atomically; returns its path, which keeps the picture for a movie."""
    pic = picture(objects, probes, iter_info, title, scanned)
    with atomic_path(path) as tmp:
        draw_picture(pic).savefig(tmp, format="png", dpi=PNG_DPI)
    out = PlotFile(path)
    out.picture = picture(objects, probes, iter_info, title, scanned, max_pixels=MOVIE_PIXELS)
    return out


def _rgb(fig) -> np.ndarray:
    """The figure as an (H, W, 3) array, at the PNGs' resolution."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(PNG_DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def make_movie(frames: list, path) -> Path:
    """A movie of the pictures :func:`save_png` returned, all with the colour limits of the last.

    The last picture also opens the movie, so its first frame (a viewer's
    thumbnail) shows the state the file is named after; then the run plays in
    order.  ffmpeg writes it when installed, else an animated GIF (suffix .gif).
    """
    if not frames:
        raise DataError(f"no plot frames to make the movie {path} from")
    missing = [str(f) for f in frames if getattr(f, "picture", None) is None]
    if missing:
        raise DataError(f"movie {path}: {missing[0]} was not drawn by difframe.ptycho.plotting.save_png "
                        f"in this process, so its colour limits cannot be fixed")
    pictures = [f.picture for f in frames]
    fixed = limits(pictures[-1])
    images = [_rgb(draw_picture(pic, fixed)) for pic in [pictures[-1], *pictures]]  # one figure size: same shape
    durations = [1500] + [400] * (len(images) - 2) + [1500]
    path = Path(path)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        _ffmpeg(ffmpeg, images, durations, path)
        return path
    from PIL import Image

    path = path.with_suffix(".gif")
    with atomic_path(path) as tmp:
        first, *rest = [Image.fromarray(im) for im in images]
        first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=durations, loop=0)
    log.info("no ffmpeg: wrote the movie as an animated GIF %s", path)
    return path


def _ffmpeg(ffmpeg: str, images: list, durations: list, path: Path) -> None:
    """Encode RGB ``images`` shown ``durations`` ms each with ffmpeg's concat demuxer."""
    from PIL import Image

    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as folder, \
            atomic_path(path) as tmp:
        listing = []
        for n, (image, ms) in enumerate(zip(images, durations)):
            frame = Path(folder) / f"{n:04d}.png"
            Image.fromarray(image).save(frame)
            listing.append(f"file '{frame}'\nduration {ms / 1000}\n")
        listfile = Path(folder) / "frames.txt"
        listfile.write_text("".join(listing))
        subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listfile),
                        "-f", _FFMPEG_FORMATS.get(path.suffix.lower(), "mpeg"), str(tmp)], check=True)
